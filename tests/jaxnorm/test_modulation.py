"""Call-time modulation (``layer(x, scale=s, shift=t)``), the zero-centred
scale and the debiased EMA.

References: float64 NumPy by the formula ``(γ x̂ + β)(1 + s) + t`` with
``x̂`` from :mod:`tests.jaxnorm.references`; the flax Gemma example's
RMSNorm written out; haiku's zero-debiased EMA written out. Equivalences:
a modulated module equals the pure function given the per-example ``γ'``,
``β'``; linen equals nnx; the fused path equals the reference; every
transformation gives what the untransformed call gives.
"""

import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from flax import nnx

import jaxnorm as jn
from tests.jaxnorm import references as ref

N, H, W, C = 4, 5, 6, 8
KEYS = jax.random.split(jax.random.key(0), 6)
X = jax.random.normal(KEYS[0], (N, H, W, C)) * 2.0 + 0.5
S = 0.3 * jax.random.normal(KEYS[1], (N, C))  # the modulation scale (zero-centred)
T = jax.random.normal(KEYS[2], (N, C))  # the shift
GAMMA = 1.0 + 0.2 * jax.random.normal(KEYS[3], (C,))
BETA = 0.2 * jax.random.normal(KEYS[4], (C,))


def per_example(a):
  """(N, C) -> (N, 1, 1, C) in float64."""
  return ref.f64(a)[:, None, None, :]


def modulated_reference(xhat, gamma=GAMMA, beta=BETA, s=S, t=T):
  g = 1.0 if gamma is None else ref.f64(gamma)
  b = 0.0 if beta is None else ref.f64(beta)
  return (g * xhat + b) * (1 + per_example(s)) + per_example(t)


def with_params(variables, gamma=GAMMA, beta=BETA):
  params = dict(variables["params"])
  if "scale" in params:
    params["scale"] = gamma
  if "bias" in params:
    params["bias"] = beta
  return {**variables, "params": params}


# name -> (linen module, float64 x̂ of X by the paper's formula)
STANDARDIZING = {
  "LayerNorm": (jn.LayerNorm(), lambda x: ref.standardize(x, (3,), 1e-6)[0]),
  "LayerNorm_hwc": (jn.LayerNorm(reduction_axes=(1, 2, 3)), lambda x: ref.standardize(x, (1, 2, 3), 1e-6)[0]),
  "RMSNorm": (jn.RMSNorm(), lambda x: ref.standardize(x, (3,), 1e-6, centre=False)[0]),
  "InstanceNorm": (jn.InstanceNorm(), lambda x: ref.standardize(x, (1, 2), 1e-6)[0]),
  "GroupNorm": (jn.GroupNorm(num_groups=4), lambda x: ref.group_norm(x, 4, 1e-6)),
  "BatchNorm": (jn.BatchNorm(use_running_average=False), lambda x: ref.standardize(x, (0, 1, 2), 1e-5)[0]),
  "BatchNorm_ghost": (
    jn.BatchNorm(use_running_average=False, virtual_batch_size=2),
    lambda x: ref.ghost_batch_norm(x, 2, 1e-5)[0],
  ),
}


@pytest.mark.parametrize("implementation", ["auto", "reference"])
@pytest.mark.parametrize("name", sorted(STANDARDIZING))
def test_modulation_is_the_formula_in_float64(name, implementation):
  module, xhat = STANDARDIZING[name]
  variables = with_params(module.init(KEYS[5], X))
  beta = None if name == "RMSNorm" else BETA
  with jn.implementation(implementation):
    y, _ = jax.jit(lambda v, x, s, t: module.apply(v, x, scale=s, shift=t, mutable=["batch_stats"]))(variables, X, S, T)
  np.testing.assert_allclose(y, modulated_reference(xhat(X), beta=beta), rtol=2e-5, atol=2e-5)


def test_batch_norm_in_evaluation_mode_modulates_the_running_statistics_normalization():
  module = jn.BatchNorm(use_running_average=True)
  variables = with_params(module.init(KEYS[5], X))
  mean, var = jnp.linspace(-1, 1, C), jnp.linspace(0.5, 2, C)
  variables = {**variables, "batch_stats": {"mean": mean, "var": var}}
  y = module.apply(variables, X, scale=S, shift=T)
  xhat = (ref.f64(X) - ref.f64(mean)) / np.sqrt(ref.f64(var) + 1e-5)
  np.testing.assert_allclose(y, modulated_reference(xhat), rtol=2e-5, atol=2e-5)


