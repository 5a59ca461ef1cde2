"""The conditional layers (adaLN-Zero, AdaGN, FiLM, conditional BN), DyT
and QK-norm.

References: each paper's formula in float64 NumPy; public implementations
with the same parameters where one installs (diffusers' ``AdaLayerNormZero``
of its DiT blocks, its ``AdaGroupNorm`` and its UNet ``ResnetBlock2D`` with
``time_embedding_norm="scale_shift"``, and its Flax UNet
``FlaxResnetBlock2D`` run on jaxnorm's norms; they skip without diffusers
and torch); a DiT block written as the flax DiT implementations write it
(``nn.LayerNorm`` without affine, then ``modulate``); flax's own attention
with ``normalize_qk``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from flax import nnx

import jaxnorm as jn
from tests.jaxnorm import references as ref

K = jax.random.split(jax.random.key(0), 8)


def silu64(a):
  a = ref.f64(a)
  return a / (1 + np.exp(-a))


def randomized(variables, seed=1, scale=0.3):
  """Every parameter replaced by random values (a zero-initialised
  projection would hide the modulation)."""
  leaves, tree = jax.tree.flatten(variables["params"])
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  params = jax.tree.unflatten(tree, [scale * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])
  return {**variables, "params": params}


# adaLN-Zero


def modulate(x, shift, scale):
  """DiT's modulate: x·(1 + scale) + shift, per example over the tokens."""
  return x * (1 + scale[:, None]) + shift[:, None]


class HandWrittenDiTBlock(nn.Module):
  """A DiT block as the flax DiT implementations write it (Peebles & Xie,
  2023, Fig. 3): adaLN-Zero from the conditioning, LayerNorm without affine
  (ε = 1e-6) then ``modulate``, gated residual branches."""

  heads: int = 2

  @nn.compact
  def __call__(self, x, c):
    d = x.shape[-1]
    c = nn.Dense(6 * d, kernel_init=nn.initializers.zeros, name="adaLN_modulation")(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(c, 6, axis=-1)
    norm = lambda name: nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6, name=name)
    h = modulate(norm("norm1")(x), shift_msa, scale_msa)
    x = x + gate_msa[:, None] * nn.MultiHeadDotProductAttention(self.heads, name="attn")(h, h)
    h = modulate(norm("norm2")(x), shift_mlp, scale_mlp)
    mlp = nn.Dense(d, name="fc2")(nn.gelu(nn.Dense(4 * d, name="fc1")(h)))
    return x + gate_mlp[:, None] * mlp


class JaxnormDiTBlock(nn.Module):
  """The same block on jaxnorm: AdaLNZero gives the two branches'
  modulation, and the LayerNorms apply it in their own pass."""

  heads: int = 2

  @nn.compact
  def __call__(self, x, c):
    d = x.shape[-1]
    attn, mlp_mod = jn.AdaLNZero(features=d, name="adaLN_modulation")(c)
    norm = lambda name: jn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6, name=name)
    h = norm("norm1")(x, shift=attn.shift, scale=attn.scale)
    x = x + attn.gate[:, None] * nn.MultiHeadDotProductAttention(self.heads, name="attn")(h, h)
    h = norm("norm2")(x, shift=mlp_mod.shift, scale=mlp_mod.scale)
    mlp = nn.Dense(d, name="fc2")(nn.gelu(nn.Dense(4 * d, name="fc1")(h)))
    return x + mlp_mod.gate[:, None] * mlp


X_TOKENS = jax.random.normal(K[0], (3, 7, 16))
COND = jax.random.normal(K[1], (3, 16))


def _dit_params():
  theirs = randomized(HandWrittenDiTBlock().init(K[2], X_TOKENS, COND))
  ours = {"params": {**theirs["params"], "adaLN_modulation": {"projection": theirs["params"]["adaLN_modulation"]}}}
  return theirs, ours


def test_a_dit_block_on_jaxnorm_equals_the_hand_written_one_with_the_same_parameters():
  theirs, ours = _dit_params()
  expected = HandWrittenDiTBlock().apply(theirs, X_TOKENS, COND)
  np.testing.assert_allclose(JaxnormDiTBlock().apply(ours, X_TOKENS, COND), expected, rtol=1e-5, atol=1e-5)
  grads = [
    jax.grad(lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, X_TOKENS, COND))))(v)
    for m, v in ((HandWrittenDiTBlock(), theirs), (JaxnormDiTBlock(), ours))
  ]
  grads[1]["params"]["adaLN_modulation"] = grads[1]["params"]["adaLN_modulation"]["projection"]
  # Gradients summing many terms: float32 rounding on each array's own scale.
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * max(1.0, float(np.max(np.abs(b)))))
  jax.tree.map(close, grads[1], grads[0])


