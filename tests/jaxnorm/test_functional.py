"""Pure normalizers against float64 NumPy and against each other."""

import functools

import hypothesis.extra.numpy as hnp
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

RNG = np.random.default_rng(0)


def randn(*shape, loc=0.5, scale=2.0, seed=0):
  return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def affine(shape, axes, seed=1):
  """Random scale and bias for the feature shape of `axes`."""
  rng = np.random.default_rng(seed)
  fshape = tuple(shape[a] for a in axes)
  return (
    rng.uniform(0.5, 1.5, fshape).astype(np.float32),
    rng.normal(size=fshape).astype(np.float32),
  )


def bcast(p, shape, axes):
  full = [1] * len(shape)
  for a in axes:
    full[a] = shape[a]
  return f64(p).reshape(full)


# --------------------------------------------------------------------------
# batch_norm


@pytest.mark.parametrize(
  "shape,axis",
  [((16, 5), -1), ((8, 4, 4, 6), -1), ((8, 6, 4, 4), 1), ((4, 3, 5, 6), (1, 3))],
)
def test_batch_norm_train_matches_numpy(shape, axis):
  x = randn(*shape)
  feat = tuple(a % len(shape) for a in np.atleast_1d(axis))
  red = tuple(a for a in range(len(shape)) if a not in feat)
  scale, bias = affine(shape, feat)
  rm, rv = affine(shape, feat, seed=2)
  rv = np.abs(rv) + 0.5
  y, stats = jn.batch_norm(x, scale, bias, rm, rv, axis=axis, momentum=0.9, epsilon=1e-3)
  z, mean, var = ref.standardize(x, red, 1e-3)
  expected = z * bcast(scale, shape, feat) + bcast(bias, shape, feat)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats.mean, 0.9 * rm + 0.1 * mean.reshape(rm.shape), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.var, 0.9 * rv + 0.1 * var.reshape(rv.shape), rtol=1e-5)


def test_batch_norm_eval_uses_running_statistics_and_returns_them():
  x = randn(6, 4)
  rm, rv = np.array([1.0, -1.0, 0.0, 2.0], np.float32), np.array([4.0, 1.0, 0.25, 9.0], np.float32)
  y, stats = jn.batch_norm(x, None, None, rm, rv, use_running_average=True, epsilon=0.0)
  np.testing.assert_allclose(y, (f64(x) - rm) / np.sqrt(rv), rtol=1e-5)
  np.testing.assert_array_equal(stats.mean, rm)
  np.testing.assert_array_equal(stats.var, rv)


def test_batch_norm_without_running_stats_returns_batch_stats():
  x = randn(10, 3)
  _, stats = jn.batch_norm(x)
  np.testing.assert_allclose(stats.mean, f64(x).mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats.var, f64(x).var(0), rtol=1e-5)


def test_batch_norm_mask_excludes_padding_from_statistics():
  x = randn(8, 3)
  mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)[:, None]
  y, stats = jn.batch_norm(x, mask=mask, epsilon=1e-5)
  z, _, _ = ref.standardize(x, (0,), 1e-5, mask=mask)
  np.testing.assert_allclose(y, z, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats.mean, f64(x[:5]).mean(0), rtol=1e-5)


# --------------------------------------------------------------------------
# layer_norm, rms_norm, instance_norm


@pytest.mark.parametrize(
  "shape,red,feat",
  [((4, 7), -1, -1), ((2, 3, 8), (1, 2), -1), ((2, 3, 8), (1, 2), (1, 2)), ((5, 6, 3), 1, 2)],
)
def test_layer_norm_matches_numpy(shape, red, feat):
  x = randn(*shape)
  red_t = tuple(a % len(shape) for a in np.atleast_1d(red))
  feat_t = tuple(a % len(shape) for a in np.atleast_1d(feat))
  scale, bias = affine(shape, feat_t)
  y = jn.layer_norm(x, scale, bias, reduction_axes=red, feature_axes=feat, epsilon=1e-5)
  z, _, _ = ref.standardize(x, red_t, 1e-5)
  expected = z * bcast(scale, shape, feat_t) + bcast(bias, shape, feat_t)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,red", [((4, 16), -1), ((2, 8, 6), (1, 2))])