def test_statistics_and_running_averages_do_not_depend_on_the_modulation():
  module = jn.BatchNorm(use_running_average=False)
  variables = module.init(KEYS[5], X)
  _, plain = module.apply(variables, X, mutable=["batch_stats"])
  _, modulated = module.apply(variables, X, scale=S, shift=T, mutable=["batch_stats"])
  chex_equal = jax.tree.map(np.testing.assert_array_equal, plain, modulated)
  assert chex_equal is not None


# Every linen normalizer, modulated, equals its pure function given the
# per-example γ' = γ(1 + s), β' = β(1 + s) + t (float64, cast once).
def _effective(gamma=GAMMA, beta=BETA):
  g = ref.f64(gamma)[None, None, None, :] * (1 + per_example(S))
  b = ref.f64(beta)[None, None, None, :] * (1 + per_example(S)) + per_example(T)
  return jnp.asarray(g, jnp.float32), jnp.asarray(b, jnp.float32)


V = 0.5 + 0.1 * jax.random.normal(KEYS[5], (C,))
TAU = -0.5 + 0.1 * jax.random.normal(KEYS[4], (C,))
ONES = jnp.ones((C,))

FUNCTIONAL = {
  "FilterResponseNorm": (
    jn.FilterResponseNorm(),
    {"tau": TAU},
    lambda g, b: jn.filter_response_norm(X, g, b, TAU),
  ),
  "EvoNormS0": (jn.EvoNormS0(num_groups=4), {"v": V}, lambda g, b: jn.evonorm_s0(X, g, b, V, num_groups=4)),
  "EvoNormB0": (
    jn.EvoNormB0(use_running_average=False),
    {"v": V},
    lambda g, b: jn.evonorm_b0(X, g, b, V, ONES)[0],
  ),
  "BatchRenorm": (
    jn.BatchRenorm(use_running_average=False, r_max=1.5, d_max=0.5),
    {},
    lambda g, b: jn.batch_renorm(X, g, b, jnp.zeros((C,)), ONES, r_max=1.5, d_max=0.5)[0],
  ),
  "DynamicTanh": (jn.DynamicTanh(), {"alpha": jnp.array([0.7])}, lambda g, b: jn.dynamic_tanh(X, 0.7, g, b)),
  "GroupNorm": (jn.GroupNorm(num_groups=2), {}, lambda g, b: jn.group_norm(X, g, b, num_groups=2)),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONAL))
def test_every_normalizer_modulated_is_its_function_with_per_example_parameters(name):
  module, extra, function = FUNCTIONAL[name]
  variables = with_params(module.init(KEYS[5], X))
  variables = {**variables, "params": {**variables["params"], **extra}}
  y, _ = module.apply(variables, X, scale=S, shift=T, mutable=["batch_stats"])
  np.testing.assert_allclose(y, function(*_effective()), rtol=1e-5, atol=1e-5)


NNX = {
  "LayerNorm": (jn.LayerNorm(), lambda: jn.nnx.LayerNorm(C, rngs=nnx.Rngs(0))),
  "RMSNorm": (jn.RMSNorm(), lambda: jn.nnx.RMSNorm(C, rngs=nnx.Rngs(0))),
  "InstanceNorm": (jn.InstanceNorm(), lambda: jn.nnx.InstanceNorm(C, rngs=nnx.Rngs(0))),
  "GroupNorm": (jn.GroupNorm(num_groups=4), lambda: jn.nnx.GroupNorm(C, num_groups=4, rngs=nnx.Rngs(0))),
  "BatchNorm": (jn.BatchNorm(use_running_average=False), lambda: jn.nnx.BatchNorm(C, rngs=nnx.Rngs(0))),
  "BatchRenorm": (jn.BatchRenorm(use_running_average=False), lambda: jn.nnx.BatchRenorm(C, rngs=nnx.Rngs(0))),
  "EvoNormB0": (jn.EvoNormB0(use_running_average=False), lambda: jn.nnx.EvoNormB0(C, rngs=nnx.Rngs(0))),
  "EvoNormS0": (jn.EvoNormS0(num_groups=4), lambda: jn.nnx.EvoNormS0(C, num_groups=4, rngs=nnx.Rngs(0))),
  "FilterResponseNorm": (jn.FilterResponseNorm(), lambda: jn.nnx.FilterResponseNorm(C, rngs=nnx.Rngs(0))),
  "DynamicTanh": (jn.DynamicTanh(), lambda: jn.nnx.DynamicTanh(C, rngs=nnx.Rngs(0))),
}


