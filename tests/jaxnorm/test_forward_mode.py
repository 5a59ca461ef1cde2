"""Every JAX transformation through every normalizer under ``"auto"``.

The fast paths define a ``custom_jvp`` (jaxnorm._core.fused); JAX derives
reverse mode by transposing its tangent map. These tests pin that forward
mode, reverse mode and their compositions — ``jvp``, ``jacfwd``,
``linearize``, ``hessian``, forward-over-reverse and reverse-over-reverse —
give what JAX's own differentiation of the reference path gives: to 1e-10
in float64, and to float32 rounding in float32. ``fold_batch_norm`` and
``precise_batch_stats`` are utilities built on these functions and are not
repeated here.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm
from jaxnorm._core import dispatch as _dispatch
from tests.jaxnorm import compat
from tests.jaxnorm.test_fused import _uses_fast_path


def _uses_tangent_map(fn, *args) -> bool:
  """Whether the fast paths' rematerialized tangent map was traced (what a
  ``custom_jvp`` leaves in a jaxpr once its rule has been applied)."""
  jaxpr = str(jax.make_jaxpr(fn)(*args))
  return "remat" in jaxpr or "checkpoint" in jaxpr


C = 4  # channels
SHAPES = {"NHWC": (2, 3, 3, C), "NCHW": (2, C, 3, 3)}


def _channel(layout):
  return 1 if layout == "NCHW" else -1


def _per_channel_shape(layout):
  return (1, C, 1, 1) if layout == "NCHW" else (1, 1, 1, C)


def _functional(fn, nparams=2):
  """``(f(x, params), params)`` for a function taking per-channel params."""

  def build(layout, dtype):
    keys = jax.random.split(jax.random.key(7), nparams)
    params = tuple((1.0 if i == 0 else 0.0) + 0.3 * jax.random.normal(k, (C,), dtype) for i, k in enumerate(keys))
    return (lambda x, p: fn(layout, x, *p)), params

  return build


def _module(make):
  """``(f(x, params), params)`` for a flax module (training mode)."""

  def build(layout, dtype):
    module = make(layout)
    x = jnp.zeros(SHAPES[layout], dtype)
    variables = module.init(jax.random.key(3), x)
    params = jax.tree_util.tree_map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.key(p.size), p.shape, dtype), variables["params"]
    )
    state = {k: v for k, v in variables.items() if k != "params"}

    def f(x, params):
      out, _ = module.apply({"params": params, **state}, x, mutable=list(state))
      return out

    return f, params

  return build


def _batch_norm(layout, x, scale, bias):
  zeros = jnp.zeros((C,), x.dtype)
  y, _ = jaxnorm.batch_norm(x, scale, bias, zeros, zeros + 1, axis=_channel(layout))
  return y


def _layer_norm(layout, x, scale, bias):
  if layout == "NCHW":  # statistics over C, H, W; parameters per channel
    return jaxnorm.layer_norm(
      x, scale.reshape(1, C, 1, 1), bias.reshape(1, C, 1, 1), reduction_axes=(1, 2, 3), feature_axes=1
    )
  return jaxnorm.layer_norm(x, scale, bias)


def _rms_norm(layout, x, scale, bias):
  if layout == "NCHW":
    return jaxnorm.rms_norm(x, scale.reshape(1, C, 1, 1), reduction_axes=(1, 2, 3), feature_axes=1)
  return jaxnorm.rms_norm(x, scale)


def _standardize_weight(layout, x, gain, bias):
  del layout, bias  # x plays the role of an HWIO kernel with C outputs
  return jaxnorm.standardize_weight(x, gain)


def _moments(layout, x, scale, bias):
  del scale, bias
  stats = jaxnorm.moments(x, (0, 2, 3) if layout == "NCHW" else (0, 1, 2), keepdims=True)
  return stats.mean, stats.var


def _normalize(layout, x, scale, bias):
  stats = jaxnorm.moments(x, (0, 2, 3) if layout == "NCHW" else (0, 1, 2), keepdims=True)
  shape = _per_channel_shape(layout)
  return jaxnorm.normalize(x, stats.mean, stats.var, scale.reshape(shape), bias.reshape(shape), epsilon=1e-5)


def _group_conv(layout):
  return jaxnorm.StandardizedConv(features=C, kernel_size=(2, 2)) if layout == "NHWC" else None


TARGETS = {
  # functions
  "batch_norm": _functional(_batch_norm),
  "ghost_batch_norm": _functional(
    lambda l, x, s, b: jaxnorm.batch_norm(x, s, b, axis=_channel(l), virtual_batch_size=1)[0]
  ),
  "batch_renorm": _functional(
    lambda l, x, s, b: jaxnorm.batch_renorm(
      x, s, b, jnp.zeros((C,), x.dtype) + 0.1, jnp.ones((C,), x.dtype), axis=_channel(l)
    )[0]
  ),
  "layer_norm": _functional(_layer_norm),
  "rms_norm": _functional(_rms_norm),
  "instance_norm": _functional(lambda l, x, s, b: jaxnorm.instance_norm(x, s, b, feature_axes=_channel(l))),
  "group_norm": _functional(lambda l, x, s, b: jaxnorm.group_norm(x, s, b, num_groups=2, channel_axis=_channel(l))),
  "filter_response_norm": _functional(
    lambda l, x, s, b: jaxnorm.filter_response_norm(x, s, b, jnp.full((C,), -0.2, x.dtype), channel_axis=_channel(l))
  ),
  "evonorm_b0": _functional(
    lambda l, x, s, b: jaxnorm.evonorm_b0(x, s, b, jnp.ones((C,), x.dtype), channel_axis=_channel(l))[0]
  ),
  "evonorm_s0": _functional(
    lambda l, x, s, b: jaxnorm.evonorm_s0(x, s, b, jnp.ones((C,), x.dtype), num_groups=2, channel_axis=_channel(l))
  ),
  "standardize_weight": _functional(_standardize_weight),
  "moments": _functional(_moments),
  "normalize": _functional(_normalize),
  # modules
  "BatchNorm": _module(lambda l: jaxnorm.BatchNorm(use_running_average=False, axis=_channel(l))),
  "LayerNorm": _module(
    lambda l: jaxnorm.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=1) if l == "NCHW" else jaxnorm.LayerNorm()
  ),
  "RMSNorm": _module(
    lambda l: jaxnorm.RMSNorm(reduction_axes=(1, 2, 3), feature_axes=1) if l == "NCHW" else jaxnorm.RMSNorm()
  ),
  "InstanceNorm": _module(lambda l: jaxnorm.InstanceNorm(feature_axes=_channel(l))),
  "GroupNorm": _module(lambda l: jaxnorm.GroupNorm(num_groups=2, channel_axis=_channel(l))),
  "BatchRenorm": _module(lambda l: jaxnorm.BatchRenorm(use_running_average=False, axis=_channel(l))),
  "FilterResponseNorm": _module(lambda l: jaxnorm.FilterResponseNorm(channel_axis=_channel(l))),
  "EvoNormB0": _module(lambda l: jaxnorm.EvoNormB0(use_running_average=False, channel_axis=_channel(l))),
  "EvoNormS0": _module(lambda l: jaxnorm.EvoNormS0(num_groups=2, channel_axis=_channel(l))),
  "StandardizedConv": _module(_group_conv),
}
# Layouts each target is checked in: NCHW where the target has a channel axis.
CHANNELS_LAST_ONLY = {"standardize_weight", "StandardizedConv"}
# The targets whose default path is the fused custom_jvp (pinned below).
# The others compose the reference statistics under every implementation,
# so comparing "auto" with "reference" there would compare a path with
# itself: they are checked for consistency between modes instead.
FAST_PATH = {
  "batch_norm",
  "ghost_batch_norm",
  "layer_norm",
  "rms_norm",
  "instance_norm",
  "group_norm",
  "filter_response_norm",
  "BatchNorm",
  "LayerNorm",
  "RMSNorm",
  "InstanceNorm",
  "GroupNorm",
  "FilterResponseNorm",
}


def _cases(fast_path=None):
  for name in TARGETS:
    if fast_path is not None and (name in FAST_PATH) != fast_path:
      continue
    for layout in ("NHWC",) if name in CHANNELS_LAST_ONLY else ("NHWC", "NCHW"):
      yield name, layout


def _scalar(f):
  """A scalar loss with a non-trivial Hessian, touching every output."""

  def loss(x, params):
    leaves = jax.tree_util.tree_leaves(f(x, params))
    return sum(jnp.sum(jnp.sin(leaf) * (1.0 + 0.1 * leaf)) for leaf in leaves)

  return loss


def _transformations(f, x, params, tx, tparams):
  """Six compositions of forward and reverse mode, as a dict of pytrees."""
  loss = _scalar(f)
  grad = jax.grad(loss, argnums=(0, 1))
  _, linear = jax.linearize(f, x, params)
  return {
    "jvp": jax.jvp(f, (x, params), (tx, tparams)),
    "jacfwd": jax.jacfwd(f, argnums=(0, 1))(x, params),
    "linearize": linear(tx, tparams),
    "hessian": jax.hessian(loss, argnums=(0, 1))(x, params),
    "jvp_of_grad": jax.jvp(grad, (x, params), (tx, tparams)),
    "grad_of_grad": jax.grad(lambda x, p: jnp.sum(jnp.square(grad(x, p)[0])), argnums=(0, 1))(x, params),
  }


def _inputs(name, layout, dtype):
  f, params = TARGETS[name](layout, dtype)
  kx, kt, kp = jax.random.split(jax.random.key(11), 3)
  x = 1.5 + jax.random.normal(kx, SHAPES[layout], dtype)
  tx = jax.random.normal(kt, x.shape, dtype)
  leaves, tree = jax.tree_util.tree_flatten(params)
  tparams = tree.unflatten(
    [jax.random.normal(k, p.shape, dtype) for k, p in zip(jax.random.split(kp, len(leaves)), leaves)]
  )
  return f, x, params, tx, tparams


def _compute(implementation, name, layout, dtype):
  with jaxnorm.implementation(implementation):
    f, x, params, tx, tparams = _inputs(name, layout, dtype)
    return jax.jit(lambda *a: _transformations(f, *a))(x, params, tx, tparams)


# The float32 column repeats the float64 one at float32 tolerance: slow, so the
# default run (which deselects `slow`) has only the float64 column.
@pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name,layout", list(_cases(fast_path=True)))
def test_every_transformation_matches_the_reference(name, layout, dtype):
  tol = 1e-10 if dtype == "float64" else 2e-3
  with compat.enable_x64(dtype == "float64"):
    auto = _compute("auto", name, layout, jnp.dtype(dtype))
    reference = _compute("reference", name, layout, jnp.dtype(dtype))
  assert set(auto) == set(reference)
  for transform in auto:
    got, want = jax.tree_util.tree_leaves(auto[transform]), jax.tree_util.tree_leaves(reference[transform])
    assert len(got) == len(want), transform
    for a, b in zip(got, want):
      assert a.shape == b.shape and a.dtype == b.dtype, transform
      scale = max(1.0, float(np.max(np.abs(np.asarray(b, np.float64)))))
      np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol * scale, err_msg=transform
      )


@pytest.mark.parametrize("name,layout", list(_cases(fast_path=False)))
def test_transformations_agree_with_each_other(name, layout):
  """Targets without a fast path: every transformation runs, and forward and
  reverse mode agree (linearize = jvp; Hessian·t = jvp of the gradient)."""
  with compat.enable_x64(True):
    f, x, params, tx, tparams = _inputs(name, layout, jnp.float64)
    out = jax.jit(lambda *a: _transformations(f, *a))(x, params, tx, tparams)
    hvp = jnp.tensordot(out["hessian"][0][0], tx, tx.ndim) + sum(
      jnp.tensordot(h, t, t.ndim)
      for h, t in zip(jax.tree_util.tree_leaves(out["hessian"][0][1]), jax.tree_util.tree_leaves(tparams))
    )
  for leaf in jax.tree_util.tree_leaves(out):
    assert np.all(np.isfinite(np.asarray(leaf)))
  chex.assert_trees_all_close(out["linearize"], out["jvp"][1], rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(hvp, out["jvp_of_grad"][1][0], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name,layout", list(_cases()))
@pytest.mark.skipif(
  not _dispatch.CHOICE_IN_TRACE_KEY, reason="this jax's trace caches do not key on the implementation choice (jax 0.7)"
)
def test_auto_takes_the_fast_path_exactly_where_listed(name, layout):
  """The comparison with the reference is between two paths, never the
  reference twice; the rest is what the consistency test covers."""
  f, x, params, tx, tparams = _inputs(name, layout, jnp.float32)
  jvp = lambda x, p, tx, tp: jax.jvp(f, (x, p), (tx, tp))
  with jaxnorm.implementation("auto"):
    assert _uses_fast_path(f, x, params) == (name in FAST_PATH)
    assert _uses_tangent_map(jvp, x, params, tx, tparams) == (name in FAST_PATH)
  with jaxnorm.implementation("reference"):
    assert not _uses_fast_path(f, x, params)
    assert not _uses_tangent_map(jvp, x, params, tx, tparams)


@pytest.mark.parametrize("implementation", ["fused", pytest.param("pallas", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["group_norm", "batch_norm", "layer_norm", "rms_norm"])
def test_check_grads_in_both_modes_to_second_order(name, implementation):
  with compat.enable_x64(True), jaxnorm.implementation(implementation):
    f, x, params, _, _ = _inputs(name, "NHWC", jnp.float64)
    check_grads(_scalar(f), (x, params), order=2, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6)


def test_no_bare_custom_vjp_error_on_any_path():
  """Forward mode works under every implementation choice."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  f = lambda x: jaxnorm.group_norm(x, num_groups=4)
  results = {}
  for implementation in jaxnorm.IMPLEMENTATIONS:
    with jaxnorm.implementation(implementation):
      results[implementation] = jax.jvp(f, (x,), (jnp.ones_like(x) + x,))[1]
  for implementation, tangent in results.items():
    np.testing.assert_allclose(tangent, results["reference"], rtol=1e-4, atol=1e-4, err_msg=implementation)


