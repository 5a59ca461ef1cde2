"""Pure normalization functions, one file per family.

Every function takes its layout as arguments (axes, channel axis), its
parameters and running state as arrays and returns its new state, so it
composes with ``jit``, ``vmap``, ``grad``, forward mode and sharding. Each
is a choice of axes on the statistics engine (:mod:`jaxnorm._core`) plus a
few lines saying how the output is made. The same functions are exported
as ``jaxnorm.batch_norm``, ``jaxnorm.group_norm``, ….
"""

from jaxnorm._core.moments import Moments as Moments
from jaxnorm._core.moments import moments as moments
from jaxnorm._core.normalize import normalize as normalize
from jaxnorm._core.running_stats import BatchStats as BatchStats
from jaxnorm.functional.batch_norm import batch_norm as batch_norm
from jaxnorm.functional.batch_renorm import batch_renorm as batch_renorm
from jaxnorm.functional.batch_renorm import batch_renorm_limits as batch_renorm_limits
from jaxnorm.functional.conditional import AdaLNModulation as AdaLNModulation
from jaxnorm.functional.conditional import film as film
from jaxnorm.functional.dynamic_tanh import dynamic_tanh as dynamic_tanh
from jaxnorm.functional.evonorm import evonorm_b0 as evonorm_b0
from jaxnorm.functional.evonorm import evonorm_s0 as evonorm_s0
from jaxnorm.functional.filter_response import filter_response_norm as filter_response_norm
from jaxnorm.functional.folding import fold_batch_norm as fold_batch_norm
from jaxnorm.functional.per_example import group_norm as group_norm
from jaxnorm.functional.per_example import instance_norm as instance_norm
from jaxnorm.functional.per_example import layer_norm as layer_norm
from jaxnorm.functional.per_example import rms_norm as rms_norm
from jaxnorm.functional.precise_bn import BATCH_MOMENTS as BATCH_MOMENTS
from jaxnorm.functional.precise_bn import precise_batch_stats as precise_batch_stats
from jaxnorm.functional.spectral_norm import spectral_normalize as spectral_normalize
from jaxnorm.functional.weight_norm import weight_normalize as weight_normalize
from jaxnorm.functional.weight_standardization import standardize_weight as standardize_weight

__all__ = (
  "BATCH_MOMENTS",
  "AdaLNModulation",
  "BatchStats",
  "Moments",
  "batch_norm",
  "batch_renorm",
  "batch_renorm_limits",
  "dynamic_tanh",
  "evonorm_b0",
  "evonorm_s0",
  "film",
  "filter_response_norm",
  "fold_batch_norm",
  "group_norm",
  "instance_norm",
  "layer_norm",
  "moments",
  "normalize",
  "precise_batch_stats",
  "rms_norm",
  "spectral_normalize",
  "standardize_weight",
  "weight_normalize",
)
