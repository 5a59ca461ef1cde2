"""Filter response normalization + TLU (Singh & Krishnan, 2020)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm as jn
import references as ref

KEY = jax.random.key(0)


def randn(*shape, loc=0.5, scale=2.0, seed=0):
  return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def params(c, seed=1):
  rng = np.random.default_rng(seed)
  return (
    rng.uniform(0.5, 1.5, c).astype(np.float32),
    rng.normal(size=c).astype(np.float32),
    rng.normal(size=c).astype(np.float32),
  )


@pytest.mark.parametrize(
  "shape,channel_axis", [((2, 4, 5, 6), -1), ((2, 6, 4, 5), 1), ((3, 7, 4), -1), ((2, 1, 1, 4), -1)]
)
@pytest.mark.parametrize("tlu", [True, False])
def test_matches_paper_formula(shape, channel_axis, tlu):
  x = randn(*shape)
  gamma, beta, tau = params(shape[channel_axis])
  tau = tau if tlu else None
  y = jn.filter_response_norm(x, gamma, beta, tau, epsilon=1e-3, channel_axis=channel_axis)
  expected = ref.filter_response_norm(x, gamma, beta, tau, 1e-3, channel_axis=channel_axis)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_learned_epsilon_adds_its_absolute_value():
  x = randn(2, 1, 1, 3, scale=0.01)  # 1×1 spatial: ε matters
  gamma, beta, tau = params(3)
  y = jn.filter_response_norm(x, gamma, beta, tau, epsilon=1e-6, learned_epsilon=jnp.asarray(-0.02))
  expected = ref.filter_response_norm(x, gamma, beta, tau, 1e-6 + 0.02)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_without_tlu_is_rms_norm_over_space_plus_bias():
  x = randn(3, 4, 4, 5)
  gamma, beta, _ = params(5)
  y = jn.filter_response_norm(x, gamma, beta, epsilon=1e-5)
  rms = jn.rms_norm(x, gamma, reduction_axes=(1, 2), feature_axes=-1, epsilon=1e-5)
  np.testing.assert_allclose(y, rms + beta.reshape(1, 1, 1, 5), rtol=1e-5, atol=1e-5)
  # τ = 0 with the identity affine map is a ReLU after the normalization.
  relu = jn.filter_response_norm(x, tau=np.zeros(5, np.float32), epsilon=1e-5)
  plain = jn.filter_response_norm(x, epsilon=1e-5)
  np.testing.assert_array_equal(relu, jnp.maximum(plain, 0.0))


def test_batch_independence_and_vmap():
  x = randn(4, 3, 3, 2)
  gamma, beta, tau = params(2)
  full = jn.filter_response_norm(x, gamma, beta, tau)
  one = jn.filter_response_norm(x[1:2], gamma, beta, tau)
  np.testing.assert_allclose(full[1:2], one, rtol=1e-6)
  stacked = jax.vmap(lambda a: jn.filter_response_norm(a, gamma, beta, tau))(x.reshape(2, 2, 3, 3, 2))
  np.testing.assert_allclose(stacked.reshape(x.shape), full, rtol=1e-6)
  # jit, and host or device inputs: tests/jaxnorm/test_transformations.py (chex variants).


def test_check_grads():
  x = randn(2, 3, 3, 2)
  gamma, beta, tau = params(2)
  w = randn(*x.shape, seed=3)
  f = lambda x, g, b, t, e: jnp.sum(w * jn.filter_response_norm(x, g, b, t, learned_epsilon=e) ** 2)
  args = (x, gamma, beta, tau, np.float32(0.3))
  check_grads(jax.jit(f), args, order=2, modes=["rev"], atol=5e-2, rtol=5e-2)


def test_module_variables_and_output():
  x = randn(2, 4, 4, 3)
  mod = jn.FilterResponseNorm(learn_epsilon=True)
  variables = mod.init(KEY, x)
  assert jax.tree.map(jnp.shape, variables) == {"params": {"scale": (3,), "bias": (3,), "tau": (3,), "epsilon": ()}}
  np.testing.assert_allclose(variables["params"]["epsilon"], 1e-4)
  p = {"scale": params(3)[0], "bias": params(3)[1], "tau": params(3)[2], "epsilon": jnp.asarray(-0.5)}
  y = mod.apply({"params": p}, x)
  np.testing.assert_allclose(y, ref.filter_response_norm(x, *params(3), 1e-6 + 0.5), rtol=1e-4, atol=1e-5)
  nchw = jn.FilterResponseNorm(channel_axis=1, use_tlu=False)
  v = nchw.init(KEY, jnp.transpose(x, (0, 3, 1, 2)))
  assert set(v["params"]) == {"scale", "bias"}


def test_bfloat16_in_bfloat16_out():
  x = jnp.asarray(randn(2, 4, 4, 3), jnp.bfloat16)
  y = jn.filter_response_norm(x, tau=jnp.zeros(3, jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  expected = ref.filter_response_norm(np.asarray(x.astype(jnp.float32)), np.ones(3), np.zeros(3), np.zeros(3), 1e-6)
  np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), expected, rtol=2**-7, atol=2**-7)


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: jn.filter_response_norm(jnp.ones((2, 3, 3, 4)), channel_axis=0),
      r"filter_response_norm: channel_axis=0 is the batch axis 0",
    ),
    (
      lambda: jn.FilterResponseNorm(channel_axis=-4).init(KEY, jnp.ones((2, 3, 3, 4))),
      r"FilterResponseNorm: channel_axis=-4 is the batch axis 0",
    ),
    (
      lambda: jn.filter_response_norm(jnp.ones((2, 3, 3, 4)), learned_epsilon=jnp.ones(4)),
      r"learned_epsilon has shape \(4,\); ε is a scalar",
    ),
    (
      lambda: jn.filter_response_norm(jnp.ones((2, 3, 3, 4)), tau=jnp.ones(3)),
      r"filter_response_norm: tau has shape \(3,\)",
    ),
  ],
)
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