def test_adaln_zero_starts_every_block_as_the_identity():
  variables = JaxnormDiTBlock().init(K[2], X_TOKENS, COND)
  projection = variables["params"]["adaLN_modulation"]["projection"]
  assert not np.any(projection["kernel"]) and not np.any(projection["bias"])
  np.testing.assert_array_equal(JaxnormDiTBlock().apply(variables, X_TOKENS, COND), X_TOKENS)


def test_adaln_zero_chunks_are_dits_order():
  module = jn.AdaLNZero(features=4, num_branches=2)
  variables = randomized(module.init(K[2], COND))
  branches = module.apply(variables, COND)
  p = variables["params"]["projection"]
  projected = silu64(COND) @ ref.f64(p["kernel"]) + ref.f64(p["bias"])
  chunks = np.split(projected, 6, axis=-1)  # shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
  got = [a for branch in branches for a in branch]
  for a, b in zip(got, chunks):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  final = jn.AdaLNZero(features=4, num_branches=1, gated=False)
  (only,) = final.apply(randomized(final.init(K[2], COND)), COND)
  assert only.gate is None and only.shift.shape == only.scale.shape == (3, 4)


def test_nnx_adaln_zero_equals_linen():
  module = jn.AdaLNZero(features=4)
  variables = randomized(module.init(K[2], COND))
  model = jn.nnx.AdaLNZero(16, 4, rngs=nnx.Rngs(0))
  model.projection.kernel[...] = variables["params"]["projection"]["kernel"]
  model.projection.bias[...] = variables["params"]["projection"]["bias"]
  jax.tree.map(np.testing.assert_array_equal, model(COND), module.apply(variables, COND))


def test_diffusers_ada_layer_norm_zero_with_the_same_weights():
  torch = pytest.importorskip("torch")
  normalization = pytest.importorskip("diffusers.models.normalization")
  d = 16
  theirs = normalization.AdaLayerNormZero(d)
  x, c = np.asarray(X_TOKENS), np.asarray(COND)
  with torch.no_grad():
    for p in theirs.parameters():
      p.normal_(0, 0.3)
    expected = [t.numpy() for t in theirs(torch.from_numpy(x), emb=torch.from_numpy(c))]
  kernel = theirs.linear.weight.detach().numpy().T
  variables = {"params": {"projection": {"kernel": kernel, "bias": theirs.linear.bias.detach().numpy()}}}
  attn, mlp = jn.AdaLNZero(features=d).apply(variables, jnp.asarray(c))
  norm = jn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6)
  ours = [norm.apply({}, jnp.asarray(x), shift=attn.shift, scale=attn.scale), attn.gate, mlp.shift, mlp.scale, mlp.gate]
  for a, b in zip(ours, expected):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# AdaGN


X_IMAGE = jax.random.normal(K[3], (2, 4, 4, 8)) * 1.5 + 0.3
EMB = jax.random.normal(K[4], (2, 6))


def test_ada_group_norm_is_the_formula():
  module = jn.AdaGroupNorm(num_groups=4)
  variables = randomized(module.init(K[2], X_IMAGE, EMB))
  p = variables["params"]
  projected = silu64(EMB) @ ref.f64(p["projection"]["kernel"]) + ref.f64(p["projection"]["bias"])
  scale, shift = np.split(projected, 2, axis=-1)
  gn = ref.group_norm(X_IMAGE, 4, 1e-5) * ref.f64(p["scale"]) + ref.f64(p["bias"])
  expected = gn * (1 + scale[:, None, None]) + shift[:, None, None]
  np.testing.assert_allclose(module.apply(variables, X_IMAGE, EMB), expected, rtol=2e-5, atol=2e-5)


def test_nnx_ada_group_norm_equals_linen():
  module = jn.AdaGroupNorm(num_groups=4, channel_axis=1)
  x = jnp.moveaxis(X_IMAGE, -1, 1)
  variables = randomized(module.init(K[2], x, EMB))
  model = jn.nnx.AdaGroupNorm(8, 6, 4, channel_axis=1, rngs=nnx.Rngs(0))
  nnx.update(model, nnx.State(variables["params"]))
  np.testing.assert_allclose(model(x, EMB), module.apply(variables, x, EMB), rtol=1e-6, atol=1e-6)


