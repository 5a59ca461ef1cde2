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
  :class:`InstanceNorm`, :class:`RMSNorm`), plus :class:`BatchRenorm`,
  :class:`StandardizedConv`, :class:`FilterResponseNorm`,
  :class:`EvoNormB0` and :class:`EvoNormS0`;
* :mod:`jaxnorm.nnx`: flax.nnx drop-ins (``BatchNorm``, ``LayerNorm``,
  ``GroupNorm``, ``InstanceNorm``, ``RMSNorm``) and ``BatchRenorm``,
  ``EvoNormB0``, ``EvoNormS0``, ``FilterResponseNorm`` and
  ``StandardizedConv`` (a drop-in for ``nnx.Conv``), on the same functions.

Around them: :func:`precise_batch_stats` (population statistics after
training), :func:`fold_batch_norm` (inference folding) and
:func:`create_norm` (choose a normalizer by name). :func:`implementation`
selects how the standardizing normalizers are computed (fused XLA path,
Pallas GPU kernels or the composed reference; see :mod:`jaxnorm._dispatch`).
"""

from jaxnorm import nnx as nnx  # the flax.nnx modules (after the core they build on)
from jaxnorm._batch_norm import BatchStats as BatchStats
from jaxnorm._batch_norm import batch_norm as batch_norm
from jaxnorm._batch_renorm import BatchRenorm as BatchRenorm
from jaxnorm._batch_renorm import batch_renorm as batch_renorm
from jaxnorm._batch_renorm import batch_renorm_limits as batch_renorm_limits
from jaxnorm._dispatch import IMPLEMENTATIONS as IMPLEMENTATIONS
from jaxnorm._dispatch import get_implementation as get_implementation
from jaxnorm._dispatch import implementation as implementation
from jaxnorm._dispatch import set_implementation as set_implementation
from jaxnorm._evonorm import EvoNormB0 as EvoNormB0
from jaxnorm._evonorm import EvoNormS0 as EvoNormS0
from jaxnorm._evonorm import evonorm_b0 as evonorm_b0
from jaxnorm._evonorm import evonorm_s0 as evonorm_s0
from jaxnorm._factory import NORM_NAMES as NORM_NAMES
from jaxnorm._factory import NormSpec as NormSpec
from jaxnorm._factory import create_norm as create_norm
from jaxnorm._filter_response import FilterResponseNorm as FilterResponseNorm
from jaxnorm._filter_response import filter_response_norm as filter_response_norm
from jaxnorm._folding import fold_batch_norm as fold_batch_norm
from jaxnorm._functional import group_norm as group_norm
from jaxnorm._functional import instance_norm as instance_norm
from jaxnorm._functional import layer_norm as layer_norm
from jaxnorm._functional import normalize as normalize
from jaxnorm._functional import rms_norm as rms_norm
from jaxnorm._modules import BatchNorm as BatchNorm
from jaxnorm._modules import GroupNorm as GroupNorm
from jaxnorm._modules import InstanceNorm as InstanceNorm
from jaxnorm._modules import LayerNorm as LayerNorm
from jaxnorm._modules import RMSNorm as RMSNorm
from jaxnorm._moments import Moments as Moments
from jaxnorm._moments import moments as moments
from jaxnorm._precise_bn import BATCH_MOMENTS as BATCH_MOMENTS
from jaxnorm._precise_bn import precise_batch_stats as precise_batch_stats
from jaxnorm._weight_standardization import StandardizedConv as StandardizedConv
from jaxnorm._weight_standardization import standardize_weight as standardize_weight

__version__ = "0.1.0"

__all__ = (
  "BATCH_MOMENTS",
  "IMPLEMENTATIONS",
  "NORM_NAMES",
  "BatchNorm",
  "BatchRenorm",
  "BatchStats",
  "EvoNormB0",
  "EvoNormS0",
  "FilterResponseNorm",
  "GroupNorm",
  "InstanceNorm",
  "LayerNorm",
  "Moments",
  "NormSpec",
  "RMSNorm",
  "StandardizedConv",
  "batch_norm",
  "batch_renorm",
  "batch_renorm_limits",
  "create_norm",
  "evonorm_b0",
  "evonorm_s0",
  "filter_response_norm",
  "fold_batch_norm",
  "get_implementation",
  "group_norm",
  "implementation",
  "instance_norm",
  "layer_norm",
  "moments",
  "nnx",
  "normalize",
  "precise_batch_stats",
  "rms_norm",
  "set_implementation",
  "standardize_weight",
)
