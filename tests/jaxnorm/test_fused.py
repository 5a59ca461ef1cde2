"""The fused path (jaxnorm._core.fused) against the composed reference.

Every standardizing normalizer runs the fused path by default; these tests
pin that it computes the same function and the same derivatives as the
reference (JAX's autodiff of moments + normalize), in float64 to 1e-12,
and that it steps aside exactly where it does not apply.
"""

import math
import os
import re
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm
from jaxnorm._core import dispatch as _dispatch
from jaxnorm._core import fused as _fused
from tests.jaxnorm import compat
from tests.jaxnorm import references as ref

# name -> (input shape, f(x, scale, bias) -> output or (output, stats)).
# Inputs have 8 channels on the feature axis (12 for gn_2d).
CASES = {
  "gn_nhwc": ((4, 5, 3, 8), lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=4)),
  "gn_nchw": (
    (4, 8, 5, 3),
    lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=2, channel_axis=1),
  ),
  "gn_group_size_1": ((3, 4, 4, 8), lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=None, group_size=1)),
  "gn_2d": ((6, 12), lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=3)),
  "gn_reduction_axes": (
    (3, 4, 5, 8),
    lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=2, reduction_axes=(2, 3)),
  ),
  "ln_last": ((4, 7, 8), lambda x, s, b: jaxnorm.layer_norm(x, s, b)),
  "ln_hwc": ((3, 4, 5, 8), lambda x, s, b: jaxnorm.layer_norm(x, s, b, reduction_axes=(1, 2, 3))),
  "ln_features_elsewhere": (
    (3, 8, 5),
    lambda x, s, b: jaxnorm.layer_norm(x, s, b, reduction_axes=(1, 2), feature_axes=1),
  ),
  "in_nhwc": ((3, 4, 5, 8), lambda x, s, b: jaxnorm.instance_norm(x, s, b)),
  "in_nchw": ((3, 8, 4, 5), lambda x, s, b: jaxnorm.instance_norm(x, s, b, feature_axes=1)),
  "rms": ((4, 6, 8), lambda x, s, b: jaxnorm.rms_norm(x, s)),
  "rms_hwc": ((3, 4, 5, 8), lambda x, s, b: jaxnorm.rms_norm(x, s, reduction_axes=(1, 2, 3))),
  "bn_nhwc": ((6, 4, 3, 8), lambda x, s, b: jaxnorm.batch_norm(x, s, b)),
  "bn_nchw": ((6, 8, 4, 3), lambda x, s, b: jaxnorm.batch_norm(x, s, b, axis=1)),
  "bn_2d": ((10, 8), lambda x, s, b: jaxnorm.batch_norm(x, s, b)),
  "ghost_bn": ((8, 3, 2, 8), lambda x, s, b: jaxnorm.batch_norm(x, s, b, virtual_batch_size=2)),
  "bn_running": (
    (6, 4, 8),
    lambda x, s, b: jaxnorm.batch_norm(x, s, b, jnp.zeros(8), jnp.ones(8), momentum=0.9),
  ),
  "bn_no_affine": ((6, 4, 8), lambda x, s, b: jaxnorm.batch_norm(x)),
  "gn_scale_only": ((4, 5, 8), lambda x, s, b: jaxnorm.group_norm(x, s, None, num_groups=2)),
}


def _loss(fn, cotangents):
  """A scalar touching every output, statistics included, with weights."""

  def loss(x, scale, bias):
    leaves = jax.tree_util.tree_leaves(fn(x, scale, bias))
    return sum(jnp.sum(leaf * c[: leaf.size].reshape(leaf.shape)) for leaf, c in zip(leaves, cotangents))

  return loss


def _inputs(shape, dtype, seed=0, offset=3.0):
  kx, ks, kb, kc = jax.random.split(jax.random.key(seed), 4)
  channels = 12 if shape == (6, 12) else 8
  x = offset + 2.0 * jax.random.normal(kx, shape, dtype)
  scale = 1.0 + 0.3 * jax.random.normal(ks, (channels,), dtype)
  bias = 0.5 * jax.random.normal(kb, (channels,), dtype)
  size = int(np.prod(shape))
  cotangents = [jax.random.normal(k, (size,), dtype) for k in jax.random.split(kc, 4)]
  return x, scale, bias, cotangents


