"""A string factory: configs choose a normalizer by name and keywords.

``create_norm("gn", num_groups=8)`` returns a :class:`NormSpec`, from which a
model builds its layers (``spec.layer(train)``) and its convolutions
(``spec.conv``) without knowing which normalizer it got. Names and keywords
are validated when the spec is created, not deep inside the model.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import flax
import flax.linen as nn
import jax
from flax import nnx

from jaxnorm._core import axes as _axes
from jaxnorm._core import reduction_axes as _reduction_axes
from jaxnorm.linen.batch_norm import BatchNorm
from jaxnorm.linen.batch_renorm import BatchRenorm
from jaxnorm.linen.dynamic_tanh import DynamicTanh
from jaxnorm.linen.evonorm import EvoNormB0
from jaxnorm.linen.evonorm import EvoNormS0
from jaxnorm.linen.filter_response import FilterResponseNorm
from jaxnorm.linen.per_example import GroupNorm
from jaxnorm.linen.per_example import InstanceNorm
from jaxnorm.linen.per_example import LayerNorm
from jaxnorm.linen.per_example import RMSNorm
from jaxnorm.linen.weight_standardization import StandardizedConv
from jaxnorm.nnx import batch_norm as nnx_batch_norm
from jaxnorm.nnx import batch_renorm as nnx_batch_renorm
from jaxnorm.nnx import dynamic_tanh as nnx_dynamic_tanh
from jaxnorm.nnx import evonorm as nnx_evonorm
from jaxnorm.nnx import filter_response as nnx_filter_response
from jaxnorm.nnx import per_example as nnx_per_example
from jaxnorm.nnx import weight_standardization as nnx_weight_standardization

# Statistics over (H, W, C) of each example: the Group Normalization paper's
# LN for convolutional activations (GN with one group).
_PER_EXAMPLE = {"reduction_axes": _reduction_axes.layer_norm_axes(4), "feature_axes": -1}


class _Identity(nn.Module):
  """The layer of ``create_norm("none")``: returns its input."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x


