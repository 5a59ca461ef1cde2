"""How the linen modules create their per-feature parameters and the
projection of a conditional layer, and name the parameters of a layer they
wrap."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxnorm._core.modulation import scale_initializer

Array = jax.Array


def feature_params(
  mdl: nn.Module,
  features: tuple[int, ...],
  *,
  use_scale: bool,
  use_bias: bool,
  zero_centered_scale: bool = False,
) -> tuple[Array | None, Array | None]:
  """Creates ``scale``/``bias`` exactly as flax does (names, shapes, dtype);
  a zero-centred ``scale`` starts at zeros where ``scale_init`` is the
  default."""
  scale = bias = None
  if use_scale:
    init = scale_initializer(mdl.scale_init, zero_centered_scale)
    scale = mdl.param("scale", init, features, mdl.param_dtype)
  if use_bias:
    bias = mdl.param("bias", mdl.bias_init, features, mdl.param_dtype)
  return scale, bias


def wrapped_name(layer: nn.Module, path) -> str:
  """``"<layer name>/<path in the layer>"``, the name flax gives a wrapped
  layer's parameter in the wrapper's variables (``path[0]`` is the
  collection)."""
  return f"{layer.name}/{jax.tree_util.keystr(tuple(path[1:]), simple=True, separator='/')}"


def projection(mdl: nn.Module, features: int, conditioning: Array, *, use_bias: bool = True) -> Array:
  """The conditioning projected by the dense layer ``params/projection`` of
  a conditional layer, with the module's ``projection_kernel_init``,
  ``projection_bias_init``, ``dtype`` and ``param_dtype``."""
  return nn.Dense(
    features,
    use_bias=use_bias,
    kernel_init=mdl.projection_kernel_init,
    bias_init=mdl.projection_bias_init,
    dtype=mdl.dtype,
    param_dtype=mdl.param_dtype,
    name="projection",
  )(conditioning)