def _run(implementation, fn, x, scale, bias, cotangents):
  with jaxnorm.implementation(implementation):
    # A fresh function per implementation: the choice is read when tracing.
    out = jax.jit(lambda *a: fn(*a))(x, scale, bias)
    grads = jax.jit(jax.grad(_loss(fn, cotangents), (0, 1, 2)))(x, scale, bias)
  return out, grads


def _uses_fast_path(fn, *args) -> bool:
  """Whether the fused (or Pallas) path's custom derivative rule is traced."""
  return "custom_jvp_call" in str(jax.make_jaxpr(fn)(*args))


# Offset 3 (σ = 2): single-pass statistics; offset 300: the centred pass.
@pytest.mark.parametrize("offset", [3.0, 300.0])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_equals_reference_in_float64(name, offset):
  shape, fn = CASES[name]
  with compat.enable_x64(True):
    x, scale, bias, cot = _inputs(shape, jnp.float64, offset=offset)
    with jaxnorm.implementation("fused"):
      assert _uses_fast_path(fn, x, scale, bias), "the fused path was not taken"
    fused = _run("fused", fn, x, scale, bias, cot)
    reference = _run("reference", fn, x, scale, bias, cot)
    chex.assert_trees_all_equal_shapes_and_dtypes(fused, reference)
    chex.assert_trees_all_close(fused, reference, rtol=1e-11, atol=1e-11)


def test_fused_gradient_matches_the_analytic_formula():
  """∂x = r(g − mean g − x̂ mean(g x̂)), g = γ ∂y, per group (float64 NumPy)."""
  with compat.enable_x64(True):
    x, scale, bias, cot = _inputs((3, 4, 4, 8), jnp.float64)
    dy = cot[0].reshape(x.shape)
    with jaxnorm.implementation("fused"):
      _, pullback = jax.vjp(lambda x: jaxnorm.group_norm(x, scale, bias, num_groups=2, epsilon=1e-5), x)
      (dx,) = pullback(dy)
  xn, g = ref.f64(x).reshape(3, 16, 2, 4), (ref.f64(dy) * ref.f64(scale)).reshape(3, 16, 2, 4)
  xhat, _, var = ref.standardize(xn, axes=(1, 3), eps=1e-5)
  mean = lambda a: a.mean((1, 3), keepdims=True)
  expected = (g - mean(g) - xhat * mean(g * xhat)) / np.sqrt(var + 1e-5)
  np.testing.assert_allclose(np.asarray(dx), expected.reshape(x.shape), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["gn_nhwc", "bn_nhwc", "rms", "ln_features_elsewhere"])
def test_fused_second_order_reverse_gradients(name):
  """In float64: float32 finite differences of a second derivative are too
  noisy to check (jax 0.12.1 moved one past a 5 % tolerance)."""
  shape, fn = CASES[name]
  with compat.enable_x64(True):
    x, scale, bias, cot = _inputs(shape, jnp.float64)
    with jaxnorm.implementation("fused"):
      check_grads(_loss(fn, cot), (x, scale, bias), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_fused_large_offset_stays_accurate(offset):
  """x = offset + N(0, 1) in float32: outputs and input gradients vs float64.

  Uncentred sums lose about (offset/σ)² · 6e-8 relative: 6e-2 at 1e3 (still
  a positive variance), everything at 1e4; the centred pass must be taken.
  """
  x = offset + jax.random.normal(jax.random.key(0), (8, 6, 6, 16))
  dy = jax.random.normal(jax.random.key(1), x.shape)
  fn = lambda x: jaxnorm.group_norm(x, num_groups=4, epsilon=1e-5)
  with jaxnorm.implementation("fused"):
    y, pullback = jax.vjp(fn, x)
    (dx,) = pullback(dy)
  with compat.enable_x64(True), jaxnorm.implementation("reference"):
    y64, pullback64 = jax.vjp(fn, jnp.asarray(np.asarray(x), jnp.float64))
    (dx64,) = pullback64(jnp.asarray(np.asarray(dy), jnp.float64))
  assert np.max(np.abs(np.asarray(y, np.float64) - np.asarray(y64))) < 5e-3
  assert np.max(np.abs(np.asarray(dx, np.float64) - np.asarray(dx64))) < 5e-3


@pytest.mark.parametrize("name", ["gn_nhwc", "bn_nchw", "ln_last"])
def test_fused_half_precision_matches_reference(name):
  shape, fn = CASES[name]
  x, scale, bias, cot = _inputs(shape, jnp.float32)
  x = x.astype(jnp.bfloat16)
  fused = _run("fused", fn, x, scale, bias, cot)
  reference = _run("reference", fn, x, scale, bias, cot)
  chex.assert_trees_all_equal_dtypes(fused, reference)
  chex.assert_trees_all_close(fused, reference, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", ["gn_nhwc", "gn_nchw", "bn_nhwc", "bn_nchw", "ln_last", "rms"])
def test_bfloat16_input_gradient_is_rounded_once(name):
  """The input gradient of a bfloat16 input is computed in float32 and
  rounded to bfloat16 once: within half a bfloat16 ulp of the float64
  gradient (plus float32 error). Rounding each of its terms first, as a
  per-use conversion of the tangent did, missed it by up to 36 ulp where
  the terms cancel."""
  shape, fn = CASES[name]
  x, scale, bias, cotangents = _inputs(shape, jnp.float32)
  x = x.astype(jnp.bfloat16)
  with jaxnorm.implementation("fused"):
    dx = jax.grad(_loss(fn, cotangents))(x, scale, bias)
  assert dx.dtype == jnp.bfloat16
  with compat.enable_x64(), jaxnorm.implementation("reference"):
    x64, scale64, bias64 = (jnp.asarray(np.asarray(a, np.float64)) for a in (x, scale, bias))
    cot64 = [jnp.asarray(np.asarray(c, np.float64)) for c in cotangents]
    exact = np.asarray(jax.grad(_loss(fn, cot64))(x64, scale64, bias64))
  ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(exact), 1e-30))) - 7)
  error = np.abs(np.asarray(dx, np.float64) - exact)
  excess = error - (0.5 * ulp + 1e-5 * np.abs(exact))
  assert excess.max() <= 0, f"{np.max(error / ulp):.2f} ulp"


