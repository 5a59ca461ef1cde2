"""CIFAR ResNets (He et al., 2016) with a pluggable normalizer.

ResNet-(6n+2): a 3×3 stem, then three stages of ``n`` basic blocks with
``width``, ``2·width`` and ``4·width`` channels (16/32/64 by default; the
second and third stages halve the resolution), global average pooling and a
linear classifier. ResNet-20/32/56/110 are n = 3/5/9/18; ResNet-8 (n = 1) is
the cheap variant for CPU runs.

The normalizer is chosen by name through :func:`jaxnorm.create_norm`, so
``norm="gn", norm_kwargs={"num_groups": 8}`` or ``norm="gn+ws"`` (which also
switches the convolutions to weight-standardized ones) need no code.
Following Goyal et al. (2017) and the GN paper, the last normalizer of each
residual block starts with γ = 0, so every block starts as the identity.
With ``norm="none"`` the convolutions get a bias instead.

:class:`NnxCifarResNet` is the same network for flax.nnx.

``residual=False`` removes every shortcut: the *plain* networks of He et
al. (2016) with the same layers (:func:`cifar_plain_net`), used to show
what normalization does for depth without skip connections.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import jaxnorm

SHORTCUTS = ("pad", "projection")


def resnet_blocks_per_stage(depth: int) -> int:
  """n for a CIFAR ResNet of ``depth = 6n + 2`` layers."""
  if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
    raise ValueError(
      f"model: depth={depth!r} is not a CIFAR ResNet depth; use 6n+2 with n >= 1, e.g. 8, 20, 32, 56 or 110."
    )
  return (depth - 2) // 6


def stage_widths(width: int) -> tuple[int, int, int]:
  """Channels of the three stages."""
  return (width, 2 * width, 4 * width)


def _conv(spec: jaxnorm.NormSpec):
  """The spec's conv (plain or weight-standardized), He init, bias iff no norm."""
  return functools.partial(
    spec.conv,
    use_bias=spec.is_identity,
    kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
  )


