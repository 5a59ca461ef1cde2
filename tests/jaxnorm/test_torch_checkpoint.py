"""Loading PyTorch layers' tensors into jaxnorm: each kind against the torch
layer it comes from (torch's own modules, and for timm's FRN, EvoNorm-S0
and ScaledStdConv the torch formulas of their papers written here), in
evaluation mode, within float32 tolerance."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn

torch = pytest.importorskip("torch")


def rand(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def nchw_to_nhwc(t) -> np.ndarray:
  return np.transpose(t.detach().numpy() if hasattr(t, "detach") else t, (0, 2, 3, 1))


def randomize(module, seed=0):
  """Random values for every tensor of a torch module (running statistics too)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in module.state_dict().items():
      if tensor.is_floating_point():
        value = torch.rand(tensor.shape, generator=g) + 0.5 if "var" in name else torch.randn(tensor.shape, generator=g)
        tensor.copy_(value)
  return module


X = rand(2, 8, 5, 5)  # NCHW, 8 channels


def _compare(torch_module, flax_module, kind, *, x=X, train_kwargs=None, prefix="layer"):
  torch_module.eval()
  state = {f"{prefix}.{k}": v for k, v in torch_module.state_dict().items()}
  like = flax_module.init(__import__("jax").random.key(0), jnp.asarray(nchw_to_nhwc(x)))
  variables = jn.from_torch(state, prefix, kind, like=like)
  y = flax_module.apply(variables, jnp.asarray(nchw_to_nhwc(x)), **(train_kwargs or {}))
  with torch.no_grad():
    want = nchw_to_nhwc(torch_module(torch.from_numpy(x)))
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=2e-5)
  return state


def test_batch_norm_running_statistics_in_eval():
  state = _compare(
    randomize(torch.nn.BatchNorm2d(8)), jn.BatchNorm(use_running_average=True, epsilon=1e-5), "batch_norm"
  )
  assert "layer.num_batches_tracked" in state  # read and dropped


def test_group_layer_and_instance_norm():
  _compare(randomize(torch.nn.GroupNorm(4, 8)), jn.GroupNorm(num_groups=4, epsilon=1e-5), "group_norm")
  _compare(
    randomize(torch.nn.InstanceNorm2d(8, affine=True)), jn.InstanceNorm(epsilon=1e-5), "instance_norm"
  )  # affine=True: weight and bias
  ln = randomize(torch.nn.LayerNorm(8))
  x = rand(2, 5, 5, 8)
  variables = jn.from_torch(ln.state_dict(), "", "layer_norm")
  with torch.no_grad():
    want = ln(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(np.asarray(jn.LayerNorm(epsilon=1e-5).apply(variables, x)), want, rtol=1e-5, atol=2e-5)


def test_conv_and_linear_kernels_are_transposed():
  conv = randomize(torch.nn.Conv2d(8, 6, 3, padding=1))
  _compare(conv, nn.Conv(6, (3, 3), padding=1), "conv")
  linear = randomize(torch.nn.Linear(8, 3))
  variables = jn.from_torch(linear.state_dict(), "", "linear")
  x = rand(4, 8)
  with torch.no_grad():
    want = linear(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(np.asarray(nn.Dense(3).apply(variables, x)), want, rtol=1e-5, atol=1e-5)


class TorchFRN(torch.nn.Module):
  """FRN + TLU (Singh & Krishnan 2020) with timm's parameter names and
  shapes ((1, C, 1, 1))."""

  def __init__(self, c, eps=1e-6):
    super().__init__()
    self.weight = torch.nn.Parameter(torch.ones(1, c, 1, 1))
    self.bias = torch.nn.Parameter(torch.zeros(1, c, 1, 1))
    self.tau = torch.nn.Parameter(torch.zeros(1, c, 1, 1))
    self.eps = eps

  def forward(self, x):
    nu2 = x.pow(2).mean(dim=(2, 3), keepdim=True)
    return torch.maximum(x * torch.rsqrt(nu2 + self.eps) * self.weight + self.bias, self.tau)


class TorchEvoNormS0(torch.nn.Module):
  """EvoNorm-S0 (Liu et al. 2020): x·σ(v·x)/group_std(x)·γ + β, timm's names."""

  def __init__(self, c, groups, eps=1e-5):
    super().__init__()
    self.weight, self.bias, self.v = (torch.nn.Parameter(torch.ones(c)) for _ in range(3))
    self.groups, self.eps = groups, eps

  def forward(self, x):
    b, c, h, w = x.shape
    xg = x.reshape(b, self.groups, -1)
    std = (xg.var(dim=-1, unbiased=False, keepdim=True) + self.eps).sqrt().expand_as(xg).reshape(b, c, h, w)
    shape = (1, c, 1, 1)
    return x * torch.sigmoid(self.v.view(shape) * x) / std * self.weight.view(shape) + self.bias.view(shape)


class TorchScaledStdConv(torch.nn.Conv2d):
  """Scaled weight standardization (Brock et al. 2021) with timm's gain
  ``(O, 1, 1, 1)``, placing ε as jaxnorm does: W·g/sqrt(N·σ² + ε)."""

  def __init__(self, *args, eps=1e-4, **kwargs):
    super().__init__(*args, **kwargs)
    self.gain = torch.nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))
    self.eps = eps

  def forward(self, x):
    w = self.weight
    fan_in = w[0].numel()
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    w = (w - mean) / torch.sqrt(fan_in * var + self.eps) * self.gain
    return torch.nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_frn_evonorm_and_scaled_standardized_conv_with_timms_names():
  _compare(randomize(TorchFRN(8)), jn.FilterResponseNorm(epsilon=1e-6), "filter_response_norm")
  _compare(randomize(TorchEvoNormS0(8, 4)), jn.EvoNormS0(num_groups=4, epsilon=1e-5), "evonorm_s0")
  conv = randomize(TorchScaledStdConv(8, 6, 3, padding=1))
  _compare(conv, jn.StandardizedConv(6, (3, 3), padding=1, scaled=True, epsilon=1e-4), "standardized_conv")