def test_rms_norm_matches_numpy(shape, red):
  x = randn(*shape)
  scale, _ = affine(shape, (len(shape) - 1,))
  y = jn.rms_norm(x, scale, reduction_axes=red, epsilon=1e-6)
  red_t = tuple(a % len(shape) for a in np.atleast_1d(red))
  rms = np.sqrt((f64(x) ** 2).mean(red_t, keepdims=True) + 1e-6)
  np.testing.assert_allclose(y, f64(x) / rms * f64(scale), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,feat", [((3, 5, 5, 4), -1), ((3, 4, 5, 5), 1), ((2, 7, 3), -1)])
def test_instance_norm_matches_numpy(shape, feat):
  x = randn(*shape)
  f = feat % len(shape)
  red = tuple(a for a in range(1, len(shape)) if a != f)
  scale, bias = affine(shape, (f,))
  y = jn.instance_norm(x, scale, bias, feature_axes=feat, epsilon=1e-5)
  z, _, _ = ref.standardize(x, red, 1e-5)
  expected = z * bcast(scale, shape, (f,)) + bcast(bias, shape, (f,))
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# group_norm


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_group_norm_matches_paper_formula(groups, layout):
  nhwc = randn(3, 5, 4, 8)
  c_axis = -1 if layout == "NHWC" else 1
  x = nhwc if layout == "NHWC" else np.transpose(nhwc, (0, 3, 1, 2))
  scale, bias = affine((8,), (0,))
  y = jn.group_norm(x, scale, bias, num_groups=groups, channel_axis=c_axis, epsilon=1e-5)
  z = ref.group_norm(x, groups, 1e-5, channel_axis=c_axis)
  shape = [1] * 4
  shape[c_axis] = 8
  expected = z * f64(scale).reshape(shape) + f64(bias).reshape(shape)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_group_norm_layouts_agree_exactly_up_to_transpose():
  x = randn(2, 6, 3, 12)
  a = jn.group_norm(x, num_groups=4)
  b = jn.group_norm(jnp.transpose(x, (0, 3, 1, 2)), num_groups=4, channel_axis=1)
  np.testing.assert_allclose(jnp.transpose(b, (0, 2, 3, 1)), a, rtol=1e-5, atol=1e-6)


def test_group_size_is_equivalent_to_num_groups():
  x = randn(2, 4, 4, 12)
  np.testing.assert_array_equal(jn.group_norm(x, num_groups=None, group_size=3), jn.group_norm(x, num_groups=4))


def test_group_norm_special_cases_equal_layer_and_instance_norm():
  x = randn(3, 4, 5, 6)
  scale, bias = affine((6,), (0,))
  one_group = jn.group_norm(x, scale, bias, num_groups=1)
  ln = jn.layer_norm(x, scale, bias, reduction_axes=(1, 2, 3), feature_axes=-1)
  np.testing.assert_allclose(one_group, ln, rtol=1e-5, atol=1e-5)
  per_channel = jn.group_norm(x, scale, bias, num_groups=6)
  inn = jn.instance_norm(x, scale, bias)
  np.testing.assert_allclose(per_channel, inn, rtol=1e-5, atol=1e-5)


def test_group_norm_mask_and_explicit_reduction_axes():
  x = randn(2, 5, 8)  # (N, T, C) sequence with padding
  mask = (np.arange(5)[None, :] < np.array([[3], [5]]))[..., None]
  y = jn.group_norm(x, num_groups=2, mask=mask, epsilon=1e-5)
  g = f64(x).reshape(2, 5, 2, 4)
  z, _, _ = ref.standardize(g, (1, 3), 1e-5, mask=mask[..., None])
  np.testing.assert_allclose(y, z.reshape(x.shape), rtol=1e-4, atol=1e-5)
  # statistics over channels only, per time step
  y = jn.group_norm(x, num_groups=2, reduction_axes=-1, epsilon=1e-5)
  z, _, _ = ref.standardize(g, (3,), 1e-5)
  np.testing.assert_allclose(y, z.reshape(x.shape), rtol=1e-4, atol=1e-5)


@st.composite
def gn_case(draw):
  rank = draw(st.integers(2, 4))
  groups = draw(st.sampled_from([1, 2, 3]))
  per_group = draw(st.integers(1, 3))
  other = draw(hnp.array_shapes(min_dims=rank - 1, max_dims=rank - 1, min_side=1, max_side=4))
  c_axis = draw(st.integers(1, rank - 1))
  shape = list(other)
  shape.insert(c_axis, groups * per_group)
  seed = draw(st.integers(0, 1000))
  offset = draw(st.sampled_from([0.0, 100.0]))
  return np.asarray(randn(*shape, loc=offset, seed=seed)), groups, c_axis


@given(gn_case())
def test_property_group_norm_any_layout(case):
  x, groups, c_axis = case
  y = jn.group_norm(x, num_groups=groups, channel_axis=c_axis, epsilon=1e-3)
  expected = ref.group_norm(x, groups, 1e-3, channel_axis=c_axis)
  np.testing.assert_allclose(y, expected, rtol=1e-3, atol=2e-3)


# --------------------------------------------------------------------------
# numerics shared by every normalizer

NORMALIZERS = {
  "batch_norm": (lambda x, **kw: jn.batch_norm(x, **kw)[0], (0, 1, 2)),
  "layer_norm": (functools.partial(jn.layer_norm, reduction_axes=(1, 2, 3)), (1, 2, 3)),
  "instance_norm": (jn.instance_norm, (1, 2)),
  "group_norm": (functools.partial(jn.group_norm, num_groups=1), (1, 2, 3)),
}


@pytest.mark.parametrize("implementation", ["auto", "reference"])
@pytest.mark.parametrize("name", sorted(NORMALIZERS))
def test_large_offset_is_normalized_accurately(name, implementation):
  """x = 1e4 + N(0, 1) in float32: the stable variance is as accurate as
  the float32 two-pass formula flax's ``use_fast_variance=False`` computes
  (``(x − mean(x))·rsqrt(var(x) + ε)``, whose outputs flax's own tests
  compare to 1e-6). The error of both is the float32 rounding of the mean
  of values near 1e4: 1.2e-3 here on jax 0.10, 1.2e-2 on jax 0.7.1, whose
  XLA:CPU sums sequentially. flax's default ``E[x²] − E[x]²`` is off by
  more than 1."""
  fn, red = NORMALIZERS[name]
  x = (1e4 + np.random.default_rng(9).normal(size=(16, 8, 8, 16))).astype(np.float32)
  z, _, _ = ref.standardize(x, red, 1e-5)
  xj = jnp.asarray(x)
  two_pass = (xj - xj.mean(red, keepdims=True)) * jax.lax.rsqrt(xj.var(red, keepdims=True) + 1e-5)
  two_pass_err = np.max(np.abs(np.asarray(two_pass, np.float64) - z))
  with jn.implementation(implementation):
    err = np.max(np.abs(np.asarray(fn(x, epsilon=1e-5), np.float64) - z))
  assert err <= 1.5 * two_pass_err + 1e-4 and err < 0.05, (err, two_pass_err)
  fast = np.asarray(fn(x, epsilon=1e-5, use_fast_variance=True), np.float64)
  assert np.max(np.abs(fast - z)) > 1.0  # what flax's default gives


@pytest.mark.parametrize("name", sorted(NORMALIZERS) + ["rms_norm"])
def test_bfloat16_in_bfloat16_out_with_float32_statistics(name):
  fn, red = NORMALIZERS.get(name, (jn.rms_norm, (3,)))
  x32 = randn(4, 6, 6, 8, loc=3.0)
  x = jnp.asarray(x32, jnp.bfloat16)
  y = fn(x)
  assert y.dtype == jnp.bfloat16
  z, _, _ = ref.standardize(np.asarray(x.astype(jnp.float32)), red, 1e-6, centre=name != "rms_norm")
  # The only error is the final rounding to bfloat16 (8 bits of mantissa):
  # statistics accumulated in bfloat16 would be far worse.
  np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), z, rtol=2**-7, atol=2**-7)


