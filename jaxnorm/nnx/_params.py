"""How the nnx modules create their parameters and running statistics, as
flax.nnx creates its own, and lend a wrapped layer normalized weights."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxnorm import _stateful

NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def features(num_features, owner: str) -> tuple[int, ...]:
  """``num_features`` as the parameter shape; a positive int (or a tuple of
  them, for several feature axes)."""
  shape = num_features if isinstance(num_features, tuple) else (num_features,)
  if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
    raise ValueError(
      f"{owner}: num_features={num_features!r}; expected a positive integer (the size of the feature axis)."
    )
  return shape


def feature_params(
  owner: nnx.Module,
  shape,
  *,
  rngs: nnx.Rngs,
  use_scale: bool,
  use_bias: bool,
  scale_init,
  bias_init,
  param_dtype,
  scale_metadata,
  bias_metadata,
) -> None:
  """``scale`` then ``bias`` as flax.nnx creates them: each an ``nnx.Param``
  from its own ``rngs.params()`` key, or ``None``."""
  owner.scale = (
    nnx.Param(scale_init(rngs.params(), shape, param_dtype), **scale_metadata) if use_scale else nnx.data(None)
  )
  owner.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype), **bias_metadata) if use_bias else nnx.data(None)


def value_of(variable):
  return None if variable is None else variable[...]


def running_stat(init, shape, force_float32_reductions: bool, param_dtype):
  """An ``nnx.BatchStat`` in float32 (or ``param_dtype`` without
  ``force_float32_reductions``), as the linen modules keep them."""
  return nnx.BatchStat(init(shape, jnp.float32 if force_float32_reductions else param_dtype))


class ModeMixin:
  """``set_view`` for ``nnx.view(model, use_running_average=...)``."""

  def set_view(self, use_running_average: bool | None = None):
    if use_running_average is not None:
      self.use_running_average = use_running_average


def extra_param(init, shape, param_dtype, rngs: nnx.Rngs) -> nnx.Param:
  return nnx.Param(init(rngs.params(), shape, param_dtype))


def wrapped_params(layer: nnx.Module):
  """``(path, nnx.Param)`` of every parameter of ``layer``, each once,
  the Variables themselves (paths as ``nnx.state`` gives them)."""
  return [(tuple(path), node) for path, node in nnx.iter_graph(layer) if isinstance(node, nnx.Param)]


@contextlib.contextmanager
def substituted(replacements):
  """For the length of the block, each ``(nnx.Param, value)`` holds
  ``value``; then its own value again, even when the block raises. The
  wrapped layer sees the normalized weights while its parameters keep
  the raw ones: gradients reach the raw weights through the
  normalization, and no call normalizes an already normalized weight."""
  originals = [(param, param[...]) for param, _ in replacements]
  try:
    for param, value in replacements:
      _stateful.replace_value(param, value)
    yield
  finally:
    for param, value in originals:
      _stateful.replace_value(param, value)


def projection(
  in_features, out_features, kernel_init, bias_init, dtype, param_dtype, rngs, use_bias=True
) -> nnx.Linear:
  """The dense layer a conditional layer projects its conditioning with."""
  return nnx.Linear(
    in_features,
    out_features,
    use_bias=use_bias,
    kernel_init=kernel_init,
    bias_init=bias_init,
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )
