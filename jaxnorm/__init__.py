"""jaxnorm: normalization layers for JAX and Flax.

Three layers, each built only on the one below:

* the statistics engine, :func:`moments`;
* pure functions (:func:`batch_norm`, :func:`layer_norm`, :func:`group_norm`,
  :func:`instance_norm`, :func:`rms_norm`, :func:`normalize`) and the
  small-batch family (:func:`batch_renorm`, ghost batch norm through
  ``batch_norm(virtual_batch_size=...)``, :func:`standardize_weight`,
  :func:`filter_response_norm`, :func:`evonorm_b0`, :func:`evonorm_s0`);
* flax.linen modules that are drop-in replacements for flax's own
  (:class:`BatchNorm`, :class:`LayerNorm`, :class:`GroupNorm`,
  :class:`InstanceNorm`, :class:`RMSNorm`, :class:`SpectralNorm`,
  :class:`WeightNorm`), plus :class:`BatchRenorm`,
  :class:`StandardizedConv`, :class:`FilterResponseNorm`,
  :class:`EvoNormB0`, :class:`EvoNormS0` and :class:`DynamicTanh`. Every
  one takes a call-time modulation (``layer(x, scale=..., shift=...)``),
  and the conditional layers compute it from a conditioning input:
  :class:`AdaLNZero` (DiT), :class:`AdaGroupNorm` (diffusion UNets),
  :class:`FiLM` and :class:`ConditionalBatchNorm`;
* :mod:`jaxnorm.nnx`: flax.nnx drop-ins (``BatchNorm``, ``LayerNorm``,
  ``GroupNorm``, ``InstanceNorm``, ``RMSNorm``, ``SpectralNorm``,
  ``WeightNorm``) and ``BatchRenorm``,
  ``EvoNormB0``, ``EvoNormS0``, ``FilterResponseNorm``, ``DynamicTanh``, the
  conditional layers and ``StandardizedConv`` (a drop-in for ``nnx.Conv``),
  on the same functions.

Around them: :func:`precise_batch_stats` (population statistics after
training), :func:`fold_batch_norm` (inference folding) and
:func:`create_norm` (choose a normalizer by name); ``jaxnorm.nnx.convert``
and ``jaxnorm.linen.convert`` (an existing model's flax norm layers run as
jaxnorm's) and :func:`from_torch` (a PyTorch/timm layer's tensors as jaxnorm
variables). :func:`implementation`
selects how the standardizing normalizers are computed (fused XLA path,
Pallas GPU kernels or the composed reference; see :mod:`jaxnorm._core.dispatch`).

Layout: :mod:`jaxnorm.functional` (pure functions, one file per family),
:mod:`jaxnorm.linen` and :mod:`jaxnorm.nnx` (the modules, the same files),
``jaxnorm._core`` (the engine), ``jaxnorm._stateful`` (the train/eval/update
plumbing both front ends share) and :mod:`jaxnorm.factory`.
"""

