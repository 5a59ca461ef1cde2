"""The statistics engine against float64 NumPy, across axes, masks and devices."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax import lax
from jax.test_util import check_grads

import jaxnorm as jn
from references import f64


def np_moments(x, axes, mask=None):
  x = f64(x)
  w = np.ones_like(x) if mask is None else np.broadcast_to(f64(mask), x.shape)
  n = w.sum(axes)
  mean = (w * x).sum(axes) / n
  var = (w * (x - np.expand_dims(mean, axes)) ** 2).sum(axes) / n
  return n, mean, var


@pytest.mark.parametrize(
  "shape,axes",
  [
    ((7,), 0),
    ((4, 5), 1),
    ((4, 5), (0, 1)),
    ((3, 4, 5, 6), (0, 1, 2)),
    ((3, 4, 5, 6), (1, 3)),
    ((3, 4, 5, 6), -1),
    ((3, 4, 5, 6), (-3, -2)),
  ],
)
@pytest.mark.parametrize("fast", [False, True])
def test_matches_numpy(shape, axes, fast):
  x = np.random.default_rng(0).normal(2.0, 3.0, shape).astype(np.float32)
  m = jn.moments(x, axes, use_fast_variance=fast)
  n, mean, var = np_moments(x, axes)
  np.testing.assert_allclose(m.count, n)
  np.testing.assert_allclose(m.mean, mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m.var, var, rtol=1e-4, atol=1e-5)


def test_keepdims_and_uncentred():
  x = np.random.default_rng(1).normal(1.0, 2.0, (3, 4, 5)).astype(np.float32)
  m = jn.moments(x, (0, 2), keepdims=True, use_mean=False)
  assert m.mean.shape == m.var.shape == m.count.shape == (1, 4, 1)
  np.testing.assert_array_equal(m.mean, 0.0)
  np.testing.assert_allclose(m.var, (f64(x) ** 2).mean((0, 2), keepdims=True), rtol=1e-5)


def test_mask_counts_only_masked_in_elements():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(6, 10)).astype(np.float32)
  mask = rng.random((6, 10)) < 0.5
  mask[:, 0] = True  # no empty rows
  m = jn.moments(x, 1, mask=mask)
  n, mean, var = np_moments(x, 1, mask)
  np.testing.assert_allclose(m.count, n)
  np.testing.assert_allclose(m.mean, mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m.var, var, rtol=1e-4, atol=1e-6)


def test_masked_out_nan_does_not_leak_into_values_or_gradients():
  x = jnp.array([[1.0, 2.0, jnp.nan], [3.0, jnp.inf, 5.0]])
  mask = jnp.isfinite(x)
  m = jn.moments(x, 1, mask=mask)
  np.testing.assert_allclose(m.mean, [1.5, 4.0])
  np.testing.assert_allclose(m.var, [0.25, 1.0])
  g = jax.grad(lambda x: jn.moments(x, 1, mask=mask).var.sum())(x)
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(g[~np.asarray(mask)], 0.0)


def test_fully_masked_group_gives_zero_statistics():
  x = jnp.ones((2, 3))
  m = jn.moments(x, 1, mask=jnp.array([[True, True, True], [False, False, False]]))
  np.testing.assert_array_equal(m.count, [3.0, 0.0])
  np.testing.assert_array_equal(m.mean, [1.0, 0.0])
  np.testing.assert_array_equal(m.var, [0.0, 0.0])


def test_broadcast_mask():
  x = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
  row_mask = np.array([True, False, True, True])[:, None]
  m = jn.moments(x, (0, 1), mask=row_mask)
  np.testing.assert_allclose(m.mean, f64(x)[row_mask[:, 0]].mean(), rtol=1e-5)
  np.testing.assert_allclose(m.count, 18.0)


@pytest.mark.parametrize("offset", [1e3, 1e4, 1e5])
def test_stable_variance_with_large_offset(offset):
  """Two-pass variance is accurate where E[x²] − E[x]² is garbage."""
  rng = np.random.default_rng(4)
  x = (offset + rng.normal(size=(64, 1024))).astype(np.float32)
  _, _, var = np_moments(x, 1)
  stable = jn.moments(x, 1).var
  np.testing.assert_allclose(stable, var, rtol=2e-3)
  fast = jn.moments(x, 1, use_fast_variance=True).var
  # Document the failure mode that motivates the default: at 1e4 the
  # one-pass formula is off by more than the variance itself.
  if offset >= 1e4:
    assert np.max(np.abs(np.asarray(fast) - var)) > 1.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_accumulates_in_float32(dtype):
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(3.0, 1.0, (8, 4096)), dtype)
  m = jn.moments(x, 1)
  assert m.mean.dtype == m.var.dtype == jnp.float32
  _, mean, var = np_moments(np.asarray(x.astype(jnp.float32)), 1)
  np.testing.assert_allclose(m.mean, mean, rtol=1e-5)
  np.testing.assert_allclose(m.var, var, rtol=1e-4)
  # Without float32 promotion the reduction runs in the half type.
  low = jn.moments(x, 1, force_float32_reductions=False)
  assert low.mean.dtype == dtype


def test_complex_input():
  rng = np.random.default_rng(6)
  x = (rng.normal(size=(3, 8)) + 1j * rng.normal(size=(3, 8))).astype(np.complex64)
  m = jn.moments(x, 1)
  np.testing.assert_allclose(m.mean, x.astype(np.complex128).mean(1), rtol=1e-5)
  ref_var = (np.abs(x.astype(np.complex128) - x.mean(1, keepdims=True)) ** 2).mean(1)
  np.testing.assert_allclose(m.var, ref_var, rtol=1e-5)
  assert m.var.dtype == jnp.float32


def test_vmap_axis_name_with_unequal_counts_equals_global_statistics():
  """Each 'device' holds a different number of valid elements."""
  rng = np.random.default_rng(7)
  x = rng.normal(size=(4, 10, 3)).astype(np.float32) + np.arange(4)[:, None, None] * 5
  counts = np.array([1, 3, 7, 10])
  mask = np.arange(10)[None, :, None] < counts[:, None, None]
  mask = np.broadcast_to(mask, x.shape)

  def per_device(xd, md):
    return jn.moments(xd, 0, mask=md, axis_name="devices")

  m = jax.vmap(per_device, axis_name="devices")(x, mask)
  _, mean, var = np_moments(x, (0, 1), mask)
  for d in range(4):  # every device sees the same global statistics
    np.testing.assert_allclose(m.count[d], mask.sum((0, 1)))
    np.testing.assert_allclose(m.mean[d], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.var[d], var, rtol=1e-5)
  # Averaging per-device statistics (flax #2417) would be far off here.
  naive = np.mean([np_moments(x[d], 0, mask[d])[1] for d in range(4)], axis=0)
  assert np.max(np.abs(naive - mean)) > 1.0


@pytest.mark.parametrize("fast,use_mean", [(True, True), (False, False)])
def test_vmap_axis_name_other_modes(fast, use_mean):
  rng = np.random.default_rng(8)
  x = rng.normal(1.0, 2.0, (4, 6, 2)).astype(np.float32)
  mask = rng.random(x.shape) < 0.7
  f = lambda xd, md: jn.moments(xd, 0, mask=md, axis_name="i", use_fast_variance=fast, use_mean=use_mean)
  m = jax.vmap(f, axis_name="i")(x, mask)
  n, mean, var = np_moments(x, (0, 1), mask)
  if not use_mean:
    var = (f64(x) ** 2 * mask).sum((0, 1)) / n
    mean = 0 * mean
  np.testing.assert_allclose(m.mean[0], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m.var[2], var, rtol=1e-4)


def test_jit_grad_and_check_grads():
  x = jax.random.normal(jax.random.key(0), (3, 5))
  f = jax.jit(lambda x: jn.moments(x, 1).var.sum() + jn.moments(x, 0).mean.sum())
  check_grads(f, (x,), order=2, modes=["rev"], atol=1e-2, rtol=1e-2)
  # d var / d x_i = 2 (x_i - mean) / n
  g = jax.grad(lambda x: jn.moments(x, 1).var.sum())(x)
  ref = 2 * (f64(x) - f64(x).mean(1, keepdims=True)) / 5
  np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


def test_axis_index_groups_is_passed_through():
  # vmap collectives do not support groups; the error must come from JAX's
  # collective (i.e. the argument reached it), not be silently dropped.
  f = lambda x: jn.moments(x, 0, axis_name="i", axis_index_groups=[[0, 1], [2, 3]])
  with pytest.raises(NotImplementedError, match="axis_index_groups"):
    jax.vmap(f, axis_name="i")(jnp.ones((4, 3)))


def _draw_case(draw):
  shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
  ndim = len(shape)
  axes = draw(st.lists(st.integers(-ndim, ndim - 1), min_size=1, max_size=ndim, unique_by=lambda a: a % ndim))
  offset = draw(st.sampled_from([0.0, 10.0, 1e3]))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  x = (offset + rng.normal(size=shape)).astype(np.float32)
  mask = rng.random(shape) < 0.6 if draw(st.booleans()) else None
  return x, tuple(axes), mask


@given(st.data())
def test_property_random_shapes_axes_masks(data):
  x, axes, mask = data.draw(st.composite(_draw_case)())
  m = jn.moments(x, axes, mask=mask)
  pos = tuple(a % x.ndim for a in axes)
  w = np.ones(x.shape) if mask is None else f64(mask)
  n = w.sum(pos)
  np.testing.assert_allclose(m.count, n)
  safe = np.maximum(n, 1)
  mean = (w * f64(x)).sum(pos) / safe
  var = (w * (f64(x) - np.expand_dims(mean, pos)) ** 2).sum(pos) / safe
  mean = np.where(n > 0, mean, 0.0)
  scale = 1.0 + np.abs(mean)
  np.testing.assert_allclose(m.mean, mean, rtol=1e-5, atol=1e-5 * scale.max())
  # Accuracy of the two-pass variance is limited by the float32 rounding of
  # the mean, ~|mean|·2^-24, squared: far below the data's unit variance.
  np.testing.assert_allclose(m.var, var, rtol=1e-3, atol=1e-4)
  assert np.all(np.asarray(m.var) >= 0)


def test_psum_of_python_count_under_named_axis():
  # Sanity check of the JAX behaviour the engine relies on: psum of an
  # unbatched constant under vmap multiplies it by the axis size.
  out = jax.vmap(lambda x: lax.psum(2.0, "i") + 0 * x, axis_name="i")(jnp.ones(3))
  np.testing.assert_array_equal(out, 6.0)