def test_a_layer_without_bias_or_affine_loads():
  state = randomize(torch.nn.Conv2d(8, 6, 3, bias=False)).state_dict()
  assert set(jn.from_torch(state, "", "conv")["params"]) == {"kernel"}
  bn = torch.nn.BatchNorm2d(8, affine=False)
  assert set(jn.from_torch(bn.state_dict(), "", "batch_norm")) == {"batch_stats"}


def test_a_model_loads_layer_by_layer_under_its_prefixes():
  model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
  state = randomize(model).state_dict()
  assert set(jn.from_torch(state, "1", "batch_norm")["batch_stats"]) == {"mean", "var"}
  kernel = jn.from_torch(state, "0", "conv")["params"]["kernel"]
  np.testing.assert_array_equal(kernel, np.transpose(state["0.weight"].numpy(), (2, 3, 1, 0)))


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda s: jn.from_torch(s, "1", "batchnorm"), "kind='batchnorm'; choose one of"),
    (lambda s: jn.from_torch(s, "1", "conv"), r"'1\.weight'.*has shape|no '1\.weight'|not used by a conv"),
    (lambda s: jn.from_torch(s, "0", "batch_norm"), r"no '0\.running_mean'"),
    (lambda s: jn.from_torch(s, "2", "batch_norm"), r"no '2\.running_mean'.*none"),
    (
      lambda s: jn.from_torch(s, "1", "batch_norm", like={"params": {"scale": np.zeros(16)}}),
      r"'1\.weight' gives params/scale of shape \(8,\); the layer has \(16,\)",
    ),
    (lambda s: jn.from_torch(s, "1", "group_norm"), r"'1\.running_mean'.*not used by a group_norm"),
  ],
)
def test_mismatches_name_the_key_and_the_shapes(call, match):
  model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
  with pytest.raises(ValueError, match=match):
    call(model.state_dict())


