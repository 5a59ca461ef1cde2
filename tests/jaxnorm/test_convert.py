"""Converting existing models: every flax normalization layer replaced by
jaxnorm's, parameters and statistics kept, outputs bitwise flax's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm as jn

FLAX_NNX_NORMS = tuple(
  getattr(nnx, name)
  for name in ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm", "SpectralNorm", "WeightNorm")
  if hasattr(nnx, name)  # flax.nnx has SpectralNorm and WeightNorm since 0.12.1
)


class NnxCnn(nnx.Module):
  """A small CNN written with flax.nnx's own layers, in the containers
  models use: attributes, an nnx.List, a dict, a layer used twice, and
  wrapped layers."""

  def __init__(self, rngs: nnx.Rngs, wrappers: bool = False):
    self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.stem_norm = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
    self.blocks = nnx.List(
      [
        nnx.Conv(8, 8, (3, 3), rngs=rngs),
        nnx.GroupNorm(8, num_groups=4, rngs=rngs),
        nnx.Conv(8, 8, (3, 3), rngs=rngs),
        nnx.InstanceNorm(8, rngs=rngs),
      ]
    )
    self.heads = nnx.data({"ln": nnx.LayerNorm(8, rngs=rngs), "rms": nnx.RMSNorm(8, rngs=rngs)})
    self.shared = self.heads["ln"]
    self.dense = nnx.Linear(8, 6, rngs=rngs)
    self.out = nnx.Linear(6, 3, rngs=rngs)
    if wrappers:
      self.dense = nnx.SpectralNorm(self.dense, rngs=rngs)
      self.out = nnx.WeightNorm(self.out, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_norm(self.stem(x)))
    for layer in self.blocks:
      x = layer(x)
    x = self.heads["rms"](self.heads["ln"](x)) + self.shared(x)
    return self.out(nnx.relu(self.dense(jnp.mean(x, axis=(1, 2)))))


# jaxnorm's fused passes reduce in flax's order on jax 0.10 (the default
# here), so a converted model's outputs are flax's bit for bit there; other
# jax versions order some reductions differently (measured: up to 4e-6
# relative on jax 0.12.1, 1 ulp on 0.7.1).
BITWISE = tuple(int(v) for v in jax.__version__.split(".")[:2]) == (0, 10)


def assert_same(actual, desired):
  """Bit for bit where that holds (see :data:`BITWISE`), else to rounding."""
  if BITWISE:
    np.testing.assert_array_equal(actual, desired)
  else:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=2e-5, atol=1e-6)


def _layers(model):
  return [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)]


def _x():
  return jax.random.normal(jax.random.key(0), (4, 6, 6, 3)) * 2.0 + 0.5


def test_every_flax_layer_is_replaced_and_the_model_trains_bitwise_as_before():
  reference = NnxCnn(nnx.Rngs(0))
  model = jn.nnx.convert(nnx.clone(reference))
  assert not any(type(m) in FLAX_NNX_NORMS for m in _layers(model))
  assert {type(m).__name__ for m in _layers(model) if type(m).__module__.startswith("jaxnorm")} == {
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "RMSNorm",
  }
  assert model.shared is model.heads["ln"]  # still one layer
  x = _x()
  for _ in range(3):  # training calls: outputs and running statistics bit for bit
    assert_same(model(x), reference(x))
    assert_same(model.stem_norm.mean[...], reference.stem_norm.mean[...])
    assert_same(model.stem_norm.var[...], reference.stem_norm.var[...])
  # Gradients: jaxnorm's derivative rule equals flax's autodiff to rounding, not bit for bit.
  loss = lambda m: jnp.sum(m(x) ** 2)
  grads = nnx.to_pure_dict(nnx.grad(loss)(nnx.clone(model)))
  reference_grads = nnx.to_pure_dict(nnx.grad(loss)(nnx.clone(reference)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, reference_grads)
  model.eval(), reference.eval()
  assert_same(model(x), reference(x))


@pytest.mark.skipif(not hasattr(nnx, "SpectralNorm"), reason="flax.nnx has SpectralNorm and WeightNorm since 0.12.1")
def test_wrappers_convert_and_then_keep_the_raw_weights_where_flax_overwrites_them():
  """The first call is flax's bit for bit; after it flax's nnx SpectralNorm
  and WeightNorm have written the normalized weights over the kernels
  (google/flax#5576); jaxnorm's keep W and v."""
  reference = NnxCnn(nnx.Rngs(0), wrappers=True)
  model = jn.nnx.convert(nnx.clone(reference))
  assert isinstance(model.dense, jn.nnx.SpectralNorm) and isinstance(model.out, jn.nnx.WeightNorm)
  assert isinstance(model.out.scales[("kernel",)], nnx.Param)  # trainable g (flax keeps an array)
  kernels = [np.asarray(m.layer_instance.kernel[...]) for m in (model.dense, model.out)]
  x = _x()
  assert_same(model(x), reference(x))
  assert_same(model.dense.batch_stats[("kernel", "u")][...], reference.dense.batch_stats[("kernel", "u")][...])
  for ours, theirs, kernel in zip((model.dense, model.out), (reference.dense, reference.out), kernels):
    np.testing.assert_array_equal(np.asarray(ours.layer_instance.kernel[...]), kernel)
    assert not np.array_equal(np.asarray(theirs.layer_instance.kernel[...]), kernel)


def test_the_layer_keeps_its_own_variables_and_settings():
  reference = NnxCnn(nnx.Rngs(0))
  scale, mean = reference.stem_norm.scale, reference.stem_norm.mean
  model = jn.nnx.convert(reference)
  assert model.stem_norm.scale is scale and model.stem_norm.mean is mean  # the same Variables
  assert model.stem_norm.momentum == 0.9 and model.stem_norm.use_fast_variance  # flax's default carried over
  assert model.blocks[1].num_groups == 4


def test_axis_name_synchronises_the_batch_statistics():
  """Like convert_sync_batchnorm: with axis_name, 4 mapped shards of 2
  normalize as one batch of 8."""
  reference = nnx.Sequential(nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)), nnx.BatchNorm(4, rngs=nnx.Rngs(1)))
  model = jn.nnx.convert(nnx.clone(reference), axis_name="batch")
  x = jax.random.normal(jax.random.key(0), (8, 5, 5, 3))
  graphdef, state = nnx.split(model)
  y = jax.vmap(lambda x: nnx.merge(graphdef, state, copy=True)(x), axis_name="batch")(x.reshape(4, 2, 5, 5, 3))
  np.testing.assert_allclose(np.asarray(y).reshape(8, 5, 5, 4), np.asarray(reference(x)), rtol=1e-5, atol=1e-5)
  unsynced = jn.nnx.convert(nnx.clone(reference))
  graphdef, state = nnx.split(unsynced)
  y_local = jax.vmap(lambda x: nnx.merge(graphdef, state, copy=True)(x), axis_name="batch")(x.reshape(4, 2, 5, 5, 3))
  assert not np.allclose(np.asarray(y_local).reshape(8, 5, 5, 4), np.asarray(reference(x)), atol=1e-3)


