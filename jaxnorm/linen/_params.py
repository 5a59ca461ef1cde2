"""How the linen modules create their per-feature parameters."""

from __future__ import annotations

import flax.linen as nn
import jax

Array = jax.Array


def feature_params(
  mdl: nn.Module,
  features: tuple[int, ...],
  *,
  use_scale: bool,
  use_bias: bool,
) -> tuple[Array | None, Array | None]:
  """Creates ``scale``/``bias`` exactly as flax does (names, shapes, dtype)."""
  scale = bias = None
  if use_scale:
    scale = mdl.param("scale", mdl.scale_init, features, mdl.param_dtype)
  if use_bias:
    bias = mdl.param("bias", mdl.bias_init, features, mdl.param_dtype)
  return scale, bias