@pytest.mark.parametrize("name", sorted(NNX))
def test_nnx_modulation_equals_linen(name):
  linen_module, make = NNX[name]
  model = make()
  if hasattr(model, "scale") and model.scale is not None:
    model.scale[...] = GAMMA
  if getattr(model, "bias", None) is not None:
    model.bias[...] = BETA
  variables = with_params(linen_module.init(KEYS[5], X))
  expected, _ = linen_module.apply(variables, X, scale=S, shift=T, mutable=["batch_stats"])
  np.testing.assert_allclose(model(X, scale=S, shift=T), expected, rtol=1e-6, atol=1e-6)


# The shapes a modulation may have.


def test_shapes_per_example_shared_and_full_rank_agree():
  module = jn.GroupNorm(num_groups=4, channel_axis=1)  # NCHW: the per-example (N, C) goes on axes 0 and 1
  x = jnp.moveaxis(X, -1, 1)
  variables = module.init(KEYS[5], x)
  per_ex = module.apply(variables, x, scale=S, shift=T)
  full = module.apply(variables, x, scale=S[:, :, None, None], shift=T[:, :, None, None])
  np.testing.assert_array_equal(per_ex, full)
  shared = module.apply(variables, x, scale=S[0], shift=T[0])
  np.testing.assert_allclose(shared, module.apply(variables, x, scale=jnp.tile(S[:1], (N, 1)), shift=T[:1] + 0 * T))


def test_a_spatial_modulation_map_normalizes_as_spade():
  """SPADE (Park et al., 2019): a modulation per position, x̂·(1 + s) + t with
  (s, t) of the input's full shape."""
  s_map = 0.2 * jax.random.normal(KEYS[1], X.shape)
  t_map = jax.random.normal(KEYS[2], X.shape)
  for implementation in ("auto", "reference"):
    with jn.implementation(implementation):
      y = jn.GroupNorm(num_groups=4, use_scale=False, use_bias=False).apply({}, X, scale=s_map, shift=t_map)
    expected = ref.group_norm(X, 4, 1e-6) * (1 + ref.f64(s_map)) + ref.f64(t_map)
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-5)


def test_tokens_take_one_modulation_per_example_over_the_sequence():
  """DiT's modulate(x, shift, scale): (N, D) broadcast over the tokens."""
  x = jax.random.normal(KEYS[0], (3, 7, 16))
  shift, scale = jax.random.normal(KEYS[1], (3, 16)), jax.random.normal(KEYS[2], (3, 16))
  y = jn.LayerNorm(use_scale=False, use_bias=False).apply({}, x, shift=shift, scale=scale)
  xhat = ref.standardize(x, (2,), 1e-6)[0]
  np.testing.assert_allclose(y, xhat * (1 + ref.f64(scale)[:, None]) + ref.f64(shift)[:, None], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    ({"scale": jnp.ones((N, 3))}, ValueError, r"GroupNorm: scale has shape \(4, 3\).*\(4, 8\) \(one per example\)"),
    ({"shift": jnp.ones((2, C))}, ValueError, r"GroupNorm: shift has shape \(2, 8\)"),
    ({"scale": jnp.ones((N, 1, 2, C))}, ValueError, r"the input's rank with sizes that broadcast"),
    ({"scale": jnp.ones((N, C), jnp.int32)}, TypeError, r"modulation scale has dtype int32"),
  ],
)
def test_a_modulation_that_does_not_fit_is_named(kwargs, error, match):
  module = jn.GroupNorm(num_groups=4)
  variables = module.init(KEYS[5], X)
  with pytest.raises(error, match=match):
    module.apply(variables, X, **kwargs)


