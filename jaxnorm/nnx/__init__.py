"""flax.nnx modules: drop-in replacements for flax.nnx's normalization layers.

``jaxnorm.nnx.BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm``
and ``RMSNorm`` take flax.nnx's constructor (positional ``num_features``,
keyword ``rngs``, the same fields, defaults and ``*_metadata``), create the
same variables (``nnx.Param`` ``scale``/``bias`` drawn from
``rngs.params()`` in flax's order, ``nnx.BatchStat`` ``mean``/``var``) and
take the same call arguments (``use_running_average``, ``mask``). They work
under ``nnx.jit``, ``nnx.grad``, ``nnx.vmap``, ``nnx.scan``,
``nnx.split``/``nnx.merge``, ``model.train()``/``model.eval()`` and
``nnx.view``.

They compute with the same functions as the linen modules
(:func:`jaxnorm.batch_norm`'s core, :func:`jaxnorm.layer_norm`, …), so linen
and NNX agree bit for bit, and they keep jaxnorm's differences from flax:

* ``use_fast_variance`` defaults to False: the variance is computed stably.
  flax's default ``E[x²] − E[x]²`` loses all precision when ``|mean| ≫ std``.
* Cross-device statistics (``axis_name``) merge counts, sums and centred sums
  of squares, so they are exact when devices hold different counts.
* :class:`GroupNorm` takes a ``channel_axis`` (NHWC and NCHW).
* :class:`BatchNorm` takes ``virtual_batch_size`` (ghost batch norm) and
  ``running_stats`` (EMA, cumulative average or frozen), and keeps its
  running statistics in float32 (``force_float32_reductions``).
* Bad arguments raise errors that name the argument and the valid choices.

One file per family, mirroring :mod:`jaxnorm.linen` file for file.
jaxnorm's own normalizers exist here too — :class:`BatchRenorm`,
:class:`EvoNormB0`, :class:`EvoNormS0`, :class:`FilterResponseNorm` —
with the linen modules' fields after ``num_features`` and the same
functions underneath, and :class:`StandardizedConv` is a drop-in for
``nnx.Conv``. :func:`convert` replaces every flax.nnx normalization layer
of an existing model by these, keeping its parameters and statistics.
"""

from jaxnorm.nnx._convert import make_convert as _make_convert
from jaxnorm.nnx.batch_norm import BatchNorm as BatchNorm
from jaxnorm.nnx.batch_norm import ConditionalBatchNorm as ConditionalBatchNorm
from jaxnorm.nnx.batch_renorm import BatchRenorm as BatchRenorm
from jaxnorm.nnx.conditional import AdaLNZero as AdaLNZero
from jaxnorm.nnx.conditional import FiLM as FiLM
from jaxnorm.nnx.dynamic_tanh import DynamicTanh as DynamicTanh
from jaxnorm.nnx.evonorm import EvoNormB0 as EvoNormB0
from jaxnorm.nnx.evonorm import EvoNormS0 as EvoNormS0
from jaxnorm.nnx.filter_response import FilterResponseNorm as FilterResponseNorm
from jaxnorm.nnx.per_example import AdaGroupNorm as AdaGroupNorm
from jaxnorm.nnx.per_example import GroupNorm as GroupNorm
from jaxnorm.nnx.per_example import InstanceNorm as InstanceNorm
from jaxnorm.nnx.per_example import LayerNorm as LayerNorm
from jaxnorm.nnx.per_example import RMSNorm as RMSNorm
from jaxnorm.nnx.spectral_norm import SpectralNorm as SpectralNorm
from jaxnorm.nnx.weight_norm import WeightNorm as WeightNorm
from jaxnorm.nnx.weight_standardization import StandardizedConv as StandardizedConv

# convert replaces flax's norm layers by the classes of the same names here.
convert = _make_convert(globals())

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
)
