"""jaxnorm: normalization layers for JAX and Flax.

Three layers, each built only on the one below:

* the statistics engine, :func:`moments`;
* pure functions (:func:`batch_norm`, :func:`layer_norm`, :func:`group_norm`,
  :func:`instance_norm`, :func:`rms_norm`, :func:`normalize`);
* flax.linen modules that are drop-in replacements for flax's own
  (:class:`BatchNorm`, :class:`LayerNorm`, :class:`GroupNorm`,
  :class:`InstanceNorm`, :class:`RMSNorm`).
"""

from jaxnorm._functional import BatchStats as BatchStats
from jaxnorm._functional import batch_norm as batch_norm
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

__version__ = "0.1.0"

__all__ = (
    "BatchNorm",
    "BatchStats",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "Moments",
    "RMSNorm",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "moments",
    "normalize",
    "rms_norm",
)
