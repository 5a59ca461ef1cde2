"""Weight normalization: the function against Salimans & Kingma's formula in
float64 NumPy, the modules against flax's and PyTorch's, linen against nnx,
and the transforms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxnorm as jn


def rand(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def reference(v, g, feature_axes):
  """g · v/‖v‖ in float64, the norm over every axis but ``feature_axes``."""
  v = np.asarray(v, np.float64)
  features = tuple(a % v.ndim for a in feature_axes)
  reduction = tuple(a for a in range(v.ndim) if a not in features)
  shape = [v.shape[a] if a in features else 1 for a in range(v.ndim)]
  norm = np.sqrt(np.sum(v * v, axis=reduction, keepdims=True))
  return np.asarray(g, np.float64).reshape(shape) * v / norm


@pytest.mark.parametrize(
  "shape, feature_axes",
  [((6, 4), (-1,)), ((3, 3, 5, 8), (-1,)), ((3, 3, 5, 8), (-2, -1)), ((6, 4), ())],
)
def test_weight_normalize_is_the_papers_formula(shape, feature_axes):
  v = rand(shape)
  g = rand(tuple(shape[a] for a in feature_axes), 1)
  got = jn.weight_normalize(jnp.asarray(v), jnp.asarray(g), feature_axes=feature_axes)
  np.testing.assert_allclose(np.asarray(got), reference(v, g, feature_axes), rtol=1e-5, atol=1e-6)
  if feature_axes:  # each feature's vector has length |g|
    lengths = np.sqrt(np.sum(np.asarray(got, np.float64) ** 2, axis=tuple(range(len(shape) - len(feature_axes)))))
    np.testing.assert_allclose(lengths, np.abs(g), rtol=1e-5)


def test_float16_weights_are_normalized_in_float32():
  v = jnp.full((64, 2), 40.0, jnp.float16)  # ‖v‖ = 320: Σv² overflows float16
  got = jn.weight_normalize(v, jnp.ones((2,), jnp.float16))
  assert got.dtype == jnp.float16
  np.testing.assert_allclose(np.asarray(got, np.float32), 1 / 8, rtol=1e-3)


def test_the_gradient_matches_the_papers():
  """∇_g L = ∇_w L · v/‖v‖ and ∇_v L = g/‖v‖ · (I − v vᵀ/‖v‖²) ∇_w L, per feature."""
  v, g, c = rand((5, 3)), rand((3,), 1), rand((5, 3), 2)
  grad_v, grad_g = jax.grad(lambda v, g: jnp.sum(jnp.asarray(c) * jn.weight_normalize(v, g)), argnums=(0, 1))(
    jnp.asarray(v), jnp.asarray(g)
  )
  v64, c64, g64 = v.astype(np.float64), c.astype(np.float64), g.astype(np.float64)
  norm = np.linalg.norm(v64, axis=0)
  want_g = np.sum(c64 * v64, axis=0) / norm
  want_v = g64 / norm * (c64 - v64 * np.sum(c64 * v64, axis=0) / norm**2)
  np.testing.assert_allclose(np.asarray(grad_g), want_g, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad_v), want_v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: jn.weight_normalize(jnp.ones((4, 3)), jnp.ones((4,))), r"scale has shape \(4,\).*\(3,\)"),
    (lambda: jn.weight_normalize(jnp.ones((4, 3)), feature_axes=2), "feature_axes"),
    (lambda: jn.WeightNorm(nn.Dense(3), scale_init="pytorch").init(jax.random.key(0), jnp.ones((1, 2))), "'norm'"),
    (lambda: jn.WeightNorm(nn.Dense(3), scale_init=1.0).init(jax.random.key(0), jnp.ones((1, 2))), "callable"),
  ],
)
def test_bad_arguments_are_named(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call()


# The linen module against flax.linen.WeightNorm.


@pytest.mark.parametrize(
  "layer, x_shape", [(nn.Dense(5), (3, 4)), (nn.Conv(6, (3, 3)), (2, 5, 5, 3))], ids=["dense", "conv"]
)
@pytest.mark.parametrize(
  "kwargs",
  [{}, {"feature_axes": None}, {"variable_filter": {"kernel", "bias"}}, {"use_scale": False}],
  ids=["default", "one-norm", "filter", "no-scale"],
)
def test_linen_module_is_a_drop_in_for_flax(layer, x_shape, kwargs):
  ours, theirs = jn.WeightNorm(layer, **kwargs), nn.WeightNorm(layer, **kwargs)
  x = jnp.asarray(rand(x_shape, 3))
  v_ours, v_theirs = ours.init(jax.random.key(0), x), theirs.init(jax.random.key(0), x)
  assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)
  jax.tree.map(np.testing.assert_array_equal, v_ours, v_theirs)
  np.testing.assert_allclose(
    np.asarray(ours.apply(v_ours, x)), np.asarray(theirs.apply(v_theirs, x)), rtol=1e-6, atol=1e-6
  )
  g_ours = jax.grad(lambda v: jnp.sum(ours.apply(v, x) ** 2))(v_ours)
  g_theirs = jax.grad(lambda v: jnp.sum(theirs.apply(v, x) ** 2))(v_theirs)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g_ours, g_theirs)


def test_norm_init_leaves_the_wrapped_layers_function_unchanged():
  """``scale_init="norm"`` starts g at ‖v‖, as PyTorch does: wrapping a
  layer does not change its initial output (flax's ones rescale every
  kernel column to unit length, google/flax#4138)."""
  x = jnp.asarray(rand((3, 4), 1))
  wrapped = jn.WeightNorm(nn.Dense(5), scale_init="norm")
  w = wrapped.init(jax.random.key(0), x)
  plain = nn.Dense(5).apply({"params": w["params"]["layer_instance"]}, x)
  np.testing.assert_allclose(np.asarray(wrapped.apply(w, x)), np.asarray(plain), rtol=1e-6, atol=1e-6)


# The nnx module: the same as linen; its parameter stays v (flax #5576).


def _nnx_and_linen(**kwargs):
  x = jnp.asarray(rand((3, 4), 4))
  linen_model = jn.WeightNorm(nn.Dense(5), **kwargs)
  variables = linen_model.init(jax.random.key(0), x)
  nnx_model = jn.nnx.WeightNorm(nnx.Linear(4, 5, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1), **kwargs)
  nnx_model.layer_instance.kernel[...] = variables["params"]["layer_instance"]["kernel"]
  nnx_model.layer_instance.bias[...] = variables["params"]["layer_instance"]["bias"]
  return x, linen_model, variables, nnx_model


def test_nnx_equals_linen_and_an_optimizer_trains_v_and_g():
  x, linen_model, variables, model = _nnx_and_linen(scale_init=nnx.initializers.constant(2.0))
  np.testing.assert_array_equal(
    np.asarray(model.scales[("kernel",)][...]), np.asarray(variables["params"]["layer_instance/kernel/scale"])
  )
  np.testing.assert_allclose(np.asarray(model(x)), np.asarray(linen_model.apply(variables, x)), rtol=1e-6, atol=1e-6)
  tx = optax.sgd(0.1)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  opt_state = tx.init(variables["params"])
  for _ in range(3):
    loss_linen = lambda p: jnp.sum(linen_model.apply({"params": p}, x) ** 2)
    grads = jax.grad(loss_linen)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state)
    variables = {"params": optax.apply_updates(variables["params"], updates)}
    optimizer.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))
    np.testing.assert_allclose(
      np.asarray(model.layer_instance.kernel[...]),
      np.asarray(variables["params"]["layer_instance"]["kernel"]),
      rtol=1e-5,
      atol=1e-6,
    )  # v itself, not g·v/‖v‖
    np.testing.assert_allclose(
      np.asarray(model.scales[("kernel",)][...]),
      np.asarray(variables["params"]["layer_instance/kernel/scale"]),
      rtol=1e-5,
    )  # g is an nnx.Param and trains


