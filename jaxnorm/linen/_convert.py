"""Conversion of an existing flax.linen model: every flax normalization layer
it calls runs as jaxnorm's, on the same variables (as PyTorch's
``convert_sync_batchnorm`` does for its batch norms).

A linen model creates its layers while it runs (in ``setup`` or a
``@compact`` method, often hard-coded, as ``nn.BatchNorm`` in flax's
ImageNet ResNet), so they cannot be swapped before the call. Instead each
call of a flax norm layer is intercepted (``flax.linen.intercept_methods``)
and run by the jaxnorm class of the same name, built from the layer's
fields and bound to the layer's own scope: the same variables, names and
collections, read and written in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from jaxnorm._core.running_stats import KEEP
from jaxnorm._core.running_stats import conversion_overrides

# The flax.linen layers a conversion runs as the jaxnorm class of the same
# name (the same fields, variables and call), which jaxnorm.linen passes to
# make_converters.
LAYER_NAMES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm", "SpectralNorm", "WeightNorm")


def _fields(module: nn.Module) -> dict[str, Any]:
  return {
    f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name")
  }


@contextlib.contextmanager
def _converted(replacements: dict[type, type], *, axis_name: Any = KEEP, running_stats: str | None = None):
  """Within the block, every call of a flax.linen normalization layer runs
  as jaxnorm's class of the same name on the layer's own variables.

  For ``init``, ``apply`` or any method of a model you call yourself, and
  for code that calls ``apply`` inside (a Hugging Face Flax model's
  ``__call__``: ``with jaxnorm.linen.converted(): outputs = model(**inputs)``);
  :func:`jaxnorm.linen.convert` wraps a model's ``__call__`` in it.
  ``axis_name`` and ``running_stats`` as there.
  """
  overrides = conversion_overrides(axis_name, running_stats, "converted")

  def intercept(next_fun, args, kwargs, context):
    layer = context.module
    cls = replacements.get(type(layer))
    if cls is None or context.method_name != "__call__" or layer.scope is None:
      return next_fun(*args, **kwargs)
    fields = _fields(layer)
    if cls.__name__ == "BatchNorm":
      fields |= overrides
    return cls(**fields, parent=layer.scope)(*args, **kwargs)  # bound to the layer's scope: its variables

  with nn.intercept_methods(intercept):
    yield


class Converted(nn.Module):
  """``module`` with its flax normalization layers run as jaxnorm's
  (:func:`convert`); the same variables as ``module`` (it shares its
  scope)."""

  module: nn.Module
  converting: Callable  # () -> the context of _converted, its arguments bound

  def setup(self):
    nn.share_scope(self, self.module)

  def __call__(self, *args, **kwargs):
    with self.converting():
      return self.module(*args, **kwargs)


def _convert(
  replacements: dict[type, type], module: nn.Module, *, axis_name: Any = KEEP, running_stats: str | None = None
) -> nn.Module:
  """``module`` with every flax.linen normalization layer it calls run by jaxnorm's.

  ``nn.BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm``,
  ``RMSNorm``, ``SpectralNorm`` and ``WeightNorm`` calls — wherever the
  model creates them, in ``setup``, a ``@compact`` method or a
  ``functools.partial`` — run as the jaxnorm class of the same name with
  the layer's fields (its ``use_fast_variance`` included, so the outputs
  are flax's: bit for bit on jax 0.10, to rounding on other jax versions) on the layer's own variables. The returned module
  takes ``module``'s call arguments and has exactly ``module``'s variables,
  so existing checkpoints apply unchanged. Only ``__call__`` is converted;
  for another method, call it inside :func:`jaxnorm.linen.converted`.

  Args:
    module: a flax.linen module.
    axis_name: set on every BatchNorm: a mapped axis name synchronises the
      batch statistics across devices, as
      ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does; None turns it
      off. Default: each layer's own.
    running_stats: set on every BatchNorm: ``"ema"`` (flax's),
      ``"cumulative"`` (an exact average) or ``"frozen"`` (the running
      statistics normalize in training too and are never updated).
      Default: flax's EMA.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxnorm
    >>> model = nn.Sequential([nn.Dense(4), nn.LayerNorm()])
    >>> variables = model.init(jax.random.key(0), jnp.ones((2, 3)))
    >>> y = jaxnorm.linen.convert(model).apply(variables, jnp.ones((2, 3)))
    >>> bool(jnp.array_equal(y, model.apply(variables, jnp.ones((2, 3)))))
    True
  """
  if not isinstance(module, nn.Module):
    raise TypeError(
      f"convert: module is a {type(module).__name__}; pass a flax.linen Module (for flax.nnx, use jaxnorm.nnx.convert)."
    )
  conversion_overrides(axis_name, running_stats, "convert")  # checked now, not at the first call
  converting = functools.partial(_converted, replacements, axis_name=axis_name, running_stats=running_stats)
  return Converted(module, converting)


def make_converters(classes: Mapping[str, Any]):
  """:func:`convert` and :func:`converted` that run each flax.linen layer of
  :data:`LAYER_NAMES` as ``classes[name]`` (the jaxnorm class of that name;
  ``jaxnorm.linen`` passes its namespace)."""
  replacements = {getattr(nn, name): classes[name] for name in LAYER_NAMES if hasattr(nn, name)}

  def convert(module: nn.Module, *, axis_name: Any = KEEP, running_stats: str | None = None) -> nn.Module:
    return _convert(replacements, module, axis_name=axis_name, running_stats=running_stats)

  def converted(*, axis_name: Any = KEEP, running_stats: str | None = None):
    return _converted(replacements, axis_name=axis_name, running_stats=running_stats)

  convert.__doc__, converted.__doc__ = _convert.__doc__, _converted.__doc__
  return convert, converted