def test_diffusers_ada_group_norm_with_the_same_weights():
  torch = pytest.importorskip("torch")
  normalization = pytest.importorskip("diffusers.models.normalization")
  theirs = normalization.AdaGroupNorm(6, 8, num_groups=4, act_fn="silu", eps=1e-5)
  x = np.asarray(jnp.moveaxis(X_IMAGE, -1, 1))
  with torch.no_grad():
    for p in theirs.parameters():
      p.normal_(0, 0.3)
    expected = theirs(torch.from_numpy(x), torch.from_numpy(np.asarray(EMB))).numpy()
  variables = {
    "params": {
      "projection": {
        "kernel": theirs.linear.weight.detach().numpy().T,
        "bias": theirs.linear.bias.detach().numpy(),
      }
    }
  }
  ours = jn.AdaGroupNorm(num_groups=4, channel_axis=1, use_scale=False, use_bias=False)
  np.testing.assert_allclose(ours.apply(variables, jnp.asarray(x), EMB), expected, rtol=1e-4, atol=1e-5)


class UNetResBlock(nn.Module):
  """diffusers' ResnetBlock2D with ``time_embedding_norm="scale_shift"``
  (guided-diffusion's ``use_scale_shift_norm``) in NCHW, on jaxnorm: the
  second norm is an AdaGroupNorm of the time embedding."""

  groups: int = 4

  @nn.compact
  def __call__(self, x, temb):
    conv = lambda name: nn.Conv(x.shape[1], (3, 3), padding=1, name=name)
    nchw = lambda f, h: jnp.moveaxis(f(jnp.moveaxis(h, 1, -1)), -1, 1)
    h = jn.GroupNorm(num_groups=self.groups, epsilon=1e-6, channel_axis=1, name="norm1")(x)
    h = nchw(conv("conv1"), nn.silu(h))
    h = jn.AdaGroupNorm(num_groups=self.groups, epsilon=1e-6, channel_axis=1, name="norm2")(h, temb)
    h = nchw(conv("conv2"), nn.silu(h))
    return x + h


def test_diffusers_unet_resnet_block_with_scale_shift_time_embedding():
  torch = pytest.importorskip("torch")
  resnet = pytest.importorskip("diffusers.models.resnet")
  c, e = 8, 6
  theirs = resnet.ResnetBlock2D(in_channels=c, temb_channels=e, groups=4, time_embedding_norm="scale_shift")
  theirs.eval()
  x = np.asarray(jax.random.normal(K[5], (2, c, 5, 5)))
  with torch.no_grad():
    for p in theirs.parameters():
      p.normal_(0, 0.3)
    expected = theirs(torch.from_numpy(x), torch.from_numpy(np.asarray(EMB))).numpy()
  t = lambda a: np.asarray(a.detach().numpy())
  conv = lambda m: {"kernel": t(m.weight).transpose(2, 3, 1, 0), "bias": t(m.bias)}
  params = {
    "norm1": {"scale": t(theirs.norm1.weight), "bias": t(theirs.norm1.bias)},
    "conv1": conv(theirs.conv1),
    "norm2": {
      "scale": t(theirs.norm2.weight),
      "bias": t(theirs.norm2.bias),
      "projection": {"kernel": t(theirs.time_emb_proj.weight).T, "bias": t(theirs.time_emb_proj.bias)},
    },
    "conv2": conv(theirs.conv2),
  }
  y = UNetResBlock().apply({"params": params}, jnp.asarray(x), EMB)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_diffusers_flax_unet_resnet_block_runs_on_jaxnorm_with_its_own_variables():
  """diffusers' Flax UNet ResnetBlock (a public JAX model block with a time
  embedding; its norms are ``nn.GroupNorm(32, epsilon=1e-5)`` made in
  ``setup``), with its norms run as jaxnorm's: the same output."""
  resnet_flax = pytest.importorskip("diffusers.models.resnet_flax")
  block = resnet_flax.FlaxResnetBlock2D(in_channels=64, out_channels=64)
  x = jax.random.normal(K[5], (2, 6, 6, 64)) * 2 + 1
  temb = jax.random.normal(K[4], (2, 32))
  variables = randomized(block.init(K[2], x, temb), scale=0.1)
  expected = block.apply(variables, x, temb)
  seen = []

  def record(next_fun, args, kwargs, context):
    seen.append(type(context.module))
    return next_fun(*args, **kwargs)

  with jn.linen.converted(), nn.intercept_methods(record):
    y = block.apply(variables, x, temb)
  assert jn.GroupNorm in seen
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)