def test_dtypes_follow_the_hand_written_composition():
  module = jn.LayerNorm(param_dtype=jnp.bfloat16)
  xb = X.astype(jnp.bfloat16)
  variables = module.init(KEYS[5], xb)
  assert module.apply(variables, xb, scale=S.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  assert module.apply(variables, xb, scale=S).dtype == jnp.float32  # a float32 modulation promotes
  assert jn.LayerNorm(dtype=jnp.bfloat16).apply(variables, xb, scale=S).dtype == jnp.bfloat16
  # In bfloat16 the modulation is folded in float32 and rounded once.
  y = module.apply(variables, xb, scale=S.astype(jnp.bfloat16), shift=T.astype(jnp.bfloat16))
  xhat = ref.standardize(ref.f64(xb), (3,), 1e-6)[0]
  expected = xhat * (1 + per_example(S.astype(jnp.bfloat16))) + per_example(T.astype(jnp.bfloat16))
  np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=1e-2, atol=2e-2)


# Derivatives and transformations.


@pytest.mark.parametrize("name", ["LayerNorm", "GroupNorm", "BatchNorm", "RMSNorm"])
def test_gradients_of_the_input_parameters_and_modulation(name):
  module, _ = STANDARDIZING[name]
  variables = with_params(module.init(KEYS[5], X))

  def f(params, x, s, t):
    y, _ = module.apply({**variables, "params": params}, x, scale=s, shift=t, mutable=["batch_stats"])
    return y

  args = (variables["params"], X[:2, :3, :3], S[:2], T[:2])
  jax.test_util.check_grads(f, args, order=1, modes=["fwd", "rev"], atol=5e-2, rtol=5e-2)
  loss = lambda *a: jnp.sum(jnp.sin(f(*a)))
  with jn.implementation("reference"):
    expected = jax.grad(loss, argnums=(0, 1, 2, 3))(*args)
  fused = jax.grad(loss, argnums=(0, 1, 2, 3))(*args)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), fused, expected)