def test_frozen_running_statistics_are_not_updated_in_training():
  model = jn.nnx.convert(nnx.Sequential(nnx.BatchNorm(3, rngs=nnx.Rngs(0))), running_stats="frozen")
  mean = np.asarray(model.layers[0].mean[...])
  model(jax.random.normal(jax.random.key(0), (8, 3)) + 5.0)
  np.testing.assert_array_equal(np.asarray(model.layers[0].mean[...]), mean)


@pytest.mark.parametrize(
  "call, error, match",
  [
    (lambda: jn.nnx.convert(nn.Dense(3)), TypeError, r"jaxnorm\.linen\.convert"),
    (lambda: jn.nnx.convert(nnx.BatchNorm(3, rngs=nnx.Rngs(0)), running_stats="median"), ValueError, "running_stats"),
  ],
)
def test_bad_arguments_are_named(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_a_norm_layer_itself_is_returned_converted():
  layer = nnx.LayerNorm(5, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 5))
  converted = jn.nnx.convert(layer)
  assert isinstance(converted, jn.nnx.LayerNorm)
  assert_same(converted(x), layer(x))


# flax.linen: a ResNet written as flax's ImageNet example writes its own
# (norm layers built inside __call__ by functools.partial), and a setup-style
# module with the other layers.


class ResNetBlock(nn.Module):
  filters: int
  norm: type
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(x)
    y = nn.relu(self.norm()(y))
    y = nn.Conv(self.filters, (3, 3), use_bias=False)(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.norm(name="norm_proj")(nn.Conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual))
    return nn.relu(residual + y)


