"""jaxnorm.nnx against flax.nnx (drop-in parity) and against jaxnorm's linen modules (bitwise)."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxnorm
import jaxnorm.nnx as jnnx
from tests.jaxnorm import compat

SHARED = ["BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm"]
EXTRA = {"GroupNorm": {"num_groups": 4}}


def _inits(name):
  """Random initializers, so that the rngs key order is checked too."""
  kw = {"scale_init": nnx.initializers.normal(1.0)}
  if name != "RMSNorm":
    kw["bias_init"] = nnx.initializers.normal(1.0)
  return kw


def _pair(name, **kw):
  """(ours, flax's) from the same rngs; flax asked for the stable variance
  (jaxnorm's default) so that both compute the same thing."""
  kw = {**EXTRA.get(name, {}), **_inits(name), **kw}
  ours = getattr(jnnx, name)(8, rngs=nnx.Rngs(0), **kw)
  theirs = getattr(nnx, name)(8, rngs=nnx.Rngs(0), use_fast_variance=False, **kw)
  return ours, theirs


def _x(shape=(4, 5, 5, 8), seed=0, offset=3.0):
  return jax.random.normal(jax.random.key(seed), shape) * 2.0 + offset


@pytest.mark.parametrize("name", SHARED)
def test_constructor_matches_flax_nnx(name):
  """Every parameter of the installed flax.nnx layer, in the same order, of
  the same kind, with the same default — apart from the documented
  differences (stable variance; jaxnorm's extra fields come last). An older
  flax (down to the floor in pyproject.toml) may lack parameters that newer
  ones added and jaxnorm follows (e.g. ``promote_dtype``)."""
  ours = inspect.signature(getattr(jnnx, name).__init__).parameters
  theirs = inspect.signature(getattr(nnx, name).__init__).parameters
  shared = [p for p in ours if p in theirs]
  assert shared == list(theirs), "flax.nnx's parameters are missing from jaxnorm's or out of order"
  for p, q in ((ours[k], theirs[k]) for k in shared):
    assert p.kind == q.kind, p.name
    if p.name in ("use_fast_variance", "promote_dtype", "bias_init", "scale_init"):
      continue  # documented: stable variance; initializers equal but not the same objects
    assert p.default == q.default or (p.default is q.default), p.name
  if "use_fast_variance" in ours:
    assert ours["use_fast_variance"].default is False


@pytest.mark.parametrize("name", SHARED)
def test_same_variables_from_the_same_rngs(name):
  ours, theirs = _pair(name)
  so, st = nnx.state(ours), nnx.state(theirs)
  assert jax.tree.structure(so) == jax.tree.structure(st)
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(so), jax.tree_util.tree_leaves_with_path(st)):
    np.testing.assert_array_equal(a, b, err_msg=str(path))
  for kind in (nnx.Param, nnx.BatchStat):
    assert jax.tree.structure(nnx.state(ours, kind)) == jax.tree.structure(nnx.state(theirs, kind))


@pytest.mark.parametrize("name", SHARED)
@pytest.mark.parametrize("masked", [False, True])
def test_outputs_match_flax_nnx(name, masked):
  ours, theirs = _pair(name)
  x = _x()
  mask = None
  if masked:
    mask = jax.random.bernoulli(jax.random.key(1), 0.7, x.shape)
  np.testing.assert_allclose(ours(x, mask=mask), theirs(x, mask=mask), rtol=2e-5, atol=2e-5)


def test_batch_norm_running_statistics_over_steps_and_modes():
  ours, theirs = _pair("BatchNorm", momentum=0.9)
  for step in range(4):
    x = _x(seed=step, offset=step)
    np.testing.assert_allclose(ours(x), theirs(x), rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(ours.mean[...], theirs.mean[...], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours.var[...], theirs.var[...], rtol=1e-5, atol=1e-6)
  # eval mode: the running averages, nothing updated
  ours.eval(), theirs.eval()
  before = np.asarray(ours.mean[...])
  x = _x(seed=9)
  np.testing.assert_allclose(ours(x), theirs(x), rtol=2e-5, atol=2e-5)
  np.testing.assert_array_equal(ours.mean[...], before)
  ours.train()
  assert ours.use_running_average is False
  np.testing.assert_allclose(
    ours(x, use_running_average=True), theirs(x, use_running_average=True), rtol=2e-5, atol=2e-5
  )
  # Against the paper's formula in float64 numpy: EMA of the biased batch variance.
  bn = jnnx.BatchNorm(3, momentum=0.8, rngs=nnx.Rngs(0))
  xs = np.random.default_rng(0).normal(2.0, 3.0, (6, 3))
  bn(jnp.asarray(xs, jnp.float32))
  np.testing.assert_allclose(bn.mean[...], 0.2 * xs.mean(0), rtol=1e-5)
  np.testing.assert_allclose(bn.var[...], 0.8 + 0.2 * xs.var(0), rtol=1e-5)


def test_nnx_view_when_available():
  if not hasattr(nnx, "view"):
    pytest.skip("this flax has no nnx.view")
  bn = jnnx.BatchNorm(8, rngs=nnx.Rngs(0))
  evaluating = nnx.view(bn, use_running_average=True)
  x = _x()
  evaluating(x)
  np.testing.assert_array_equal(bn.mean[...], jnp.zeros(8))  # no update through the eval view


@pytest.mark.parametrize("name", SHARED)
def test_jit_grad_split_merge(name):
  ours, theirs = _pair(name)
  x = _x()

  def loss(model, x):
    return jnp.sum(model(x) ** 2 * jnp.arange(8.0).reshape(1, 1, 1, 8))

  grads_ours = nnx.jit(nnx.grad(loss))(ours, x)
  grads_theirs = nnx.jit(nnx.grad(loss))(theirs, x)
  for a, b in zip(jax.tree.leaves(nnx.state(grads_ours)), jax.tree.leaves(nnx.state(grads_theirs))):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)
  graphdef, state = nnx.split(ours)
  again = nnx.merge(graphdef, state)
  np.testing.assert_array_equal(again(x), ours(x))


def test_batch_norm_axis_name_under_nnx_vmap_equals_the_whole_batch():
  """Statistics over a vmapped axis (as over devices) equal one BN over all examples."""
  x = _x((4, 6, 8))
  whole = jnnx.BatchNorm(8, rngs=nnx.Rngs(0))
  expected = whole(x.reshape(24, 8)).reshape(4, 6, 8)
  split = jnnx.BatchNorm(8, axis_name="batch", rngs=nnx.Rngs(0))
  state_axes = nnx.StateAxes({nnx.BatchStat: None, nnx.Param: None})
  out = nnx.vmap(lambda m, xi: m(xi), in_axes=(state_axes, 0), axis_name="batch")(split, x)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(split.mean[...], whole.mean[...], rtol=1e-5, atol=1e-6)


def test_scan_over_layers():
  """nnx.scan over a stack of LayerNorms (vmapped construction)."""

  @nnx.vmap(in_axes=0, out_axes=0)
  def make(key):
    return jnnx.LayerNorm(8, rngs=nnx.Rngs(key))

  stack = make(jax.random.split(jax.random.key(0), 3))

  @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
  def run(layer, h):
    return layer(h) * 2.0

  x = _x((2, 8))
  out = run(stack, x)
  ref = x
  for _ in range(3):
    mean, var = ref.mean(-1, keepdims=True), ref.var(-1, keepdims=True)
    ref = (ref - mean) / jnp.sqrt(var + 1e-6) * 2.0
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


LINEN = {
  "BatchNorm": lambda: jaxnorm.BatchNorm(use_running_average=False),
  "LayerNorm": lambda: jaxnorm.LayerNorm(),
  "GroupNorm": lambda: jaxnorm.GroupNorm(num_groups=4),
  "InstanceNorm": lambda: jaxnorm.InstanceNorm(),
  "RMSNorm": lambda: jaxnorm.RMSNorm(),
}


@pytest.mark.parametrize("name", SHARED)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_linen_and_nnx_agree_bitwise(name, dtype):
  ours = getattr(jnnx, name)(8, rngs=nnx.Rngs(0), **EXTRA.get(name, {}), **_inits(name))
  x = _x().astype(dtype)
  linen = LINEN[name]()
  params = {"scale": ours.scale[...]}
  if name != "RMSNorm":
    params["bias"] = ours.bias[...]
  variables = {"params": params}
  if name == "BatchNorm":
    variables["batch_stats"] = {"mean": ours.mean[...], "var": ours.var[...]}
    y_linen, updates = linen.apply(variables, x, mutable=["batch_stats"])
  else:
    y_linen = linen.apply(variables, x)
  y_nnx = ours(x)
  assert y_nnx.dtype == y_linen.dtype
  np.testing.assert_array_equal(np.asarray(y_nnx, np.float32), np.asarray(y_linen, np.float32))
  if name == "BatchNorm":
    np.testing.assert_array_equal(ours.mean[...], updates["batch_stats"]["mean"])
    np.testing.assert_array_equal(ours.var[...], updates["batch_stats"]["var"])


def test_jaxnorm_extensions_carry_over():
  x = _x((4, 8, 5, 5))  # NCHW
  gn = jnnx.GroupNorm(8, num_groups=4, channel_axis=1, rngs=nnx.Rngs(0))
  ref = jaxnorm.group_norm(x, gn.scale[...], gn.bias[...], num_groups=4, channel_axis=1)
  np.testing.assert_array_equal(gn(x), ref)
  ghost = jnnx.BatchNorm(8, virtual_batch_size=2, rngs=nnx.Rngs(0))
  y = ghost(_x())
  halves = [jnnx.BatchNorm(8, rngs=nnx.Rngs(0))(h) for h in jnp.split(_x(), 2)]
  np.testing.assert_allclose(y, jnp.concatenate(halves), rtol=1e-6, atol=1e-6)
  cumulative = jnnx.BatchNorm(8, running_stats="cumulative", rngs=nnx.Rngs(0))
  cumulative(_x(seed=1)), cumulative(_x(seed=2))
  assert int(cumulative.count[...]) == 2
  # Stable variance by default: with |mean| >> std, flax.nnx's default
  # one-pass variance cancels catastrophically in float32; jaxnorm's does not.
  big = 1000.0 + 0.1 * jax.random.normal(jax.random.key(3), (4, 64))
  x64 = np.asarray(big, np.float64)
  ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
  ours_error = np.max(np.abs(np.asarray(jnnx.LayerNorm(64, rngs=nnx.Rngs(0))(big)) - ref))
  flax_error = np.max(np.abs(np.asarray(nnx.LayerNorm(64, rngs=nnx.Rngs(0))(big)) - ref))
  assert ours_error < 1e-2 < flax_error, (ours_error, flax_error)


@pytest.mark.parametrize(
  "build, match",
  [
    (lambda: jnnx.GroupNorm(8, num_groups=3, rngs=nnx.Rngs(0)), r"GroupNorm: .*num_groups=3 does not divide 8"),
    (lambda: jnnx.BatchNorm(0, rngs=nnx.Rngs(0)), r"BatchNorm: num_features=0; expected a positive integer"),
    (lambda: jnnx.BatchNorm(8, running_stats="ewma", rngs=nnx.Rngs(0)), r"running_stats"),
  ],
)
def test_bad_arguments_name_themselves(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_missing_mode_says_how_to_set_it():
  bn = jnnx.BatchNorm(8, use_running_average=None, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"use_running_average is None.*model.train\(\) / model.eval\(\)"):
    bn(_x())


@pytest.mark.parametrize("name", SHARED)
def test_forward_mode_through_the_fast_path(name):
  """jax.jvp through a jaxnorm.nnx module under "auto" equals the composed
  reference path (float64)."""
  with compat.enable_x64(True):
    module = getattr(jnnx, name)(8, rngs=nnx.Rngs(0), param_dtype=jnp.float64, **EXTRA.get(name, {}))
    graphdef, state = nnx.split(module)
    x = _x().astype(jnp.float64)
    t = jax.random.normal(jax.random.key(5), x.shape, jnp.float64)

    def f(x):
      return nnx.merge(graphdef, state, copy=True)(x)

    out = {}
    for impl in ("auto", "reference"):
      with jaxnorm.implementation(impl):
        out[impl] = jax.jvp(f, (x,), (t,))
    for a, b in zip(out["auto"], out["reference"]):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


# jaxnorm's own normalizers: NNX and linen agree bitwise over training steps.
OWN = {
  "BatchRenorm": ({"momentum": 0.9, "r_max": 1.5, "d_max": 0.5}, ("mean", "var", "steps"), ()),
  "EvoNormB0": ({"momentum": 0.9}, ("var",), ("v",)),
  "EvoNormS0": ({"num_groups": 4}, (), ("v",)),
  "FilterResponseNorm": ({"learn_epsilon": True}, (), ("tau", "epsilon")),
}


@pytest.mark.parametrize("name", sorted(OWN))
def test_own_normalizers_match_their_linen_modules_bitwise(name):
  kwargs, stats, extra = OWN[name]
  ours = getattr(jnnx, name)(8, rngs=nnx.Rngs(0), **kwargs)
  trains = bool(stats)
  linen = getattr(jaxnorm, name)(**kwargs, **({"use_running_average": False} if trains else {}))
  x0 = _x()
  variables = linen.init(jax.random.key(0), x0)
  # The same parameters in both (NNX's names: epsilon_param for linen's params/epsilon).
  params = dict(variables["params"])
  for key in ("scale", "bias", *extra):
    nnx_name = "epsilon_param" if key == "epsilon" else key
    params[key] = getattr(ours, nnx_name)[...] + (0.1 if key in ("scale", "bias", "v") else 0.0)
    getattr(ours, nnx_name)[...] = params[key]
  variables = {**variables, "params": params}
  for step in range(3):
    x = _x(seed=step, offset=step)
    if trains:
      y_linen, updates = linen.apply(variables, x, mutable=["batch_stats"])
      variables = {**variables, "batch_stats": updates["batch_stats"]}
    else:
      y_linen = linen.apply(variables, x)
    np.testing.assert_array_equal(ours(x), y_linen)
  for stat in stats:
    np.testing.assert_array_equal(getattr(ours, stat)[...], variables["batch_stats"][stat])
    assert isinstance(getattr(ours, stat), nnx.BatchStat)
  if trains:  # evaluation with the running statistics
    ours.eval()
    x = _x(seed=7)
    evaluating = getattr(jaxnorm, name)(**kwargs, use_running_average=True)
    np.testing.assert_array_equal(ours(x), evaluating.apply(variables, x))


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_standardized_conv_is_nnx_conv_with_a_standardized_kernel(scaled, masked):
  mask = None
  if masked:
    mask = jnp.asarray(np.random.default_rng(0).random((3, 3, 4, 8)) > 0.3, jnp.float32)
  conv = jnnx.StandardizedConv(4, 8, (3, 3), scaled=scaled, mask=mask, padding="VALID", rngs=nnx.Rngs(0))
  assert isinstance(conv, nnx.Conv)
  x = _x((2, 6, 6, 4))
  if scaled:
    conv.gain[...] = conv.gain[...] + jnp.arange(8.0)
  # Against linen's StandardizedConv with the same parameters (bitwise).
  linen = jaxnorm.StandardizedConv(features=8, kernel_size=(3, 3), scaled=scaled, mask=mask, padding="VALID")
  params = {"kernel": conv.kernel[...], "bias": conv.bias[...]}
  if scaled:
    params["gain"] = conv.gain[...]
  np.testing.assert_array_equal(conv(x), linen.apply({"params": params}, x))
  # Against nnx.Conv given the standardized kernel: the paper's formula, per output channel.
  plain = nnx.Conv(4, 8, (3, 3), mask=mask, padding="VALID", rngs=nnx.Rngs(0))
  plain.kernel[...] = jaxnorm.standardize_weight(
    conv.kernel[...], conv.gain[...] if scaled else None, scaled=scaled, mask=mask
  )
  np.testing.assert_allclose(conv(x), plain(x), rtol=1e-6, atol=1e-6)
  # Split/merge and jit read the merged module's own parameters.
  graphdef, state = nnx.split(conv)
  other = nnx.merge(graphdef, state, copy=True)
  other.bias[...] = other.bias[...] + 1.0
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(other, x), conv(x) + 1.0, rtol=1e-6, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
  "norm, kwargs, extra",
  [
    ("bn", {}, {}),
    ("gn", {"num_groups": 4}, {}),
    ("gn+ws", {"num_groups": 4}, {"preact": True, "shortcut": "projection"}),
  ],
)
def test_nnx_cifar_resnet_equals_the_linen_one(norm, kwargs, extra):
  """experiments.models.NnxCifarResNet with the linen model's parameters:
  the same logits bit for bit, in training (and the same running
  statistics) and in evaluation."""
  from experiments import models

  linen = models.CifarResNet(depth=8, width=8, norm=norm, norm_kwargs=kwargs, **extra)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = linen.init(jax.random.key(1), x, train=False)
  model = models.NnxCifarResNet(depth=8, width=8, norm=norm, norm_kwargs=kwargs, **extra, rngs=nnx.Rngs(0))
  for collection in variables:
    for path, value in jax.tree_util.tree_leaves_with_path(variables[collection]):
      *parents, leaf = [p.key for p in path]
      owner = model
      for key in parents:
        owner = getattr(owner, key)
      getattr(owner, leaf)[...] = value
  y, updates = linen.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_array_equal(model(x), y)
  if "batch_stats" in updates:
    variables = {**variables, "batch_stats": updates["batch_stats"]}
    np.testing.assert_array_equal(model.stem_norm.mean[...], updates["batch_stats"]["stem_norm"]["mean"])
  model.eval()
  np.testing.assert_array_equal(model(x), linen.apply(variables, x, train=False))


class _SmallCnn(nnx.Module):
  """A CNN built from one namespace's norm classes (flax.nnx or jaxnorm.nnx)."""

  def __init__(self, norms, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.bn = norms.BatchNorm(8, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(8, 8, (3, 3), rngs=rngs)
    self.gn = norms.GroupNorm(8, num_groups=4, rngs=rngs)
    self.ln = norms.LayerNorm(8, rngs=rngs)
    self.head = nnx.Linear(8, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv1(x)))
    x = nnx.relu(self.gn(self.conv2(x)))
    return self.head(self.ln(x.mean((1, 2))))


def test_a_flax_nnx_model_trains_the_same_with_jaxnorm_norms():
  """Model-level drop-in: the same CNN with flax.nnx's norms and with
  jaxnorm.nnx's, from the same rngs, gives the same loss, gradients and
  running statistics over 3 SGD steps under nnx.jit (float32; jaxnorm's
  stable variance differs from flax's one-pass formula by rounding)."""
  rng = np.random.default_rng(0)
  batches = [
    (jnp.asarray(rng.normal(2.0, 3.0, (16, 8, 8, 3)), jnp.float32), jnp.asarray(rng.integers(0, 10, 16)))
    for _ in range(3)
  ]

  def train(norms):
    model = _SmallCnn(norms, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
      loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss, grads

    history = [step(model, optimizer, x, y) for x, y in batches]
    return history, nnx.state(model, nnx.BatchStat)

  ours, ours_stats = train(jnnx)
  theirs, theirs_stats = train(nnx)
  for (loss_a, grads_a), (loss_b, grads_b) in zip(ours, theirs, strict=True):
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(nnx.state(grads_a)), jax.tree.leaves(nnx.state(grads_b)), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
  for a, b in zip(jax.tree.leaves(ours_stats), jax.tree.leaves(theirs_stats), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert len(jax.tree.leaves(ours_stats)) == 2  # BatchNorm's mean and var


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.float16])
@pytest.mark.parametrize("use_fast_variance", [True, False])
def test_instance_norm_nnx_equals_linen_bitwise_with_a_mask_in_float16(param_dtype, use_fast_variance):
  """flax's test_nnx_linen_instancenorm_equivalence cases 9, 11, 13 and 15:
  (10, 6) inputs (no spatial axis: every element is its own statistic),
  dtype float16 and a mask. The masked-out elements have no statistics;
  their output is β, whether x was first cast to float16 (nnx promotes, as
  flax.nnx does) or not (linen)."""
  import flax.linen as linen

  x = jax.random.normal(jax.random.key(0), (10, 6))
  mask = np.array([True, False, True, False, True, False])
  kwargs = dict(dtype=jnp.float16, param_dtype=param_dtype, use_fast_variance=use_fast_variance)
  lin = jaxnorm.InstanceNorm(**kwargs)
  y_linen = lin.apply(lin.init(jax.random.key(1), x), x, mask=mask)
  y_nnx = jnnx.InstanceNorm(6, **kwargs, rngs=nnx.Rngs(0))(x, mask=mask)
  assert y_linen.dtype == y_nnx.dtype == jnp.float16
  np.testing.assert_array_equal(y_linen, y_nnx)
  np.testing.assert_array_equal(y_nnx, np.zeros((10, 6)))  # β = 0; x̂ = 0 masked in (var 0) and out
  assert isinstance(linen.InstanceNorm, type)  # the flax class the test swaps out