def test_every_transformation_gives_the_untransformed_value():
  module = jn.GroupNorm(num_groups=4)
  variables = module.init(KEYS[5], X)
  f = lambda x, s, t: module.apply(variables, x, scale=s, shift=t)
  expected = f(X, S, T)
  np.testing.assert_allclose(jax.jit(f)(X, S, T), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.checkpoint(f)(X, S, T), expected, rtol=1e-6, atol=1e-6)
  # vmap over a leading axis of stacked batches (and of their modulations).
  stacked = jax.vmap(f)(jnp.stack([X, -X]), jnp.stack([S, -S]), jnp.stack([T, T]))
  np.testing.assert_allclose(stacked[0], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(stacked[1], f(-X, -S, T), rtol=1e-6, atol=1e-6)
  # scan: the same layer applied at each step of a loop.
  _, scanned = jax.lax.scan(lambda c, st: (c, f(X, *st)), None, (jnp.stack([S, 2 * S]), jnp.stack([T, T])))
  np.testing.assert_allclose(scanned[0], expected, rtol=1e-6, atol=1e-6)
  # forward mode against reverse mode: jacobian-vector against vector-jacobian products.
  tangents = (jnp.ones_like(X), jnp.ones_like(S), jnp.ones_like(T))
  _, jvp = jax.jvp(f, (X, S, T), tangents)
  _, vjp = jax.vjp(f, X, S, T)
  cotangent = jax.random.normal(KEYS[3], X.shape)
  lhs = jnp.vdot(cotangent, jvp)
  rhs = sum(jnp.vdot(c, t) for c, t in zip(vjp(cotangent), tangents))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


def test_sharded_over_eight_devices_equals_one():
  """The batch and its modulation sharded over 8 CPU devices (subprocess)."""
  script = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxnorm as jn
    x = jax.random.normal(jax.random.key(0), (8, 4, 4, 16))
    s, t = jax.random.normal(jax.random.key(1), (8, 16)), jax.random.normal(jax.random.key(2), (8, 16))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    for module in (jn.GroupNorm(num_groups=4), jn.LayerNorm(), jn.BatchNorm(use_running_average=False)):
      v = module.init(jax.random.key(3), x)
      f = jax.jit(lambda x, s, t: module.apply(v, x, scale=s, shift=t, mutable=["batch_stats"])[0])
      shard = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
      np.testing.assert_allclose(f(shard(x), shard(s), shard(t)), f(x, s, t), rtol=1e-5, atol=1e-5)
    print("ok", len(jax.devices()))
    """
  )
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  import os

  proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["ok", "8"]


@pytest.mark.parametrize(
  "name, shape", [("LayerNorm", (8, 64, 96)), ("GroupNorm", (16, 8, 8, 16)), ("BatchNorm", (16, 8, 8, 16))]
)
def test_modulation_adds_no_full_size_buffer(name, shape):
  """Forward and backward: the compiled program's temporary memory grows by
  less than the modulation's own size times 8, never by a copy of x."""
  module = dict(
    LayerNorm=jn.LayerNorm(), GroupNorm=jn.GroupNorm(num_groups=4), BatchNorm=jn.BatchNorm(use_running_average=False)
  )[name]
  x = jnp.ones(shape)
  m = jnp.full((shape[0], shape[-1]), 0.1)
  variables = module.init(KEYS[5], x)

  def loss(params, x, *mod):
    kwargs = dict(zip(("scale", "shift"), mod))
    y, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"], **kwargs)
    return jnp.sum(y**2)

  def temp(*args):
    grad = jax.grad(loss, argnums=tuple(range(len(args))))
    return jax.jit(grad).lower(*args).compile().memory_analysis().temp_size_in_bytes

  plain = temp(variables["params"], x)
  modulated = temp(variables["params"], x, m, m)
  assert modulated - plain < 8 * m.nbytes + 8 * 4 * math_prod(shape[:-1])
  assert modulated - plain < x.nbytes / 2


def math_prod(shape):
  out = 1
  for n in shape:
    out *= n
  return out


def test_the_pallas_kernels_take_a_per_example_modulation_in_interpret_mode():
  module = jn.GroupNorm(num_groups=4)
  variables = module.init(KEYS[5], X)
  with jn.implementation("pallas"):
    y = module.apply(variables, X, scale=S, shift=T)
  np.testing.assert_allclose(y, modulated_reference(ref.group_norm(X, 4, 1e-6), 1.0, 0.0), rtol=2e-5, atol=2e-5)


# The zero-centred scale.


def gemma_rms_norm(x, scale, dtype=jnp.float32):
  """The flax Gemma example's RMSNorm (examples/gemma/layers.py), written out."""
  with jax.numpy_rank_promotion("allow"):  # the example broadcasts (..., D) with (D,)
    x = jnp.asarray(x, jnp.float32)
    mean2 = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    normed = jnp.asarray(x * jax.lax.rsqrt(mean2 + 1e-06), dtype=dtype)
    return normed * (1.0 + jnp.asarray(scale, dtype))


def test_zero_centered_rms_norm_is_gemmas():
  x = jax.random.normal(KEYS[0], (2, 5, 64)) * 3
  model = jn.nnx.RMSNorm(64, zero_centered_scale=True, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(model.scale[...], np.zeros(64))  # 1 + γ starts at 1
  gamma = 0.1 * jax.random.normal(KEYS[1], (64,))
  model.scale[...] = gamma
  np.testing.assert_allclose(model(x), gemma_rms_norm(x, gamma), rtol=1e-6, atol=1e-6)
  linen = jn.RMSNorm(zero_centered_scale=True)
  np.testing.assert_allclose(
    linen.apply({"params": {"scale": gamma}}, x), gemma_rms_norm(x, gamma), rtol=1e-6, atol=1e-6
  )
  expected = ref.standardize(x, (2,), 1e-6, centre=False)[0] * (1 + ref.f64(gamma))
  np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-5)


def test_zero_centered_scale_in_bfloat16_adds_one_in_float32():
  """A bfloat16 γ of 1e-3: 1 + γ in bfloat16 is 1 (γ lost); jaxnorm adds in
  float32, as Gemma's reference does, and rounds the output once."""
  x = jax.random.normal(KEYS[0], (4, 32)).astype(jnp.bfloat16)
  gamma = jnp.full((32,), 3e-3, jnp.bfloat16)
  model = jn.nnx.RMSNorm(32, zero_centered_scale=True, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  model.scale[...] = gamma
  y = model(x)
  assert y.dtype == jnp.bfloat16
  expected = ref.standardize(x, (1,), 1e-6, centre=False)[0] * (1 + ref.f64(gamma))
  np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=4e-3, atol=1e-2)
  once = jnp.asarray(gemma_rms_norm(x, gamma, jnp.float32), jnp.bfloat16)  # float32 throughout, one rounding
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(once, np.float32))
  # flax's example with dtype=bfloat16 rounds x̂ and 1 + γ to bfloat16 first: within one bfloat16 step.
  twice = gemma_rms_norm(x, gamma, jnp.bfloat16)
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(twice, np.float32), rtol=1e-2, atol=1e-2)


