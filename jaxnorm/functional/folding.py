"""Inference folding: merge an evaluation-mode batch norm into the layer before.

In evaluation, batch norm is a per-channel affine map, so a Conv or Dense
layer followed by it is a single Conv or Dense layer with a rescaled kernel
and a shifted bias. Folding removes the normalization from the inference
graph.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def fold_batch_norm(
  layer_params: Mapping[str, Array],
  norm_params: Mapping[str, Array] | None,
  norm_stats: Mapping[str, Array],
  *,
  epsilon: float = 1e-5,
) -> dict[str, Array]:
  r"""Folds an evaluation-mode batch norm into the preceding Conv or Dense.

  With :math:`a = \gamma/\sqrt{\sigma^2 + \epsilon}` per output channel,

  .. math:: W' = W\,a,\qquad b' = (b - \mu)\,a + \beta

  so that ``layer'(x) = BN(layer(x))`` with BN using its running statistics
  :math:`\mu, \sigma^2`. A layer without a bias gets one (:math:`b = 0`).
  Works on parameter trees as flax stores them: ``nn.Conv`` and ``nn.Dense``
  kernels with the output channels last (``(*window, in, out)`` and ``(in,
  out)``), and a batch norm over those channels (``axis=-1``, NHWC).
  :class:`jaxnorm.BatchRenorm` folds the same way (its evaluation is batch
  norm's). For a :class:`jaxnorm.StandardizedConv`, fold into the
  standardized kernel (:func:`jaxnorm.standardize_weight`) and use an
  ``nn.Conv``.

  Args:
    layer_params: the layer's ``params``: ``kernel`` and optionally ``bias``.
    norm_params: the batch norm's ``params``: ``scale`` and/or ``bias``
      (either may be missing, as with ``use_scale=False``), or None.
    norm_stats: the batch norm's ``batch_stats``: ``mean`` and ``var``.
    epsilon: the batch norm's epsilon.

  Returns:
    The folded layer's ``params``, ``kernel`` and ``bias``, in the dtype of
    the kernel (and any other entries of ``layer_params`` unchanged).

  Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> x = jnp.ones((2, 3))
    >>> v_dense = nn.Dense(4).init(jax.random.key(0), x)
    >>> v_bn = nn.BatchNorm(use_running_average=True).init(jax.random.key(1), jnp.ones((2, 4)))
    >>> folded = fold_batch_norm(v_dense["params"], v_bn["params"], v_bn["batch_stats"])
    >>> y = nn.BatchNorm(use_running_average=True).apply(v_bn, nn.Dense(4).apply(v_dense, x))
    >>> bool(jnp.allclose(nn.Dense(4).apply({"params": folded}, x), y, atol=1e-5))
    True
  """
  owner = "fold_batch_norm"
  norm_params = {} if norm_params is None else norm_params
  if "kernel" not in layer_params:
    raise ValueError(
      f"{owner}: layer_params has no 'kernel' (keys: {sorted(layer_params)}); "
      f"pass the params of the nn.Conv or nn.Dense that precedes the batch "
      f"norm."
    )
  kernel = jnp.asarray(layer_params["kernel"])
  features = kernel.shape[-1:]
  entries = {
    "norm_stats['mean']": norm_stats.get("mean"),
    "norm_stats['var']": norm_stats.get("var"),
    "norm_params['scale']": norm_params.get("scale"),
    "norm_params['bias']": norm_params.get("bias"),
    "layer_params['bias']": layer_params.get("bias"),
  }
  for name, value in entries.items():
    if value is None and name.startswith("norm_stats"):
      raise ValueError(f"{owner}: {name} is missing; pass the batch norm's batch_stats (with 'mean' and 'var').")
    if value is not None and jnp.shape(value) != features:
      raise ValueError(
        f"{owner}: {name} has shape {jnp.shape(value)}, but the kernel of "
        f"shape {kernel.shape} has {features[0]} output channels (last "
        f"axis); fold a batch norm over the layer's output channels "
        f"(axis=-1)."
      )
  (mean, var, scale, shift, bias) = entries.values()
  acc = jnp.promote_types(kernel.dtype, jnp.float32)
  mul = lax.rsqrt(jnp.asarray(var, acc) + epsilon)
  if scale is not None:
    mul = mul * jnp.asarray(scale, acc)
  new_bias = -jnp.asarray(mean, acc) * mul
  if bias is not None:
    new_bias = new_bias + jnp.asarray(bias, acc) * mul
  if shift is not None:
    new_bias = new_bias + jnp.asarray(shift, acc)
  new_kernel = jnp.asarray(kernel, acc) * mul.reshape((1,) * (kernel.ndim - 1) + features)
  bias_dtype = kernel.dtype if bias is None else jnp.result_type(bias)
  return {
    **layer_params,
    "kernel": new_kernel.astype(kernel.dtype),
    "bias": new_bias.astype(bias_dtype),
  }
