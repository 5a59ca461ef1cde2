"""Folding an evaluation-mode batch norm into the preceding Conv or Dense."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm as jn
from references import f64

KEY = jax.random.key(0)


def randn(*shape, loc=0.0, scale=1.0, seed=0):
  return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def norm_variables(c, seed=1, use_scale=True, use_bias=True):
  rng = np.random.default_rng(seed)
  params = {}
  if use_scale:
    params["scale"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
  if use_bias:
    params["bias"] = rng.normal(size=c).astype(np.float32)
  stats = {"mean": rng.normal(size=c).astype(np.float32), "var": rng.uniform(0.1, 3.0, c).astype(np.float32)}
  return params, stats


LAYERS = [
  ("conv", lambda bias: nn.Conv(6, (3, 3), use_bias=bias), (2, 5, 5, 3)),
  ("strided_conv", lambda bias: nn.Conv(4, (3, 3), strides=2, padding="VALID", use_bias=bias), (2, 7, 7, 3)),
  ("dense", lambda bias: nn.Dense(6, use_bias=bias), (4, 5)),
]


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("kind,make,shape", LAYERS, ids=[l[0] for l in LAYERS])
@pytest.mark.parametrize("affine", [(True, True), (False, True), (True, False)])
def test_folded_layer_equals_layer_then_eval_batch_norm(kind, make, shape, use_bias, affine):
  x = randn(*shape)
  layer = make(use_bias)
  layer_vars = layer.init(KEY, x)
  if use_bias:
    layer_vars = {"params": {**layer_vars["params"], "bias": randn(layer.features, seed=5)}}
  c = layer.features
  bn_params, bn_stats = norm_variables(c, use_scale=affine[0], use_bias=affine[1])
  bn = jn.BatchNorm(use_running_average=True, epsilon=1e-3, use_scale=affine[0], use_bias=affine[1])
  expected = bn.apply({"params": bn_params, "batch_stats": bn_stats}, layer.apply(layer_vars, x))
  folded = jn.fold_batch_norm(layer_vars["params"], bn_params, bn_stats, epsilon=1e-3)
  assert set(folded) == {"kernel", "bias"}
  y = make(True).apply({"params": folded}, x)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_folded_parameters_follow_the_formula():
  kernel, bias = randn(3, 3, 2, 4), randn(4, seed=1)
  (params, stats) = norm_variables(4)
  folded = jn.fold_batch_norm({"kernel": kernel, "bias": bias}, params, stats, epsilon=1e-5)
  a = f64(params["scale"]) / np.sqrt(f64(stats["var"]) + 1e-5)
  np.testing.assert_allclose(folded["kernel"], f64(kernel) * a, rtol=1e-6)
  np.testing.assert_allclose(folded["bias"], (f64(bias) - stats["mean"]) * a + params["bias"], rtol=1e-5, atol=1e-6)


def test_batch_renorm_folds_like_batch_norm():
  x = randn(2, 4, 4, 3)
  conv = nn.Conv(5, (3, 3), use_bias=False)
  conv_vars = conv.init(KEY, x)
  params, stats = norm_variables(5)
  brn_vars = {"params": params, "batch_stats": {**stats, "steps": jnp.array(7, jnp.int32)}}
  expected = jn.BatchRenorm(use_running_average=True).apply(brn_vars, conv.apply(conv_vars, x))
  folded = jn.fold_batch_norm(conv_vars["params"], params, brn_vars["batch_stats"])
  np.testing.assert_allclose(nn.Conv(5, (3, 3)).apply({"params": folded}, x), expected, rtol=1e-4, atol=1e-4)


def test_check_grads():
  kernel, bias = randn(2, 2, 3), randn(3, seed=1)
  params, stats = norm_variables(3)

  def f(kernel, bias, scale, shift, mean, var):
    out = jn.fold_batch_norm(
      {"kernel": kernel, "bias": bias}, {"scale": scale, "bias": shift}, {"mean": mean, "var": var}
    )
    return jnp.sum(jnp.sin(out["kernel"])) + jnp.sum(jnp.sin(out["bias"]))

  args = (kernel, bias, params["scale"], params["bias"], stats["mean"], stats["var"])
  check_grads(f, args, order=1, modes=["rev"], atol=5e-2, rtol=5e-2)


def test_dtype_is_kept_and_jit_works():
  kernel = jnp.asarray(randn(3, 4), jnp.bfloat16)
  params, stats = norm_variables(4)
  folded = jax.jit(jn.fold_batch_norm)({"kernel": kernel}, params, stats)
  assert folded["kernel"].dtype == jnp.bfloat16 and folded["bias"].dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: jn.fold_batch_norm({"kernel": jnp.ones((3, 4))}, {}, {"mean": jnp.zeros(5), "var": jnp.ones(5)}),
      r"fold_batch_norm: norm_stats\['mean'\] has shape \(5,\), but the kernel of shape \(3, 4\) has 4 output channels",
    ),
    (
      lambda: jn.fold_batch_norm(
        {"kernel": jnp.ones((3, 4))}, {"scale": jnp.ones(3)}, {"mean": jnp.zeros(4), "var": jnp.ones(4)}
      ),
      r"norm_params\['scale'\] has shape \(3,\)",
    ),
    (
      lambda: jn.fold_batch_norm({"kernel": jnp.ones((3, 4))}, None, {"mean": jnp.zeros(4)}),
      r"norm_stats\['var'\] is missing",
    ),
    (
      lambda: jn.fold_batch_norm({"w": jnp.ones((3, 4))}, None, {"mean": jnp.zeros(4), "var": jnp.ones(4)}),
      r"layer_params has no 'kernel'",
    ),
  ],
)
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