def test_fused_under_vmap_equals_per_example_calls():
  x, scale, bias, _ = _inputs((5, 4, 3, 8), jnp.float32)
  with jaxnorm.implementation("fused"):
    fn = lambda x: jaxnorm.group_norm(x[None], scale, bias, num_groups=4)[0]
    batched = jax.vmap(fn)(x)
    grads = jax.vmap(jax.grad(lambda x: jnp.sum(fn(x) ** 3)))(x)
    singles = jnp.stack([fn(e) for e in x])
    single_grads = jnp.stack([jax.grad(lambda x: jnp.sum(fn(x) ** 3))(e) for e in x])
  np.testing.assert_allclose(batched, singles, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(grads, single_grads, rtol=1e-5, atol=1e-5)


FALLBACKS = {
  "mask": lambda x: jaxnorm.layer_norm(x, mask=x > 0),
  "fast_variance": lambda x: jaxnorm.group_norm(x, num_groups=2, use_fast_variance=True),
  "learned_epsilon": lambda x: jaxnorm.filter_response_norm(x, learned_epsilon=jnp.ones(())),
  "complex": lambda x: jaxnorm.layer_norm(x + 1j * x),
}


@pytest.mark.parametrize("name", sorted(FALLBACKS))
def test_options_the_fused_path_lacks_use_the_reference(name):
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
  with jaxnorm.implementation("fused"):
    assert not _uses_fast_path(FALLBACKS[name], x)


def test_axis_name_uses_the_reference():
  x = jax.random.normal(jax.random.key(0), (4, 3, 8))
  fn = jax.vmap(lambda x: jaxnorm.batch_norm(x, axis_name="d")[0], axis_name="d")
  with jaxnorm.implementation("fused"):
    assert not _uses_fast_path(fn, x)


def test_reference_implementation_supports_forward_mode():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  fn = lambda x: jnp.sum(jaxnorm.group_norm(x, num_groups=4) ** 3)
  v = jnp.ones_like(x)
  with jaxnorm.implementation("reference"):
    assert not _uses_fast_path(fn, x)
    _, hvp_forward = jax.jvp(jax.grad(fn), (x,), (v,))
  with jaxnorm.implementation("fused"):
    hvp_reverse = jax.grad(lambda x: jnp.vdot(jax.grad(fn)(x), v))(x)
  np.testing.assert_allclose(hvp_forward, hvp_reverse, rtol=1e-4, atol=1e-4)


def test_implementation_switch_and_errors(monkeypatch):
  assert jaxnorm.get_implementation() == "auto"
  with jaxnorm.implementation("reference"):
    assert jaxnorm.get_implementation() == "reference"
    with jaxnorm.implementation("fused"):
      assert jaxnorm.get_implementation() == "fused"
    assert jaxnorm.get_implementation() == "reference"
  assert jaxnorm.get_implementation() == "auto"
  jaxnorm.set_implementation("reference")
  try:
    assert jaxnorm.get_implementation() == "reference"
  finally:
    jaxnorm.set_implementation("auto")
  with (
    pytest.raises(ValueError, match=r"name='xla'.*'auto', 'fused', 'reference', 'pallas'"),
    jaxnorm.implementation("xla"),
  ):
    pass
  with pytest.raises(ValueError, match="set_implementation"):
    jaxnorm.set_implementation("fast")


@pytest.mark.parametrize("value,expected", [("reference", "reference"), ("fast", "ValueError")])
def test_environment_variable_sets_the_initial_implementation(value, expected):
  code = "import jaxnorm\nprint(jaxnorm.get_implementation())\n"
  env = {**os.environ, "JAXNORM_IMPLEMENTATION": value}
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  if expected == "ValueError":
    assert proc.returncode != 0
    assert "JAXNORM_IMPLEMENTATION='fast'" in proc.stderr and "'reference'" in proc.stderr
  else:
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


@pytest.mark.skipif(
  not _dispatch.CHOICE_IN_TRACE_KEY, reason="this jax's trace caches do not key on the implementation choice (jax 0.7)"
)
def test_a_jitted_function_is_retraced_when_the_implementation_changes():
  """The choice is part of JAX's trace cache key: no stale trace is reused."""
  f = jax.jit(lambda x: jaxnorm.group_norm(x, num_groups=2))
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  with jaxnorm.implementation("fused"):
    assert _uses_fast_path(f, x)
    f(x)
  with jaxnorm.implementation("reference"):
    assert not _uses_fast_path(f, x)
    f(x)
  with jaxnorm.implementation("fused"):
    assert _uses_fast_path(f, x)


@pytest.mark.parametrize("name", ["bn_nhwc", "gn_nhwc", "ln_last"])
def test_reverse_mode_of_a_vmapped_function(name):
  """grad of vmap (the experiments' simulated devices): the tangent map must
  hold no run-time conditional, which vmap would turn into a select that JAX
  cannot transpose."""
  shape, fn = CASES[name]
  x, scale, bias, _ = _inputs(shape, jnp.float32)
  xs = jnp.stack([x, 2.0 * x + 1.0])
  loss = lambda x: jnp.sum(jax.tree_util.tree_leaves(fn(x, scale, bias))[0] ** 2)
  with jaxnorm.implementation("fused"):
    fused = jax.grad(lambda xs: jnp.sum(jax.vmap(loss)(xs)))(xs)
  with jaxnorm.implementation("reference"):
    reference = jax.grad(lambda xs: jnp.sum(jax.vmap(loss)(xs)))(xs)
  np.testing.assert_allclose(fused, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_fusion_fence_is_the_exact_identity_and_linear(dtype):
  with compat.enable_x64(dtype == "float64"):
    _check_fence(dtype)


def _check_fence(dtype):
  info = jnp.finfo(dtype)
  special = [0.0, -0.0, np.inf, -np.inf, np.nan, float(info.max), float(info.tiny), float(info.tiny) / 4]
  values = np.concatenate([np.random.default_rng(0).standard_normal(64) * 1e3, special])
  a = jnp.asarray(values, dtype)
  out = jax.jit(_fused.fence)(a)
  assert out.dtype == a.dtype
  bits = f"u{a.dtype.itemsize}"  # bit patterns: NaN payloads and signed zeros too
  np.testing.assert_array_equal(np.asarray(out).view(bits), np.asarray(a).view(bits))
  # Linear: forward and reverse mode pass tangents through unchanged.
  t = jnp.arange(a.size, dtype=dtype)
  np.testing.assert_array_equal(jax.jvp(_fused.fence, (a,), (t,))[1], t)
  np.testing.assert_array_equal(jax.linear_transpose(_fused.fence, a)(t)[0], t)


def test_private_copies_are_the_identity_and_distinct_operations():
  a = jnp.asarray(np.random.default_rng(1).standard_normal((4, 1)), jnp.float32)
  for k in (1, 2, 3):
    np.testing.assert_array_equal(jax.jit(lambda a, k=k: _fused.private(a, k, 64))(a), a)
  # Each k is its own operation (k fences), so XLA cannot merge two copies.
  text = jax.jit(lambda a: (_fused.private(a, 1, 64), _fused.private(a, 3, 64))).lower(a).as_text()
  assert text.count("reduce_precision") == 4
  # A full-size operand is passed through without a copy.
  assert "reduce_precision" not in jax.jit(lambda a: _fused.private(a, 2, 4)).lower(a).as_text()


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_feature_backward_reads_no_full_size_temporary(norm):
  """The LN/RMS reverse pass keeps no full-size buffer (XLA:CPU, where the
  tangent map is written so that each reduction fuses its own inputs)."""
  if jax.default_backend() != "cpu" or jax.__version_info__ < (0, 10):
    pytest.skip("a property of XLA:CPU's YNNPACK reduction fusions (jax >= 0.10)")
  x = jnp.ones((8, 64, 256), jnp.float32)
  scale, bias = jnp.ones((256,)), jnp.zeros((256,))

  def f(x, scale, bias):
    return jaxnorm.layer_norm(x, scale, bias) if norm == "layer" else jaxnorm.rms_norm(x, scale)

  def step(cot, x, scale, bias):
    y, pullback = jax.vjp(f, x, scale, bias)
    return y, pullback(cot)

  compiled = jax.jit(step).lower(x, x, scale, bias).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < x.nbytes / 4


def _library_reductions(hlo: str) -> list[tuple[int, tuple[int, ...]]]:
  """``(size of the largest operand, result shape)`` of each ``reduce`` in
  a library (``kind=kCustom``: YNNPACK on XLA:CPU) fusion of an optimized
  HLO module; the size is that of the fusion's largest parameter."""
  found = []
  for called in re.findall(r"kind=kCustom, calls=(%[\w.\-]+)", hlo):
    start = hlo.index(f"\n{called} (")
    body = hlo[start : hlo.index("\n}", start)]
    params = re.findall(r"= \w+\[([\d,]*)\]\S* parameter\(", body)
    largest = max(math.prod(int(d) for d in p.split(",") if d) for p in params)
    for m in re.finditer(r"= \w+\[([\d,]*)\]\S* reduce\(", body):
      found.append((largest, tuple(int(d) for d in m.group(1).split(",") if d)))
  return found


@pytest.mark.parametrize("channel_axis", [-1, 1])
@pytest.mark.parametrize("norm", ["modulated_batch", "group"])
def test_small_sums_of_the_backward_pass_run_apart(norm, channel_axis):
  """The transpose's sums of small arrays (over the examples for a
  per-example γ of a modulated batch norm; over the examples and over the
  channels of a group for group norm) are plain reductions to compact
  arrays, not YNNPACK fusions of the products before them and a reduction
  that keeps the size-1 axes of the rank-5 view (``(1, N, 1, 1, C) ->
  (1, 1, 1, C)``), which ran 30 times slower on XLA:CPU. (Reductions
  inside XLA's own loop fusions are fast at this size.)"""
  if jax.default_backend() != "cpu" or jax.__version_info__ < (0, 10):
    pytest.skip("a property of XLA:CPU's fusions (jax >= 0.10)")
  n, c = 128, 64  # the ResNet-20 activation 128×8×8×64 (XLA fuses tiny shapes differently)
  shape = (n, 8, 8, c) if channel_axis == -1 else (n, c, 8, 8)
  x = jnp.ones(shape)
  if norm == "group":
    layer = jaxnorm.GroupNorm(num_groups=8, channel_axis=channel_axis)
    modulation = ()
  else:
    layer = jaxnorm.BatchNorm(use_running_average=False, axis=channel_axis)
    modulation = (jnp.zeros((n, c)), jnp.zeros((n, c)))
  variables = layer.init(jax.random.key(0), x)

  def step(cot, params, x, *modulation):
    def f(params, x, *modulation):
      kwargs = dict(zip(("scale", "shift"), modulation))
      return layer.apply({**variables, "params": params}, x, **kwargs, mutable=["batch_stats"])[0]

    y, pullback = jax.vjp(f, params, x, *modulation)
    return y, pullback(cot)

  hlo = jax.jit(step).lower(x, variables["params"], x, *modulation).compile().as_text()
  small = [result for largest, result in _library_reductions(hlo) if largest <= n * c]
  assert small, "expected small sums"
  assert all(1 not in result for result in small), small


def _loop_fusion_shapes(hlo: str, out_shape: tuple[int, ...]) -> list[set[tuple[int, ...]]]:
  """For each XLA loop fusion (``kind=kLoop``) whose result has
  ``out_shape``, the shapes of the float arrays computed inside it."""
  found = []
  result = f"[{','.join(map(str, out_shape))}]"
  for line in hlo[hlo.index("ENTRY") :].splitlines():
    if "kind=kLoop" in line and result in line.split(" fusion(")[0]:
      called = re.search(r"calls=(%[\w.\-]+)", line).group(1)
      start = hlo.index(f"\n{called} (")
      body = hlo[start : hlo.index("\n}", start)]
      found.append({tuple(int(d) for d in m.split(",")) for m in re.findall(r"= f32\[([\d,]+)\]", body)})
  return found


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_channels_first_elementwise_pass_loops_over_the_merged_spatial_axes(norm, monkeypatch):
  """The output pass of an NCHW float32 input runs on the view
  ``(N, C, H·W)``: XLA:CPU vectorizes its loop over the last axis, one
  vector per iteration over ``W = 8`` (GN and BN forward + backward at
  128×64×8×8 took 1.1–1.3× as long). A bfloat16 input keeps the reductions'
  view: its conversion to float32 is shared by every pass, and in two
  views XLA writes out another full-size float32 copy."""
  if jax.default_backend() != "cpu" or jax.__version_info__ < (0, 10):
    pytest.skip("a property of XLA:CPU's fusions (jax >= 0.10)")
  shape = (128, 64, 8, 8)
  if norm == "group":
    layer = jaxnorm.GroupNorm(num_groups=8, channel_axis=1)
  else:
    layer = jaxnorm.BatchNorm(use_running_average=False, axis=1)

  def compiled(dtype, backward):
    x = jnp.ones(shape, dtype)
    variables = layer.init(jax.random.key(0), x)

    def forward(variables, x):
      return layer.apply(variables, x, mutable=["batch_stats"])[0]

    if not backward:
      return jax.jit(forward).lower(variables, x).compile()
    step = lambda variables, x, cot: jax.vjp(forward, variables, x)[1](cot)
    return jax.jit(step).lower(variables, x, jnp.ones(shape, jnp.float32)).compile()

  passes = _loop_fusion_shapes(compiled(jnp.float32, backward=False).as_text(), shape)
  assert passes, "expected the output pass as a loop fusion"
  assert all((128 * 64, 64) in p or (128, 64, 64) in p for p in passes), passes
  full_size = [s for p in passes for s in p if math.prod(s) == math.prod(shape) and s != shape]
  assert not any(s[-2:] == (8, 8) for s in full_size), passes

  temp = compiled(jnp.bfloat16, backward=True).memory_analysis().temp_size_in_bytes
  monkeypatch.setattr(_fused.XlaPasses, "_elementwise_view", lambda self, x: self.reduction_view)
  one_view = compiled(jnp.bfloat16, backward=True).memory_analysis().temp_size_in_bytes
  assert temp <= one_view, (temp, one_view)


def test_a_reference_rule_makes_auto_compute_the_reference(monkeypatch):
  """A rule in AUTO_REFERENCE for the platform in use makes "auto" the
  reference composition there: the same outputs and gradients (group and
  layer norm), for float32 and bfloat16 inputs (the branches of the per-platform choice
  must agree in shape and dtype)."""
  monkeypatch.setitem(_dispatch.AUTO_REFERENCE, jax.default_backend(), lambda shape, reduction_axes, feature_axes: True)
  key = jax.random.key(3)
  for dtype in (jnp.float32, jnp.bfloat16):
    x = (3 + jax.random.normal(key, (4, 6, 6, 8))).astype(dtype)
    scale, bias = jnp.linspace(0.5, 1.5, 8), jnp.linspace(-1, 1, 8)

    def loss(x, scale, bias):
      y = jaxnorm.group_norm(x, scale, bias, num_groups=4) + jaxnorm.layer_norm(x, scale, bias)
      return jnp.sum(jnp.sin(y.astype(jnp.float32)))

    results = {}
    for name in ("auto", "reference", "fused"):
      with jaxnorm.implementation(name):
        results[name] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, scale, bias)
    for a, b in zip(jax.tree.leaves(results["auto"]), jax.tree.leaves(results["reference"])):
      np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    # and the fused path differs from it somewhere (else the test shows nothing)
    assert any(
      not np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
      for a, b in zip(jax.tree.leaves(results["auto"]), jax.tree.leaves(results["fused"]))
    )
