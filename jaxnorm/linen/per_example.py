"""The per-example normalizers for flax.linen: LayerNorm, RMSNorm,
InstanceNorm and GroupNorm, drop-ins for flax's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn import initializers

from jaxnorm._core import axes as _axes
from jaxnorm._core.modulation import fold_into
from jaxnorm.functional import per_example as F
from jaxnorm.linen._params import feature_params
from jaxnorm.linen._params import projection

Array = jax.Array
Initializer = Any


class _PerExampleNorm(nn.Module):
  """Shared call plumbing of LayerNorm, InstanceNorm, GroupNorm and RMSNorm.

  It declares no fields: each subclass lists its own in flax's order, so that
  positional construction matches flax too.
  """

  def _affine(self, x, feature_axes, *, use_bias: bool, scale, shift):
    """``(γ', β', dtype)``: the parameters, created at the first call, with
    the call's modulation and the zero-centred scale folded in
    (:func:`jaxnorm._core.modulation.fold`)."""
    features = tuple(jnp.shape(x)[a] for a in feature_axes)
    zero_centered = getattr(self, "zero_centered_scale", False)
    gamma, beta = feature_params(
      self, features, use_scale=self.use_scale, use_bias=use_bias, zero_centered_scale=zero_centered
    )
    return fold_into(self, x, gamma, beta, feature_axes=feature_axes, modulation_scale=scale, modulation_shift=shift)

  def _engine_kwargs(self, mask, dtype):
    return dict(
      epsilon=self.epsilon,
      mask=mask,
      axis_name=self.axis_name,
      axis_index_groups=self.axis_index_groups,
      dtype=dtype,
      force_float32_reductions=self.force_float32_reductions,
    )


class LayerNorm(_PerExampleNorm):
  r"""Layer normalization, a drop-in for ``flax.linen.LayerNorm``.

  :math:`y = \gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta` with
  statistics over ``reduction_axes`` and parameters over ``feature_axes``.

  ``zero_centered_scale=True`` multiplies by ``1 + γ`` (computed in at least
  float32) with ``γ`` starting at 0, as Transformer Engine's
  ``zero_centered_gamma``; the call takes a modulation ``scale``/``shift``
  (:doc:`/conditional`).

  References:
    Ba, Kiros & Hinton, `Layer Normalization
    <https://arxiv.org/abs/1607.06450>`_, 2016.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  reduction_axes: _axes.Axes = -1
  feature_axes: _axes.Axes = -1
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True
  zero_centered_scale: bool = False

  @nn.compact
  def __call__(
    self, x: Array, *, mask: Array | None = None, scale: Array | None = None, shift: Array | None = None
  ) -> Array:
    """Normalizes ``x``.

    Args:
      x: the input.
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
      scale, shift: optional call-time modulation (conditional
        normalization): ``y = (γ x̂ + β)·(1 + scale) + shift``, applied in
        the same pass as the normalization. Shapes ``(N, *features)`` (one
        per example), ``features``, or ``x``'s rank broadcasting to it; see
        :doc:`/conditional`.
    """
    feature_axes = _axes.canonicalize_axes(self.feature_axes, jnp.ndim(x), name="feature_axes", owner="LayerNorm")
    gamma, beta, dtype = self._affine(x, feature_axes, use_bias=self.use_bias, scale=scale, shift=shift)
    return F.layer_norm(
      x,
      gamma,
      beta,
      reduction_axes=self.reduction_axes,
      feature_axes=feature_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask, dtype),
    )