def test_output_dtype_follows_flax_promotion():
  x = jnp.ones((2, 4), jnp.bfloat16)
  assert jn.layer_norm(x, jnp.ones(4, jnp.float32)).dtype == jnp.float32
  assert jn.layer_norm(x, jnp.ones(4, jnp.bfloat16)).dtype == jnp.bfloat16
  assert jn.layer_norm(x, jnp.ones(4), dtype=jnp.bfloat16).dtype == jnp.bfloat16


# --------------------------------------------------------------------------
# transformations


@pytest.mark.parametrize("name", sorted(NORMALIZERS))
def test_check_grads(name):
  fn, _ = NORMALIZERS[name]
  x = randn(3, 2, 2, 4)
  scale, bias = affine(x.shape, (3,))
  if name == "group_norm":
    f = lambda x, s, b: jn.group_norm(x, s, b, num_groups=2)
  elif name == "batch_norm":
    f = lambda x, s, b: jn.batch_norm(x, s, b)[0]
  else:
    f = lambda x, s, b: fn(x, s, b)
  # Weighted sum so that the gradient is not identically zero.
  w = randn(*x.shape, seed=3)
  loss = jax.jit(lambda x, s, b: jnp.sum(w * f(x, s, b) ** 2))
  check_grads(loss, (x, scale, bias), order=2, modes=["rev"], atol=5e-2, rtol=5e-2)


