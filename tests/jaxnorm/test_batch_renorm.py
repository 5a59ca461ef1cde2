"""Batch renormalization against Ioffe (2017), Algorithm 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm as jn
import references as ref
from references import f64

KEY = jax.random.key(0)
EPS = 1e-3


def randn(*shape, loc=0.5, scale=2.0, seed=0):
  return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def setup(shape=(8, 3, 3, 4), seed=0):
  """Input, affine parameters and running statistics that clip some r and d."""
  x = randn(*shape, seed=seed)
  c = shape[-1]
  rng = np.random.default_rng(seed + 1)
  gamma, beta = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(size=c).astype(np.float32)
  mean = np.array([0.5, 3.0, -3.0, 0.0, 0.4, 0.6][:c], np.float32)
  var = np.array([4.0, 4.0, 0.5, 30.0, 3.0, 5.0][:c], np.float32)
  return x, gamma, beta, mean, var


@pytest.mark.parametrize("r_max,d_max", [(1.5, 0.5), (3.0, 5.0), (1.0, 0.0), (1.2, 2.0)])
def test_matches_algorithm_1(r_max, d_max):
  x, gamma, beta, mean, var = setup()
  y, stats = jn.batch_renorm(x, gamma, beta, mean, var, r_max=r_max, d_max=d_max, momentum=0.9, epsilon=EPS)
  expected, r, d = ref.batch_renorm(x, gamma, beta, mean, var, r_max, d_max, EPS)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  axes = (0, 1, 2)
  np.testing.assert_allclose(stats.mean, 0.9 * mean + 0.1 * f64(x).mean(axes), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.var, 0.9 * var + 0.1 * f64(x).var(axes), rtol=1e-5)
  if r_max == 1.5:  # the setup exercises both clipped and unclipped r and d
    assert (np.abs(np.log(r)) < np.log(r_max) - 1e-3).any() and (np.abs(np.log(r)) >= np.log(r_max) - 1e-9).any()
    assert (np.abs(d) < d_max - 1e-3).any() and (np.abs(d) >= d_max - 1e-9).any()


def test_eval_mode_is_batch_norm_eval():
  x, gamma, beta, mean, var = setup()
  y, stats = jn.batch_renorm(x, gamma, beta, mean, var, use_running_average=True, epsilon=EPS)
  expected = (f64(x) - mean) / np.sqrt(f64(var) + EPS) * gamma + beta
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(stats.mean, mean)


def test_r_max_1_d_max_0_is_batch_norm_outputs_and_gradients():
  x, gamma, beta, mean, var = setup()
  w = randn(*x.shape, seed=7)

  def loss(fn):
    return lambda x, g, b: jnp.sum(w * fn(x, g, b)[0] ** 2)

  brn = lambda x, g, b: jn.batch_renorm(x, g, b, mean, var, r_max=1.0, d_max=0.0, epsilon=EPS)
  bn = lambda x, g, b: jn.batch_norm(x, g, b, mean, var, epsilon=EPS)
  np.testing.assert_allclose(brn(x, gamma, beta)[0], bn(x, gamma, beta)[0], rtol=1e-6, atol=1e-6)
  g_brn = jax.grad(loss(brn), argnums=(0, 1, 2))(x, gamma, beta)
  g_bn = jax.grad(loss(bn), argnums=(0, 1, 2))(x, gamma, beta)
  for a, b in zip(g_brn, g_bn):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_gradient_treats_r_and_d_as_constants():
  """Unclipped, dL/dx = γr/σ_B (g − mean(g) − x̂·mean(g·x̂)), x̂ = (x − μ_B)/σ_B."""
  x, gamma, beta, _, _ = setup()
  axes = (0, 1, 2)
  # Running statistics near the batch's keep every r and d inside the limits.
  mean = (f64(x).mean(axes) + 0.3).astype(np.float32)
  var = (f64(x).var(axes) * 1.5).astype(np.float32)
  w = randn(*x.shape, seed=7)
  f = lambda x: jnp.sum(w * jn.batch_renorm(x, gamma, beta, mean, var, epsilon=EPS)[0])
  grad = jax.grad(f)(x)
  _, r, d = ref.batch_renorm(x, gamma, beta, mean, var, 3.0, 5.0, EPS)
  assert (r > 1 / 3).all() and (r < 3).all() and (np.abs(d) < 5).all()
  sigma_b = np.sqrt(f64(x).var(axes) + EPS)
  x_hat = (f64(x) - f64(x).mean(axes)) / sigma_b
  g = f64(w)
  expected = gamma * r / sigma_b * (g - g.mean(axes) - x_hat * (g * x_hat).mean(axes))
  np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-4)
  # Differentiating through r and d instead: y = γ(x − μ)/σ + β, dL/dx = γw/σ.
  through = gamma * g / np.sqrt(f64(var) + EPS)
  assert np.max(np.abs(f64(grad) - through)) > 0.1


def test_check_grads_where_r_and_d_are_clipped():
  # Far-off running statistics clip r and d, which are then locally constant,
  # so finite differences see the same function as the stop-gradient.
  x, gamma, beta, _, _ = setup((4, 2, 2, 3))
  mean, var = np.full(3, 20.0, np.float32), np.full(3, 400.0, np.float32)
  w = randn(*x.shape, seed=3)
  f = lambda x, g, b: jnp.sum(w * jn.batch_renorm(x, g, b, mean, var, r_max=2.0, d_max=1.0)[0] ** 2)
  check_grads(jax.jit(f), (x, gamma, beta), order=2, modes=["rev"], atol=5e-2, rtol=5e-2)


def test_vmap_with_axis_name_equals_global_batch():
  x, gamma, beta, mean, var = setup((8, 2, 2, 4))
  f = lambda x: jn.batch_renorm(x, gamma, beta, mean, var, r_max=1.5, d_max=0.5)
  y_global, stats_global = f(x)  # jit: tests/jaxnorm/test_transformations.py (chex variants)
  per_device = lambda xd: jn.batch_renorm(xd, gamma, beta, mean, var, r_max=1.5, d_max=0.5, axis_name="d")
  y, stats = jax.vmap(per_device, axis_name="d")(x.reshape(4, 2, 2, 2, 4))
  np.testing.assert_allclose(y.reshape(x.shape), y_global, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats.var[0], stats_global.var, rtol=1e-5)


# --------------------------------------------------------------------------
# schedule and module

PAPER = dict(r_max=3.0, d_max=5.0, warmup_delay=5000, r_max_warmup_steps=35000, d_max_warmup_steps=20000)


@pytest.mark.parametrize(
  "step,r_max,d_max",
  [
    (0, 1.0, 0.0),
    (5000, 1.0, 0.0),
    (15000, 1 + 2 * 10 / 35, 2.5),
    (25000, 1 + 2 * 20 / 35, 5.0),
    (40000, 3.0, 5.0),
    (10**6, 3.0, 5.0),
  ],
)
def test_paper_schedule(step, r_max, d_max):
  r, d = jn.batch_renorm_limits(step, **PAPER)
  np.testing.assert_allclose([r, d], [r_max, d_max], rtol=1e-6)


def test_schedule_without_warmup_is_constant():
  for step in (0, 1, 100):
    np.testing.assert_allclose(jn.batch_renorm_limits(step, r_max=2.0, d_max=1.0), (2.0, 1.0))
  r, d = jn.batch_renorm_limits(3, r_max=2.0, d_max=1.0, warmup_delay=5)
  assert (float(r), float(d)) == (1.0, 0.0)


def test_module_variables_steps_and_warmup():
  x, _, _, _, _ = setup()
  mod = jn.BatchRenorm(use_running_average=False, momentum=0.5, epsilon=EPS, **PAPER)
  variables = mod.init(KEY, x)
  assert jax.tree.map(jnp.shape, variables) == {
    "params": {"scale": (4,), "bias": (4,)},
    "batch_stats": {"mean": (4,), "var": (4,), "steps": ()},
  }
  assert int(variables["batch_stats"]["steps"]) == 0  # init does not count
  stats = {"mean": jnp.full(4, 5.0), "var": jnp.full(4, 9.0), "steps": jnp.zeros((), jnp.int32)}
  variables = {**variables, "batch_stats": stats}
  y, upd = mod.apply(variables, x, mutable=["batch_stats"])
  # Step 0 of the paper's schedule is batch norm, whatever the running stats.
  y_bn, _ = jn.batch_norm(x, epsilon=EPS)
  np.testing.assert_allclose(y, y_bn, rtol=1e-5, atol=1e-5)
  assert int(upd["batch_stats"]["steps"]) == 1
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 2.5 + 0.5 * f64(x).mean((0, 1, 2)), rtol=1e-5)
  # Far into training the full limits apply.
  late = {**variables, "batch_stats": {**stats, "steps": jnp.array(50000, jnp.int32)}}
  y_late = mod.apply(late, x, mutable=["batch_stats"])[0]
  expected, _, _ = ref.batch_renorm(x, np.ones(4), np.zeros(4), stats["mean"], stats["var"], 3.0, 5.0, EPS)
  np.testing.assert_allclose(y_late, expected, rtol=1e-4, atol=1e-4)
  # Evaluation: batch norm with the running statistics; no step taken.
  y_eval, upd_eval = mod.clone(use_running_average=True).apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(y_eval, (f64(x) - 5.0) / np.sqrt(9.0 + EPS), rtol=1e-5, atol=1e-5)
  assert int(upd_eval["batch_stats"]["steps"]) == 0


def test_module_fields_extend_batch_norm_in_order():
  import dataclasses

  names = lambda cls: [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
  bn = names(jn.BatchNorm)[: names(jn.BatchNorm).index("force_float32_reductions") + 1]
  assert names(jn.BatchRenorm) == bn + ["r_max", "d_max", "warmup_delay", "r_max_warmup_steps", "d_max_warmup_steps"]


def test_bfloat16_input_keeps_dtype():
  x, _, _, mean, var = setup()
  y, _ = jn.batch_renorm(jnp.asarray(x, jnp.bfloat16), None, None, mean, var)
  assert y.dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: jn.batch_renorm(jnp.ones((4, 3)), None, None, jnp.zeros(3), jnp.ones(3), r_max=0.5),
      r"batch_renorm: r_max=0.5 is less than 1.0; r is clipped to \[1/r_max, r_max\], so use r_max >= 1",
    ),
    (
      lambda: jn.batch_renorm(jnp.ones((4, 3)), None, None, jnp.zeros(3), jnp.ones(3), d_max=-1.0),
      r"batch_renorm: d_max=-1.0 is less than 0.0; d is clipped to \[-d_max, d_max\], so use d_max >= 0",
    ),
    (
      lambda: jn.BatchRenorm(use_running_average=False, r_max=0.9).init(KEY, jnp.ones((4, 3))),
      r"BatchRenorm: r_max=0.9 is less than 1.0",
    ),
    (
      lambda: jn.BatchRenorm(use_running_average=False, d_max=-0.1).init(KEY, jnp.ones((4, 3))),
      r"BatchRenorm: d_max=-0.1 is less than 0.0",
    ),
    (
      lambda: jn.batch_renorm_limits(0, r_max_warmup_steps=-5),
      r"batch_renorm_limits: r_max_warmup_steps=-5; expected a non-negative integer",
    ),
    (
      lambda: jn.batch_renorm(jnp.ones((4, 3)), None, None, None, None),
      r"batch_renorm: running_mean and running_var are required",
    ),
    (
      lambda: jn.batch_renorm(jnp.ones((4, 3)), None, None, jnp.zeros(2), jnp.ones(3)),
      r"running_mean has shape \(2,\); expected the feature shape \(3,\)",
    ),
  ],
)
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