class RMSNorm(_PerExampleNorm):
  r"""RMS normalization, a drop-in for ``flax.linen.RMSNorm``.

  :math:`y = \gamma\,x/\sqrt{\mathrm{E}[x^2] + \epsilon}` over
  ``reduction_axes``. ``use_fast_variance`` is accepted for compatibility and
  has no effect (there is no mean to subtract).

  ``zero_centered_scale=True`` is Gemma's and Qwen's RMSNorm:
  :math:`y = (1 + \gamma)\,x/\sqrt{\mathrm{E}[x^2] + \epsilon}`, ``γ``
  starting at 0 and ``1 + γ`` computed in at least float32. The call takes
  a modulation ``scale``/``shift`` (:doc:`/conditional`).

  References:
    Zhang & Sennrich, `Root Mean Square Layer Normalization
    <https://arxiv.org/abs/1910.07467>`_, 2019.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_scale: bool = True
  scale_init: Initializer = initializers.ones
  reduction_axes: _axes.Axes = -1
  feature_axes: _axes.Axes = -1
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True
  zero_centered_scale: bool = False

  @nn.compact
  def __call__(
    self, x: Array, *, mask: Array | None = None, scale: Array | None = None, shift: Array | None = None
  ) -> Array:
    """Normalizes ``x``.

    Args:
      x: the input.
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
      scale, shift: optional call-time modulation (conditional
        normalization): ``y = (γ x̂ + β)·(1 + scale) + shift``, applied in
        the same pass as the normalization. Shapes ``(N, *features)`` (one
        per example), ``features``, or ``x``'s rank broadcasting to it; see
        :doc:`/conditional`.
    """
    feature_axes = _axes.canonicalize_axes(self.feature_axes, jnp.ndim(x), name="feature_axes", owner="RMSNorm")
    gamma, beta, dtype = self._affine(x, feature_axes, use_bias=False, scale=scale, shift=shift)
    return F.rms_norm(
      x,
      gamma,
      beta,
      reduction_axes=self.reduction_axes,
      feature_axes=feature_axes,
      **self._engine_kwargs(mask, dtype),
    )


class InstanceNorm(_PerExampleNorm):
  r"""Instance normalization, a drop-in for ``flax.linen.InstanceNorm``.

  Statistics per example (leading axis) and per feature, over all other
  axes. ``feature_axes`` may be any non-leading axes (NHWC or NCHW).

  References:
    Ulyanov, Vedaldi & Lempitsky, `Instance Normalization
    <https://arxiv.org/abs/1607.08022>`_, 2016.
  """

  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  feature_axes: _axes.Axes = -1
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(
    self, x: Array, *, mask: Array | None = None, scale: Array | None = None, shift: Array | None = None
  ) -> Array:
    """Normalizes ``x``.

    Args:
      x: the input.
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
      scale, shift: optional call-time modulation (conditional
        normalization): ``y = (γ x̂ + β)·(1 + scale) + shift``, applied in
        the same pass as the normalization. Shapes ``(N, *features)`` (one
        per example), ``features``, or ``x``'s rank broadcasting to it; see
        :doc:`/conditional`.
    """
    feature_axes = _axes.canonicalize_axes(self.feature_axes, jnp.ndim(x), name="feature_axes", owner="InstanceNorm")
    gamma, beta, dtype = self._affine(x, feature_axes, use_bias=self.use_bias, scale=scale, shift=shift)
    return F.instance_norm(
      x,
      gamma,
      beta,
      feature_axes=feature_axes,
      batch_axis=0,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask, dtype),
    )


class GroupNorm(_PerExampleNorm):
  r"""Group normalization, a drop-in for ``flax.linen.GroupNorm``.

  Channels are split into ``num_groups`` groups (or groups of
  ``group_size``); each group of each example is standardized over its
  channels and the other ``reduction_axes``. Unlike flax, the channels may
  sit on any axis: ``channel_axis=1`` normalizes NCHW without transposes.

  Attributes:
    num_groups: number of groups (default 32, as in the paper); pass
      ``None`` to use ``group_size``.
    group_size: channels per group.
    channel_axis: the channel axis (default -1, flax's only choice).
    reduction_axes: axes for the statistics; must include ``channel_axis``.
      Default: every axis but the leading (batch) one.
    epsilon, dtype, param_dtype, use_bias, use_scale, bias_init, scale_init,
    axis_name, axis_index_groups, use_fast_variance, force_float32_reductions:
      as in :class:`LayerNorm`.

  References:
    Wu & He, `Group Normalization <https://arxiv.org/abs/1803.08494>`_, 2018.
  """

  num_groups: int | None = 32
  group_size: int | None = None
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = initializers.zeros
  scale_init: Initializer = initializers.ones
  reduction_axes: _axes.Axes | None = None
  axis_name: Any = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True
  channel_axis: int = -1

  @nn.compact
  def __call__(
    self, x: Array, *, mask: Array | None = None, scale: Array | None = None, shift: Array | None = None
  ) -> Array:
    """Normalizes ``x``.

    Args:
      x: the input.
      mask: optional boolean mask broadcastable to ``x``: which elements the
        statistics use.
      scale, shift: optional call-time modulation (conditional
        normalization): ``y = (γ x̂ + β)·(1 + scale) + shift``, applied in
        the same pass as the normalization. Shapes ``(N, *features)`` (one
        per example), ``features``, or ``x``'s rank broadcasting to it; see
        :doc:`/conditional`.
    """
    (c,) = _axes.canonicalize_axes(self.channel_axis, jnp.ndim(x), name="channel_axis", owner="GroupNorm")
    # Validate before creating parameters, so init fails with our message.
    _axes.resolve_groups(jnp.shape(x)[c], self.num_groups, self.group_size, owner="GroupNorm")
    gamma, beta, dtype = self._affine(x, (c,), use_bias=self.use_bias, scale=scale, shift=shift)
    return F.group_norm(
      x,
      gamma,
      beta,
      num_groups=self.num_groups,
      group_size=self.group_size,
      channel_axis=c,
      reduction_axes=self.reduction_axes,
      use_fast_variance=self.use_fast_variance,
      **self._engine_kwargs(mask, dtype),
    )


class AdaGroupNorm(GroupNorm):
  r"""Adaptive group normalization (AdaGN), the scale-shift norm of the
  diffusion UNets (Dhariwal & Nichol, 2021; ``use_scale_shift_norm``):

  .. math:: y = \mathrm{GN}(x)\,(1 + s) + t, \qquad
            (s, t) = \mathrm{Dense}(\mathrm{activation}(e))

  with the group norm's own ``γ``, ``β`` inside ``GN`` and the embedding
  ``e`` (e.g. the timestep embedding) projected to ``2C``, cut into
  ``scale`` then ``shift`` (the order of guided-diffusion and diffusers).
  The modulation is applied in the group norm's pass.

  Every field of :class:`jaxnorm.GroupNorm` applies to the norm (default
  ``epsilon`` 1e-5, as the UNets'); variables: ``params/scale``,
  ``params/bias`` (the norm's) and ``params/projection/{kernel, bias}``.

  Attributes:
    activation: applied to the embedding first (SiLU; None: none).
    projection_kernel_init, projection_bias_init: initializers of the
      projection (flax's Dense defaults).

  References:
    Dhariwal & Nichol, `Diffusion Models Beat GANs on Image Synthesis
    <https://arxiv.org/abs/2105.05233>`_, 2021.
  """

  epsilon: float = 1e-5
  activation: Callable[[Array], Array] | None = nn.silu
  projection_kernel_init: Initializer = nn.linear.default_kernel_init
  projection_bias_init: Initializer = initializers.zeros

  @nn.compact
  def __call__(self, x: Array, embedding: Array, *, mask: Array | None = None) -> Array:  # type: ignore[override]
    """Normalizes ``x`` ``(N, ..., C, ...)`` modulated by ``embedding`` ``(N, E)``."""
    (c,) = _axes.canonicalize_axes(self.channel_axis, jnp.ndim(x), name="channel_axis", owner="AdaGroupNorm")
    e = embedding if self.activation is None else self.activation(embedding)
    projected = projection(self, 2 * jnp.shape(x)[c], e)
    scale, shift = jnp.split(projected, 2, axis=-1)
    return super().__call__(x, mask=mask, scale=scale, shift=shift)