def test_nnx_module_under_jit_and_the_norm_init():
  x = jnp.asarray(rand((3, 4), 4))
  model = jn.nnx.WeightNorm(nnx.Linear(4, 5, rngs=nnx.Rngs(0)), scale_init="norm", rngs=nnx.Rngs(1))
  plain = np.asarray(x @ model.layer_instance.kernel[...] + model.layer_instance.bias[...][None])
  y = nnx.jit(lambda m, x: m(x))(model, x)
  np.testing.assert_allclose(np.asarray(y), plain, rtol=1e-6, atol=1e-6)


def test_vmap_over_a_stack_of_weights_equals_each_alone():
  v, g = jnp.asarray(rand((4, 6, 3))), jnp.asarray(rand((4, 3), 1))
  stacked = jax.vmap(jn.weight_normalize)(v, g)
  for i in range(4):
    np.testing.assert_allclose(np.asarray(stacked[i]), np.asarray(jn.weight_normalize(v[i], g[i])), rtol=1e-6)


def test_pytorch_weight_norm_gives_the_same_output_and_gradients():
  """torch.nn.utils.parametrizations.weight_norm on a Linear (dim=0: one
  norm per output feature) against ``WeightNorm(nn.Dense, scale_init="norm")``:
  the same initial g, output and gradients of g and v."""
  torch = pytest.importorskip("torch")
  w, b, x, c = rand((4, 5)), rand((5,), 1), rand((3, 4), 2), rand((3, 5), 3)
  linear = torch.nn.Linear(4, 5)
  with torch.no_grad():
    linear.weight.copy_(torch.from_numpy(w.T.copy()))
    linear.bias.copy_(torch.from_numpy(b))
  linear = torch.nn.utils.parametrizations.weight_norm(linear, dim=0)
  y_torch = linear(torch.from_numpy(x))
  (y_torch * torch.from_numpy(c)).sum().backward()
  g_torch, v_torch = linear.parametrizations.weight.original0, linear.parametrizations.weight.original1

  model = jn.WeightNorm(nn.Dense(5), scale_init="norm")
  variables = {"params": {"layer_instance": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}}
  variables["params"]["layer_instance/kernel/scale"] = jnp.linalg.norm(jnp.asarray(w), axis=0)
  np.testing.assert_allclose(
    np.asarray(model.init(jax.random.key(0), jnp.asarray(x))["params"]["layer_instance/kernel/scale"]).shape,
    (5,),
  )
  np.testing.assert_allclose(
    np.asarray(variables["params"]["layer_instance/kernel/scale"]), g_torch.detach().numpy()[:, 0], rtol=1e-6
  )
  y = model.apply(variables, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), y_torch.detach().numpy(), rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda v: jnp.sum(jnp.asarray(c) * model.apply(v, jnp.asarray(x))))(variables)["params"]
  np.testing.assert_allclose(
    np.asarray(grads["layer_instance/kernel/scale"]), g_torch.grad.numpy()[:, 0], rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    np.asarray(grads["layer_instance"]["kernel"]), v_torch.grad.numpy().T, rtol=1e-5, atol=1e-6
  )
