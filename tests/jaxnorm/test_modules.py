"""Drop-in parity of jaxnorm's modules with flax.linen's, option by option."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn
import references as ref

PAIRS = {
  "BatchNorm": (jn.BatchNorm, nn.BatchNorm),
  "LayerNorm": (jn.LayerNorm, nn.LayerNorm),
  "GroupNorm": (jn.GroupNorm, nn.GroupNorm),
  "InstanceNorm": (jn.InstanceNorm, nn.InstanceNorm),
  "RMSNorm": (jn.RMSNorm, nn.RMSNorm),
}
BN_TRAIN = {"use_running_average": False}


def data(*shape, loc=0.5, scale=2.0, seed=0, dtype=np.float32):
  x = np.random.default_rng(seed).normal(loc, scale, shape)
  return jnp.asarray(x, dtype)


def tree_allclose(a, b, same_dtype=True, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert u.shape == v.shape, (u.shape, v.shape)
    assert u.dtype == v.dtype or not same_dtype, (u.dtype, v.dtype)
    np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), **tol)


def assert_parity(name, kwargs, x, *, call=None, atol=1e-5, rtol=1e-5, steps=1, stats_dtype_may_differ=False):
  """Same variables at init, same outputs and the same batch_stats updates."""
  call = call or {}
  ours, theirs = PAIRS[name][0](**kwargs), PAIRS[name][1](**kwargs)
  key = jax.random.key(42)
  v_flax = theirs.init(key, x, **call)
  v_ours = ours.init(key, x, **call)
  tree_allclose(v_ours, v_flax, atol=0, rtol=0)
  for step in range(steps):
    xs = x * (1 + 0.1 * step) + step
    y_f, new_f = theirs.apply(v_flax, xs, mutable=["batch_stats"], **call)
    y_o, new_o = ours.apply(v_ours, xs, mutable=["batch_stats"], **call)
    assert y_o.dtype == y_f.dtype and y_o.shape == y_f.shape
    np.testing.assert_allclose(np.asarray(y_o, np.float64), np.asarray(y_f, np.float64), atol=atol, rtol=rtol)
    tree_allclose(new_o, new_f, not stats_dtype_may_differ, atol=atol, rtol=rtol)
    if stats_dtype_may_differ:  # ours keep the dtype they were created with
      old = {k: v_ours[k] for k in new_o}
      assert jax.tree.map(lambda a: a.dtype, new_o) == jax.tree.map(lambda a: a.dtype, old)
    v_flax = {**v_flax, **new_f}
    v_ours = {**v_ours, **new_o}
  return v_ours


# --------------------------------------------------------------------------
# constructor and variables


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_fields_in_flax_order_and_same_defaults(name):
  ours, theirs = PAIRS[name]
  skip = {"parent", "name"}
  f_ours = [f for f in dataclasses.fields(ours) if f.name not in skip]
  f_flax = [f for f in dataclasses.fields(theirs) if f.name not in skip]
  assert [f.name for f in f_ours[: len(f_flax)]] == [f.name for f in f_flax]
  extra = [f.name for f in f_ours[len(f_flax) :]]
  expected_extra = {
    "GroupNorm": ["channel_axis"],
    "BatchNorm": ["virtual_batch_size", "running_stats", "unbiased_running_var"],
    "LayerNorm": ["zero_centered_scale"],
    "RMSNorm": ["zero_centered_scale"],
  }
  assert extra == expected_extra.get(name, [])
  for a, b in zip(f_ours, f_flax):
    if a.name == "use_fast_variance":
      assert a.default is False and b.default is True  # our deliberate change
    else:
      assert a.default == b.default, a.name


def test_positional_construction_matches_flax():
  # flax.linen modules are dataclasses: positional arguments follow fields.
  a = jn.RMSNorm(1e-3, None, jnp.float32, False)
  b = nn.RMSNorm(1e-3, None, jnp.float32, False)
  assert a.use_scale is False and b.use_scale is False
  g = jn.GroupNorm(None, 4)
  assert g.num_groups is None and g.group_size == 4


def test_random_initializers_give_identical_parameters():
  kwargs = dict(scale_init=nn.initializers.normal(1.0), bias_init=nn.initializers.normal(1.0))
  assert_parity("LayerNorm", kwargs, data(3, 8))
  assert_parity("GroupNorm", dict(num_groups=2, **kwargs), data(3, 4, 4, 8))


# --------------------------------------------------------------------------
# outputs and running statistics, option by option

CASES = [
  ("BatchNorm", dict(use_running_average=False), (8, 4, 4, 6)),
  ("BatchNorm", dict(use_running_average=False, momentum=0.5, epsilon=1e-3), (16, 5)),
  ("BatchNorm", dict(use_running_average=False, axis=1), (8, 6, 4, 4)),
  ("BatchNorm", dict(use_running_average=False, axis=(1, 3)), (4, 3, 5, 6)),
  ("BatchNorm", dict(use_running_average=False, use_bias=False, use_scale=False), (8, 5)),
  ("LayerNorm", dict(), (4, 16)),
  ("LayerNorm", dict(reduction_axes=(1, 2), feature_axes=-1), (2, 3, 8)),
  ("LayerNorm", dict(reduction_axes=(1, 2), feature_axes=(1, 2)), (2, 3, 8)),
  ("LayerNorm", dict(use_bias=False, epsilon=1e-2), (4, 16)),
  ("RMSNorm", dict(), (4, 16)),
  ("RMSNorm", dict(reduction_axes=(1, 2), use_scale=False), (2, 3, 8)),
  ("GroupNorm", dict(num_groups=4), (3, 5, 4, 8)),
  ("GroupNorm", dict(num_groups=None, group_size=2), (3, 5, 4, 8)),
  ("GroupNorm", dict(num_groups=2, reduction_axes=(1, 3)), (3, 5, 4, 8)),
  ("GroupNorm", dict(num_groups=1), (3, 8)),
  ("InstanceNorm", dict(), (3, 5, 4, 8)),
  ("InstanceNorm", dict(feature_axes=1), (3, 8, 5, 4)),
  ("InstanceNorm", dict(feature_axes=(1, 3)), (3, 4, 5, 2)),
]


@pytest.mark.parametrize("fast", [None, True, False])
@pytest.mark.parametrize("name,kwargs,shape", CASES)
def test_outputs_and_updates_match_flax(name, kwargs, shape, fast):
  """Default vs default, and with use_fast_variance set the same on both."""
  if fast is not None:
    kwargs = dict(kwargs, use_fast_variance=fast)
  assert_parity(name, kwargs, data(*shape), atol=2e-5, rtol=2e-5, steps=3)


def test_running_average_eval_mode_matches_flax_after_training():
  x = data(16, 4, 4, 3)
  v = assert_parity("BatchNorm", dict(use_running_average=False, momentum=0.8), x, steps=4)
  y_ours = jn.BatchNorm(use_running_average=True).apply(v, x)
  y_flax = nn.BatchNorm(use_running_average=True).apply(v, x)
  np.testing.assert_allclose(y_ours, y_flax, rtol=1e-6, atol=1e-6)
  # and the call-time override
  y_call = jn.BatchNorm().apply(v, x, use_running_average=True)
  np.testing.assert_array_equal(y_call, y_ours)


def test_init_does_not_update_running_statistics():
  v = jn.BatchNorm(use_running_average=False).init(jax.random.key(0), data(8, 3, loc=5.0))
  np.testing.assert_array_equal(v["batch_stats"]["mean"], 0.0)
  np.testing.assert_array_equal(v["batch_stats"]["var"], 1.0)


def test_running_statistics_follow_ema_formula():
  x = data(32, 3, loc=4.0)
  bn = jn.BatchNorm(use_running_average=False, momentum=0.9)
  v = bn.init(jax.random.key(0), x)
  _, upd = bn.apply(v, x, mutable=["batch_stats"])
  xf = np.asarray(x, np.float64)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * xf.mean(0), rtol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * xf.var(0), rtol=1e-5)


# --------------------------------------------------------------------------
# masks, named axes, dtypes


@pytest.mark.parametrize(
  "name,kwargs,shape,mask_shape",
  [
    ("BatchNorm", BN_TRAIN, (8, 6), (8, 1)),
    ("LayerNorm", {}, (4, 10), (4, 10)),
    ("RMSNorm", {}, (4, 10), (4, 10)),
    ("GroupNorm", dict(num_groups=2), (3, 5, 8), (3, 5, 8)),
    ("InstanceNorm", {}, (3, 7, 4), (3, 7, 4)),
  ],
)
def test_masks_match_flax(name, kwargs, shape, mask_shape):
  mask = np.random.default_rng(1).random(mask_shape) < 0.7
  mask[..., :1] = True
  mask = np.broadcast_to(mask, mask_shape)
  for fast in (True, False):
    assert_parity(
      name, dict(kwargs, use_fast_variance=fast), data(*shape), call=dict(mask=jnp.asarray(mask)), atol=3e-5, rtol=3e-5
    )


@pytest.mark.parametrize(
  "name,kwargs,shape",
  [
    ("BatchNorm", BN_TRAIN, (6, 3)),
    ("LayerNorm", dict(reduction_axes=(0, 1), feature_axes=1), (5, 4)),
    ("GroupNorm", dict(num_groups=2, reduction_axes=(0, 1)), (5, 4)),
  ],
)
def test_axis_name_under_vmap_matches_flax(name, kwargs, shape):
  """Equal per-device counts: flax's pmean of means is exact there too."""
  x = data(4, *shape)  # 4 "devices"
  v = PAIRS[name][1](**kwargs).init(jax.random.key(0), x[0])
  kwargs = dict(kwargs, axis_name="devices")
  ours, theirs = PAIRS[name][0](**kwargs), PAIRS[name][1](**kwargs)

  def run(mod):
    f = lambda xd: mod.apply(v, xd, mutable=["batch_stats"])
    return jax.vmap(f, axis_name="devices")(x)

  (y_o, s_o), (y_f, s_f) = run(ours), run(theirs)
  np.testing.assert_allclose(y_o, y_f, rtol=2e-5, atol=2e-5)
  tree_allclose(s_o, s_f, rtol=2e-5, atol=2e-5)


