"""Weight standardization (Qiao et al. 2019) and Scaled WS (Brock et al. 2021)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm as jn
import references as ref
from references import f64

KEY = jax.random.key(0)


def randn(*shape, loc=0.1, scale=0.5, seed=0):
  return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(3, 3, 4, 8), (5, 6), (3, 2, 5)])
@pytest.mark.parametrize("scaled", [False, True])
def test_standardize_weight_matches_formula(shape, scaled):
  w = randn(*shape)
  gain = randn(shape[-1], loc=1.0, seed=1)
  got = jn.standardize_weight(w, gain, scaled=scaled, activation_gain=1.7, epsilon=1e-4)
  expected = ref.standardize_weight(w, 1e-4, scaled=scaled, gain=gain, activation_gain=1.7)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_plain_ws_gives_zero_mean_unit_variance_filters():
  w = jn.standardize_weight(randn(3, 3, 8, 4, loc=2.0), epsilon=0.0)
  np.testing.assert_allclose(f64(w).mean((0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(f64(w).var((0, 1, 2)), 1.0, rtol=1e-5)
  scaled = jn.standardize_weight(randn(3, 3, 8, 4, loc=2.0), scaled=True, epsilon=0.0)
  np.testing.assert_allclose((f64(scaled) ** 2).sum((0, 1, 2)), 1.0, rtol=1e-5)  # σ²·N = 1


def test_explicit_fan_in_axes_and_mask():
  w = randn(4, 6)  # standardize each row over axis 1 instead
  got = jn.standardize_weight(w, fan_in_axes=1, epsilon=1e-5)
  expected = ref.standardize_weight(w.T, 1e-5).T
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  mask = np.random.default_rng(2).random((6, 5)) < 0.7
  mask[:2] = True
  w = randn(6, 5)
  got = jn.standardize_weight(w, mask=mask, scaled=True, epsilon=1e-5)
  for j in range(5):
    col = f64(w[mask[:, j], j])
    expected = (f64(w[:, j]) - col.mean()) / np.sqrt(col.size * col.var() + 1e-5)
    np.testing.assert_allclose(got[:, j], expected, rtol=1e-4, atol=1e-5)


def test_output_is_invariant_to_filter_scale_and_shift():
  w = randn(3, 3, 4, 8)
  a = jn.standardize_weight(w, epsilon=0.0)
  b = jn.standardize_weight(3.0 * w + randn(8, seed=5)[None, None, None, :], epsilon=0.0)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_check_grads_and_vmap():
  w, gain = randn(3, 2, 4), randn(4, loc=1.0, seed=1)
  t = randn(3, 2, 4, seed=2)
  f = lambda w, g: jnp.sum(t * jn.standardize_weight(w, g, scaled=True) ** 2)
  check_grads(jax.jit(f), (w, gain), order=2, modes=["rev"], atol=5e-2, rtol=5e-2)
  stack = np.stack([w, 2 * w - 1])
  batched = jax.vmap(lambda k: jn.standardize_weight(k))(stack)
  for i in range(2):
    np.testing.assert_allclose(batched[i], jn.standardize_weight(stack[i]), rtol=1e-6)


# --------------------------------------------------------------------------
# StandardizedConv


def test_fields_are_flax_conv_fields_then_ws_fields():
  names = lambda cls: [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
  conv = names(nn.Conv)
  assert names(jn.StandardizedConv)[: len(conv)] == conv
  assert names(jn.StandardizedConv)[len(conv) :] == ["epsilon", "scaled", "activation_gain", "gain_init"]


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(features=8, kernel_size=(3, 3)),
    dict(features=6, kernel_size=(3, 3), strides=2, padding="VALID", use_bias=False),
    dict(features=4, kernel_size=(3, 3), feature_group_count=2),
    dict(features=8, kernel_size=(2, 2), scaled=True, activation_gain=1.7),
    dict(features=5, kernel_size=(3,)),
  ],
)
def test_conv_equals_flax_conv_with_standardized_kernel(kwargs):
  x = randn(2, 6, 5, 4) if len(kwargs["kernel_size"]) == 2 else randn(2, 7, 4)
  mod = jn.StandardizedConv(epsilon=1e-5, **kwargs)
  variables = mod.init(KEY, x)
  params = dict(variables["params"])
  if kwargs.get("scaled"):
    params["gain"] = randn(kwargs["features"], loc=1.0, seed=4)
  if "bias" in params:
    params["bias"] = randn(kwargs["features"], seed=6)
  y = mod.apply({"params": params}, x)
  kernel = ref.standardize_weight(
    params["kernel"],
    1e-5,
    scaled=kwargs.get("scaled", False),
    gain=params.get("gain"),
    activation_gain=kwargs.get("activation_gain", 1.0),
  )
  flax_kwargs = {k: v for k, v in kwargs.items() if k not in ("scaled", "activation_gain")}
  plain = {"kernel": jnp.asarray(kernel, jnp.float32)}
  if "bias" in params:
    plain["bias"] = params["bias"]
  expected = nn.Conv(**flax_kwargs).apply({"params": plain}, x)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_conv_variables_and_gradient_projection():
  x = randn(2, 5, 5, 3, loc=0.0, scale=1.0)
  mod = jn.StandardizedConv(4, (3, 3))
  variables = mod.init(KEY, x)
  assert jax.tree.map(jnp.shape, variables) == {"params": {"kernel": (3, 3, 3, 4), "bias": (4,)}}
  scaled = jn.StandardizedConv(4, (3, 3), scaled=True).init(KEY, x)
  np.testing.assert_array_equal(scaled["params"]["gain"], np.ones(4))
  # With ε = 0 the output ignores each filter's mean and scale, so the
  # gradient with respect to the raw kernel is orthogonal to both.
  exact = jn.StandardizedConv(4, (3, 3), epsilon=0.0)
  grad = jax.grad(lambda p: jnp.sum(jnp.sin(exact.apply({"params": p}, x))))(variables["params"])["kernel"]
  w, g = f64(variables["params"]["kernel"]), f64(grad)
  fan_in = (0, 1, 2)
  assert (np.abs(g.sum(fan_in)) < 1e-5 * np.abs(g).sum(fan_in)).all()
  assert (np.abs((g * w).sum(fan_in)) < 1e-5 * np.abs(g * w).sum(fan_in)).all()


def test_conv_under_jit():
  x = randn(2, 5, 5, 3)
  mod = jn.StandardizedConv(4, (3, 3), scaled=True)
  variables = mod.init(KEY, x)
  np.testing.assert_allclose(jax.jit(mod.apply)(variables, x), mod.apply(variables, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: jn.StandardizedConv(8, (1, 1)).init(KEY, jnp.ones((1, 4, 4, 1))),
      r"StandardizedConv: kernel of shape \(1, 1, 1, 8\) has fan-in 1 over axes \(0, 1, 2\).*variance is 0",
    ),
    (
      lambda: jn.StandardizedConv(4, (1, 1), feature_group_count=4).init(KEY, jnp.ones((1, 4, 4, 4))),
      r"kernel of shape \(1, 1, 1, 4\) has fan-in 1",
    ),
    (lambda: jn.standardize_weight(jnp.ones((1, 5))), r"standardize_weight: kernel of shape \(1, 5\) has fan-in 1"),
    (
      lambda: jn.standardize_weight(jnp.ones((3, 5)), fan_in_axes=2),
      r"standardize_weight: fan_in_axes=2 is out of range",
    ),
  ],
)
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
