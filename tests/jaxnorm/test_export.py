"""Lowering for CUDA and TPU, proven on CPU by cross-platform export.

``jax.export`` with ``platforms=("cuda",)`` or ``("tpu",)`` traces and lowers
a function for that accelerator without having one. Every public function
and module of :mod:`jaxnorm` (the table ``CASES``; a test checks that it
covers ``jaxnorm.__all__``) is exported forward and backward (the outputs,
and ``value_and_grad`` of a loss over every output with respect to the input
and the parameters), under ``implementation("auto")`` and, where the Pallas
kernels apply, ``implementation("pallas")``, for which the CUDA module must
hold compiled Triton kernels. A lowering failure for either platform fails
the test. The training step of ``experiments/`` (per-device and synced
batch norm, ``execution='vmap'``, 8 devices) is exported the same way in a
subprocess (``export_multidevice_checks.py``).

Lowering a Triton ``pallas_call`` for CUDA needs a GPU's compute capability.
jax 0.10 falls back to sm_90 when no GPU is present; jax 0.12 raises "No
supported GPU devices found, please specify an abstract GPU device using
AbstractDevice" unless the abstract mesh in context names one, which
:func:`target_device` provides (and :func:`with_device` inside
``shard_map``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax import export

import jaxnorm
from jaxnorm._core import dispatch as _dispatch

PLATFORMS = ("cuda", "tpu")
TRITON = "__gpu$xla.gpu.triton"  # the custom call of a Triton pallas_call

# The accelerator each platform's lowering pretends to target. Only CUDA
# needs one (jax >= 0.12 reads the compute capability from it); the kind must
# be one jax knows (jax._src.pallas.triton.gpu_info.GpuVersion).
ABSTRACT_DEVICES = {
  "cuda": jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=None, platform="gpu"),
}


@contextlib.contextmanager
def target_device(platform: str):
  """An abstract mesh naming a ``platform`` device, for lowering without one.

  jax >= 0.12 lowers a Triton ``pallas_call`` for a GPU it does not have
  only when ``jax.sharding.get_abstract_mesh().abstract_device`` is a GPU;
  this sets an empty abstract mesh (no axes, so it constrains nothing) that
  carries one. jax 0.10 does not read it (it assumes sm_90) and accepts it.
  Inside ``shard_map`` the body is lowered under the shard_map's own mesh,
  so there the mesh itself must carry the device: see :func:`with_device`.
  """
  device = ABSTRACT_DEVICES.get(platform)
  if device is None:
    yield
    return
  mesh = jax.sharding.AbstractMesh((), (), abstract_device=device)
  with jax.sharding.use_abstract_mesh(mesh):
    yield


def with_device(mesh, platform: str):
  """``mesh`` (concrete or abstract) as an abstract mesh on ``platform``'s
  device, for ``shard_map`` bodies that hold Triton kernels; unchanged for
  platforms without an entry in :data:`ABSTRACT_DEVICES`."""
  device = ABSTRACT_DEVICES.get(platform)
  if device is None:
    return mesh
  return jax.sharding.AbstractMesh(
    tuple(mesh.axis_sizes), tuple(mesh.axis_names), axis_types=tuple(mesh.axis_types), abstract_device=device
  )


def export_for(platform: str, fn: Callable, *args) -> export.Exported:
  """``jax.export`` of ``jax.jit(fn)`` (or ``fn`` if already jitted) for one
  platform; ``args`` are ``jax.ShapeDtypeStruct`` trees. Triton custom calls
  are allowed on CUDA (their lowering is what is being tested)."""
  checks = [export.DisabledSafetyCheck.custom_call(TRITON)] if platform == "cuda" else []
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
  with target_device(platform):
    return export.export(jitted, platforms=(platform,), disabled_checks=checks)(*args)


# ---------------------------------------------------------------------------
# The table: every public function and module, as name -> Case.

F32 = jnp.float32
NHWC = (2, 4, 4, 8)  # channels last, 8 channels: the Pallas tiling covers it
NCHW = (2, 8, 4, 4)  # channels first: the fused XLA path
C = 8


def spec(shape, dtype=F32):
  return jax.ShapeDtypeStruct(shape, dtype)


@dataclasses.dataclass(frozen=True)
class Case:
  """``fn(*args)`` returns any tree of arrays; ``wrt`` are the argument
  indices (input and parameters) to differentiate; ``pallas`` whether the
  Pallas kernels apply (``implementation("pallas")`` uses them); ``covers``
  the names of ``jaxnorm.__all__`` it exercises."""

  fn: Callable
  args: tuple
  wrt: tuple[int, ...]
  covers: tuple[str, ...]
  pallas: bool = False


def fn_case(fn, shapes, wrt=None, covers=(), pallas=False):
  """A functional case; ``shapes`` are shapes (float32) or trees of specs."""
  args = tuple(spec(s) if isinstance(s, tuple) else s for s in shapes)
  wrt = tuple(range(len(args))) if wrt is None else wrt
  return Case(fn, args, wrt, covers, pallas)


def module_case(module: nn.Module, shape=NHWC, *, train=True, covers=(), pallas=False, mutable=None):
  """A flax module applied to an input of ``shape``.

  ``fn(params, x, others)``: ``others`` are the non-parameter collections
  (``batch_stats``), updated when ``train``. Differentiated with respect to
  the parameters and the input.
  """
  x = spec(shape)
  variables = dict(jax.eval_shape(module.init, jax.random.key(0), x))
  params = variables.pop("params", {})
  if mutable is None:
    mutable = sorted(variables) if train else False

  def fn(params, x, others):
    return module.apply({"params": params, **others}, x, mutable=mutable)

  return Case(fn, (params, x, variables), (0, 1), covers, pallas)


def nnx_case(module, shape=NHWC, pallas=False):
  """A jaxnorm.nnx module applied to an input of ``shape``: ``fn(params, x,
  others)`` merges the module from its parameters and other state (the
  running statistics) and returns the output and the updated state."""
  graphdef, params, others = nnx.split(module, nnx.Param, ...)

  def fn(params, x, others):
    merged = nnx.merge(graphdef, params, others, copy=True)  # fresh variables in this trace
    y = merged(x)
    return y, nnx.state(merged, nnx.BatchStat)

  return Case(fn, (params, spec(shape), others), (0, 1), ("nnx",), pallas)


def norm_layer_case(name: str, train: bool, **kwargs):
  """``create_norm(name)``: its convolution followed by its layer."""
  norm = jaxnorm.create_norm(name, **kwargs)

  class ConvNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = norm.conv(C, (3, 3), use_bias=norm.is_identity)(x)
      return norm.layer(train)(x)

  covers = ("create_norm", "NORM_NAMES", "NormSpec")
  # The standardizing layers (NHWC, 8 channels; FRN with a fixed ε) take
  # the kernels; batch-statistics layers in evaluation mode and the rest
  # (renorm, EvoNorm) do not.
  standardizing = {"bn", "bn+ws", "ghost_bn", "gn", "gn+ws", "ln", "in", "rms", "frn"}
  return module_case(ConvNorm(), NHWC, train=train, covers=covers, pallas=train and name in standardizing)


def _synced_batch_norm(x, scale, bias):
  """SyncBN over a named axis (vmap stands in for the devices)."""
  per_device = lambda xd: jaxnorm.batch_norm(xd, scale, bias, axis_name="devices")
  return jax.vmap(per_device, axis_name="devices")(x)


def _precise_batch_stats_step():
  """The traced part of ``precise_batch_stats``: a training-mode apply that
  sows ``BATCH_MOMENTS`` (the merging is host-side float64 NumPy)."""
  module = jaxnorm.BatchNorm(use_running_average=False, virtual_batch_size=2)
  return module_case(
    module,
    (4, 4, 4, C),
    mutable=["batch_stats", jaxnorm.BATCH_MOMENTS],
    covers=("precise_batch_stats", "BATCH_MOMENTS", "BatchNorm"),
    pallas=True,
  )


def _fold_case():
  layer = {"kernel": spec((3, 3, 4, C)), "bias": spec((C,))}
  norm = {"scale": spec((C,)), "bias": spec((C,))}
  stats = {"mean": spec((C,)), "var": spec((C,))}
  return fn_case(
    lambda l, n, s: jaxnorm.fold_batch_norm(l, n, s), (layer, norm, stats), wrt=(0, 1, 2), covers=("fold_batch_norm",)
  )


class _SpectralConv(nn.Module):
  """A convolution under SpectralNorm, trained (its ``u`` and ``sigma`` updated)."""

  @nn.compact
  def __call__(self, x):
    return jaxnorm.SpectralNorm(nn.Conv(C, (3, 3)), n_steps=2)(x, update_stats=True)


class _Conditioned(nn.Module):
  """A conditional layer (``layer(x, c)``, or ``layer(c)`` giving adaLN-Zero's
  modulation for a LayerNorm) with a conditioning made from the input, so
  that both paths are differentiated."""

  layer: Any

  @nn.compact
  def __call__(self, x):
    c = jnp.mean(x, axis=(1, 2))  # (N, C)
    if isinstance(self.layer, jaxnorm.AdaLNZero):
      (m,) = self.layer(c)
      return jaxnorm.LayerNorm(use_scale=False, use_bias=False)(x, shift=m.shift, scale=m.scale) * m.gate[:, None, None]
    return self.layer(x, c)


class _Modulated(nn.Module):
  """A normalizer with a call-time modulation of shape (N, C)."""

  layer: Any

  @nn.compact
  def __call__(self, x):
    c = jnp.mean(x, axis=(1, 2))
    return self.layer(x, scale=jnp.tanh(c), shift=c)


def _nnx_conditioned(module):
  """An nnx conditional layer, conditioned on the channel means of the input."""
  case = nnx_case(module)

  def fn(params, x, others):
    merged = nnx.merge(nnx.graphdef(module), params, others, copy=True)
    return merged(x, jnp.mean(x, axis=(1, 2))), nnx.state(merged, nnx.BatchStat)

  return dataclasses.replace(case, fn=fn)


CASES: dict[str, Case] = {
  # The statistics engine and the affine step.
  "moments": fn_case(lambda x: jaxnorm.moments(x, (0, 1, 2)), [NHWC], covers=("moments", "Moments")),
  "moments_masked": fn_case(
    lambda x, m: jaxnorm.moments(x, (1, 2), mask=m, keepdims=True),
    [NHWC, spec(NHWC, jnp.bool_)],
    wrt=(0,),
    covers=("moments",),
  ),
  "normalize": fn_case(
    lambda x, m, v, s, b: jaxnorm.normalize(x, m, v, s, b, epsilon=1e-5),
    [NHWC] + [(1, 1, 1, C)] * 4,
    covers=("normalize",),
  ),
  # batch_norm and its options (BatchStats is its second output).
  "batch_norm": fn_case(
    lambda x, s, b, rm, rv: jaxnorm.batch_norm(x, s, b, rm, rv, momentum=0.9),
    [NHWC, (C,), (C,), (C,), (C,)],
    wrt=(0, 1, 2),
    covers=("batch_norm", "BatchStats"),
    pallas=True,
  ),
  "batch_norm_nchw": fn_case(
    lambda x, s, b: jaxnorm.batch_norm(x, s, b, axis=1), [NCHW, (C,), (C,)], covers=("batch_norm",)
  ),
  "batch_norm_eval": fn_case(
    lambda x, s, b, rm, rv: jaxnorm.batch_norm(x, s, b, rm, rv, use_running_average=True),
    [NHWC, (C,), (C,), (C,), (C,)],
    covers=("batch_norm",),
  ),
  "batch_norm_masked": fn_case(
    lambda x, m, s, b: jaxnorm.batch_norm(x, s, b, mask=m),
    [NHWC, spec((2, 1, 1, 1), jnp.bool_), (C,), (C,)],
    wrt=(0, 2, 3),
    covers=("batch_norm",),
  ),
  "batch_norm_cumulative": fn_case(
    lambda x, s, b, rm, rv, n: jaxnorm.batch_norm(x, s, b, rm, rv, running_stats="cumulative", running_count=n),
    [NHWC, (C,), (C,), (C,), (C,), spec((), jnp.int32)],
    wrt=(0, 1, 2),
    covers=("batch_norm",),
    pallas=True,
  ),
  "batch_norm_synced": fn_case(_synced_batch_norm, [(2,) + NHWC, (C,), (C,)], covers=("batch_norm",)),
  "ghost_batch_norm": fn_case(
    lambda x, s, b: jaxnorm.batch_norm(x, s, b, virtual_batch_size=2),
    [(4, 4, 4, C), (C,), (C,)],
    covers=("batch_norm",),
    pallas=True,
  ),
  "batch_norm_bf16": fn_case(
    lambda x, s, b: jaxnorm.batch_norm(x, s, b),
    [spec(NHWC, jnp.bfloat16), (C,), (C,)],
    covers=("batch_norm",),
    pallas=True,
  ),
  # Per-example normalizers.
  "layer_norm": fn_case(lambda x, s, b: jaxnorm.layer_norm(x, s, b), [NHWC, (C,), (C,)], covers=("layer_norm",)),
  "layer_norm_hwc": fn_case(
    lambda x, s, b: jaxnorm.layer_norm(x, s, b, reduction_axes=(1, 2, 3)),
    [NHWC, (C,), (C,)],
    covers=("layer_norm",),
    pallas=True,
  ),
  "rms_norm": fn_case(lambda x, s: jaxnorm.rms_norm(x, s), [NHWC, (C,)], covers=("rms_norm",)),
  "rms_norm_hwc": fn_case(
    lambda x, s: jaxnorm.rms_norm(x, s, reduction_axes=(1, 2, 3)),
    [NHWC, (C,)],
    covers=("rms_norm",),
    pallas=True,
  ),
  "instance_norm": fn_case(
    lambda x, s, b: jaxnorm.instance_norm(x, s, b), [NHWC, (C,), (C,)], covers=("instance_norm",), pallas=True
  ),
  "instance_norm_nchw": fn_case(
    lambda x, s, b: jaxnorm.instance_norm(x, s, b, feature_axes=1),
    [NCHW, (C,), (C,)],
    covers=("instance_norm",),
  ),
  "group_norm": fn_case(
    lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=4), [NHWC, (C,), (C,)], covers=("group_norm",), pallas=True
  ),
  "group_norm_nchw": fn_case(
    lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=4, channel_axis=1),
    [NCHW, (C,), (C,)],
    covers=("group_norm",),
  ),
  "group_norm_bf16": fn_case(
    lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=2),
    [spec(NHWC, jnp.bfloat16), (C,), (C,)],
    covers=("group_norm",),
    pallas=True,
  ),
  # The small-batch family.
  "batch_renorm": fn_case(
    lambda x, s, b, rm, rv: jaxnorm.batch_renorm(x, s, b, rm, rv, r_max=2.0, d_max=3.0),
    [NHWC, (C,), (C,), (C,), (C,)],
    wrt=(0, 1, 2),
    covers=("batch_renorm",),
  ),
  "batch_renorm_eval": fn_case(
    lambda x, s, b, rm, rv: jaxnorm.batch_renorm(x, s, b, rm, rv, use_running_average=True),
    [NHWC, (C,), (C,), (C,), (C,)],
    wrt=(0, 1, 2),
    covers=("batch_renorm",),
  ),
  "batch_renorm_limits": fn_case(
    lambda step: jaxnorm.batch_renorm_limits(step, warmup_delay=5, r_max_warmup_steps=10, d_max_warmup_steps=20),
    [spec((), jnp.int32)],
    wrt=(),
    covers=("batch_renorm_limits",),
  ),
  "standardize_weight": fn_case(
    lambda w, g: jaxnorm.standardize_weight(w, g, scaled=True),
    [(3, 3, 4, C), (C,)],
    covers=("standardize_weight",),
  ),
  "spectral_normalize": fn_case(
    lambda w, u: jaxnorm.spectral_normalize(w, u, n_steps=2), [(3, 3, 4, C), (1, C)], covers=("spectral_normalize",)
  ),
  "weight_normalize": fn_case(
    lambda w, g: jaxnorm.weight_normalize(w, g), [(3, 3, 4, C), (C,)], covers=("weight_normalize",)
  ),
  "filter_response_norm": fn_case(
    lambda x, s, b, t: jaxnorm.filter_response_norm(x, s, b, t),
    [NHWC, (C,), (C,), (C,)],
    covers=("filter_response_norm",),
    pallas=True,
  ),
  "filter_response_norm_learned_eps": fn_case(
    lambda x, s, b, t, e: jaxnorm.filter_response_norm(x, s, b, t, learned_epsilon=e),
    [NHWC, (C,), (C,), (C,), ()],
    covers=("filter_response_norm",),
  ),
  "evonorm_b0": fn_case(
    lambda x, s, b, v, rv: jaxnorm.evonorm_b0(x, s, b, v, rv),
    [NHWC, (C,), (C,), (C,), (C,)],
    wrt=(0, 1, 2, 3),
    covers=("evonorm_b0",),
  ),
  "evonorm_b0_eval": fn_case(
    lambda x, s, b, v, rv: jaxnorm.evonorm_b0(x, s, b, v, rv, use_running_average=True),
    [NHWC, (C,), (C,), (C,), (C,)],
    wrt=(0, 1, 2, 3),
    covers=("evonorm_b0",),
  ),
  "evonorm_s0": fn_case(
    lambda x, s, b, v: jaxnorm.evonorm_s0(x, s, b, v, num_groups=4),
    [NHWC, (C,), (C,), (C,)],
    covers=("evonorm_s0",),
  ),
  "dynamic_tanh": fn_case(
    lambda x, a, s, b: jaxnorm.dynamic_tanh(x, a, s, b), [NHWC, (1,), (C,), (C,)], covers=("dynamic_tanh",)
  ),
  "film": fn_case(lambda x, s, b: jaxnorm.film(x, s, b), [NHWC, (NHWC[0], C), (NHWC[0], C)], covers=("film",)),
  "fold_batch_norm": _fold_case(),
  "precise_batch_stats_step": _precise_batch_stats_step(),
  # flax.nnx modules.
  "nnx.BatchNorm": nnx_case(jaxnorm.nnx.BatchNorm(C, rngs=nnx.Rngs(0)), pallas=True),
  "nnx.BatchNorm_eval": nnx_case(jaxnorm.nnx.BatchNorm(C, use_running_average=True, rngs=nnx.Rngs(0))),
  "nnx.LayerNorm": nnx_case(jaxnorm.nnx.LayerNorm(C, rngs=nnx.Rngs(0))),
  "nnx.GroupNorm": nnx_case(jaxnorm.nnx.GroupNorm(C, num_groups=4, rngs=nnx.Rngs(0)), pallas=True),
  "nnx.InstanceNorm": nnx_case(jaxnorm.nnx.InstanceNorm(C, rngs=nnx.Rngs(0)), pallas=True),
  "nnx.BatchRenorm": nnx_case(jaxnorm.nnx.BatchRenorm(C, rngs=nnx.Rngs(0))),
  "nnx.EvoNormB0": nnx_case(jaxnorm.nnx.EvoNormB0(C, rngs=nnx.Rngs(0))),
  "nnx.EvoNormS0": nnx_case(jaxnorm.nnx.EvoNormS0(C, num_groups=4, rngs=nnx.Rngs(0))),
  "nnx.FilterResponseNorm": nnx_case(jaxnorm.nnx.FilterResponseNorm(C, learn_epsilon=True, rngs=nnx.Rngs(0))),
  "nnx.StandardizedConv": nnx_case(jaxnorm.nnx.StandardizedConv(C, C, (3, 3), scaled=True, rngs=nnx.Rngs(0))),
  "nnx.SpectralNorm": nnx_case(
    jaxnorm.nnx.SpectralNorm(nnx.Conv(C, C, (3, 3), rngs=nnx.Rngs(0)), n_steps=2, rngs=nnx.Rngs(1))
  ),
  "nnx.WeightNorm": nnx_case(jaxnorm.nnx.WeightNorm(nnx.Conv(C, C, (3, 3), rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))),
  "nnx.RMSNorm": nnx_case(jaxnorm.nnx.RMSNorm(C, reduction_axes=(1, 2, 3), rngs=nnx.Rngs(0)), pallas=True),
  "nnx.RMSNorm_zero_centered": nnx_case(jaxnorm.nnx.RMSNorm(C, zero_centered_scale=True, rngs=nnx.Rngs(0))),
  "nnx.DynamicTanh": nnx_case(jaxnorm.nnx.DynamicTanh(C, rngs=nnx.Rngs(0))),
  "nnx.AdaGroupNorm": dataclasses.replace(
    _nnx_conditioned(jaxnorm.nnx.AdaGroupNorm(C, C, num_groups=4, rngs=nnx.Rngs(0))), pallas=True
  ),
  "nnx.ConditionalBatchNorm": _nnx_conditioned(jaxnorm.nnx.ConditionalBatchNorm(C, C, rngs=nnx.Rngs(0))),
  "nnx.FiLM": _nnx_conditioned(jaxnorm.nnx.FiLM(C, C, rngs=nnx.Rngs(0))),
  # flax modules.
  "BatchNorm": module_case(jaxnorm.BatchNorm(use_running_average=False), covers=("BatchNorm",), pallas=True),
  "BatchNorm_eval": module_case(jaxnorm.BatchNorm(use_running_average=True), train=False, covers=("BatchNorm",)),
  "BatchNorm_ghost": module_case(
    jaxnorm.BatchNorm(use_running_average=False, virtual_batch_size=2),
    (4, 4, 4, C),
    covers=("BatchNorm",),
    pallas=True,
  ),
  "BatchNorm_cumulative": module_case(
    jaxnorm.BatchNorm(use_running_average=False, running_stats="cumulative"),
    covers=("BatchNorm",),
    pallas=True,
  ),
  "BatchRenorm": module_case(
    jaxnorm.BatchRenorm(use_running_average=False, warmup_delay=2, r_max_warmup_steps=5), covers=("BatchRenorm",)
  ),
  "BatchRenorm_eval": module_case(jaxnorm.BatchRenorm(use_running_average=True), train=False, covers=("BatchRenorm",)),
  "GroupNorm": module_case(jaxnorm.GroupNorm(num_groups=4), covers=("GroupNorm",), pallas=True),
  "LayerNorm": module_case(jaxnorm.LayerNorm(), covers=("LayerNorm",)),
  "InstanceNorm": module_case(jaxnorm.InstanceNorm(), covers=("InstanceNorm",), pallas=True),
  "RMSNorm": module_case(jaxnorm.RMSNorm(reduction_axes=(1, 2, 3)), covers=("RMSNorm",), pallas=True),
  "FilterResponseNorm": module_case(jaxnorm.FilterResponseNorm(learn_epsilon=True), covers=("FilterResponseNorm",)),
  "EvoNormB0": module_case(jaxnorm.EvoNormB0(use_running_average=False), covers=("EvoNormB0",)),
  "EvoNormB0_eval": module_case(jaxnorm.EvoNormB0(use_running_average=True), train=False, covers=("EvoNormB0",)),
  "EvoNormS0": module_case(jaxnorm.EvoNormS0(num_groups=4), covers=("EvoNormS0",)),
  "StandardizedConv": module_case(jaxnorm.StandardizedConv(C, (3, 3), scaled=True), covers=("StandardizedConv",)),
  "SpectralNorm": module_case(_SpectralConv(), covers=("SpectralNorm",)),
  "WeightNorm": module_case(jaxnorm.WeightNorm(nn.Conv(C, (3, 3))), covers=("WeightNorm",)),
  "BatchNorm_debiased_ema": module_case(
    jaxnorm.BatchNorm(use_running_average=False, running_stats="debiased_ema"), covers=("BatchNorm",), pallas=True
  ),
  "DynamicTanh": module_case(jaxnorm.DynamicTanh(), covers=("DynamicTanh",)),
  # Call-time modulation: per example and channel, in the normalizer's pass
  # (batch norm's varies along a reduced axis: the XLA passes apply it).
  "BatchNorm_modulated": module_case(_Modulated(jaxnorm.BatchNorm(use_running_average=False)), covers=("BatchNorm",)),
  "GroupNorm_modulated": module_case(_Modulated(jaxnorm.GroupNorm(num_groups=4)), covers=("GroupNorm",), pallas=True),
  "LayerNorm_zero_centered_modulated": module_case(
    _Modulated(jaxnorm.LayerNorm(zero_centered_scale=True)), covers=("LayerNorm",)
  ),
  "AdaLNZero": module_case(
    _Conditioned(jaxnorm.AdaLNZero(features=C, num_branches=1)), covers=("AdaLNZero", "AdaLNModulation")
  ),
  "AdaGroupNorm": module_case(_Conditioned(jaxnorm.AdaGroupNorm(num_groups=4)), covers=("AdaGroupNorm",), pallas=True),
  "ConditionalBatchNorm": module_case(
    _Conditioned(jaxnorm.ConditionalBatchNorm(use_running_average=False)), covers=("ConditionalBatchNorm",)
  ),
  "FiLM": module_case(_Conditioned(jaxnorm.FiLM()), covers=("FiLM",)),
}
# Every create_norm name: its conv (StandardizedConv for "+ws") and its
# layer, in training and (where the mode matters) evaluation mode.
_NORM_KWARGS = {
  "ghost_bn": {"virtual_batch_size": 1},
  "gn": {"num_groups": 4},
  "gn+ws": {"num_groups": 4},
  "evonorm_s0": {"num_groups": 4},
}
for _name in jaxnorm.NORM_NAMES:
  _kwargs = _NORM_KWARGS.get(_name, {})
  CASES[f"create_norm[{_name}]"] = norm_layer_case(_name, True, **_kwargs)
  if jaxnorm.create_norm(_name, **_kwargs).has_batch_stats:
    CASES[f"create_norm[{_name}]_eval"] = norm_layer_case(_name, False, **_kwargs)

# Public names that are not traced computations: the implementation switch
# and its list of names (it applies to every case above). The data types
# (Moments, BatchStats, NormSpec) and constants are covered as outputs and
# inputs of the cases that name them.
# The namespaces `functional` and `linen` hold names the table covers by their top-level aliases.
# Not array functions: the implementation switch, namespaces, and the
# checkpoint reader (NumPy in, NumPy out).
NOT_TRACED = {"IMPLEMENTATIONS", "implementation", "get_implementation", "set_implementation", "functional", "linen"}
NOT_TRACED |= {"from_torch"}


def _is_float(leaf) -> bool:
  return jnp.issubdtype(leaf.dtype, jnp.inexact)


def forward_backward(case: Case) -> Callable:
  """``args -> (outputs, loss, grads)``: the loss is a weighted sum of
  squares of every floating output (statistics included), differentiated
  with respect to the arguments ``case.wrt``."""

  def step(*args):
    def loss(*diff):
      full = list(args)
      for i, d in zip(case.wrt, diff):
        full[i] = d
      out = case.fn(*full)
      leaves = [leaf for leaf in jax.tree_util.tree_leaves(out) if _is_float(leaf)]
      total = sum(jnp.sum(jnp.square(leaf.astype(F32))) / (k + 1) for k, leaf in enumerate(leaves))
      return total, out

    if not case.wrt:
      return case.fn(*args)
    (value, out), grads = jax.value_and_grad(loss, argnums=tuple(range(len(case.wrt))), has_aux=True)(
      *(args[i] for i in case.wrt)
    )
    return out, value, grads

  return step


def _uses_pallas(case: Case) -> bool:
  return "pallas_call" in str(jax.make_jaxpr(forward_backward(case))(*case.args))


def _check_exported(exported: export.Exported, case: Case, platform: str) -> None:
  """One device, this platform; the backward pass gives a float32 loss and
  one gradient per differentiated argument, of its shape and dtype."""
  assert exported.platforms == (platform,)
  assert exported.nr_devices == 1
  if case.wrt:
    _, value, grads = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
    assert (value.shape, value.dtype) == ((), F32)
    avals = lambda tree: [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(tree)]
    assert avals(grads) == avals([case.args[i] for i in case.wrt])


def test_the_table_covers_the_public_api():
  covered = {name for case in CASES.values() for name in case.covers}
  assert set(jaxnorm.__all__) - NOT_TRACED - covered == set()
  assert covered <= set(jaxnorm.__all__)
  assert {n for n in jaxnorm.NORM_NAMES if f"create_norm[{n}]" not in CASES} == set()


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_exports_forward_and_backward(name, platform):
  case = CASES[name]
  with jaxnorm.implementation("auto"):
    exported = export_for(platform, forward_backward(case), *case.args)
  _check_exported(exported, case, platform)


def test_the_precise_batch_stats_step_reports_batch_moments():
  case = CASES["precise_batch_stats_step"]
  _, mutated = jax.eval_shape(case.fn, *case.args)
  assert set(mutated) == {"batch_stats", jaxnorm.BATCH_MOMENTS}


PALLAS_CASES = sorted(name for name, case in CASES.items() if case.pallas)


def test_the_pallas_column_matches_where_the_kernels_apply():
  """``pallas=True`` exactly where ``implementation("pallas")`` takes them."""
  with jaxnorm.implementation("pallas"):
    applies = sorted(name for name, case in CASES.items() if _uses_pallas(case))
  assert applies == PALLAS_CASES


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", PALLAS_CASES)
def test_exports_the_pallas_kernels(name, platform):
  case = CASES[name]
  with jaxnorm.implementation("pallas"):
    exported = export_for(platform, forward_backward(case), *case.args)
  _check_exported(exported, case, platform)
  if platform == "cuda":
    # Compiled kernels, not interpreted ones: this holds only because
    # jaxnorm/_core/pallas.py chooses interpret mode per lowering platform
    # (lax.platform_dependent); a choice by the host's default backend
    # would lower plain XLA for CUDA on this CPU host and fail here.
    triton_kernels = exported.mlir_module().count(TRITON)
    assert triton_kernels > 0, f"{name}: no Triton kernel in the CUDA lowering"


def test_auto_chooses_per_lowering_platform(monkeypatch):
  """With a CUDA-only rule in AUTO_PALLAS, "auto" lowers the compiled
  kernels for CUDA and the fused path for TPU, from the same CPU host."""
  monkeypatch.setitem(_dispatch.AUTO_PALLAS, "cuda", lambda shape, reduction_axes, feature_axes: True)
  case = CASES["group_norm"]
  with jaxnorm.implementation("auto"):
    modules = {p: export_for(p, forward_backward(case), *case.args).mlir_module() for p in PLATFORMS}
  assert TRITON in modules["cuda"]
  assert TRITON not in modules["tpu"]


FUSED_FENCE = "stablehlo.reduce_precision"  # the fused path's XLA:CPU fusion fence (jaxnorm._core.fused.fence)


def test_auto_takes_the_reference_per_lowering_platform(monkeypatch):
  """With a CUDA-only rule in AUTO_REFERENCE, "auto" lowers JAX's own
  derivative of the composition for CUDA and the fused path for TPU."""
  monkeypatch.setitem(_dispatch.AUTO_REFERENCE, "cuda", lambda shape, reduction_axes, feature_axes: True)
  case = CASES["layer_norm"]
  with jaxnorm.implementation("auto"):
    modules = {p: export_for(p, forward_backward(case), *case.args).mlir_module() for p in PLATFORMS}
  assert FUSED_FENCE not in modules["cuda"]
  assert FUSED_FENCE in modules["tpu"]
  with jaxnorm.implementation("fused"):  # the rule is "auto"'s alone
    assert FUSED_FENCE in export_for("cuda", forward_backward(case), *case.args).mlir_module()


# ---------------------------------------------------------------------------
# The training step of experiments/, on 8 simulated devices (subprocess).

SCRIPT = pathlib.Path(__file__).with_name("export_multidevice_checks.py")


@pytest.fixture(scope="module")
def training_exports() -> dict[str, Any]:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  root = str(pathlib.Path(__file__).resolve().parents[2])
  env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
  proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


TRAINING = ["per_device_bn", "synced_bn", "per_device_bn_4_per_device"]


@pytest.mark.slow
@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", TRAINING + ["per_device_bn_pallas"])
def test_training_step_exports(training_exports, name, platform):
  result = training_exports[f"{name}/{platform}"]
  assert "error" not in result, result.get("error")
  assert result["platforms"] == [platform]
  assert result["nr_devices"] == result["mesh_devices"]
  assert result["nr_devices"] == (2 if name.endswith("4_per_device") else 8)
  # Inputs: the state (replicated), images and labels (split over 'data'), key.
  n = result["state_inputs"]
  assert result["inputs"] == n + 3
  assert result["data_sharded_inputs"] == [n, n + 1]


@pytest.mark.slow
@pytest.mark.parametrize("platform", PLATFORMS)
def test_synced_statistics_add_cross_device_reductions(training_exports, platform):
  per_device = training_exports[f"per_device_bn/{platform}"]["all_reduce"]
  synced = training_exports[f"synced_bn/{platform}"]["all_reduce"]
  assert 0 < per_device < synced  # gradients only vs gradients and every BN's statistics


@pytest.mark.slow
def test_training_step_lowers_the_pallas_kernels_for_cuda(training_exports):
  # Compiled, not interpreted (see test_exports_the_pallas_kernels); on
  # jax >= 0.12 this also needs the shard_map's mesh to carry the abstract
  # GPU device (with_device).
  assert training_exports["per_device_bn_pallas/cuda"]["triton"] > 0
