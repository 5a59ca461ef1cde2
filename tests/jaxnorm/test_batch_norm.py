"""Ghost batch norm and the running-statistics policies of batch norm."""

import chex
import flax.linen as nn
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxnorm as jn
import references as ref
from references import f64

KEY = jax.random.key(0)


def randn(*shape, loc=0.5, scale=2.0, seed=0):
  return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


# --------------------------------------------------------------------------
# ghost (virtual) batch norm


@pytest.mark.parametrize(
  "shape,v,axis",
  [((8, 5), 2, -1), ((8, 3, 3, 4), 4, -1), ((6, 4, 3, 3), 3, 1), ((4, 2, 2, 3), 1, -1)],
)
def test_ghost_batch_norm_matches_per_group_formula(shape, v, axis):
  x = randn(*shape)
  c = axis % len(shape)
  rng = np.random.default_rng(1)
  scale, bias = rng.uniform(0.5, 1.5, shape[c]), rng.normal(size=shape[c])
  rm, rv = rng.normal(size=shape[c]), rng.uniform(0.5, 2.0, shape[c])
  y, stats = jn.batch_norm(x, scale, bias, rm, rv, axis=axis, momentum=0.8, epsilon=1e-3, virtual_batch_size=v)
  z, mean, var = ref.ghost_batch_norm(x, v, 1e-3, channel_axis=c)
  cs = ref.channel_shape(len(shape), c, shape[c])
  np.testing.assert_allclose(y, z * scale.reshape(cs) + bias.reshape(cs), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats.mean, 0.8 * rm + 0.2 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.var, 0.8 * rv + 0.2 * var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("v", [None, 8])
def test_ghost_with_whole_batch_equals_plain_batch_norm_exactly(v):
  x = randn(8, 3, 3, 4)
  scale, bias = randn(4, seed=1), randn(4, seed=2)
  rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
  plain = jn.batch_norm(x, scale, bias, rm, rv)
  ghost = jn.batch_norm(x, scale, bias, rm, rv, virtual_batch_size=v)
  chex.assert_trees_all_equal(ghost, plain)
  bn, gbn = jn.BatchNorm(use_running_average=False), jn.BatchNorm(use_running_average=False, virtual_batch_size=v)
  variables = bn.init(KEY, x)
  out_plain = bn.apply(variables, x, mutable=["batch_stats"])
  out_ghost = gbn.apply(variables, x, mutable=["batch_stats"])
  chex.assert_trees_all_equal(out_ghost, out_plain)


def test_ghost_module_equals_per_device_batch_norm_with_averaged_stats():
  """The documented semantics: data-parallel BN, then batch_stats averaged."""
  x = randn(12, 4, 4, 3)
  ghost = jn.BatchNorm(use_running_average=False, momentum=0.7, virtual_batch_size=4)
  per_device = nn.BatchNorm(use_running_average=False, momentum=0.7, use_fast_variance=False)
  variables = ghost.init(KEY, x)
  y, upd = ghost.apply(variables, x, mutable=["batch_stats"])
  run = lambda xd: per_device.apply(variables, xd, mutable=["batch_stats"])
  y_dev, upd_dev = jax.vmap(run)(x.reshape(3, 4, 4, 4, 3))
  np.testing.assert_allclose(y, y_dev.reshape(x.shape), rtol=1e-5, atol=1e-5)
  averaged = jax.tree.map(lambda a: a.mean(0), upd_dev)
  chex.assert_trees_all_close(upd, averaged, rtol=1e-5, atol=1e-6)


@hypothesis.settings(max_examples=10)
@given(
  groups=st.integers(1, 4),
  v=st.integers(1, 3),
  spatial=st.sampled_from([(), (2,), (3, 2)]),
  channels=st.integers(1, 3),
  offset=st.sampled_from([0.0, 1e3]),
  seed=st.integers(0, 100),
)
def test_property_ghost_batch_norm(groups, v, spatial, channels, offset, seed):
  x = randn(groups * v, *spatial, channels, loc=offset, seed=seed)
  y, stats = jn.batch_norm(x, epsilon=1e-3, virtual_batch_size=v)
  z, mean, var = ref.ghost_batch_norm(x, v, 1e-3)
  np.testing.assert_allclose(y, z, rtol=1e-3, atol=2e-3)
  np.testing.assert_allclose(stats.mean, mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats.var, var, rtol=1e-3, atol=1e-3)


def test_ghost_batch_norm_with_mask_skips_empty_virtual_batches():
  x = randn(6, 3)
  mask = np.array([1, 1, 0, 1, 0, 0], bool)[:, None]  # groups of 2: 2, 1, 0 valid
  y, stats = jn.batch_norm(x, mask=mask, virtual_batch_size=2, epsilon=1e-5)
  for g in range(2):
    part, m = x[2 * g : 2 * g + 2], mask[2 * g : 2 * g + 2]
    z, _, _ = ref.standardize(part, (0,), 1e-5, mask=m)
    np.testing.assert_allclose(y[2 * g : 2 * g + 2], z, rtol=1e-4, atol=1e-4)
  means = [f64(x[0:2]).mean(0), f64(x[3])]
  variances = [f64(x[0:2]).var(0), np.zeros(3)]
  np.testing.assert_allclose(stats.mean, np.mean(means, 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.var, np.mean(variances, 0), rtol=1e-5, atol=1e-6)


def test_ghost_batch_norm_grads_jit_and_vmap():
  x = randn(4, 2, 2, 3)
  scale, bias = randn(3, seed=1), randn(3, seed=2)
  w = randn(*x.shape, seed=3)
  f = lambda x, s, b: jnp.sum(w * jn.batch_norm(x, s, b, virtual_batch_size=2)[0] ** 2)
  check_grads(jax.jit(f), (x, scale, bias), order=2, modes=["rev"], atol=5e-2, rtol=5e-2)
  stacked = np.stack([x, 2 * x + 1])
  batched = jax.vmap(lambda a: jn.batch_norm(a, virtual_batch_size=2)[0])(stacked)
  for i in range(2):
    np.testing.assert_allclose(batched[i], jn.batch_norm(stacked[i], virtual_batch_size=2)[0], rtol=1e-6)


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: jn.batch_norm(jnp.ones((8, 3)), virtual_batch_size=3),
      r"batch_norm: virtual_batch_size=3 does not divide the batch of 8 examples",
    ),
    (
      lambda: jn.BatchNorm(use_running_average=False, virtual_batch_size=5).init(KEY, jnp.ones((8, 3))),
      r"BatchNorm: virtual_batch_size=5 does not divide the batch of 8 examples \(axis 0\); choose a divisor of 8",
    ),
    (
      lambda: jn.batch_norm(jnp.ones((8, 3)), virtual_batch_size=0),
      r"virtual_batch_size=0; expected a positive integer",
    ),
    (
      lambda: jn.batch_norm(jnp.ones((8, 3)), axis=(0, 1), virtual_batch_size=2),
      r"axis=\(0, 1\) includes the batch axis 0",
    ),
    (
      lambda: jn.batch_norm(jnp.ones((8, 3)), running_stats="ewma"),
      r"batch_norm: running_stats='ewma' is not a valid choice; choose one of 'ema', 'cumulative', 'frozen'",
    ),
    (
      lambda: jn.batch_norm(jnp.ones((8, 3)), running_stats="frozen"),
      r"use_running_average=True needs running_mean and running_var \(so does running_stats='frozen'\)",
    ),
  ],
)
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# --------------------------------------------------------------------------
# running-statistics policies