@pytest.mark.parametrize("torch_momentum", [0.1, None], ids=["ema", "cumulative"])
def test_training_goes_on_as_in_pytorch(torch_momentum):
  """A BatchNorm2d trained two steps, loaded, then both train three more:
  the same outputs and running statistics (PyTorch's momentum m is 1 − m
  here; its running variance follows the unbiased batch variance; its
  momentum=None is the cumulative average, its num_batches_tracked our count)."""
  bn = randomize(torch.nn.BatchNorm2d(8, momentum=torch_momentum))
  batches = [rand(4, 8, 3, 3, seed=s) * (1 + s) for s in range(5)]
  bn.train()
  with torch.no_grad():
    for x in batches[:2]:
      bn(torch.from_numpy(x))
  cumulative = torch_momentum is None
  variables = jn.from_torch(bn.state_dict(), "", "batch_norm", cumulative=cumulative)
  ours = jn.BatchNorm(
    use_running_average=False,
    epsilon=1e-5,
    momentum=0.9 if not cumulative else 0.99,
    running_stats="cumulative" if cumulative else "ema",
    unbiased_running_var=True,
  )
  for x in batches[2:]:
    with torch.no_grad():
      want = nchw_to_nhwc(bn(torch.from_numpy(x)))
    y, updates = ours.apply(variables, nchw_to_nhwc(x), mutable=["batch_stats"])
    variables = {**variables, **updates}
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variables["batch_stats"]["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variables["batch_stats"]["var"], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
  if cumulative:
    assert int(variables["batch_stats"]["count"]) == int(bn.num_batches_tracked) == 5


def test_the_unbiased_update_is_bessels_correction_of_the_running_variance_only():
  x = rand(6, 4)
  y, stats = jn.batch_norm(
    x, running_mean=np.zeros(4), running_var=np.zeros(4), momentum=0.0, unbiased_running_var=True
  )
  np.testing.assert_allclose(stats.var, np.var(x.astype(np.float64), axis=0, ddof=1), rtol=1e-5)
  y_biased, _ = jn.batch_norm(x, running_mean=np.zeros(4), running_var=np.zeros(4), momentum=0.0)
  np.testing.assert_array_equal(y, y_biased)  # the normalization itself is unchanged
  with pytest.raises(ValueError, match="cumulative=True reads 'num_batches_tracked' of a batch_norm"):
    jn.from_torch(torch.nn.GroupNorm(2, 4).state_dict(), "", "group_norm", cumulative=True)


# Real timm models, built here with random weights: every normalization and
# convolution layer loads from the model's state_dict and gives the torch
# layer's output (eval mode). timm is not a test dependency: it imports
# torchvision, whose build must match torch's (the CPU torch of the test
# extra has no matching torchvision on the package index), so these tests
# skip without it. Run them in an environment with timm, e.g. torch 2.14.1,
# torchvision 0.29.1 and timm 1.0.31: 5 passed (resnet18: 20 convolutions,
# 20 batch norms; nf_resnet26: 29 ScaledStdConv2d; resnetv2_50d_evos: 51
# EvoNorm2dS0; resnetv2_50d_gn: 51 GroupNormAct).


def _timm_model(name):
  timm = pytest.importorskip("timm")
  model = randomize(timm.create_model(name, pretrained=False), seed=1).eval()
  return model, model.state_dict()


def _nhwc_input(channels, seed=0, size=6):
  return rand(2, channels, size, size, seed=seed)


def _check_layer(state, name, kind, flax_module, torch_forward, channels):
  x = _nhwc_input(channels)
  xj = jnp.asarray(nchw_to_nhwc(x))
  like = flax_module.init(__import__("jax").random.key(0), xj)
  variables = jn.from_torch(state, name, kind, like=like)
  with torch.no_grad():
    want = nchw_to_nhwc(torch_forward(torch.from_numpy(x)))
  np.testing.assert_allclose(np.asarray(flax_module.apply(variables, xj)), want, rtol=1e-4, atol=1e-4, err_msg=name)


def _conv_module(m, flax_cls=nn.Conv, **extra):
  return flax_cls(
    m.out_channels,
    m.kernel_size,
    strides=m.stride,
    padding=[(p, p) for p in m.padding],
    kernel_dilation=m.dilation,
    feature_group_count=m.groups,
    use_bias=m.bias is not None,
    **extra,
  )


def test_a_timm_bn_resnet_loads_layer_by_layer():
  model, state = _timm_model("resnet18")
  checked = 0
  for name, m in model.named_modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      bn = jn.BatchNorm(use_running_average=True, epsilon=m.eps)
      forward = lambda x, m=m: torch.nn.functional.batch_norm(
        x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps
      )
      _check_layer(state, name, "batch_norm", bn, forward, m.num_features)
    elif type(m) is torch.nn.Conv2d:
      _check_layer(state, name, "conv", _conv_module(m), m, m.in_channels)
    else:
      continue
    checked += 1
  assert checked == 40  # 20 convolutions and 20 batch norms


def test_a_timm_nf_resnet_loads_its_scaled_standardized_convolutions():
  """timm's ScaledStdConv2d computes γ·gain·(W − μ)/(sqrt(σ² + eps)·sqrt(N)):
  jaxnorm's scaled WS with ε = N·eps and g = γ·gain (γ is not in the
  state dict: timm keeps it in ``scale``)."""
  timm = pytest.importorskip("timm")
  model, state = _timm_model("nf_resnet26")
  checked = 0
  for name, m in model.named_modules():
    if type(m).__name__ != "ScaledStdConv2d":
      continue
    fan_in = m.weight[0].numel()
    gamma = float(m.scale) * fan_in**0.5
    conv = _conv_module(m, jn.StandardizedConv, scaled=True, epsilon=m.eps * fan_in)
    x = _nhwc_input(m.in_channels)
    xj = jnp.asarray(nchw_to_nhwc(x))
    like = conv.init(__import__("jax").random.key(0), xj)
    variables = jn.from_torch(state, name, "standardized_conv", like=like)
    variables["params"]["gain"] = variables["params"]["gain"] * gamma
    with torch.no_grad():
      want = nchw_to_nhwc(m(torch.from_numpy(x)))
    np.testing.assert_allclose(np.asarray(conv.apply(variables, xj)), want, rtol=1e-4, atol=1e-4, err_msg=name)
    checked += 1
  assert checked > 20 and timm is not None


@pytest.mark.parametrize("model_name", ["resnetv2_50d_evos", "resnetv2_50d_gn"])
def test_timm_evonorm_and_group_norm_models_load_layer_by_layer(model_name):
  model, state = _timm_model(model_name)
  checked = 0
  for name, m in model.named_modules():
    kind = type(m).__name__
    if kind == "EvoNorm2dS0":
      flax_module = jn.EvoNormS0(num_groups=m.groups, epsilon=m.eps)
      _check_layer(state, name, "evonorm_s0", flax_module, m, m.weight.numel())
    elif isinstance(m, torch.nn.GroupNorm):  # timm's GroupNormAct adds an activation: the norm alone
      forward = lambda x, m=m: torch.nn.functional.group_norm(x, m.num_groups, m.weight, m.bias, m.eps)
      _check_layer(
        state, name, "group_norm", jn.GroupNorm(num_groups=m.num_groups, epsilon=m.eps), forward, m.num_channels
      )
    else:
      continue
    checked += 1
  assert checked > 10