class _NnxIdentity(nnx.Module):
  """The flax.nnx layer of ``create_norm("none")``: returns its input."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x


class _Entry(NamedTuple):
  module: type[nn.Module]
  nnx_module: type[nnx.Module]
  defaults: Mapping[str, Any] = {}
  ws: bool = False  # after a weight-standardized convolution
  required: tuple[str, ...] = ()
  batch_stats: bool = False


_BN, _GN = (BatchNorm, nnx_batch_norm.BatchNorm), (GroupNorm, nnx_per_example.GroupNorm)

# name -> (linen module, nnx module, ...): a new normalizer adds its line here.
_REGISTRY: dict[str, _Entry] = {
  "bn": _Entry(*_BN, batch_stats=True),
  "bn+ws": _Entry(*_BN, ws=True, batch_stats=True),
  "brn": _Entry(BatchRenorm, nnx_batch_renorm.BatchRenorm, batch_stats=True),
  "ghost_bn": _Entry(*_BN, required=("virtual_batch_size",), batch_stats=True),
  "gn": _Entry(*_GN),
  "gn+ws": _Entry(*_GN, ws=True),
  "ln": _Entry(LayerNorm, nnx_per_example.LayerNorm, _PER_EXAMPLE),
  "in": _Entry(InstanceNorm, nnx_per_example.InstanceNorm),
  "rms": _Entry(RMSNorm, nnx_per_example.RMSNorm, _PER_EXAMPLE),
  "frn": _Entry(FilterResponseNorm, nnx_filter_response.FilterResponseNorm),
  "evonorm_b0": _Entry(EvoNormB0, nnx_evonorm.EvoNormB0, batch_stats=True),
  "evonorm_s0": _Entry(EvoNormS0, nnx_evonorm.EvoNormS0),
  "dyt": _Entry(DynamicTanh, nnx_dynamic_tanh.DynamicTanh),
  "none": _Entry(_Identity, _NnxIdentity),
}

NORM_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _fields(module: type[nn.Module]) -> tuple[str, ...]:
  """The keywords a module takes in a spec (``train`` sets the mode)."""
  skip = {"parent", "name", "use_running_average"}
  return tuple(f.name for f in dataclasses.fields(module) if f.name not in skip)


def _with_groups(kwargs: dict[str, Any]) -> dict[str, Any]:
  """``group_size`` alone means ``num_groups=None`` (flax needs both said)."""
  if kwargs.get("group_size") is not None and "num_groups" not in kwargs:
    kwargs = {**kwargs, "num_groups": None}
  return kwargs


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """A normalizer chosen by name, ready to build layers.

  Attributes:
    name: the factory name, e.g. ``"gn"``.
    conv: the convolution class to pair with it: ``flax.linen.Conv``, or
      :class:`jaxnorm.StandardizedConv` for the ``"+ws"`` names. Call it as
      ``spec.conv(features, kernel_size, ...)``.
    has_batch_stats: the layers keep a ``batch_stats`` collection (``bn``,
      ``bn+ws``, ``brn``, ``ghost_bn``, ``evonorm_b0``).
    is_identity: ``"none"``: the layers return their input (give the
      convolutions a bias then).
    module: the flax module class the layers are made of.
    kwargs: the module keywords, defaults of the name included.
    nnx_module: the :mod:`jaxnorm.nnx` class of the same layer.

  A spec is immutable and hashable (if its keyword values are), so it can be
  a field of a flax module. ``spec.layer(train)`` and ``spec.conv`` build
  flax.linen layers; ``spec.nnx_layer(num_features, rngs=...)`` and
  ``spec.nnx_conv`` build the same ones for flax.nnx.
  """

  name: str
  conv: type[nn.Module]
  has_batch_stats: bool
  is_identity: bool
  module: type[nn.Module]
  kwargs: Mapping[str, Any]
  nnx_module: type[nnx.Module] | None = None

  def layer(self, train: bool, *, name: str | None = None, **overrides) -> nn.Module:
    """A layer for NHWC convolutional activations, called as ``layer(x)``.

    Args:
      train: training mode — batch statistics, ``batch_stats`` updated —
        or evaluation mode (running statistics). Only layers with batch
        statistics depend on it.
      name: the flax module name.
      **overrides: module keywords for this layer only, e.g.
        ``scale_init=nn.initializers.zeros`` for the last norm of a residual
        block. Ignored by ``"none"``.

    Returns:
      An unbound flax module.

    Raises:
      TypeError: an override is not a field of the module.
    """
    if self.is_identity:
      return self.module(name=name)
    _axes.check_keywords(overrides, _fields(self.module), owner=f"NormSpec({self.name!r}).layer")
    kwargs = _with_groups({**self.kwargs, **overrides})
    if "use_running_average" in {f.name for f in dataclasses.fields(self.module)}:
      kwargs["use_running_average"] = not train
    return self.module(name=name, **kwargs)

  def nnx_layer(self, num_features: int, *, rngs: nnx.Rngs, **overrides) -> nnx.Module:
    """The same layer for flax.nnx (:mod:`jaxnorm.nnx`), for NHWC
    activations of ``num_features`` channels.

    It starts in training mode (batch statistics); ``model.eval()`` or
    ``nnx.view(model, use_running_average=True)`` switch layers with batch
    statistics to their running averages, as for flax.nnx's own.

    Args:
      num_features: the channels.
      rngs: the ``nnx.Rngs`` the parameters are drawn from.
      **overrides: module keywords for this layer only.

    Raises:
      TypeError: an override is not an argument of the module.

    Example:
      >>> import jaxnorm
      >>> from flax import nnx
      >>> layer = create_norm("gn", num_groups=4).nnx_layer(16, rngs=nnx.Rngs(0))
      >>> type(layer) is jaxnorm.nnx.GroupNorm, layer.num_groups
      (True, 4)
    """
    if self.is_identity:
      return _NnxIdentity()
    module = self.nnx_module
    skip = {"self", "num_features", "rngs", "use_running_average"}
    accepted = tuple(p for p in inspect.signature(module.__init__).parameters if p not in skip)
    _axes.check_keywords(overrides, accepted, owner=f"NormSpec({self.name!r}).nnx_layer")
    return module(num_features, rngs=rngs, **_with_groups({**self.kwargs, **overrides}))

  @property
  def nnx_conv(self) -> type[nnx.Module]:
    """The flax.nnx convolution to pair with it: ``flax.nnx.Conv``, or
    :class:`jaxnorm.nnx.StandardizedConv` for the ``"+ws"`` names."""
    return nnx_weight_standardization.StandardizedConv if self.conv is StandardizedConv else nnx.Conv


def create_norm(name: str, **kwargs) -> NormSpec:
  """Chooses a normalizer for convolutional networks by name.

  ==============  ===========================================================
  name            layer (NHWC activations)
  ==============  ===========================================================
  ``bn``          :class:`BatchNorm` (also ``running_stats``, …)
  ``bn+ws``       :class:`BatchNorm` after :class:`StandardizedConv`
  ``brn``         :class:`BatchRenorm`
  ``ghost_bn``    :class:`BatchNorm` with ``virtual_batch_size`` (required)
  ``gn``          :class:`GroupNorm` (``num_groups=32`` or ``group_size``)
  ``gn+ws``       :class:`GroupNorm` after :class:`StandardizedConv`
  ``ln``          :class:`LayerNorm` over (H, W, C) of each example, with
                  per-channel ``γ``, ``β`` (GN with one group)
  ``in``          :class:`InstanceNorm`
  ``rms``         :class:`RMSNorm` over (H, W, C) of each example
  ``frn``         :class:`FilterResponseNorm` (FRN + TLU; replaces the ReLU)
  ``evonorm_b0``  :class:`EvoNormB0` (replaces the ReLU)
  ``evonorm_s0``  :class:`EvoNormS0` (replaces the ReLU)
  ``dyt``         :class:`DynamicTanh`, per channel (no statistics)
  ``none``        the identity
  ==============  ===========================================================

  Args:
    name: one of :data:`NORM_NAMES`.
    **kwargs: fields of the module (for ``gn`` and ``evonorm_s0``,
      ``group_size`` alone implies ``num_groups=None``).

  Returns:
    A :class:`NormSpec`.

  Raises:
    ValueError: an unknown name (the message lists the valid ones).
    TypeError: a keyword the module does not take, or a required one missing.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> spec = create_norm("gn", num_groups=8)
    >>> layer = spec.layer(train=True)
    >>> y, v = layer.init_with_output(jax.random.key(0), jnp.ones((2, 4, 4, 16)))
    >>> spec.has_batch_stats, sorted(v)
    (False, ['params'])
  """
  owner = "create_norm"
  if not isinstance(name, str) or name.strip().lower() not in _REGISTRY:
    valid = ", ".join(repr(n) for n in NORM_NAMES)
    raise ValueError(f"{owner}: name={name!r} is not a known normalizer; valid names are {valid}.")
  name = name.strip().lower()
  entry = _REGISTRY[name]
  identity = entry.module is _Identity
  owner = f"create_norm({name!r})"
  _axes.check_keywords(kwargs, () if identity else _fields(entry.module), owner=owner)
  missing = [k for k in entry.required if kwargs.get(k) is None]
  if missing:
    example = ", ".join(f"{k}=..." for k in missing)
    raise TypeError(
      f"{owner}: missing required keyword arguments {missing}; pass them, e.g. create_norm({name!r}, {example})."
    )
  return NormSpec(
    name=name,
    conv=StandardizedConv if entry.ws else nn.Conv,
    has_batch_stats=entry.batch_stats,
    is_identity=identity,
    module=entry.module,
    kwargs=flax.core.FrozenDict(_with_groups({**entry.defaults, **kwargs})),
    nnx_module=entry.nnx_module,
  )