def test_default_policy_keeps_flax_variables():
  v = jn.BatchNorm(use_running_average=False).init(KEY, jnp.ones((4, 3)))
  assert set(v["batch_stats"]) == {"mean", "var"}


def test_cumulative_average_after_k_batches_is_the_plain_average():
  batches = [randn(6, 2, 2, 3, loc=i, seed=i) for i in range(4)]
  bn = jn.BatchNorm(use_running_average=False, running_stats="cumulative")
  variables = bn.init(KEY, batches[0])
  assert variables["batch_stats"]["count"].dtype == jnp.int32
  for b in batches:
    _, upd = bn.apply(variables, b, mutable=["batch_stats"])
    variables = {**variables, **upd}
  stats = variables["batch_stats"]
  axes = (0, 1, 2)
  np.testing.assert_allclose(stats["mean"], np.mean([f64(b).mean(axes) for b in batches], 0), rtol=1e-5)
  np.testing.assert_allclose(stats["var"], np.mean([f64(b).var(axes) for b in batches], 0), rtol=1e-5)
  assert int(stats["count"]) == 4


def test_cumulative_policy_in_the_pure_function():
  a, b = randn(5, 3, seed=1), randn(5, 3, loc=3.0, seed=2)
  _, s1 = jn.batch_norm(a, running_mean=np.zeros(3), running_var=np.ones(3), running_stats="cumulative")
  np.testing.assert_allclose(s1.mean, f64(a).mean(0), rtol=1e-5)  # count 0: the batch itself
  _, s2 = jn.batch_norm(b, running_mean=s1.mean, running_var=s1.var, running_count=s1.count, running_stats="cumulative")
  np.testing.assert_allclose(s2.var, (f64(a).var(0) + f64(b).var(0)) / 2, rtol=1e-5)
  assert int(s2.count) == 2


