"""create_norm: every name builds a working layer; bad configs fail early."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn
from references import f64

KEY = jax.random.key(0)
X = jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, (2, 8, 8, 16)), jnp.float32)

# Keywords each name needs on a (2, 8, 8, 16) input.
KWARGS = {
  "ghost_bn": {"virtual_batch_size": 1},
  "gn": {"num_groups": 8},
  "gn+ws": {"group_size": 4},
  "evonorm_s0": {"num_groups": 8},
}
BATCH_STATS = {"bn", "bn+ws", "brn", "ghost_bn", "evonorm_b0"}


def test_names():
  required = {
    "bn",
    "gn",
    "ln",
    "in",
    "rms",
    "brn",
    "ghost_bn",
    "frn",
    "evonorm_b0",
    "evonorm_s0",
    "dyt",
    "gn+ws",
    "bn+ws",
    "none",
  }
  assert set(jn.NORM_NAMES) == required
  assert isinstance(jn.NORM_NAMES, tuple)


@pytest.mark.parametrize("name", jn.NORM_NAMES)
def test_every_name_builds_inits_and_applies(name):
  spec = jn.create_norm(name, **KWARGS.get(name, {}))
  assert spec.name == name
  assert spec.has_batch_stats == (name in BATCH_STATS)
  assert spec.is_identity == (name == "none")
  assert spec.conv is (jn.StandardizedConv if name.endswith("+ws") else nn.Conv)
  variables = spec.layer(train=True).init(KEY, X)
  assert ("batch_stats" in variables) == spec.has_batch_stats
  for train in (True, False):
    y, upd = spec.layer(train).apply(variables, X, mutable=["batch_stats"])
    assert y.shape == X.shape and y.dtype == X.dtype
    assert np.isfinite(np.asarray(y)).all()
    if spec.has_batch_stats:
      changed = jax.tree.leaves(
        jax.tree.map(lambda a, b: bool((a != b).any()), upd["batch_stats"], variables["batch_stats"])
      )
      assert any(changed) == train  # training updates, evaluation does not
  if name == "none":
    np.testing.assert_array_equal(y, X)
  conv = spec.conv(4, (3, 3))
  assert conv.init_with_output(KEY, X)[0].shape == (2, 8, 8, 4)


AFFINE_AT_END = [n for n in jn.NORM_NAMES if n not in ("none", "rms")]


@pytest.mark.parametrize("name", AFFINE_AT_END)
def test_zero_scale_init_gives_the_bias_everywhere(name):
  spec = jn.create_norm(name, **KWARGS.get(name, {}))
  layer = spec.layer(True, scale_init=nn.initializers.zeros, bias_init=nn.initializers.constant(0.3))
  y, _ = layer.init_with_output(KEY, X)
  np.testing.assert_allclose(y, 0.3, rtol=1e-6)  # FRN: max(β, τ = 0) = β


def test_zero_scale_init_rms_and_none():
  y, _ = jn.create_norm("rms").layer(True, scale_init=nn.initializers.zeros).init_with_output(KEY, X)
  np.testing.assert_array_equal(y, 0.0)  # RMSNorm has no bias
  y, _ = jn.create_norm("none").layer(True, scale_init=nn.initializers.zeros).init_with_output(KEY, X)
  np.testing.assert_array_equal(y, X)


def test_ln_and_rms_normalize_each_example_over_hwc():
  ln = jn.create_norm("ln").layer(True)
  y = ln.init_with_output(KEY, X)[0]
  x = f64(X)
  z = (x - x.mean((1, 2, 3), keepdims=True)) / np.sqrt(x.var((1, 2, 3), keepdims=True) + 1e-6)
  np.testing.assert_allclose(y, z, rtol=1e-4, atol=1e-4)
  variables = ln.init(KEY, X)
  assert jax.tree.map(jnp.shape, variables) == {"params": {"scale": (16,), "bias": (16,)}}
  y = jn.create_norm("rms").layer(False).init_with_output(KEY, X)[0]
  np.testing.assert_allclose(y, x / np.sqrt((x**2).mean((1, 2, 3), keepdims=True) + 1e-6), rtol=1e-4, atol=1e-4)


def test_kwargs_reach_the_module_and_overrides_win():
  spec = jn.create_norm("bn", momentum=0.5, running_stats="frozen")
  layer = spec.layer(True, name="bn1", epsilon=1e-2)
  assert (layer.momentum, layer.epsilon, layer.name, layer.use_running_average) == (0.5, 1e-2, "bn1", False)
  variables = layer.init(KEY, X)
  _, upd = layer.apply(variables, X, mutable=["batch_stats"])  # frozen: no update in training
  chex.assert_trees_all_equal(upd["batch_stats"], variables["batch_stats"])
  assert jn.create_norm("gn", group_size=4).layer(True).num_groups is None
  assert jn.create_norm("ghost_bn", virtual_batch_size=2).layer(True).virtual_batch_size == 2
  assert jn.create_norm(" BN ").name == "bn"


def test_specs_are_hashable_values():
  a, b = jn.create_norm("gn", num_groups=8), jn.create_norm("gn", num_groups=8)
  assert a == b and hash(a) == hash(b)
  assert a != jn.create_norm("gn", num_groups=4)


def test_model_building_inside_a_module():
  class Block(nn.Module):
    spec: jn.NormSpec
    train: bool

    @nn.compact
    def __call__(self, x):
      x = self.spec.conv(16, (3, 3), use_bias=self.spec.is_identity)(x)
      x = self.spec.layer(self.train, name="norm1")(x)
      return self.spec.layer(self.train, name="norm2", scale_init=nn.initializers.zeros)(x)

  for name in ("gn+ws", "brn", "none"):
    spec = jn.create_norm(name, **KWARGS.get(name, {}))
    variables = Block(spec, train=True).init(KEY, X)
    (conv,) = [p for k, p in variables["params"].items() if k.endswith("Conv_0")]
    assert ("bias" in conv) == spec.is_identity
    y, _ = Block(spec, train=True).apply(variables, X, mutable=["batch_stats"])
    assert y.shape == X.shape


@pytest.mark.parametrize(
  "call,error,match",
  [
    (
      lambda: jn.create_norm("batchnorm"),
      ValueError,
      r"create_norm: name='batchnorm' is not a known normalizer; valid names are 'bn', 'bn\+ws', 'brn', "
      r"'ghost_bn', 'gn', 'gn\+ws', 'ln', 'in', 'rms', 'frn', 'evonorm_b0', 'evonorm_s0', 'dyt', 'none'",
    ),
    (
      lambda: jn.create_norm("gn", groups=8),
      TypeError,
      r"create_norm\('gn'\): unknown keyword arguments \['groups'\]; the accepted ones are \[.*'num_groups'.*\]",
    ),
    (
      lambda: jn.create_norm("bn", virtual_batch=2, momentun=0.9),
      TypeError,
      r"unknown keyword arguments \['momentun', 'virtual_batch'\]",
    ),
    (
      lambda: jn.create_norm("bn", use_running_average=True),
      TypeError,
      r"unknown keyword arguments \['use_running_average'\]",
    ),
    (
      lambda: jn.create_norm("none", epsilon=1e-3),
      TypeError,
      r"create_norm\('none'\): unknown keyword arguments \['epsilon'\]; the accepted ones are \[\]",
    ),
    (
      lambda: jn.create_norm("ghost_bn"),
      TypeError,
      r"create_norm\('ghost_bn'\): missing required keyword arguments \['virtual_batch_size'\]",
    ),
    (
      lambda: jn.create_norm("frn").layer(True, scale_inti=None),
      TypeError,
      r"NormSpec\('frn'\).layer: unknown keyword arguments \['scale_inti'\]",
    ),
  ],
)
def test_errors(call, error, match):
  with pytest.raises(error, match=match):
    call()


@pytest.mark.parametrize("name", jn.NORM_NAMES)
def test_every_name_builds_the_same_nnx_layer(name):
  """spec.nnx_layer: the jaxnorm.nnx module, equal bit for bit to the linen
  layer with the same parameters, in training and in evaluation."""
  from flax import nnx

  spec = jn.create_norm(name, **KWARGS.get(name, {}))
  layer = spec.nnx_layer(16, rngs=nnx.Rngs(0))
  linen = spec.layer(train=True)
  variables = linen.init(KEY, X)
  if spec.is_identity:
    np.testing.assert_array_equal(layer(X), X)
  else:
    assert type(layer) is getattr(jn.nnx, spec.module.__name__)
    for path, value in jax.tree_util.tree_leaves_with_path(variables["params"]):
      key = path[-1].key
      getattr(layer, "epsilon_param" if key == "epsilon" else key)[...] = value
    y_linen, updates = linen.apply(variables, X, mutable=["batch_stats"])
    np.testing.assert_array_equal(layer(X), y_linen)
    if spec.has_batch_stats:
      layer.eval()
      evaluated = {**variables, "batch_stats": updates["batch_stats"]}
      np.testing.assert_array_equal(layer(X), spec.layer(train=False).apply(evaluated, X))
  conv = spec.nnx_conv(16, 4, (3, 3), rngs=nnx.Rngs(0))
  assert conv(X).shape == (2, 8, 8, 4)
  assert isinstance(conv, nnx.Conv)
  if not spec.is_identity:
    with pytest.raises(TypeError, match=r"nnx_layer: unknown keyword arguments \['not_a_field'\]"):
      spec.nnx_layer(16, rngs=nnx.Rngs(0), not_a_field=1)
