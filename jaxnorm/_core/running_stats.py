"""Running statistics: what the layers with ``batch_stats`` keep, and how
they follow the batch statistics.

Batch norm, batch renorm and EvoNorm-B0 share these: the
:class:`BatchStats` tuple, the update policies (:data:`RUNNING_STATS`),
flax's exponential moving average, and the rule for the dtype a new value
is stored in. In training the layers also report the moments of each batch
they normalized with into the collection :data:`BATCH_MOMENTS`, which
:func:`jaxnorm.precise_batch_stats` reads.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnorm._core import arguments as _arguments

Array = jax.Array

RUNNING_STATS = ("ema", "cumulative", "frozen", "debiased_ema")

# The policies that keep a count of the batches averaged (batch_stats/count).
COUNTED = ("cumulative", "debiased_ema")

BATCH_MOMENTS = "batch_moments"


class BatchStats(NamedTuple):
  """Running statistics of batch normalization (flax's ``batch_stats``).

  Attributes:
    mean, var: running mean and variance, feature-shaped.
    count: number of batches averaged so far; only kept by the
      ``"cumulative"`` and ``"debiased_ema"`` policies (None otherwise).
  """

  mean: Array
  var: Array
  count: Array | None = None


def ema(old: Array, new: Array, momentum: float) -> Array:
  """flax's running-average convention: ``momentum · old + (1 − momentum) · new``."""
  return momentum * old + (1 - momentum) * new


def update_running(
  running: BatchStats,
  mean: Array,
  var: Array,
  *,
  running_stats: str = "ema",
  momentum: float = 0.99,
) -> BatchStats:
  r"""The running statistics after one batch with statistics ``mean``, ``var``.

  * ``"ema"`` (flax): :math:`r \leftarrow m\,r + (1 - m)\,b` with ``m =
    momentum``.
  * ``"cumulative"`` (PyTorch's ``momentum=None``): after ``k`` batches,
    :math:`r \leftarrow r + (b - r)/(k + 1)`, the plain average of the batch
    statistics; ``count`` goes from ``k`` to ``k + 1``.
  * ``"debiased_ema"`` (haiku's ``ExponentialMovingAverage`` with zero
    debiasing, Adam's bias correction): the EMA of the batch statistics
    started from 0, divided by :math:`1 - m^t` after ``t`` batches. What is
    stored is the debiased average itself, so evaluation reads it as it
    reads the others; one update is :math:`r \leftarrow r + (b - r)\,(1 -
    m)/(1 - m^t)`, which takes the first batch's statistics as they are
    (the initial ``mean``/``var`` do not enter) and tends to the EMA as
    :math:`m^t \to 0`. ``count`` goes from ``t − 1`` to ``t``.
  * ``"frozen"``: unchanged.
  """
  if running_stats == "frozen":
    return running
  if running_stats in COUNTED:
    count = jnp.asarray(0 if running.count is None else running.count)
    if running_stats == "cumulative":
      weight = 1 / (count + 1)
    else:  # (1 − m)/(1 − m^t), t = count + 1; the power in the statistics' dtype
      m = jnp.asarray(momentum, jnp.result_type(running.mean.real, jnp.float32))
      weight = (1 - m) / (1 - m ** (count + 1).astype(m.dtype))
    return BatchStats(
      running.mean + (mean - running.mean) * weight,
      running.var + (var - running.var) * weight,
      count + 1,
    )
  return BatchStats(ema(running.mean, mean, momentum), ema(running.var, var, momentum), running.count)


def stored_value(new: Array, stored_dtype) -> Array:
  """A running statistic's new value in the dtype it is stored in.

  The stored dtype is kept (a float32 average stays float32 whatever the
  input dtype), except that a complex value is never cast to a real dtype:
  BatchNorm on complex inputs keeps a complex running mean, as flax does,
  instead of silently dropping its imaginary part.
  """
  if jnp.iscomplexobj(new) and not jnp.issubdtype(stored_dtype, jnp.complexfloating):
    return new.astype(jnp.promote_types(stored_dtype, new.dtype))
  return new.astype(stored_dtype)


KEEP = "keep"
"""``axis_name`` of a model conversion that leaves each layer's own."""


def conversion_overrides(axis_name: Any, running_stats: str | None, owner: str) -> dict[str, Any]:
  """The BatchNorm fields a model conversion (``jaxnorm.nnx.convert``,
  ``jaxnorm.linen.convert``) sets on every batch norm, checked: a mapped
  ``axis_name`` (or None; :data:`KEEP` leaves it) and a ``running_stats``
  policy (None leaves it)."""
  overrides = {}
  if running_stats is not None:
    _arguments.check_choice(running_stats, RUNNING_STATS, name="running_stats", owner=owner)
    overrides["running_stats"] = running_stats
  if axis_name != KEEP:
    if axis_name is not None and not isinstance(axis_name, (str, tuple)):
      raise TypeError(
        f"{owner}: axis_name={axis_name!r}; pass the name of a mapped axis (a str, or a tuple of them), "
        "or None for per-device statistics."
      )
    overrides["axis_name"] = axis_name
  return overrides