# --- A model-level check: the neural tangent kernel -------------------------


class SmallCNN(nn.Module):
  norm: str  # "jaxnorm" or "flax"

  @nn.compact
  def __call__(self, x):
    group, batch = (jaxnorm.GroupNorm, jaxnorm.BatchNorm) if self.norm == "jaxnorm" else (nn.GroupNorm, nn.BatchNorm)
    x = nn.Conv(8, (3, 3))(x)
    x = nn.relu(group(num_groups=4, use_fast_variance=False)(x))
    x = nn.Conv(8, (3, 3))(x)
    x = nn.relu(batch(use_running_average=False, use_fast_variance=False)(x))
    return nn.Dense(3)(x.mean((1, 2)))


def _ntk(norm, mode):
  """Θ = J Jᵀ for 3 examples × 3 logits, J by forward or reverse mode."""
  model = SmallCNN(norm)
  x = jax.random.normal(jax.random.key(0), (3, 6, 6, 2), jnp.float64)
  variables = model.init(jax.random.key(1), x)
  as_float64 = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), tree)
  params, stats = as_float64(variables["params"]), {"batch_stats": as_float64(variables["batch_stats"])}

  def logits(params):
    out, _ = model.apply({"params": params, **stats}, x, mutable=["batch_stats"])
    return out.reshape(-1)

  flat = lambda tree: jnp.concatenate([a.reshape(a.shape[0], -1) for a in jax.tree_util.tree_leaves(tree)], 1)
  jacobian = jax.jacfwd(logits) if mode == "jvp" else jax.jacrev(logits)
  j = flat(jacobian(params))
  return j @ j.T


@pytest.mark.slow
def test_neural_tangent_kernel_forward_equals_reverse_and_flax():
  with compat.enable_x64(True):
    forward = _ntk("jaxnorm", "jvp")
    reverse = _ntk("jaxnorm", "vjp")
    flax_kernel = _ntk("flax", "vjp")
  assert forward.shape == (9, 9)
  assert float(jnp.min(jnp.linalg.eigvalsh(forward))) > -1e-8  # a Gram matrix
  np.testing.assert_allclose(forward, reverse, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(forward, flax_kernel, rtol=1e-8, atol=1e-8)
