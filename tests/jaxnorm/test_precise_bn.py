"""Precise BN (Wu & Johnson, 2021): exact population statistics after training."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn
from references import f64

KEY = jax.random.key(0)


def dataset(n=24, shape=(3, 3, 4), seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n,) + shape) * np.array([1.0, 2.0, 0.5, 3.0]) + np.array([5.0, -1.0, 0.0, 100.0])).astype(
    np.float32
  )


def batches(data, size):
  return [data[i : i + size] for i in range(0, len(data), size)]


class OneBN(nn.Module):
  norm: type  # a BN-like module class, or a partial of one

  @nn.compact
  def __call__(self, x, train):
    return self.norm(use_running_average=not train, name="norm")(x)


class TwoBN(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = jn.BatchNorm(use_running_average=not train, epsilon=1e-3)(x)
    x = nn.Dense(3, kernel_init=nn.initializers.normal(1.0))(x)
    return jn.BatchNorm(use_running_average=not train, momentum=0.9)(x)


@pytest.mark.parametrize(
  "norm",
  [
    jn.BatchNorm,
    functools.partial(jn.BatchNorm, virtual_batch_size=2),
    functools.partial(jn.BatchNorm, running_stats="cumulative"),
    jn.BatchRenorm,
  ],
  ids=["bn", "ghost_bn", "cumulative", "brn"],
)
def test_one_layer_on_the_input_gives_the_dataset_statistics(norm):
  data = dataset()
  model = OneBN(norm)
  variables = model.init(KEY, data[:4], train=False)
  stats = jn.precise_batch_stats(functools.partial(model.apply, train=True), variables, iter(batches(data, 4)), 6)
  layer = stats["norm"]
  np.testing.assert_allclose(layer["mean"], f64(data).mean((0, 1, 2)), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(layer["var"], f64(data).var((0, 1, 2)), rtol=1e-5)
  assert layer["mean"].dtype == jnp.float32
  if "count" in layer:
    assert int(layer["count"]) == 6
  if "steps" in layer:
    assert int(layer["steps"]) == 0  # untouched


def test_two_layers_match_a_hand_computed_reference():
  data = dataset(n=20, shape=(4,))
  model = TwoBN()
  variables = model.init(KEY, data[:5], train=False)
  kernel = f64(variables["params"]["Dense_0"]["kernel"])
  bias = f64(variables["params"]["Dense_0"]["bias"])
  stats = jn.precise_batch_stats(functools.partial(model.apply, train=True), variables, batches(data, 5), 4)
  # By hand: layer 1 normalizes each batch with its own statistics (training
  # mode), layer 2 sees the resulting features of every example.
  hidden = []
  for b in batches(f64(data), 5):
    z = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-3)
    hidden.append(z @ kernel + bias)
  hidden = np.concatenate(hidden)
  np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], f64(data).mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats["BatchNorm_0"]["var"], f64(data).var(0), rtol=1e-5)
  np.testing.assert_allclose(stats["BatchNorm_1"]["mean"], hidden.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["BatchNorm_1"]["var"], hidden.var(0), rtol=1e-4)


def test_population_variance_includes_the_spread_of_batch_means():
  """Unlike averaging batch variances (PyTorch's cumulative BN), it is exact."""
  data = np.concatenate([np.zeros((4, 1)), np.ones((4, 1)) * 10]).astype(np.float32)
  model = OneBN(functools.partial(jn.BatchNorm, running_stats="cumulative"))
  variables = model.init(KEY, data[:4], train=False)
  apply = functools.partial(model.apply, train=True)
  precise = jn.precise_batch_stats(apply, variables, batches(data, 4), 2)["norm"]
  np.testing.assert_allclose(precise["var"], [25.0])  # batch variances are both 0
  for b in batches(data, 4):
    _, upd = apply(variables, b, mutable=["batch_stats"])
    variables = {**variables, **upd}
  np.testing.assert_allclose(variables["batch_stats"]["norm"]["var"], [0.0])


def test_evonorm_b0_and_unreporting_layers():
  class Mixed(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = jn.EvoNormB0(use_running_average=not train)(x)
      return nn.BatchNorm(use_running_average=not train)(x)  # flax's: reports nothing

  data = dataset(n=8)
  model = Mixed()
  variables = model.init(KEY, data[:4], train=False)
  stats = jn.precise_batch_stats(functools.partial(model.apply, train=True), variables, batches(data, 4), 2)
  assert set(stats["EvoNormB0_0"]) == {"var"}
  np.testing.assert_allclose(stats["EvoNormB0_0"]["var"], f64(data).var((0, 1, 2)), rtol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, stats["BatchNorm_0"], variables["batch_stats"]["BatchNorm_0"])


def test_errors():
  data = dataset(n=8)
  model = OneBN(jn.BatchNorm)
  variables = model.init(KEY, data[:4], train=False)
  with pytest.raises(ValueError, match=r"precise_batch_stats: num_batches=3 but the batches ran out after 2"):
    jn.precise_batch_stats(functools.partial(model.apply, train=True), variables, batches(data, 4), 3)
  with pytest.raises(
    ValueError,
    match=r"precise_batch_stats: no layer reported batch moments; apply_fn must run the model in training mode",
  ):
    jn.precise_batch_stats(functools.partial(model.apply, train=False), variables, batches(data, 4), 2)
  with pytest.raises(ValueError, match=r"num_batches=0; expected a positive integer"):
    jn.precise_batch_stats(model.apply, variables, batches(data, 4), 0)
  with pytest.raises(ValueError, match=r"variables have no 'batch_stats' collection"):
    jn.precise_batch_stats(model.apply, {"params": {}}, batches(data, 4), 1)


def test_iterator_is_not_consumed_beyond_num_batches():
  data = dataset(n=12)
  model = OneBN(jn.BatchNorm)
  variables = model.init(KEY, data[:4], train=False)
  it = iter(batches(data, 4))
  jn.precise_batch_stats(functools.partial(model.apply, train=True), variables, it, 2)
  assert next(it).shape == (4, 3, 3, 4)