# FiLM


def test_film_is_gamma_x_plus_beta_per_example_and_channel():
  module = jn.FiLM()
  variables = randomized(module.init(K[2], X_IMAGE, EMB))
  p = variables["params"]["projection"]
  gamma, beta = np.split(ref.f64(EMB) @ ref.f64(p["kernel"]) + ref.f64(p["bias"]), 2, axis=-1)
  expected = gamma[:, None, None] * ref.f64(X_IMAGE) + beta[:, None, None]
  np.testing.assert_allclose(module.apply(variables, X_IMAGE, EMB), expected, rtol=1e-5, atol=1e-5)
  centred = jn.FiLM(zero_centered_scale=True).apply(variables, X_IMAGE, EMB)
  np.testing.assert_allclose(centred, expected + ref.f64(X_IMAGE), rtol=1e-5, atol=1e-5)
  model = jn.nnx.FiLM(8, 6, rngs=nnx.Rngs(0))
  nnx.update(model, nnx.State(variables["params"]))
  np.testing.assert_allclose(model(X_IMAGE, EMB), expected, rtol=1e-5, atol=1e-5)


def test_film_errors_name_the_argument():
  with pytest.raises(ValueError, match=r"film: scale has shape \(3, 8\)"):
    jn.film(X_IMAGE, jnp.ones((3, 8)))
  with pytest.raises(ValueError, match=r"FiLM: feature_axis=\(1, 2\) names 2 axes"):
    jn.FiLM(feature_axis=(1, 2)).init(K[0], X_IMAGE, EMB)


# Conditional batch norm


def test_conditional_batch_norm_is_the_formula_and_keeps_batch_norms_statistics():
  module = jn.ConditionalBatchNorm(use_running_average=False, momentum=0.9)
  variables = randomized(module.init(K[2], X_IMAGE, EMB))
  y, updated = module.apply(variables, X_IMAGE, EMB, mutable=["batch_stats"])
  p = variables["params"]
  delta_gamma, delta_beta = np.split(
    ref.f64(EMB) @ ref.f64(p["projection"]["kernel"]) + ref.f64(p["projection"]["bias"]), 2, -1
  )
  xhat = ref.standardize(X_IMAGE, (0, 1, 2), 1e-5)[0]
  gamma = ref.f64(p["scale"]) + delta_gamma[:, None, None]
  beta = ref.f64(p["bias"]) + delta_beta[:, None, None]
  np.testing.assert_allclose(y, gamma * xhat + beta, rtol=2e-5, atol=2e-5)
  _, plain = jn.BatchNorm(use_running_average=False, momentum=0.9).apply(
    {"params": {"scale": p["scale"], "bias": p["bias"]}, "batch_stats": variables["batch_stats"]},
    X_IMAGE,
    mutable=["batch_stats"],
  )
  jax.tree.map(np.testing.assert_array_equal, updated, plain)
  # Evaluation: the running statistics, the same conditional affine map.
  evaluated = jn.ConditionalBatchNorm().apply({**variables, **updated}, X_IMAGE, EMB, use_running_average=True)
  stats = updated["batch_stats"]
  xhat = (ref.f64(X_IMAGE) - ref.f64(stats["mean"])) / np.sqrt(ref.f64(stats["var"]) + 1e-5)
  np.testing.assert_allclose(evaluated, gamma * xhat + beta, rtol=2e-5, atol=2e-5)