def test_sync_batch_norm_with_unequal_counts_is_exact_where_flax_is_not():
  """Devices hold 2, 5, 8 and 8 valid examples (padding masked out)."""
  x = data(4, 8, 3, loc=0.0) + jnp.arange(4.0)[:, None, None] * 3
  valid = jnp.arange(8)[None, :] < jnp.array([2, 5, 8, 8])[:, None]
  mask = valid[..., None]
  kwargs = dict(use_running_average=False, axis_name="d", momentum=0.0)

  def run(cls):
    mod = cls(**kwargs)
    v = mod.init(jax.random.key(0), x[0])
    f = lambda xd, md: mod.apply(v, xd, mask=md, mutable=["batch_stats"])
    return jax.vmap(f, axis_name="d")(x, mask)

  (y, stats), (_, flax_stats) = run(jn.BatchNorm), run(nn.BatchNorm)
  xs = np.asarray(x, np.float64)[np.asarray(valid)]  # the 23 valid examples
  np.testing.assert_allclose(stats["batch_stats"]["mean"][0], xs.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["batch_stats"]["var"][0], xs.var(0), rtol=1e-5)
  z = (np.asarray(x, np.float64) - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5)
  np.testing.assert_allclose(y, z, rtol=1e-4, atol=1e-4)
  flax_err = np.max(np.abs(np.asarray(flax_stats["batch_stats"]["mean"][0]) - xs.mean(0)))
  assert flax_err > 0.1  # flax averages per-device means (flax #2417)