def test_grad_matches_analytic_layer_norm_gradient():
  """dL/dx = (g - mean(g) - z·mean(g·z)) / sqrt(var + eps) for L = Σ w·z."""
  x = randn(4, 10)
  w = randn(4, 10, seed=5)
  g = jax.grad(lambda x: jnp.sum(w * jn.layer_norm(x, epsilon=1e-5)))(x)
  z, _, var = ref.standardize(x, (1,), 1e-5)
  gw = f64(w)
  expected = (gw - gw.mean(1, keepdims=True) - z * (gw * z).mean(1, keepdims=True)) / np.sqrt(var + 1e-5)
  np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-4)


def test_vmap_over_examples_equals_batched_call():
  x = randn(5, 4, 4, 8)
  batched = jn.group_norm(x, num_groups=4)
  per_example = jax.vmap(lambda e: jn.group_norm(e, num_groups=4, reduction_axes=(0, 1, 2)))(x)
  np.testing.assert_allclose(per_example, batched, rtol=1e-5, atol=1e-6)
  ln = jax.vmap(jn.layer_norm)(x)
  np.testing.assert_allclose(ln, jn.layer_norm(x), rtol=1e-6, atol=1e-6)


def test_sync_batch_norm_under_vmap_equals_global_batch_norm():
  x = randn(4, 6, 3)  # 4 "devices" × 6 examples × 3 features
  scale, bias = affine((3,), (0,))
  f = lambda xd: jn.batch_norm(xd, scale, bias, axis_name="d")
  y, stats = jax.vmap(f, axis_name="d")(x)
  y_ref, stats_ref = jn.batch_norm(x.reshape(24, 3), scale, bias)
  np.testing.assert_allclose(y.reshape(24, 3), y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats.mean[0], stats_ref.mean, rtol=1e-5, atol=1e-6)


def test_jit_with_static_configuration():
  x = randn(2, 4, 4, 8)
  f = jax.jit(jn.group_norm, static_argnames=("num_groups", "channel_axis"))
  np.testing.assert_allclose(f(x, num_groups=2), jn.group_norm(x, num_groups=2), rtol=1e-6)


@pytest.mark.parametrize("name", ["layer_norm", "group_norm", "instance_norm", "batch_norm"])
def test_a_group_without_masked_in_elements_outputs_the_bias(name):
  """Its statistics are 0 and 0 (moments); the output is β there, not
  x/√ε (which is 1000·x at ε = 1e-6 and overflows float16 from |x| > 65).
  The other groups are normalized over their masked-in elements."""
  rng = np.random.default_rng(3)
  x = (rng.normal(size=(4, 3, 3, 8)) * 100).astype(np.float16)
  bias = rng.normal(size=8).astype(np.float32)
  mask = np.ones(x.shape, bool)
  if name == "batch_norm":
    mask[..., 2] = False  # channel 2 of every example
    y = jn.batch_norm(x, None, bias, mask=mask)[0]
    empty = (slice(None), slice(None), slice(None), 2)
  else:
    mask[1] = False  # every element of example 1
    kwargs = {"num_groups": 2} if name == "group_norm" else {}
    y = getattr(jn, name)(x, None, bias, mask=mask, **kwargs)
    empty = (1,)
  y = np.asarray(y, np.float32)
  assert np.all(np.isfinite(y))
  np.testing.assert_array_equal(y[empty], np.broadcast_to(bias, y.shape)[empty])  # float32 out: x's and β's dtypes
  if name != "batch_norm":
    reference = getattr(jn, name)(x[:1], None, bias, **({"num_groups": 2} if name == "group_norm" else {}))
    np.testing.assert_allclose(y[:1], np.asarray(reference, np.float32), rtol=2e-3, atol=2e-3)