class ResNet(nn.Module):
  num_classes: int = 5

  @nn.compact
  def __call__(self, x, train: bool = True):
    import functools

    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
    x = nn.relu(norm(name="bn_init")(nn.Conv(8, (3, 3), use_bias=False, name="conv_init")(x)))
    for i, filters in enumerate((8, 16)):
      x = ResNetBlock(filters, norm, strides=(1, 1) if i == 0 else (2, 2))(x)
    x = Heads()(jnp.mean(x, axis=(1, 2)))
    return nn.Dense(self.num_classes)(x)


class Heads(nn.Module):
  def setup(self):
    self.ln = nn.LayerNorm()
    self.rms = nn.RMSNorm()
    self.gn = nn.GroupNorm(num_groups=4)
    self.dense = nn.WeightNorm(nn.Dense(16))

  def __call__(self, x):
    return self.dense(self.gn(self.rms(self.ln(x))))


def _linen_setup():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3)) * 2.0 + 0.5
  model = ResNet()
  return x, model, model.init(jax.random.key(1), x)


def test_linen_convert_runs_jaxnorm_on_flax_variables_bitwise():
  x, model, variables = _linen_setup()
  converted = jn.linen.convert(model)
  ours = converted.init(jax.random.key(1), x)
  assert jax.tree.structure(ours) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, ours, variables)
  calls = []
  original = jn.BatchNorm.__call__
  with pytest.MonkeyPatch.context() as patch:  # jaxnorm's BatchNorm runs, not flax's
    patch.setattr(jn.BatchNorm, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    for _ in range(2):  # training: outputs and batch_stats
      y, updates = converted.apply(variables, x, mutable=["batch_stats"])
      y_flax, updates_flax = model.apply(variables, x, mutable=["batch_stats"])
      assert_same(y, y_flax)
      jax.tree.map(assert_same, updates, updates_flax)
      variables = {**variables, **updates}
  assert len(calls) == 2 * 6  # bn_init and five in the blocks, per call
  assert_same(converted.apply(variables, x, train=False), model.apply(variables, x, train=False))
  grads = jax.grad(lambda p: jnp.sum(converted.apply({**variables, "params": p}, x, train=False) ** 2))(
    variables["params"]
  )
  grads_flax = jax.grad(lambda p: jnp.sum(model.apply({**variables, "params": p}, x, train=False) ** 2))(
    variables["params"]
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, grads_flax)


def test_linen_convert_sets_axis_name_and_frozen_statistics():
  x = jax.random.normal(jax.random.key(0), (8, 5, 5, 3))
  model = nn.Sequential([nn.Conv(4, (3, 3)), nn.BatchNorm(use_running_average=False)])
  variables = model.init(jax.random.key(1), x)
  synced = jn.linen.convert(model, axis_name="batch")
  y = jax.vmap(lambda x: synced.apply(variables, x, mutable=["batch_stats"])[0], axis_name="batch")(
    x.reshape(4, 2, 5, 5, 3)
  )
  y_global, _ = model.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(y).reshape(y_global.shape), y_global, rtol=1e-5, atol=1e-5)
  _, updates = jn.linen.convert(model, running_stats="frozen").apply(variables, x + 3.0, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])


def test_linen_converted_context_runs_any_method():
  x, model, variables = _linen_setup()
  with jn.linen.converted():
    y = model.apply(variables, x, train=False)
  assert_same(y, model.apply(variables, x, train=False))
  with pytest.raises(ValueError, match="running_stats"), jn.linen.converted(running_stats="median"):
    pass
  with pytest.raises(TypeError, match=r"jaxnorm\.nnx\.convert"):
    jn.linen.convert(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


def test_linen_converted_reaches_code_that_calls_apply_itself():
  """A wrapper that owns its parameters and calls ``module.apply`` inside
  (as a Hugging Face Flax model's ``__call__`` does) runs jaxnorm's layers
  under ``converted()``."""

  class Pretrained:
    def __init__(self):
      self.module = nn.Sequential([nn.Dense(6), nn.LayerNorm(), nn.Dense(2)])
      self.params = self.module.init(jax.random.key(0), jnp.ones((1, 4)))["params"]

    def __call__(self, x):
      return self.module.apply({"params": self.params}, x)

  model, x = Pretrained(), jax.random.normal(jax.random.key(1), (3, 4))
  calls = []
  original = jn.LayerNorm.__call__
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(jn.LayerNorm, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with jn.linen.converted():
      y = model(x)
  assert calls == [1]
  assert_same(y, model(x))