DTYPE_CASES = [
  (jnp.float32, None, jnp.float32),
  (jnp.bfloat16, None, jnp.float32),
  (jnp.bfloat16, None, jnp.bfloat16),
  (jnp.float32, jnp.bfloat16, jnp.float32),
  (jnp.bfloat16, jnp.bfloat16, jnp.bfloat16),
  (jnp.float16, jnp.float32, jnp.float16),
]


@pytest.mark.parametrize("x_dtype,dtype,param_dtype", DTYPE_CASES)
@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("f32_reductions", [True, False])
def test_dtypes_match_flax(name, x_dtype, dtype, param_dtype, f32_reductions):
  kwargs = dict(dtype=dtype, param_dtype=param_dtype, force_float32_reductions=f32_reductions)
  if name == "BatchNorm":
    kwargs.update(BN_TRAIN)
  if name == "GroupNorm":
    kwargs.update(num_groups=2)
  x = data(4, 3, 8, dtype=x_dtype)
  low = jnp.dtype(x_dtype).itemsize == 2 or param_dtype == jnp.bfloat16 or dtype == jnp.bfloat16
  tol = 5e-2 if (low and not f32_reductions) else (1e-2 if low else 2e-5)
  # With force_float32_reductions=False, flax's update promotes the running
  # statistics from param_dtype to the statistics' dtype; ours keep their
  # dtype (a variable whose dtype drifts forces a recompilation).
  assert_parity(name, kwargs, x, atol=tol, rtol=tol, stats_dtype_may_differ=not f32_reductions)


