"""flax.linen modules: drop-in replacements for flax's normalization layers.

Each module owns its parameters (``params``: ``scale``, ``bias``) and, for
batch normalization, its running statistics (``batch_stats``: ``mean``,
``var``), and calls the pure function of the same name. Constructor fields,
call arguments, variable names, collections and defaults follow
``flax.linen`` except where noted:

* ``use_fast_variance`` defaults to False: the variance is computed stably.
  flax's default ``E[x²] − E[x]²`` loses all precision when ``|mean| ≫ std``.
* Cross-device statistics (``axis_name``) merge counts, sums and centred sums
  of squares, so they are exact when devices hold different counts.
* :class:`GroupNorm` takes a ``channel_axis`` (NHWC and NCHW).
* :class:`BatchNorm` takes ``virtual_batch_size`` (ghost batch norm) and
  ``running_stats`` (EMA, cumulative average or frozen), appended after
  flax's fields; in training it reports its batch moments for
  :func:`jaxnorm.precise_batch_stats`.

One file per family, mirroring :mod:`jaxnorm.nnx` file for file and
:mod:`jaxnorm.functional` for the functions underneath. The same classes
are exported as ``jaxnorm.BatchNorm``, ``jaxnorm.GroupNorm``, ….
:func:`convert` (and the context :func:`converted`) runs an existing
model's flax normalization layers as these, on the same variables.
"""

from jaxnorm.linen._convert import make_converters as _make_converters
from jaxnorm.linen.batch_norm import BatchNorm as BatchNorm
from jaxnorm.linen.batch_norm import ConditionalBatchNorm as ConditionalBatchNorm
from jaxnorm.linen.batch_renorm import BatchRenorm as BatchRenorm
from jaxnorm.linen.conditional import AdaLNZero as AdaLNZero
from jaxnorm.linen.conditional import FiLM as FiLM
from jaxnorm.linen.dynamic_tanh import DynamicTanh as DynamicTanh
from jaxnorm.linen.evonorm import EvoNormB0 as EvoNormB0
from jaxnorm.linen.evonorm import EvoNormS0 as EvoNormS0
from jaxnorm.linen.filter_response import FilterResponseNorm as FilterResponseNorm
from jaxnorm.linen.per_example import AdaGroupNorm as AdaGroupNorm
from jaxnorm.linen.per_example import GroupNorm as GroupNorm
from jaxnorm.linen.per_example import InstanceNorm as InstanceNorm
from jaxnorm.linen.per_example import LayerNorm as LayerNorm
from jaxnorm.linen.per_example import RMSNorm as RMSNorm
from jaxnorm.linen.spectral_norm import SpectralNorm as SpectralNorm
from jaxnorm.linen.weight_norm import WeightNorm as WeightNorm
from jaxnorm.linen.weight_standardization import StandardizedConv as StandardizedConv

# convert and converted run flax's norm layers as the classes of the same names here.
convert, converted = _make_converters(globals())

__all__ = (
  "AdaGroupNorm",
  "AdaLNZero",
  "BatchNorm",
  "BatchRenorm",
  "ConditionalBatchNorm",
  "DynamicTanh",
  "EvoNormB0",
  "EvoNormS0",
  "FiLM",
  "FilterResponseNorm",
  "GroupNorm",
  "InstanceNorm",
  "LayerNorm",
  "RMSNorm",
  "SpectralNorm",
  "StandardizedConv",
  "WeightNorm",
  "convert",
  "converted",
)
