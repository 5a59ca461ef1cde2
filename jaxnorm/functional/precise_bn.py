"""Precise batch statistics: population statistics recomputed after training.

Design. Every jaxnorm layer that keeps ``batch_stats`` (:class:`BatchNorm`
with any option, :class:`BatchRenorm`, :class:`EvoNormB0`) reports, when run
in training mode, the moments of each batch it normalized with (each virtual
batch for ghost BN) with ``Module.sow`` into the collection
:data:`BATCH_MOMENTS`. ``sow`` is a no-op unless that collection is mutable,
so ordinary training pays nothing. :func:`precise_batch_stats` runs the model
in training mode with that collection mutable, merges the reported moments
over many batches and writes the population statistics into a copy of
``batch_stats``. It needs no knowledge of the model and no change of its
momentum, and it is exact: no EMA is involved.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

import flax
import jax
import numpy as np
from flax import traverse_util

from jaxnorm._core import axes as _axes
from jaxnorm._core.running_stats import BATCH_MOMENTS


class _Population:
  """Equal-weight merge of per-batch (mean, var) in float64 (Chan et al.)."""

  def __init__(self):
    self.batches, self.mean, self.m2 = 0, 0.0, 0.0

  def add(self, means: np.ndarray, variances: np.ndarray):
    """Adds ``len(means)`` batches; row ``j`` has moments ``means[j], variances[j]``."""
    b = means.shape[0]
    chunk_mean = means.mean(0)
    chunk_m2 = variances.sum(0) + ((means - chunk_mean) ** 2).sum(0)
    n = self.batches + b
    delta = chunk_mean - self.mean
    self.mean = self.mean + delta * (b / n)
    self.m2 = self.m2 + chunk_m2 + delta**2 * (self.batches * b / n)
    self.batches = n

  @property
  def var(self):
    return self.m2 / self.batches


def precise_batch_stats(
  apply_fn: Callable[..., Any],
  variables: Any,
  batches: Iterable[Any],
  num_batches: int,
) -> dict:
  r"""Population statistics of every BN-like layer over ``num_batches`` batches.

  Each layer sees the features it sees in training (earlier layers normalize
  with their batch statistics, as in training). Over batches ``b = 1..K``
  with equal weight per batch,

  .. math:: \mu = \tfrac1K \textstyle\sum_b \mu_b,\qquad
     \sigma^2 = \tfrac1K \textstyle\sum_b (\sigma_b^2 + \mu_b^2) - \mu^2,

  merged stably in float64 (Chan et al.), which for equal batch sizes is the
  exact mean and variance of all the examples seen. A ghost-BN layer treats
  each virtual batch as a batch. Unlike the EMA, the result does not depend
  on the order of batches nor lag behind the weights.

  Args:
    apply_fn: runs the model in **training mode** with flax's ``apply``
      convention: ``apply_fn(variables, batch, mutable=[...]) -> (out,
      mutated)``, e.g. ``functools.partial(model.apply, train=True)``.
    variables: the model's variables, with ``batch_stats``.
    batches: an iterable of model inputs (whatever ``apply_fn`` takes).
    num_batches: how many batches to use (the first ``num_batches``).

  Returns:
    A new ``batch_stats`` tree: ``mean`` and ``var`` of every layer that
    reported its batch moments replaced by the population statistics, a
    ``count`` (cumulative policy) set to the number of batches merged, every
    other entry unchanged. Layers that report nothing keep their statistics:
    frozen BN (``running_stats="frozen"``), layers not run, and layers that
    are not jaxnorm's (``flax.linen.BatchNorm`` does not report; use the
    drop-in :class:`jaxnorm.BatchNorm`).

  Raises:
    ValueError: fewer than ``num_batches`` batches, or no layer reported
      batch moments (the model ran in evaluation mode, or has no jaxnorm
      BN-like layer).

  References:
    Wu & Johnson, `Rethinking "Batch" in BatchNorm
    <https://arxiv.org/abs/2105.07576>`_, 2021.
  """
  owner = "precise_batch_stats"
  _axes.check_positive_int(num_batches, name="num_batches", owner=owner)
  variables = flax.core.unfreeze(variables)
  if "batch_stats" not in variables:
    raise ValueError(
      f"{owner}: variables have no 'batch_stats' collection (collections: "
      f"{sorted(variables)}); pass the variables of a model with BN-like "
      f"layers."
    )

  @jax.jit
  def batch_moments(variables, batch):
    _, mutated = apply_fn(variables, batch, mutable=["batch_stats", BATCH_MOMENTS])
    return mutated.get(BATCH_MOMENTS, {})

  populations: dict[tuple[str, ...], _Population] = {}
  seen = 0
  for batch in itertools.islice(batches, num_batches):
    reported = batch_moments(variables, batch)
    reported = traverse_util.flatten_dict(flax.core.unfreeze(reported))
    for path, means in reported.items():
      if path[-1] != "mean":
        continue
      layer = path[:-1]
      pop = populations.setdefault(layer, _Population())
      for m, v in zip(means, reported[layer + ("var",)]):
        pop.add(np.asarray(m, np.float64), np.asarray(v, np.float64))
    seen += 1
  if seen < num_batches:
    raise ValueError(
      f"{owner}: num_batches={num_batches} but the batches ran out after "
      f"{seen}; pass more batches or a smaller num_batches."
    )
  if not populations:
    raise ValueError(
      f"{owner}: no layer reported batch moments; apply_fn must run the "
      f"model in training mode (e.g. functools.partial(model.apply, "
      f"train=True)) and its BN-like layers must be jaxnorm's."
    )

  stats = traverse_util.flatten_dict(variables["batch_stats"])
  for layer, pop in populations.items():
    for key, value in (("mean", pop.mean), ("var", pop.var), ("count", pop.batches)):
      if layer + (key,) in stats:
        old = stats[layer + (key,)]
        stats[layer + (key,)] = jax.numpy.asarray(np.broadcast_to(value, np.shape(old)), old.dtype)
  return traverse_util.unflatten_dict(stats)