def test_zero_centered_layer_norm_and_a_user_initializer():
  module = jn.LayerNorm(zero_centered_scale=True)
  variables = module.init(KEYS[5], X)
  np.testing.assert_array_equal(variables["params"]["scale"], np.zeros(C))
  y = module.apply(with_params(variables), X)
  xhat = ref.standardize(X, (3,), 1e-6)[0]
  np.testing.assert_allclose(y, xhat * (1 + ref.f64(GAMMA)) + ref.f64(BETA), rtol=2e-5, atol=2e-5)
  custom = jn.LayerNorm(zero_centered_scale=True, scale_init=nn.initializers.constant(0.5)).init(KEYS[5], X)
  np.testing.assert_array_equal(custom["params"]["scale"], np.full(C, 0.5))


def test_hugging_face_gemma_rms_norm_with_the_same_weight():
  torch = pytest.importorskip("torch")
  gemma = pytest.importorskip("transformers.models.gemma.modeling_gemma")
  x = np.asarray(jax.random.normal(KEYS[0], (2, 3, 32)), np.float32)
  weight = np.asarray(0.1 * jax.random.normal(KEYS[1], (32,)), np.float32)
  layer = gemma.GemmaRMSNorm(32, eps=1e-6)
  with torch.no_grad():
    layer.weight.copy_(torch.from_numpy(weight))
    expected = layer(torch.from_numpy(x)).numpy()
  y = jn.RMSNorm(zero_centered_scale=True).apply({"params": {"scale": jnp.asarray(weight)}}, jnp.asarray(x))
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


# The debiased EMA.


def test_debiased_ema_is_haikus_zero_debiased_average():
  momentum = 0.9
  module = jn.BatchNorm(use_running_average=False, running_stats="debiased_ema", momentum=momentum)
  variables = module.init(KEYS[5], X)
  assert int(variables["batch_stats"]["count"]) == 0
  hidden_mean, hidden_var = np.zeros(C), np.zeros(C)
  for step in range(1, 6):
    x = X * step + step
    _, updated = module.apply(variables, x, mutable=["batch_stats"])
    variables = {**variables, **updated}
    _, mean, var = ref.standardize(x, (0, 1, 2), 1e-5)
    hidden_mean = momentum * hidden_mean + (1 - momentum) * mean.reshape(-1)
    hidden_var = momentum * hidden_var + (1 - momentum) * var.reshape(-1)
    stats = variables["batch_stats"]
    np.testing.assert_allclose(stats["mean"], hidden_mean / (1 - momentum**step), rtol=1e-5)
    np.testing.assert_allclose(stats["var"], hidden_var / (1 - momentum**step), rtol=1e-5)
    assert int(stats["count"]) == step
  # The first update is the batch's statistics, whatever the initial values.
  first = jn.batch_norm(X, running_mean=jnp.full((C,), 7.0), running_var=ONES * 9, running_stats="debiased_ema")[1]
  _, mean, var = ref.standardize(X, (0, 1, 2), 1e-5)
  np.testing.assert_allclose(first.mean, mean.reshape(-1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(first.var, var.reshape(-1), rtol=1e-5)


def test_debiased_ema_tends_to_the_ema_and_nnx_keeps_a_count():
  stats = jn.BatchStats(jnp.zeros((C,)), ONES, jnp.asarray(10_000, jnp.int32))
  ema = jn.batch_norm(X, running_mean=stats.mean, running_var=stats.var, momentum=0.9)[1]
  debiased = jn.batch_norm(
    X,
    running_mean=stats.mean,
    running_var=stats.var,
    running_count=stats.count,
    momentum=0.9,
    running_stats="debiased_ema",
  )[1]
  np.testing.assert_allclose(debiased.mean, ema.mean, rtol=1e-6, atol=1e-7)
  model = jn.nnx.BatchNorm(C, running_stats="debiased_ema", rngs=nnx.Rngs(0))
  model(X)
  model(X)
  assert int(model.count[...]) == 2
  _, mean, _ = ref.standardize(X, (0, 1, 2), 1e-5)
  np.testing.assert_allclose(model.mean[...], mean.reshape(-1), rtol=1e-5, atol=1e-6)