def test_frozen_batch_norm_equals_eval_mode_and_never_updates():
  x = randn(8, 3, 3, 4, loc=2.0)
  frozen = jn.BatchNorm(use_running_average=False, running_stats="frozen")
  variables = frozen.init(KEY, x)
  stats = {"mean": jnp.arange(4.0), "var": jnp.arange(1.0, 5.0)}
  variables = {**variables, "batch_stats": stats}
  y, upd = frozen.apply(variables, x, mutable=["batch_stats"])
  chex.assert_trees_all_equal(upd["batch_stats"], stats)
  y_eval = jn.BatchNorm(use_running_average=True).apply(variables, x)
  np.testing.assert_array_equal(y, y_eval)
  y_fn, s = jn.batch_norm(x, None, None, stats["mean"], stats["var"], running_stats="frozen")
  np.testing.assert_allclose(y_fn, (f64(x) - np.arange(4.0)) / np.sqrt(np.arange(1.0, 5.0) + 1e-5), rtol=1e-5)
  np.testing.assert_array_equal(s.mean, stats["mean"])


@pytest.mark.parametrize("masked", [False, True])
def test_complex_inputs_keep_a_complex_running_mean_as_flax(masked):
  """flax's test_batch_norm_complex: complex64 in and out, output mean 0 and
  variance 1 per feature, running mean the EMA of the complex batch mean
  (not its real part), running variance of E|x - μ|² — against numpy."""
  from flax import nnx

  x = jax.random.normal(jax.random.key(0), (4, 3, 2), dtype=jnp.complex64)
  mask = None
  if masked:
    mask = jax.random.randint(jax.random.key(1), (4, 3, 1), 0, 2).astype(bool)
    x = jnp.where(mask, x, jnp.nan)
  xs = np.asarray(x, np.complex128)
  keep = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask), x.shape)
  mean = np.array([xs[..., c][keep[..., c]].mean() for c in range(2)])
  var = np.array([np.mean(np.abs(xs[..., c][keep[..., c]] - mean[c]) ** 2) for c in range(2)])
  bn = jn.BatchNorm(momentum=0.9, use_running_average=False, dtype=jnp.complex64)
  y, variables = bn.init_with_output(jax.random.key(2), x, mask=mask)
  assert y.dtype == jnp.complex64
  y64 = np.asarray(y, np.complex128)
  for c in range(2):
    yc = y64[..., c][keep[..., c]]
    np.testing.assert_allclose(yc.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.mean(np.abs(yc - yc.mean()) ** 2), 1.0, rtol=1e-4)
  _, updates = bn.apply(variables, x, mask=mask, mutable=["batch_stats"])
  stats = updates["batch_stats"]
  assert jnp.iscomplexobj(stats["mean"])
  np.testing.assert_allclose(stats["mean"], 0.1 * mean, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=1e-5)
  # The NNX module keeps the same.
  layer = jn.nnx.BatchNorm(2, momentum=0.9, dtype=jnp.complex64, rngs=nnx.Rngs(0))
  layer(x, mask=mask)
  np.testing.assert_array_equal(layer.mean[...], stats["mean"])