def test_conditional_batch_norm_starts_as_batch_norm_and_nnx_equals_linen():
  module = jn.ConditionalBatchNorm(use_running_average=False)
  variables = module.init(K[2], X_IMAGE, EMB)
  y, _ = module.apply(variables, X_IMAGE, EMB, mutable=["batch_stats"])
  plain, _ = jn.BatchNorm(use_running_average=False).apply(
    {"params": {k: variables["params"][k] for k in ("scale", "bias")}, "batch_stats": variables["batch_stats"]},
    X_IMAGE,
    mutable=["batch_stats"],
  )
  np.testing.assert_allclose(y, plain, rtol=1e-6, atol=1e-6)
  variables = randomized(variables)
  model = jn.nnx.ConditionalBatchNorm(8, 6, rngs=nnx.Rngs(0))
  nnx.update(model, nnx.State(variables["params"]))
  expected, updated = module.apply(variables, X_IMAGE, EMB, mutable=["batch_stats"])
  np.testing.assert_allclose(model(X_IMAGE, EMB), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(model.mean[...], updated["batch_stats"]["mean"], rtol=1e-6)


# DyT


def test_dynamic_tanh_is_the_papers_formula_and_initialization():
  module = jn.DynamicTanh()
  variables = module.init(K[2], X_TOKENS)
  assert variables["params"]["alpha"].shape == (1,) and float(variables["params"]["alpha"][0]) == 0.5
  np.testing.assert_array_equal(variables["params"]["scale"], np.ones(16))
  np.testing.assert_array_equal(variables["params"]["bias"], np.zeros(16))
  variables = randomized(variables, scale=1.0)
  p = variables["params"]
  expected = ref.f64(p["scale"]) * np.tanh(ref.f64(p["alpha"]) * ref.f64(X_TOKENS)) + ref.f64(p["bias"])
  np.testing.assert_allclose(module.apply(variables, X_TOKENS), expected, rtol=1e-5, atol=1e-6)
  model = jn.nnx.DynamicTanh(16, rngs=nnx.Rngs(0))
  nnx.update(model, nnx.State(p))
  np.testing.assert_allclose(model(X_TOKENS), expected, rtol=1e-5, atol=1e-6)
  nchw = jn.DynamicTanh(alpha_init_value=0.8, feature_axes=1).init(K[2], X_IMAGE)
  assert nchw["params"]["scale"].shape == (4,) and nchw["params"]["alpha"][0] == np.float32(0.8)


def test_dynamic_tanh_gradients_and_bfloat16():
  module = jn.DynamicTanh()
  variables = randomized(module.init(K[2], X_TOKENS), scale=1.0)
  f = lambda params, x: module.apply({"params": params}, x)
  jax.test_util.check_grads(f, (variables["params"], X_TOKENS[:, :2]), order=1, modes=["fwd", "rev"], atol=1e-2)
  y = module.apply(jax.tree.map(lambda a: a.astype(jnp.bfloat16), variables), X_TOKENS.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  assert jn.create_norm("dyt").layer(train=True).init(K[2], X_IMAGE)["params"]["scale"].shape == (8,)


def test_dynamic_tanh_errors_name_the_argument():
  with pytest.raises(ValueError, match=r"dynamic_tanh: alpha has shape \(3,\)"):
    jn.dynamic_tanh(X_TOKENS, jnp.ones(3))
  with pytest.raises(TypeError, match="dynamic_tanh"):
    jn.dynamic_tanh(jnp.ones((2, 3), jnp.int32), 0.5)


# QK-norm


def test_qk_norm_of_flax_attention_runs_on_jaxnorm_layer_norm():
  """``MultiHeadDotProductAttention(normalize_qk=True)`` normalizes the
  per-head queries and keys with LayerNorms (``query_ln``, ``key_ln``);
  inside ``jaxnorm.linen.converted()`` they are jaxnorm's, on the same
  parameters."""
  attention = nn.MultiHeadDotProductAttention(num_heads=2, normalize_qk=True)
  x = jax.random.normal(K[6], (2, 5, 16))
  variables = randomized(attention.init(K[2], x), scale=1.0)
  expected = attention.apply(variables, x)
  seen = []

  def record(next_fun, args, kwargs, context):
    seen.append(type(context.module))
    return next_fun(*args, **kwargs)

  with jn.linen.converted(), nn.intercept_methods(record):
    y = attention.apply(variables, x)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  assert jn.LayerNorm in seen
  q = variables["params"]["query"]
  per_head = jnp.einsum("btd,dhk->bthk", x, q["kernel"]) + q["bias"][None, None]
  np.testing.assert_allclose(
    jn.LayerNorm(use_bias=False).apply({"params": variables["params"]["query_ln"]}, per_head),
    ref.standardize(per_head, (3,), 1e-6)[0] * ref.f64(variables["params"]["query_ln"]["scale"]),
    rtol=1e-5,
    atol=1e-5,
  )