from jaxnorm import functional as functional
from jaxnorm import linen as linen
from jaxnorm import nnx as nnx
from jaxnorm._core.dispatch import IMPLEMENTATIONS as IMPLEMENTATIONS
from jaxnorm._core.dispatch import get_implementation as get_implementation
from jaxnorm._core.dispatch import implementation as implementation
from jaxnorm._core.dispatch import set_implementation as set_implementation
from jaxnorm.factory import NORM_NAMES as NORM_NAMES
from jaxnorm.factory import NormSpec as NormSpec
from jaxnorm.factory import create_norm as create_norm
from jaxnorm.functional import BATCH_MOMENTS as BATCH_MOMENTS
from jaxnorm.functional import AdaLNModulation as AdaLNModulation
from jaxnorm.functional import BatchStats as BatchStats
from jaxnorm.functional import Moments as Moments
from jaxnorm.functional import batch_norm as batch_norm
from jaxnorm.functional import batch_renorm as batch_renorm
from jaxnorm.functional import batch_renorm_limits as batch_renorm_limits
from jaxnorm.functional import dynamic_tanh as dynamic_tanh
from jaxnorm.functional import evonorm_b0 as evonorm_b0
from jaxnorm.functional import evonorm_s0 as evonorm_s0
from jaxnorm.functional import film as film
from jaxnorm.functional import filter_response_norm as filter_response_norm
from jaxnorm.functional import fold_batch_norm as fold_batch_norm
from jaxnorm.functional import group_norm as group_norm
from jaxnorm.functional import instance_norm as instance_norm
from jaxnorm.functional import layer_norm as layer_norm
from jaxnorm.functional import moments as moments
from jaxnorm.functional import normalize as normalize
from jaxnorm.functional import precise_batch_stats as precise_batch_stats
from jaxnorm.functional import rms_norm as rms_norm
from jaxnorm.functional import spectral_normalize as spectral_normalize
from jaxnorm.functional import standardize_weight as standardize_weight
from jaxnorm.functional import weight_normalize as weight_normalize
from jaxnorm.linen import AdaGroupNorm as AdaGroupNorm
from jaxnorm.linen import AdaLNZero as AdaLNZero
from jaxnorm.linen import BatchNorm as BatchNorm
from jaxnorm.linen import BatchRenorm as BatchRenorm
from jaxnorm.linen import ConditionalBatchNorm as ConditionalBatchNorm
from jaxnorm.linen import DynamicTanh as DynamicTanh
from jaxnorm.linen import EvoNormB0 as EvoNormB0
from jaxnorm.linen import EvoNormS0 as EvoNormS0
from jaxnorm.linen import FiLM as FiLM
from jaxnorm.linen import FilterResponseNorm as FilterResponseNorm
from jaxnorm.linen import GroupNorm as GroupNorm
from jaxnorm.linen import InstanceNorm as InstanceNorm
from jaxnorm.linen import LayerNorm as LayerNorm
from jaxnorm.linen import RMSNorm as RMSNorm
from jaxnorm.linen import SpectralNorm as SpectralNorm
from jaxnorm.linen import StandardizedConv as StandardizedConv
from jaxnorm.linen import WeightNorm as WeightNorm
from jaxnorm.torch_checkpoint import from_torch as from_torch


def _distribution_version() -> str:
  """The installed distribution's version: pyproject.toml is its one source."""
  from importlib import metadata

  try:
    return metadata.version("jaxnorm")
  except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    return "0+unknown"


__version__ = _distribution_version()

__all__ = (
  "BATCH_MOMENTS",
  "IMPLEMENTATIONS",
  "NORM_NAMES",
  "AdaGroupNorm",
  "AdaLNModulation",
  "AdaLNZero",
  "BatchNorm",
  "BatchRenorm",
  "BatchStats",
  "ConditionalBatchNorm",
  "DynamicTanh",
  "EvoNormB0",
  "EvoNormS0",
  "FiLM",
  "FilterResponseNorm",
  "GroupNorm",
  "InstanceNorm",
  "LayerNorm",
  "Moments",
  "NormSpec",
  "RMSNorm",
  "SpectralNorm",
  "StandardizedConv",
  "WeightNorm",
  "batch_norm",
  "batch_renorm",
  "batch_renorm_limits",
  "create_norm",
  "dynamic_tanh",
  "evonorm_b0",
  "evonorm_s0",
  "film",
  "filter_response_norm",
  "fold_batch_norm",
  "from_torch",
  "functional",
  "get_implementation",
  "group_norm",
  "implementation",
  "instance_norm",
  "layer_norm",
  "linen",
  "moments",
  "nnx",
  "normalize",
  "precise_batch_stats",
  "rms_norm",
  "set_implementation",
  "spectral_normalize",
  "standardize_weight",
  "weight_normalize",
)
