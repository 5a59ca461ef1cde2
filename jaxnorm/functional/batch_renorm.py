"""Batch renormalization (Ioffe, 2017): batch norm that trains like it infers.

In training, batch norm normalizes with the batch statistics and at
inference with the running ones; with small or non-i.i.d. batches the two
differ. Batch renorm corrects the batch-normalized activations by an affine
map, held constant in backpropagation, that turns them into the activations
normalized with the running statistics — within clipping limits ``r_max``
and ``d_max`` that are relaxed during training.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm import _stateful
from jaxnorm._core import axes as _axes
from jaxnorm._core.moments import Moments
from jaxnorm._core.moments import moments
from jaxnorm._core.normalize import normalize
from jaxnorm._core.normalize import output_dtype
from jaxnorm._core.running_stats import BatchStats
from jaxnorm._core.running_stats import update_running

Array = jax.Array

_R_MAX_FIX = "r is clipped to [1/r_max, r_max], so use r_max >= 1 (1 is batch norm)"
_D_MAX_FIX = "d is clipped to [-d_max, d_max], so use d_max >= 0 (0 is batch norm)"


def check_schedule(r_max, d_max, warmup_delay, r_warmup, d_warmup, *, owner):
  _axes.check_at_least(r_max, 1.0, name="r_max", owner=owner, fix=_R_MAX_FIX)
  _axes.check_at_least(d_max, 0.0, name="d_max", owner=owner, fix=_D_MAX_FIX)
  for name, value in (
    ("warmup_delay", warmup_delay),
    ("r_max_warmup_steps", r_warmup),
    ("d_max_warmup_steps", d_warmup),
  ):
    _axes.check_non_negative_int(value, name=name, owner=owner)


def batch_renorm_limits(
  step: Array | int,
  *,
  r_max: float = 3.0,
  d_max: float = 5.0,
  warmup_delay: int = 0,
  r_max_warmup_steps: int = 0,
  d_max_warmup_steps: int = 0,
) -> tuple[Array, Array]:
  r"""The clipping limits ``(r_max, d_max)`` at training step ``step``.

  .. math:: r_{\max}(t) = 1 + (r_{\max} - 1)\,\rho_r(t),\quad
     d_{\max}(t) = d_{\max}\,\rho_d(t),\quad
     \rho(t) = \mathrm{clip}\big((t - t_0)/T, 0, 1\big)

  a linear ramp that starts after ``t_0 = warmup_delay`` steps (before it,
  batch renorm is batch norm) and reaches the final limit after ``T`` more
  steps (``T = 0``: at once). The paper used ``r_max = 1, d_max = 0`` for
  the first 5k steps, then relaxed them to reach ``r_max = 3`` at 40k steps
  and ``d_max = 5`` at 25k steps: ``warmup_delay=5000,
  r_max_warmup_steps=35000, d_max_warmup_steps=20000``.

  References:
    Ioffe, `Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models <https://arxiv.org/abs/1702.03275>`_, 2017.
  """
  check_schedule(
    r_max,
    d_max,
    warmup_delay,
    r_max_warmup_steps,
    d_max_warmup_steps,
    owner="batch_renorm_limits",
  )
  t = jnp.asarray(step, jnp.float32) - warmup_delay

  def ramp(steps):
    if steps == 0:
      return (t >= 0).astype(jnp.float32)
    return jnp.clip(t / steps, 0.0, 1.0)

  return 1 + (r_max - 1) * ramp(r_max_warmup_steps), d_max * ramp(d_max_warmup_steps)


def _batch_renorm(
  x: Array,
  scale: Array | None,
  bias: Array | None,
  running_mean: Array,
  running_var: Array,
  *,
  use_running_average: bool,
  r_max: Array | float,
  d_max: Array | float,
  axis: _axes.Axes,
  momentum: float,
  epsilon: float,
  mask: Array | None,
  axis_name: Any,
  axis_index_groups: Any,
  use_fast_variance: bool,
  dtype: Any,
  force_float32_reductions: bool,
  owner: str,
) -> tuple[Array, BatchStats, Moments | None]:
  """:func:`batch_renorm`, also returning the batch moments (None at eval)."""
  _axes.check_at_least(r_max, 1.0, name="r_max", owner=owner, fix=_R_MAX_FIX)
  _axes.check_at_least(d_max, 0.0, name="d_max", owner=owner, fix=_D_MAX_FIX)
  x, (scale, bias), mask, reduced, feature_axes = _axes.check_batch(
    owner,
    x,
    {"scale": scale, "bias": bias},
    None if use_running_average else mask,
    axis=axis,
    running={"running_mean": running_mean, "running_var": running_var},
    needs_running=(
      "running_mean and running_var are required (r and d compare the batch statistics with them); "
      "pass the running statistics, e.g. zeros and ones at the start of training"
    ),
  )
  feature_shape = tuple(x.shape[a] for a in feature_axes)
  full = tuple(s if a in feature_axes else 1 for a, s in enumerate(x.shape))
  mu, var = jnp.asarray(running_mean).reshape(full), jnp.asarray(running_var).reshape(full)
  if use_running_average:
    y = normalize(x, mu, var, scale, bias, epsilon=epsilon, dtype=dtype)
    return y, BatchStats(running_mean, running_var), None

  stats = moments(
    x,
    reduced,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
    keepdims=True,
  )
  inv_sigma = lax.rsqrt(var + epsilon)
  r = jnp.clip(jnp.sqrt(stats.var + epsilon) * inv_sigma, 1 / r_max, r_max)
  d = jnp.clip((stats.mean - mu) * inv_sigma, -d_max, d_max)
  r, d = lax.stop_gradient(r), lax.stop_gradient(d)
  # γ((x − μ_B)/σ_B · r + d) + β is batch norm with scale γr and bias β + γd.
  gamma = r if scale is None else scale * r
  beta = d if scale is None else scale * d
  beta = beta if bias is None else beta + bias
  out = output_dtype(x, scale, bias, dtype=dtype)
  y = normalize(x, stats.mean, stats.var, gamma, beta, epsilon=epsilon, dtype=out)
  batch_mean, batch_var = stats.mean.reshape(feature_shape), stats.var.reshape(feature_shape)
  new = update_running(BatchStats(running_mean, running_var), batch_mean, batch_var, momentum=momentum)
  per_batch = Moments(*(s.reshape((1,) + feature_shape) for s in stats))
  return y, new, per_batch


def batch_renorm(
  x: Array,
  scale: Array | None,
  bias: Array | None,
  running_mean: Array,
  running_var: Array,
  *,
  use_running_average: bool = False,
  r_max: Array | float = 3.0,
  d_max: Array | float = 5.0,
  axis: _axes.Axes = -1,
  momentum: float = 0.99,
  epsilon: float = 1e-5,
  mask: Array | None = None,
  axis_name: Any = None,
  axis_index_groups: Any = None,
  use_fast_variance: bool = False,
  dtype: Any = None,
  force_float32_reductions: bool = True,
) -> tuple[Array, BatchStats]:
  r"""Batch renormalization (Ioffe, 2017).

  .. math:: y = \gamma\big((x - \mu_B)/\sigma_B \cdot r + d\big) + \beta,\quad
     r = \mathrm{sg}\,\mathrm{clip}_{[1/r_{\max}, r_{\max}]}(\sigma_B/\sigma),\quad
     d = \mathrm{sg}\,\mathrm{clip}_{[-d_{\max}, d_{\max}]}\big((\mu_B - \mu)/\sigma\big)

  in training, where :math:`\mu_B, \sigma_B = \sqrt{\sigma_B^2 + \epsilon}`
  are the batch statistics, :math:`\mu, \sigma = \sqrt{v + \epsilon}` the
  running ones and ``sg`` the stop-gradient. Unclipped, the output equals
  normalization with the running statistics while the gradient flows as in
  batch norm. In evaluation, :math:`y = \gamma (x - \mu)/\sigma + \beta` as
  in batch norm. ``r_max = 1, d_max = 0`` is batch norm.

  Unlike the paper, which keeps a running standard deviation, the running
  *variance* ``v`` is kept (flax's ``batch_stats/var``, so a batch-norm
  checkpoint converts as is) and updated with flax's momentum convention:
  ``new = momentum * old + (1 - momentum) * batch``.

  Args:
    x: input, e.g. ``(N, H, W, C)``.
    scale, bias: ``γ``, ``β`` of the feature shape, or None.
    running_mean, running_var: the running statistics, feature-shaped.
    use_running_average: evaluation mode.
    r_max, d_max: clipping limits (``r_max >= 1``, ``d_max >= 0``); may be
      traced values from :func:`batch_renorm_limits`.
    axis, momentum, epsilon, mask, axis_name, axis_index_groups, use_fast_variance, dtype, force_float32_reductions: as
      in :func:`jaxnorm.batch_norm`.

  Returns:
    ``(y, BatchStats(mean, var))``, the running statistics updated in
    training and unchanged in evaluation.

  References:
    Ioffe, `Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models <https://arxiv.org/abs/1702.03275>`_, 2017.
  """
  y, new, _ = _batch_renorm(
    x,
    scale,
    bias,
    running_mean,
    running_var,
    use_running_average=use_running_average,
    r_max=r_max,
    d_max=d_max,
    axis=axis,
    momentum=momentum,
    epsilon=epsilon,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=axis_index_groups,
    use_fast_variance=use_fast_variance,
    dtype=dtype,
    force_float32_reductions=force_float32_reductions,
    owner="batch_renorm",
  )
  return y, new


def _batch_renorm_compute(module, x, params, state, *, use_running_average, mask, axis_name, dtype):
  owner = "BatchRenorm"
  r_max, d_max = batch_renorm_limits(
    state["steps"],
    r_max=module.r_max,
    d_max=module.d_max,
    warmup_delay=module.warmup_delay,
    r_max_warmup_steps=module.r_max_warmup_steps,
    d_max_warmup_steps=module.d_max_warmup_steps,
  )
  y, new, per_batch = _batch_renorm(
    x,
    params["scale"],
    params["bias"],
    state["mean"],
    state["var"],
    use_running_average=use_running_average,
    r_max=r_max,
    d_max=d_max,
    axis=_batch_renorm_axes(module, x),
    momentum=module.momentum,
    epsilon=module.epsilon,
    mask=mask,
    axis_name=axis_name,
    axis_index_groups=module.axis_index_groups,
    use_fast_variance=module.use_fast_variance,
    dtype=dtype,
    force_float32_reductions=module.force_float32_reductions,
    owner=owner,
  )
  return y, {"mean": new.mean, "var": new.var, "steps": state["steps"] + 1}, per_batch


def _batch_renorm_axes(module, x) -> tuple[int, ...]:
  return _axes.canonicalize_axes(module.axis, jnp.ndim(x), name="axis", owner="BatchRenorm")


# Running state: the averages and the count of training steps that drives
# the clipping schedule.
BATCH_RENORM = _stateful.StatefulNorm(
  owner="BatchRenorm",
  params=_stateful.scale_and_bias,
  state=lambda module: (
    _stateful.RunningStat("mean", jnp.zeros),
    _stateful.RunningStat("var", jnp.ones),
    _stateful.RunningStat("steps", per_feature=False),
  ),
  feature_axes=_batch_renorm_axes,
  compute=_batch_renorm_compute,
  validate=lambda module: check_schedule(
    module.r_max,
    module.d_max,
    module.warmup_delay,
    module.r_max_warmup_steps,
    module.d_max_warmup_steps,
    owner="BatchRenorm",
  ),
)