def test_bfloat16_module_output_with_float32_statistics():
  x = data(4, 6, 6, 8, loc=3.0, dtype=jnp.bfloat16)
  mod = jn.GroupNorm(num_groups=2, dtype=jnp.bfloat16)
  y, _ = mod.init_with_output(jax.random.key(0), x)
  assert y.dtype == jnp.bfloat16
  expected = ref.group_norm(np.asarray(x.astype(jnp.float32)), 2, 1e-6)
  np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), expected, rtol=2**-7, atol=2**-7)


# --------------------------------------------------------------------------
# extensions over flax


def test_group_norm_channel_axis_nchw_equals_flax_on_nhwc():
  x = data(3, 4, 5, 8)
  v = nn.GroupNorm(num_groups=4).init(jax.random.key(0), x)
  y_flax = nn.GroupNorm(num_groups=4).apply(v, x)
  y_nchw = jn.GroupNorm(num_groups=4, channel_axis=1).apply(v, jnp.transpose(x, (0, 3, 1, 2)))
  np.testing.assert_allclose(jnp.transpose(y_nchw, (0, 2, 3, 1)), y_flax, rtol=2e-5, atol=2e-5)


def test_stable_default_where_flax_default_fails():
  x = 1e4 + data(16, 8, 8, 16, loc=0.0, scale=1.0)
  z = ref.group_norm(np.asarray(x), 4, 1e-6)
  y = jn.GroupNorm(num_groups=4).init_with_output(jax.random.key(0), x)[0]
  assert np.max(np.abs(np.asarray(y, np.float64) - z)) <= 5e-3
  y_flax = nn.GroupNorm(num_groups=4).init_with_output(jax.random.key(0), x)[0]
  assert np.max(np.abs(np.asarray(y_flax, np.float64) - z)) > 1.0


def test_drop_in_inside_a_model_gives_identical_training_gradients():
  class Net(nn.Module):
    norm: type
    group: type

    @nn.compact
    def __call__(self, x, train):
      x = nn.Conv(8, (3, 3))(x)
      x = self.norm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
      x = nn.Conv(8, (3, 3))(x)
      x = self.group(num_groups=4)(x)
      return nn.Dense(3)(x.mean((1, 2)))

  x = data(4, 6, 6, 3)
  flax_net, our_net = Net(nn.BatchNorm, nn.GroupNorm), Net(jn.BatchNorm, jn.GroupNorm)
  v = flax_net.init(jax.random.key(0), x, train=False)
  tree_allclose(our_net.init(jax.random.key(0), x, train=False), v, atol=0, rtol=0)

  def loss(params, net):
    out, upd = net.apply({**v, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(out**2), upd

  (l_f, u_f), g_f = jax.value_and_grad(loss, has_aux=True)(v["params"], flax_net)
  (l_o, u_o), g_o = jax.value_and_grad(loss, has_aux=True)(v["params"], our_net)
  np.testing.assert_allclose(l_o, l_f, rtol=1e-5)
  tree_allclose(g_o, g_f, rtol=1e-3, atol=1e-5)
  tree_allclose(u_o, u_f, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(
  tuple(int(v) for v in jax.__version__.split(".")[:2]) != (0, 10),
  reason="only jax 0.10's XLA:CPU sums IN/GN in jnp.mean's order here (0.7.1 and 0.12.1: 1.2e-3 apart)",
)
@pytest.mark.parametrize("implementation", ["auto", "reference"])
@pytest.mark.parametrize("name", ["InstanceNorm", "LayerNorm", "GroupNorm"])
def test_stable_variance_is_flax_two_pass_arithmetic_on_a_large_offset(name, implementation):
  """On 1e4 + N(0, 1) in float32 with ``use_fast_variance=False``, flax's
  own ``test_instance_norm`` holds the output to the float32 one-liner
  ``(x − mean)·rsqrt(var + ε)`` within 1e-6. A more accurate mean (a
  corrected two-pass) moves it by ~1e-3 and fails that test, so ours is
  pinned to the same arithmetic."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 8)) + 1e4
  kwargs = {"use_bias": False, "use_scale": False, "use_fast_variance": False, "epsilon": 1e-5}
  kwargs |= {"num_groups": 8} if name == "GroupNorm" else {}
  reduction = {"InstanceNorm": (1, 2), "LayerNorm": (3,), "GroupNorm": (1, 2)}[name]
  with jn.implementation(implementation):
    y, _ = PAIRS[name][0](**kwargs).init_with_output(jax.random.key(1), x)
  one_liner = (x - x.mean(reduction, keepdims=True)) * jax.lax.rsqrt(x.var(reduction, keepdims=True) + 1e-5)
  np.testing.assert_allclose(np.asarray(y), np.asarray(one_liner), atol=1e-6)
