"""EvoNorm-B0 and EvoNorm-S0 (Liu et al., 2020) against the paper's formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm as jn
import references as ref
from references import f64

KEY = jax.random.key(0)


def randn(*shape, loc=0.5, scale=2.0, seed=0):
  return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def params(c, seed=1):
  rng = np.random.default_rng(seed)
  return (
    rng.uniform(0.5, 1.5, c).astype(np.float32),
    rng.normal(size=c).astype(np.float32),
    rng.normal(size=c).astype(np.float32),
  )


def to_nchw(a):
  return np.transpose(a, (0, 3, 1, 2))


# --------------------------------------------------------------------------
# B0


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_b0_train_matches_formula_and_updates_running_variance(layout):
  x = randn(4, 3, 3, 6)
  gamma, beta, v = params(6)
  run_var = np.linspace(0.5, 2.0, 6).astype(np.float32)
  expected = ref.evonorm_b0(x, gamma, beta, v, 1e-3)
  if layout == "NCHW":
    y, new_var = jn.evonorm_b0(to_nchw(x), gamma, beta, v, run_var, channel_axis=1, momentum=0.9, epsilon=1e-3)
    y = np.transpose(y, (0, 2, 3, 1))
  else:
    y, new_var = jn.evonorm_b0(x, gamma, beta, v, run_var, momentum=0.9, epsilon=1e-3)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new_var, 0.9 * run_var + 0.1 * f64(x).var((0, 1, 2)), rtol=1e-5)
  # Both branches of the max are taken somewhere.
  inst = np.sqrt(f64(x).var((1, 2), keepdims=True) + 1e-3) + v * f64(x)
  batch = np.sqrt(f64(x).var((0, 1, 2)) + 1e-3)
  assert (inst > batch).any() and (inst < batch).any()


def test_b0_eval_uses_running_variance():
  x = randn(2, 3, 3, 4)
  gamma, beta, v = params(4)
  run_var = np.array([0.5, 1.0, 4.0, 9.0], np.float32)
  y, same = jn.evonorm_b0(x, gamma, beta, v, run_var, use_running_average=True, epsilon=1e-5)
  np.testing.assert_allclose(y, ref.evonorm_b0(x, gamma, beta, v, 1e-5, batch_var=run_var), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(same, run_var)


def test_b0_module_train_and_eval():
  x = randn(4, 3, 3, 4)
  mod = jn.EvoNormB0(use_running_average=False, momentum=0.5, epsilon=1e-3)
  variables = mod.init(KEY, x)
  assert jax.tree.map(jnp.shape, variables) == {
    "params": {"scale": (4,), "bias": (4,), "v": (4,)},
    "batch_stats": {"var": (4,)},
  }
  np.testing.assert_array_equal(variables["batch_stats"]["var"], 1.0)  # init does not update
  gamma, beta, v = params(4)
  variables = {**variables, "params": {"scale": gamma, "bias": beta, "v": v}}
  y, upd = mod.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(y, ref.evonorm_b0(x, gamma, beta, v, 1e-3), rtol=1e-4, atol=1e-5)
  new_var = upd["batch_stats"]["var"]
  np.testing.assert_allclose(new_var, 0.5 + 0.5 * f64(x).var((0, 1, 2)), rtol=1e-5)
  y_eval = jn.EvoNormB0(use_running_average=True, epsilon=1e-3).apply({**variables, **upd}, x)
  np.testing.assert_allclose(y_eval, ref.evonorm_b0(x, gamma, beta, v, 1e-3, batch_var=new_var), rtol=1e-4, atol=1e-5)


def test_b0_sync_under_vmap_equals_global_batch_and_jit():
  x = randn(8, 2, 2, 3)
  gamma, beta, v = params(3)
  y_global, var_global = jn.evonorm_b0(x, gamma, beta, v)
  per_device = lambda xd: jn.evonorm_b0(xd, gamma, beta, v, axis_name="d")
  y, var = jax.vmap(per_device, axis_name="d")(x.reshape(4, 2, 2, 2, 3))
  np.testing.assert_allclose(y.reshape(x.shape), y_global, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(var[0], var_global, rtol=1e-5)
  # jit, and host or device inputs: tests/jaxnorm/test_transformations.py (chex variants).


# --------------------------------------------------------------------------
# S0


@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_s0_matches_formula(groups, layout):
  x = randn(2, 3, 4, 8)
  gamma, beta, v = params(8)
  expected = ref.evonorm_s0(x, gamma, beta, v, groups, 1e-3)
  if layout == "NCHW":
    y = jn.evonorm_s0(to_nchw(x), gamma, beta, v, num_groups=groups, channel_axis=1, epsilon=1e-3)
    y = np.transpose(y, (0, 2, 3, 1))
  else:
    y = jn.evonorm_s0(x, gamma, beta, v, num_groups=groups, epsilon=1e-3)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_s0_with_zero_v_is_half_x_over_group_std():
  """σ(0) = 1/2: on inputs with zero group means, S0 is GN scaled by 1/2."""
  x = randn(2, 3, 3, 4)
  g = f64(x).reshape(2, 3, 3, 2, 2)
  x = (g - g.mean((1, 2, 4), keepdims=True)).reshape(x.shape).astype(np.float32)
  y = jn.evonorm_s0(x, v=np.zeros(4, np.float32), num_groups=2, epsilon=1e-5)
  np.testing.assert_allclose(y, 0.5 * jn.group_norm(x, num_groups=2, epsilon=1e-5), rtol=1e-4, atol=1e-5)


def test_s0_group_size_vmap_and_batch_independence():
  x = randn(4, 3, 3, 8)
  a = jn.evonorm_s0(x, num_groups=None, group_size=2)
  np.testing.assert_array_equal(a, jn.evonorm_s0(x, num_groups=4))
  np.testing.assert_allclose(jn.evonorm_s0(x[2:3], num_groups=4), a[2:3], rtol=1e-6)
  stacked = jax.vmap(lambda b: jn.evonorm_s0(b, num_groups=4))(x.reshape(2, 2, 3, 3, 8))
  np.testing.assert_allclose(stacked.reshape(x.shape), a, rtol=1e-6)


def test_s0_module():
  x = randn(2, 3, 3, 8)
  mod = jn.EvoNormS0(num_groups=4)
  variables = mod.init(KEY, x)
  assert jax.tree.map(jnp.shape, variables) == {"params": {"scale": (8,), "bias": (8,), "v": (8,)}}
  gamma, beta, v = params(8)
  y = mod.apply({"params": {"scale": gamma, "bias": beta, "v": v}}, x)
  np.testing.assert_allclose(y, ref.evonorm_s0(x, gamma, beta, v, 4, 1e-5), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", ["b0", "s0"])
def test_check_grads(which):
  x = randn(2, 2, 2, 4)
  gamma, beta, v = params(4)
  w = randn(*x.shape, seed=3)
  if which == "b0":
    fn = lambda x, g, b, v: jn.evonorm_b0(x, g, b, v)[0]
  else:
    fn = lambda x, g, b, v: jn.evonorm_s0(x, g, b, v, num_groups=2)
  f = lambda *args: jnp.sum(w * fn(*args) ** 2)
  check_grads(jax.jit(f), (x, gamma, beta, v), order=2, modes=["rev"], atol=5e-2, rtol=5e-2)


def test_bfloat16_in_bfloat16_out():
  x = jnp.asarray(randn(2, 3, 3, 4), jnp.bfloat16)
  assert jn.evonorm_s0(x, num_groups=2).dtype == jnp.bfloat16
  assert jn.evonorm_b0(x)[0].dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: jn.evonorm_s0(jnp.ones((2, 3, 3, 12)), num_groups=5),
      r"evonorm_s0: .*num_groups=5 does not divide 12 channels; choose a divisor of 12 or set group_size",
    ),
    (
      lambda: jn.EvoNormS0(num_groups=5).init(KEY, jnp.ones((2, 3, 3, 12))),
      r"EvoNormS0: .*num_groups=5 does not divide 12 channels",
    ),
    (
      lambda: jn.EvoNormS0(num_groups=None, group_size=5).init(KEY, jnp.ones((2, 3, 3, 12))),
      r"EvoNormS0: .*group_size=5 does not divide 12 channels",
    ),
    (
      lambda: jn.EvoNormS0(num_groups=4, group_size=3).init(KEY, jnp.ones((2, 3, 3, 12))),
      r"EvoNormS0: Either `num_groups` or `group_size` should be specified. Give exactly one of num_groups and group_size",
    ),
    (lambda: jn.evonorm_s0(jnp.ones((2, 3, 3, 12)), num_groups=0), r"num_groups=0; expected a positive integer"),
    (
      lambda: jn.evonorm_b0(jnp.ones((2, 3, 3, 4)), use_running_average=True),
      r"evonorm_b0: use_running_average=True needs running_var",
    ),
    (lambda: jn.evonorm_b0(jnp.ones((2, 3, 3, 4)), v=jnp.ones(3)), r"evonorm_b0: v has shape \(3,\)"),
    (
      lambda: jn.EvoNormB0(channel_axis=0, use_running_average=False).init(KEY, jnp.ones((2, 3, 3, 4))),
      r"EvoNormB0: channel_axis=0 is the batch axis 0",
    ),
  ],
)
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