class BasicBlock(nn.Module):
  """Two 3×3 convolutions with a residual connection.

  Post-activation (He et al., 2016a): conv-norm-relu-conv-norm, add, relu.
  Pre-activation (He et al., 2016b): norm-relu-conv-norm-relu-conv, add.
  With ``residual=False`` (a plain block) nothing is added.
  """

  features: int
  strides: int
  norm: jaxnorm.NormSpec
  train: bool
  preact: bool = False
  shortcut: str = "pad"
  zero_init_last: bool = True
  residual: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = _conv(self.norm)
    last = {"scale_init": nn.initializers.zeros} if self.zero_init_last else {}
    norm = functools.partial(self.norm.layer, self.train)
    needs_projection = self.residual and (self.strides != 1 or x.shape[-1] != self.features)

    if self.preact:
      pre = nn.relu(norm(name="norm_in")(x))
      residual = x
      if needs_projection:
        residual = self._shortcut(pre, conv, None)
      y = conv(self.features, (3, 3), self.strides, name="conv1")(pre)
      y = nn.relu(norm(name="norm1")(y))
      y = conv(self.features, (3, 3), name="conv2")(y)
      return y + residual if self.residual else y

    y = conv(self.features, (3, 3), self.strides, name="conv1")(x)
    y = nn.relu(norm(name="norm1")(y))
    y = conv(self.features, (3, 3), name="conv2")(y)
    y = norm(name="norm2", **last)(y)
    if not self.residual:
      return nn.relu(y)
    residual = self._shortcut(x, conv, norm) if needs_projection else x
    return nn.relu(y + residual)

  def _shortcut(self, x, conv, norm):
    if self.shortcut == "projection":
      y = conv(self.features, (1, 1), self.strides, name="proj_conv")(x)
      return y if norm is None else norm(name="proj_norm")(y)
    # Option A of He et al.: subsample and zero-pad the new channels.
    y = x[:, :: self.strides, :: self.strides, :]
    pad = self.features - x.shape[-1]
    return jnp.pad(y, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32×32 images; see the module docstring.

  Attributes:
    depth: 6n + 2 (8, 20, 32, 56, 110, ...).
    width: channels of the first stage (16 in He et al.).
    num_classes: outputs of the classifier.
    norm: a :func:`jaxnorm.create_norm` name ('bn', 'gn', 'gn+ws', 'none', ...),
      or a ready :class:`jaxnorm.NormSpec` (then ``norm_kwargs`` is unused).
    norm_kwargs: keyword arguments for the normalizer (e.g. num_groups).
    preact: pre-activation blocks.
    shortcut: 'pad' (option A, parameter-free) or 'projection' (1×1 conv).
    zero_init_last: start the last γ of each block at zero.
    residual: shortcut connections; False gives the plain network.
  """

  depth: int = 20
  width: int = 16
  num_classes: int = 10
  norm: str | jaxnorm.NormSpec = "bn"
  norm_kwargs: Mapping[str, Any] | None = None
  preact: bool = False
  shortcut: str = "pad"
  zero_init_last: bool = True
  residual: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    blocks = resnet_blocks_per_stage(self.depth)
    if not self.residual and self.zero_init_last:
      raise ValueError(
        "model: residual=False with zero_init_last=True would start every "
        "plain block with γ = 0, i.e. a constant output; set "
        "zero_init_last=False for plain networks."
      )
    spec = self.norm
    if not isinstance(spec, jaxnorm.NormSpec):
      spec = jaxnorm.create_norm(spec, **dict(self.norm_kwargs or {}))
    conv = _conv(spec)
    x = conv(self.width, (3, 3), name="stem_conv")(x)
    if not self.preact:
      x = nn.relu(spec.layer(train, name="stem_norm")(x))
    for stage, features in enumerate(stage_widths(self.width)):
      for b in range(blocks):
        strides = 2 if (stage > 0 and b == 0) else 1
        x = BasicBlock(
          features,
          strides,
          spec,
          train,
          preact=self.preact,
          shortcut=self.shortcut,
          zero_init_last=self.zero_init_last,
          residual=self.residual,
          name=f"stage{stage + 1}_block{b + 1}",
        )(x)
    if self.preact:
      x = nn.relu(spec.layer(train, name="final_norm")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="classifier")(x)


def cifar_plain_net(depth: int = 20, **kwargs) -> CifarResNet:
  """The plain CIFAR network of ``depth = 6n + 2`` layers: the ResNet without shortcuts.

  He et al. (2016), Fig. 6: plain-20/32/44/56 train worse the deeper they
  are, where their ResNet counterparts train better. ``kwargs`` are the
  other fields of :class:`CifarResNet`.
  """
  return CifarResNet(depth=depth, residual=False, zero_init_last=False, **kwargs)


# The same networks for flax.nnx: the layers of create_norm(...).nnx_layer,
# the same attribute names as the linen parameter tree (stem_conv,
# stage1_block1.conv1, ...), so parameters carry over one for one.


def _nnx_conv(spec: jaxnorm.NormSpec, in_features: int, out_features: int, kernel_size, strides, rngs):
  return spec.nnx_conv(
    in_features,
    out_features,
    kernel_size,
    strides,
    use_bias=spec.is_identity,
    kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
    rngs=rngs,
  )


class NnxBasicBlock(nnx.Module):
  """:class:`BasicBlock` for flax.nnx."""

  def __init__(
    self,
    in_features: int,
    features: int,
    strides: int,
    spec: jaxnorm.NormSpec,
    *,
    preact: bool,
    shortcut: str,
    zero_init_last: bool,
    residual: bool,
    rngs: nnx.Rngs,
  ):
    last = {"scale_init": nnx.initializers.zeros} if zero_init_last else {}
    self.features, self.strides, self.preact, self.shortcut, self.residual = (
      features,
      strides,
      preact,
      shortcut,
      residual,
    )
    self.needs_projection = residual and (strides != 1 or in_features != features)
    if preact:
      self.norm_in = spec.nnx_layer(in_features, rngs=rngs)
    self.conv1 = _nnx_conv(spec, in_features, features, (3, 3), strides, rngs)
    self.norm1 = spec.nnx_layer(features, rngs=rngs)
    self.conv2 = _nnx_conv(spec, features, features, (3, 3), 1, rngs)
    if not preact:
      self.norm2 = spec.nnx_layer(features, rngs=rngs, **last)
    if self.needs_projection and shortcut == "projection":
      self.proj_conv = _nnx_conv(spec, in_features, features, (1, 1), strides, rngs)
      if not preact:
        self.proj_norm = spec.nnx_layer(features, rngs=rngs)

  def _shortcut(self, x, normalize: bool):
    if self.shortcut == "projection":
      y = self.proj_conv(x)
      return self.proj_norm(y) if normalize else y
    y = x[:, :: self.strides, :: self.strides, :]
    pad = self.features - x.shape[-1]
    return jnp.pad(y, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))

  def __call__(self, x):
    if self.preact:
      pre = nn.relu(self.norm_in(x))
      residual = self._shortcut(pre, normalize=False) if self.needs_projection else x
      y = nn.relu(self.norm1(self.conv1(pre)))
      y = self.conv2(y)
      return y + residual if self.residual else y
    y = nn.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    if not self.residual:
      return nn.relu(y)
    residual = self._shortcut(x, normalize=True) if self.needs_projection else x
    return nn.relu(y + residual)


class NnxCifarResNet(nnx.Module):
  """:class:`CifarResNet` for flax.nnx: the same fields and layers (NHWC
  images, logits out). Training or evaluation mode is the model's
  (``model.train()``/``model.eval()``), not a call argument."""

  def __init__(
    self,
    depth: int = 20,
    width: int = 16,
    num_classes: int = 10,
    norm: str | jaxnorm.NormSpec = "bn",
    norm_kwargs: Mapping[str, Any] | None = None,
    preact: bool = False,
    shortcut: str = "pad",
    zero_init_last: bool = True,
    residual: bool = True,
    *,
    rngs: nnx.Rngs,
  ):
    blocks = resnet_blocks_per_stage(depth)
    if not residual and zero_init_last:
      raise ValueError(
        "model: residual=False with zero_init_last=True would start every plain block with γ = 0, i.e. a "
        "constant output; set zero_init_last=False for plain networks."
      )
    spec = norm if isinstance(norm, jaxnorm.NormSpec) else jaxnorm.create_norm(norm, **dict(norm_kwargs or {}))
    self.preact, self.blocks = preact, []
    self.stem_conv = _nnx_conv(spec, 3, width, (3, 3), 1, rngs)
    if not preact:
      self.stem_norm = spec.nnx_layer(width, rngs=rngs)
    channels = width
    for stage, features in enumerate(stage_widths(width)):
      for b in range(blocks):
        name = f"stage{stage + 1}_block{b + 1}"
        setattr(
          self,
          name,
          NnxBasicBlock(
            channels,
            features,
            2 if (stage > 0 and b == 0) else 1,
            spec,
            preact=preact,
            shortcut=shortcut,
            zero_init_last=zero_init_last,
            residual=residual,
            rngs=rngs,
          ),
        )
        self.blocks.append(name)
        channels = features
    if preact:
      self.final_norm = spec.nnx_layer(channels, rngs=rngs)
    self.classifier = nnx.Linear(channels, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.stem_conv(x)
    if not self.preact:
      x = nn.relu(self.stem_norm(x))
    for name in self.blocks:
      x = getattr(self, name)(x)
    if self.preact:
      x = nn.relu(self.final_norm(x))
    return self.classifier(jnp.mean(x, axis=(1, 2)))
