"""Spectral normalization: the function against the paper's power iteration
in float64 NumPy, the modules against flax's and PyTorch's, linen against
nnx, and the transforms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm as jn


def power_iteration(w: np.ndarray, u: np.ndarray, n_steps: int, eps: float = 1e-12):
  """Miyato et al. (2018), Algorithm 1, in float64, on ``w`` as a ``(-1, out)`` matrix."""
  m = np.asarray(w, np.float64).reshape(-1, w.shape[-1])
  u = np.asarray(u, np.float64)
  for _ in range(n_steps):
    v = u @ m.T
    v = v / np.sqrt(np.sum(v * v) + eps)
    u = v @ m
    u = u / np.sqrt(np.sum(u * u) + eps)
  sigma = (v @ m @ u.T).item()
  return (m / sigma).reshape(w.shape), u, sigma, v


def rand(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(6, 4), (3, 3, 5, 8), (7, 2)])
@pytest.mark.parametrize("n_steps", [1, 3])
def test_spectral_normalize_is_the_papers_power_iteration(shape, n_steps):
  w, u = rand(shape), rand((1, shape[-1]), 1)
  normalized, new_u, sigma = jn.spectral_normalize(jnp.asarray(w), jnp.asarray(u), n_steps=n_steps)
  want_w, want_u, want_sigma, _ = power_iteration(w, u, n_steps)
  np.testing.assert_allclose(np.asarray(normalized), want_w, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(new_u), want_u, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(float(sigma), want_sigma, rtol=2e-5)


def test_enough_steps_reach_the_largest_singular_value():
  w = rand((12, 5))
  normalized, _, sigma = jn.spectral_normalize(jnp.asarray(w), jnp.ones((1, 5)), n_steps=200)
  top = np.linalg.svd(w.astype(np.float64), compute_uv=False)[0]
  np.testing.assert_allclose(float(sigma), top, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.svd(np.asarray(normalized, np.float64), compute_uv=False)[0], 1.0, rtol=1e-5)


def test_the_gradient_is_that_of_w_over_sigma_at_the_estimated_vectors():
  """No gradient through u and v: d/dW <c, W/σ> = c/σ − <c, W>/σ² · vᵀu with
  σ = v W uᵀ (the paper's and PyTorch's choice)."""
  w, u, c = rand((6, 4)), rand((1, 4), 1), rand((6, 4), 2)
  grad = jax.grad(lambda w: jnp.sum(jnp.asarray(c) * jn.spectral_normalize(w, jnp.asarray(u), n_steps=2)[0]))(
    jnp.asarray(w)
  )
  _, u_new, sigma, v = power_iteration(w, u, 2)
  c64, w64 = c.astype(np.float64), w.astype(np.float64)
  want = c64 / sigma - np.sum(c64 * w64) / sigma**2 * (v.T @ u_new)
  np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-4, atol=1e-6)


def test_float16_weights_iterate_in_float32():
  """A float16 Σx² overflows above a norm of 256; the iteration runs in float32."""
  w = jnp.full((64, 64), 40.0, jnp.float16)  # norm 2560
  normalized, u, sigma = jn.spectral_normalize(w, jnp.ones((1, 64), jnp.float16), n_steps=2)
  assert normalized.dtype == jnp.float16 and u.dtype == jnp.float16
  np.testing.assert_allclose(float(sigma), 2560.0, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(normalized, np.float32), 1 / 64, rtol=1e-3)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: jn.spectral_normalize(jnp.ones((4, 3)), jnp.ones((1, 3)), n_steps=0), "n_steps"),
    (lambda: jn.spectral_normalize(jnp.ones((4, 3)), jnp.ones((1, 4))), r"u has shape \(1, 4\).*\(1, 3\)"),
    (lambda: jn.spectral_normalize(jnp.ones((4,)), jnp.ones((1, 4))), "needs a matrix"),
    (lambda: jn.spectral_normalize(jnp.ones((2, 4, 3)), jnp.ones((1, 3)), error_on_non_matrix=True), "3D"),
    (lambda: jn.spectral_normalize(jnp.ones((4, 3), jnp.int32), jnp.ones((1, 3))), "weight"),
  ],
)
def test_bad_arguments_are_named(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call()


# The linen module against flax.linen.SpectralNorm.


def _linen_pair(layer, **kwargs):
  return jn.SpectralNorm(layer, **kwargs), nn.SpectralNorm(layer, **kwargs)


@pytest.mark.parametrize(
  "layer, x_shape", [(nn.Dense(5), (3, 4)), (nn.Conv(6, (3, 3)), (2, 5, 5, 3))], ids=["dense", "conv"]
)
@pytest.mark.parametrize("n_steps", [1, 2])
def test_linen_module_is_a_drop_in_for_flax(layer, x_shape, n_steps):
  """The same variables from the same key, and the same outputs and
  batch_stats over three training steps."""
  ours, theirs = _linen_pair(layer, n_steps=n_steps)
  x = jnp.asarray(rand(x_shape, 3))
  v_ours = ours.init(jax.random.key(0), x, update_stats=False)
  v_theirs = theirs.init(jax.random.key(0), x, update_stats=False)
  assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)
  jax.tree.map(np.testing.assert_array_equal, v_ours, v_theirs)
  for _ in range(3):
    y_ours, s_ours = ours.apply(v_ours, x, update_stats=True, mutable=["batch_stats"])
    y_theirs, s_theirs = theirs.apply(v_theirs, x, update_stats=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y_ours), np.asarray(y_theirs), rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), s_ours, s_theirs)
    v_ours = {**v_ours, **s_ours}
    v_theirs = {**v_theirs, **s_theirs}


def test_linen_params_are_never_replaced_by_the_normalized_weights():
  """Applied with every collection mutable, flax's SpectralNorm returns
  W/σ in ``params``; ours returns no ``params`` update at all."""
  model = jn.SpectralNorm(nn.Dense(3))
  x = jnp.ones((2, 4))
  variables = model.init(jax.random.key(0), x, update_stats=False)
  _, updates = model.apply(variables, x, update_stats=True, mutable=True)
  assert "params" not in updates or jax.tree.all(
    jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), updates["params"], variables["params"])
  )


# The nnx module: the same as linen, and its parameter stays W (flax #5576).


def _nnx_and_linen(n_steps=1):
  x = jnp.asarray(rand((3, 4), 4))
  linen_model = jn.SpectralNorm(nn.Dense(5), n_steps=n_steps)
  variables = linen_model.init(jax.random.key(0), x, update_stats=False)
  nnx_model = jn.nnx.SpectralNorm(nnx.Linear(4, 5, rngs=nnx.Rngs(0)), n_steps=n_steps, rngs=nnx.Rngs(1))
  nnx_model.layer_instance.kernel[...] = variables["params"]["layer_instance"]["kernel"]
  nnx_model.layer_instance.bias[...] = variables["params"]["layer_instance"]["bias"]
  nnx_model.batch_stats[("kernel", "u")][...] = variables["batch_stats"]["layer_instance/kernel/u"]
  return x, linen_model, variables, nnx_model


def test_nnx_equals_linen_in_outputs_statistics_and_gradients_and_keeps_w_in_params():
  x, linen_model, variables, nnx_model = _nnx_and_linen(n_steps=2)
  raw = np.asarray(nnx_model.layer_instance.kernel[...])
  for _ in range(3):
    loss_linen = lambda p, v: jnp.sum(
      linen_model.apply({**v, "params": p}, x, update_stats=True, mutable=["batch_stats"])[0] ** 2
    )
    g_linen = jax.grad(loss_linen)(variables["params"], variables)
    _, updates = linen_model.apply(variables, x, update_stats=True, mutable=["batch_stats"])
    y_linen = linen_model.apply(variables, x, update_stats=False)

    def loss_nnx(model):
      return jnp.sum(model(x, update_stats=False) ** 2)

    g_nnx = nnx.grad(loss_nnx)(nnx_model)
    y_nnx = nnx_model(x)  # update_stats=True (training mode)
    np.testing.assert_allclose(np.asarray(y_nnx), np.asarray(y_linen), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
      np.asarray(g_nnx["layer_instance"]["kernel"][...]),
      np.asarray(g_linen["layer_instance"]["kernel"]),
      rtol=1e-5,
      atol=1e-6,
    )
    variables = {**variables, **updates}
    np.testing.assert_allclose(
      np.asarray(nnx_model.batch_stats[("kernel", "u")][...]),
      np.asarray(variables["batch_stats"]["layer_instance/kernel/u"]),
      rtol=1e-6,
    )
    np.testing.assert_array_equal(np.asarray(nnx_model.layer_instance.kernel[...]), raw)  # W, not W/σ


def test_nnx_eval_mode_leaves_the_statistics_and_jit_trains():
  _, _, _, model = _nnx_and_linen()
  x = jnp.ones((2, 4))
  u = np.asarray(model.batch_stats[("kernel", "u")][...])
  model.eval()
  model(x)
  np.testing.assert_array_equal(np.asarray(model.batch_stats[("kernel", "u")][...]), u)
  model.train()

  @nnx.jit
  def step(model, x):
    loss, grads = nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2))(model)
    return loss, grads

  loss, grads = step(model, x)
  assert np.isfinite(float(loss)) and grads["layer_instance"]["kernel"][...].shape == (4, 5)
  assert not np.array_equal(np.asarray(model.batch_stats[("kernel", "u")][...]), u)  # updated under jit


def test_vmap_over_a_stack_of_weights_equals_each_alone():
  w, u = jnp.asarray(rand((4, 6, 3))), jnp.asarray(rand((4, 1, 3), 1))
  stacked = jax.vmap(lambda w, u: jn.spectral_normalize(w, u, n_steps=2))(w, u)
  for i in range(4):
    alone = jn.spectral_normalize(w[i], u[i], n_steps=2)
    for a, b in zip(stacked, alone):
      np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_pytorch_parametrization_gives_the_same_weight_output_and_gradient():
  """torch.nn.utils.parametrizations.spectral_norm on a Linear (weight
  ``(out, in)`` = our kernel transposed). PyTorch keeps ``v`` and updates
  ``u`` first, flax and the paper keep ``u`` and update ``v`` first, so
  single steps differ by half an iteration; run to convergence, both give
  the same normalized weight, output and gradient (u, v held constant)."""
  torch = pytest.importorskip("torch")
  w, x, c = rand((4, 5)), rand((3, 4), 2), rand((3, 5), 3)
  linear = torch.nn.Linear(4, 5, bias=False)
  with torch.no_grad():
    linear.weight.copy_(torch.from_numpy(w.T.copy()))
  linear = torch.nn.utils.parametrizations.spectral_norm(linear, n_power_iterations=100)
  linear.train()
  y_torch = linear(torch.from_numpy(x))
  (y_torch * torch.from_numpy(c)).sum().backward()
  grad_torch = linear.parametrizations.weight.original.grad.numpy().T

  def loss(w):
    return jnp.sum(jnp.asarray(c) * (jnp.asarray(x) @ jn.spectral_normalize(w, jnp.ones((1, 5)), n_steps=100)[0]))

  y = jnp.asarray(x) @ jn.spectral_normalize(jnp.asarray(w), jnp.ones((1, 5)), n_steps=100)[0]
  np.testing.assert_allclose(np.asarray(y), y_torch.detach().numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.grad(loss)(jnp.asarray(w))), grad_torch, rtol=1e-4, atol=1e-6)
