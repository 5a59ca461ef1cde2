"""The Pallas kernels (jaxnorm._core.pallas), run with interpret=True on CPU.

Lowered for a GPU the same kernels compile through Triton; here they are
interpreted, which checks their numerics: outputs, statistics and
gradients (forward and reverse mode) equal the reference to float64
precision, over one tile and over many. ``"auto"`` takes them only where
``_dispatch.AUTO_PALLAS`` has a rule, per lowering platform.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

import jaxnorm
from jaxnorm._core import dispatch as _dispatch
from jaxnorm._core import fused as _fused
from jaxnorm._core import pallas as _pallas
from tests.jaxnorm import compat
from tests.jaxnorm.test_export import TRITON
from tests.jaxnorm.test_export import export_for
from tests.jaxnorm.test_fused import CASES
from tests.jaxnorm.test_fused import _inputs
from tests.jaxnorm.test_fused import _loss
from tests.jaxnorm.test_fused import _run
from tests.jaxnorm.test_fused import _uses_fast_path

# Shapes the tiling covers: rows per example (H·W, or N·H·W for batch
# norm) with a power-of-two tile of at least 8 rows.
COVERED = {
  "gn_nhwc": (4, 4, 4, 8),
  "gn_group_size_1": (3, 4, 4, 8),
  "ln_hwc": (3, 4, 4, 8),
  "in_nhwc": (3, 2, 8, 8),
  "rms_hwc": (2, 4, 4, 8),
  "bn_nhwc": (4, 4, 2, 8),
  "bn_running": (6, 4, 8),
  "bn_no_affine": (8, 4, 8),
  "ghost_bn": (8, 4, 2, 8),
  "bn_2d": (32, 8),
}
NOT_COVERED = ["gn_nchw", "in_nchw", "bn_nchw", "ln_last", "gn_nhwc"]  # the last: 15 rows


def _uses_pallas(fn, *args) -> bool:
  return "pallas_call" in str(jax.make_jaxpr(fn)(*args))


def _assert_close(a, b, tol):
  chex.assert_trees_all_equal_shapes_and_dtypes(a, b)
  chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("tile_elements", [_pallas.TILE_ELEMENTS, 64])
@pytest.mark.parametrize("name", sorted(COVERED))
def test_kernels_equal_reference_in_float64(name, tile_elements, monkeypatch):
  """Outputs, statistics and gradients; 64-element tiles force many tiles."""
  monkeypatch.setattr(_pallas, "TILE_ELEMENTS", tile_elements)
  shape, fn = COVERED[name], CASES[name][1]
  with compat.enable_x64(True):
    x, scale, bias, cot = _inputs(shape, jnp.float64)
    with jaxnorm.implementation("pallas"):
      assert _uses_pallas(jax.grad(_loss(fn, cot), (0, 1, 2)), x, scale, bias)
    _assert_close(_run("pallas", fn, x, scale, bias, cot), _run("reference", fn, x, scale, bias, cot), 1e-11)


def _kernels(shape, reduction_axes, feature_axes, acc_dtype=jnp.float32):
  inner = tuple(a for a in reduction_axes if a not in feature_axes)
  xla = _fused.XlaPasses(shape, inner, acc_dtype)
  return _pallas.PallasPasses(xla, reduction_axes=reduction_axes, feature_axes=feature_axes)


def test_many_tiles_are_used_when_the_budget_is_small(monkeypatch):
  monkeypatch.setattr(_pallas, "TILE_ELEMENTS", 64)
  passes = _kernels((1, 8, 4, 4, 8), (1, 2, 3), (4,))
  assert (passes.batch, passes.length, passes.channels, passes.rows, passes.tiles) == (1, 128, 8, 8, 16)
  grouped = _kernels((4, 8, 8, 2, 4), (1, 2, 4), (3, 4))
  assert (grouped.batch, grouped.length, grouped.channels, grouped.rows, grouped.tiles) == (4, 64, 8, 8, 8)


@pytest.mark.parametrize("name", NOT_COVERED)
def test_layouts_the_kernels_do_not_cover_use_the_fused_path(name):
  shape, fn = CASES[name]
  x, scale, bias, _ = _inputs(shape, jnp.float32)
  with jaxnorm.implementation("pallas"):
    assert not _uses_pallas(fn, x, scale, bias)
    assert _uses_fast_path(fn, x, scale, bias)


def test_auto_takes_the_kernels_nowhere_without_a_measured_rule():
  """No on-device result is committed yet: "auto" is the fused path."""
  assert _dispatch.AUTO_PALLAS == {}
  assert _dispatch.AUTO_REFERENCE == {}
  fn = CASES["gn_nhwc"][1]
  x, scale, bias, _ = _inputs(COVERED["gn_nhwc"], jnp.float32)
  with jaxnorm.implementation("auto"):
    assert not _uses_pallas(fn, x, scale, bias)
    assert _uses_fast_path(fn, x, scale, bias)


def test_odd_channel_counts_are_not_covered():
  assert not _pallas.covers((2, 4, 4, 12), (1, 2), (3,))
  assert _pallas.covers((2, 4, 4, 16), (1, 2), (3,))


def test_bfloat16_inputs():
  fn = CASES["gn_nhwc"][1]
  x, scale, bias, cot = _inputs(COVERED["gn_nhwc"], jnp.float32)
  x = x.astype(jnp.bfloat16)
  with jaxnorm.implementation("pallas"):
    assert _uses_pallas(fn, x, scale, bias)
  _assert_close(_run("pallas", fn, x, scale, bias, cot), _run("reference", fn, x, scale, bias, cot), 2e-2)


@pytest.mark.parametrize("name", ["gn_nhwc", pytest.param("bn_nhwc", marks=pytest.mark.slow)])
def test_second_order_gradients_through_the_kernels(name):
  """Differentiating the custom backward pass uses the XLA passes' derivatives."""
  fn = CASES[name][1]
  x, scale, bias, cot = _inputs(COVERED[name], jnp.float32)
  with jaxnorm.implementation("pallas"):
    check_grads(_loss(fn, cot), (x, scale, bias), order=2, modes=["rev"], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", ["gn_nhwc", "bn_nhwc"])
def test_kernels_lower_to_triton_for_cuda_and_interpret_elsewhere(name, dtype):
  """Cross-platform lowering on a CPU host: "pallas" emits three Triton
  kernels for CUDA (sum, centred square sum, affine; the derivatives are the
  fused path's XLA tangent map) for a ResNet-20 activation, forward and
  backward, and none when the same function is lowered for the CPU."""
  fn = CASES[name][1]
  scale, bias = jnp.ones(16), jnp.zeros(16)

  def step(x):
    def loss(x):
      leaves = jax.tree_util.tree_leaves(fn(x.astype(dtype), scale, bias))
      return sum(jnp.sum(leaf.astype(jnp.float32) ** 2) for leaf in leaves)

    return jax.value_and_grad(loss)(x)

  x = jax.ShapeDtypeStruct((128, 8, 8, 16), jnp.float32)
  with jaxnorm.implementation("pallas"):
    cuda = export_for("cuda", step, x).mlir_module()
    cpu = export_for("cpu", step, x).mlir_module()
  assert cuda.count(TRITON) == 3
  assert TRITON not in cpu


@pytest.mark.slow  # 16 s interpreted; the default suite keeps its 15-minute budget
def test_vmap_over_the_kernels():
  """vmap (the experiments' simulated devices) batches the pallas_call."""
  x = jax.random.normal(jax.random.key(0), (3, 4, 8, 8, 16))
  fn = lambda x: jaxnorm.group_norm(x, num_groups=4)
  grad = jax.vmap(jax.grad(lambda x: jnp.sum(fn(x) ** 3)))
  with jaxnorm.implementation("pallas"):
    assert _uses_pallas(jax.vmap(fn), x)
    pallas = jax.vmap(fn)(x), grad(x)
  with jaxnorm.implementation("reference"):
    reference = jax.vmap(fn)(x), grad(x)
  _assert_close(pallas, reference, 1e-4)


def test_both_implementations_of_the_passes_implement_the_whole_interface():
  """XlaPasses and PallasPasses each define every member of the Passes
  protocol themselves (not through a fallback), with the same signature."""
  import inspect

  members = [n for n in dir(_fused.Passes) if not n.startswith("_") and n not in ("single_pass",)]
  assert set(members) == {"sum", "sum_and_square_sum", "centred_square_sum", "affine"}
  xla = _fused.XlaPasses((2, 8, 4), (1,), jnp.float32)
  pallas = _kernels((2, 8, 4), (1,), (2,))
  for passes in (xla, pallas):
    assert isinstance(passes, _fused.Passes)
    assert isinstance(type(passes).single_pass, bool)
    for name in members:
      assert name in vars(type(passes)), (type(passes).__name__, name)
      expected = inspect.signature(getattr(_fused.Passes, name))
      assert inspect.signature(getattr(type(passes), name)).parameters.keys() == expected.parameters.keys()


def test_pallas_passes_equal_the_xla_passes_with_their_derivatives():
  """Every pass of the interface, interpreted on the CPU, against XlaPasses:
  values, and tangents (the kernels' derivative rule is the XLA pass's)."""
  shape = (2, 16, 8)
  x = jax.random.normal(jax.random.key(0), shape) * 2.0 + 1.0
  dx = jax.random.normal(jax.random.key(1), shape)
  mean = jnp.mean(x, axis=1, keepdims=True)
  a, d = jnp.full((2, 1, 8), 0.5), jnp.full((2, 1, 8), -1.0)
  xla = _fused.XlaPasses(shape, (1,), jnp.float32)
  pallas = _kernels(shape, (1,), (2,))
  calls = {
    "sum": lambda p, x: p.sum(x),
    "sum_and_square_sum": lambda p, x: p.sum_and_square_sum(x),
    "centred_square_sum": lambda p, x: p.centred_square_sum(x, mean),
    "affine": lambda p, x: p.affine(x, mean, a, d, jnp.float32),
  }
  for call in calls.values():
    expected, expected_dot = jax.jvp(functools.partial(call, xla), (x,), (dx,))
    got, got_dot = jax.jvp(functools.partial(call, pallas), (x,), (dx,))
    _assert_close(got, expected, 1e-5)
    _assert_close(got_dot, expected_dot, 1e-5)
