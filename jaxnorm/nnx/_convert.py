"""Conversion of an existing flax.nnx model: every flax normalization layer
replaced by jaxnorm's, parameters and statistics kept (as PyTorch's
``convert_sync_batchnorm`` does for its batch norms)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from flax import nnx

from jaxnorm._core.running_stats import KEEP
from jaxnorm._core.running_stats import conversion_overrides

# The flax.nnx layers a conversion replaces, each by the jaxnorm.nnx class of
# the same name (same constructor, same state names), which jaxnorm.nnx
# passes to make_convert. SpectralNorm and WeightNorm came in flax 0.12.1.
LAYER_NAMES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm", "SpectralNorm", "WeightNorm")


def flax_layers() -> dict[str, type]:
  """The flax.nnx normalization classes this flax has, by name."""
  return {name: getattr(nnx, name) for name in LAYER_NAMES if hasattr(nnx, name)}


# The containers a model holds its layers in (nnx.List/Dict/Pytree where
# this flax has them).
_LIST = getattr(nnx, "List", list)
_DICT = getattr(nnx, "Dict", dict)
_PYTREE = getattr(nnx, "Pytree", nnx.Module)


def make_convert(classes: Mapping[str, Any]):
  """:func:`convert` that replaces each flax.nnx layer of :data:`LAYER_NAMES`
  by ``classes[name]`` (the jaxnorm.nnx class of that name; ``jaxnorm.nnx``
  passes its namespace)."""
  replacements = {flax_cls: classes[name] for name, flax_cls in flax_layers().items()}

  def convert(model: nnx.Module, *, axis_name: Any = KEEP, running_stats: str | None = None) -> nnx.Module:
    return _convert(replacements, model, axis_name=axis_name, running_stats=running_stats)

  convert.__doc__ = _convert.__doc__
  return convert


def _convert(
  replacements: dict[type, type], model: nnx.Module, *, axis_name: Any = KEEP, running_stats: str | None = None
) -> nnx.Module:
  """Replaces every flax.nnx normalization layer of ``model`` by jaxnorm's.

  ``nnx.BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm``,
  ``RMSNorm``, ``SpectralNorm`` and ``WeightNorm``, wherever they sit
  (attributes, ``nnx.List``/``nnx.Dict`` and other containers, nested
  modules), become the :mod:`jaxnorm.nnx` class of the same name, built
  from the layer's own settings (its ``use_fast_variance`` included, so the
  outputs are flax's: bit for bit on jax 0.10, to rounding on other jax
  versions) and holding the layer's own variables
  (the same ``nnx.Param``/``nnx.BatchStat`` objects, their metadata and
  sharding annotations kept). A layer that appears in several places is
  replaced by one jaxnorm layer everywhere. ``model`` is changed in place
  and returned (a ``model`` that is itself a norm layer is returned
  converted).

  Args:
    model: a flax.nnx module.
    axis_name: set on every BatchNorm: a mapped axis name synchronises the
      batch statistics across devices (``shard_map``/``pmap``/``nnx.vmap``
      over that axis), as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``
      does; None turns it off. Default: each layer's own.
    running_stats: set on every BatchNorm: ``"ema"`` (flax's),
      ``"cumulative"`` (an exact average from the next update on) or
      ``"frozen"`` (the running statistics normalize in training too and
      are never updated, as torchvision's FrozenBatchNorm2d: fine-tuning a
      detector at a few images per device). Default: flax's EMA.

  Returns:
    ``model``, converted.

  Example:
    >>> import jax.numpy as jnp, jaxnorm
    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.LayerNorm(4, rngs=nnx.Rngs(1)))
    >>> x = jnp.ones((2, 3))
    >>> y = model(x)
    >>> model = jaxnorm.nnx.convert(model)
    >>> type(model.layers[1]).__module__, bool(jnp.array_equal(model(x), y))
    ('jaxnorm.nnx.per_example', True)
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(
      f"convert: model is a {type(model).__name__}; pass a flax.nnx Module (for flax.linen, use jaxnorm.linen.convert)."
    )
  overrides = conversion_overrides(axis_name, running_stats, "convert")
  return _Converter(replacements, overrides).visit(model)


class _Converter:
  """One walk over the graph; ``done`` maps a node's id to its result, so
  shared layers stay shared and cycles end."""

  def __init__(self, replacements: dict[type, type], batch_norm_overrides: dict[str, Any]):
    self.replacements = replacements
    self.batch_norm_overrides = batch_norm_overrides
    self.done: dict[int, Any] = {}

  def visit(self, node):
    if id(node) in self.done:
      return self.done[id(node)]
    self.done[id(node)] = node  # provisional: a cycle back to it sees the node itself
    result = self.visit_children(node)  # a wrapped layer (SpectralNorm's) is converted too
    if type(result) in self.replacements:
      result = self.replace(result)
    self.done[id(node)] = result
    return result

  def visit_children(self, node):
    """``node`` with its children converted: in place, or a new tuple."""
    if isinstance(node, tuple):
      items = [self.visit(child) for child in node]
      if all(a is b for a, b in zip(items, node)):
        return node
      return type(node)(*items) if hasattr(node, "_fields") else type(node)(items)
    if isinstance(node, (list, _LIST)):
      for i, child in enumerate(list(node)):
        new = self.visit(child)
        if new is not child:
          node[i] = new
    elif isinstance(node, (dict, _DICT)):
      for key, child in list(node.items()):
        new = self.visit(child)
        if new is not child:
          node[key] = new
    elif isinstance(node, _PYTREE):
      for name, child in list(vars(node).items()):
        if name.startswith("_pytree__") or not isinstance(child, (_PYTREE, list, dict, tuple)):
          continue
        new = self.visit(child)
        if new is not child:
          setattr(node, name, new)
    return node

  def replace(self, layer: nnx.Module) -> nnx.Module:
    """The jaxnorm layer with ``layer``'s settings and variables."""
    cls = self.replacements[type(layer)]
    signature = inspect.signature(type(layer).__init__).parameters
    kwargs = {name: getattr(layer, name) for name in signature if name not in ("self", "rngs") and hasattr(layer, name)}
    kind = cls.__name__
    if kind == "BatchNorm":
      kwargs |= self.batch_norm_overrides
    if kind == "GroupNorm":  # flax keeps both resolved; its constructor takes one
      kwargs |= {"num_features": layer.num_groups * layer.group_size, "group_size": None}
    if kind == "WeightNorm" and kwargs.get("feature_axes") == ():
      kwargs["feature_axes"] = None
    # rngs only shape the fresh variables, which are replaced below by the layer's own.
    new = cls(**kwargs, rngs=nnx.Rngs(0))
    for attr, value in vars(layer).items():
      if isinstance(value, nnx.Variable) and hasattr(new, attr):
        setattr(new, attr, value)
    if kind == "SpectralNorm":
      for key, stat in layer.batch_stats.items():
        new.batch_stats[key] = stat
    if kind == "WeightNorm":
      for key, scale in layer.scales.items():  # flax keeps plain arrays; jaxnorm's g is an nnx.Param
        new.scales[key] = scale if isinstance(scale, nnx.Param) else nnx.Param(scale)
    return new
