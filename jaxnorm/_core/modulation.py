r"""Call-time modulation and the zero-centred scale: how a module folds a
per-example ``scale`` and ``shift`` into its learned ``γ`` and ``β``.

Conditional normalization (FiLM, conditional BN, AdaGN, DiT's adaLN)
replaces the learned affine map of a normalizer by one computed from a
conditioning input. Every jaxnorm module takes it at call time,
``layer(x, scale=s, shift=t)``, with DiT's zero-centred convention:

.. math:: y = (\gamma\,\hat x + \beta)\,(1 + s) + t
          = \hat x\,\underbrace{\gamma(1 + s)}_{\gamma'}
          + \underbrace{\beta(1 + s) + t}_{\beta'} .

:func:`fold` computes ``γ'`` and ``β'``, which are small (an example's
features), and the normalizer applies them in its one elementwise pass, as
it applies ``γ`` and ``β``: modulation costs no extra pass over ``x``. The
layers whose output is not affine in ``γ``, ``β`` (FRN's TLU, EvoNorm)
modulate their affine part: ``γ'`` and ``β'`` take the place of ``γ`` and
``β``.

The zero-centred scale (Gemma, Qwen; Transformer Engine's
``zero_centered_gamma``) learns ``γ`` around 0 and multiplies by ``1 + γ``,
computed in at least float32 so that a bfloat16 ``γ`` keeps its small
values (``1 + γ`` in bfloat16 would round ``γ`` to multiples of 2⁻⁷).

The shapes a modulation may have (:func:`expand`): ``(N, *features)`` —
one per example, e.g. ``(N, C)`` for NHWC activations or ``(N, D)`` for
tokens ``(N, T, D)``, broadcast over every other axis — or the features
alone, or any array of ``x``'s rank that broadcasts to it (a spatial map,
as in SPADE).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm._core.arguments import canonicalize_axes
from jaxnorm._core.normalize import accumulation_dtype
from jaxnorm._core.normalize import output_dtype

Array = jax.Array


def scale_initializer(init: Any, zero_centered_scale: bool) -> Any:
  """The initializer of a zero-centred ``γ``: zeros where the layer's
  ``scale_init`` is the default (ones), so that ``1 + γ`` starts at 1, as
  Gemma's RMSNorm does; any other initializer is the user's choice."""
  if zero_centered_scale and init is jax.nn.initializers.ones:
    return jax.nn.initializers.zeros
  return init


def expand(m: Any, x_shape: tuple[int, ...], feature_axes: tuple[int, ...], *, name: str, owner: str) -> Array:
  """A modulation as an array of ``x``'s rank that broadcasts to ``x``.

  Accepted: ``x``'s rank, broadcasting (size 1 or ``x``'s size on each
  axis); ``(N, *features)`` with ``N = x.shape[0]`` (the leading axis is the
  batch; not when it is itself a feature axis); or ``features``.
  """
  m = jnp.asarray(m)
  features = tuple(x_shape[a] for a in feature_axes)
  full = tuple(x_shape[a] if a in feature_axes else 1 for a in range(len(x_shape)))
  if m.ndim == len(x_shape) and all(d in (1, s) for d, s in zip(m.shape, x_shape)):
    return m
  if 0 not in feature_axes and m.shape == (x_shape[0], *features):
    return m.reshape((x_shape[0],) + full[1:])
  if m.shape == features:
    return m.reshape(full)
  per_example = f"{(x_shape[0], *features)} (one per example), " if 0 not in feature_axes else ""
  raise ValueError(
    f"{owner}: {name} has shape {m.shape}, which does not fit the input of shape {x_shape} "
    f"with features {features} on axes {feature_axes}; give it the shape {per_example}"
    f"{features} (shared), or the input's rank with sizes that broadcast to it."
  )


def fold(
  x: Array,
  scale: Array | None,
  bias: Array | None,
  *,
  feature_axes: Any,
  modulation_scale: Array | None = None,
  modulation_shift: Array | None = None,
  zero_centered_scale: bool = False,
  dtype: Any = None,
  force_float32_reductions: bool = True,
  others: tuple[Array | None, ...] = (),
  owner: str,
) -> tuple[Array | None, Array | None, Any]:
  r"""``(γ', β', output dtype)``: the learned ``γ``, ``β`` with the
  zero-centred scale and a call-time modulation folded in.

  ``γ' = (1 + γ if zero_centered_scale else γ)·(1 + modulation_scale)`` and
  ``β' = β·(1 + modulation_scale) + modulation_shift`` (an absent ``γ`` is
  1, an absent ``β`` 0), computed in the normalizer's accumulation dtype (at
  least float32 for half-precision inputs, unless
  ``force_float32_reductions`` is False). The output dtype is the layer's:
  ``dtype``, else the promoted dtype of ``x``, ``γ``, ``β``, the modulation
  and ``others`` (further parameters, such as EvoNorm's ``v``) — the dtype
  the same layer composed by hand would return.

  Args:
    x: the layer's input.
    scale, bias: the learned ``γ``, ``β`` (feature-shaped, or of ``x``'s
      rank), or None.
    feature_axes: the axes ``γ``, ``β`` vary along.
    modulation_scale, modulation_shift: the call's ``scale`` and ``shift``
      (shapes as :func:`expand` accepts), or None.
    zero_centered_scale: multiply by ``1 + γ`` instead of ``γ``.
    dtype, force_float32_reductions: the layer's.
    others: further parameters that enter the output dtype.
    owner: the layer's name, for errors.

  Returns:
    ``(γ', β', dtype)``. Without a modulation and a zero-centred scale,
    ``γ``, ``β`` and ``dtype`` are returned unchanged, so the layer computes
    exactly what it computes without this step.
  """
  if modulation_scale is None and modulation_shift is None and not zero_centered_scale:
    return scale, bias, dtype
  x_shape = jnp.shape(x)
  axes = canonicalize_axes(feature_axes, len(x_shape), name="feature_axes", owner=owner)
  mod_scale = None if modulation_scale is None else expand(modulation_scale, x_shape, axes, name="scale", owner=owner)
  shift = None if modulation_shift is None else expand(modulation_shift, x_shape, axes, name="shift", owner=owner)
  for name, m in (("scale", mod_scale), ("shift", shift)):
    if m is not None and not jnp.issubdtype(m.dtype, jnp.inexact):
      raise TypeError(f"{owner}: the modulation {name} has dtype {m.dtype}; pass a floating-point array.")
  out = output_dtype(x, scale, bias, mod_scale, shift, *others, dtype=dtype)
  acc = accumulation_dtype(jnp.result_type(x), dtype, force_float32_reductions)
  acc = jnp.result_type(acc, *(p for p in (scale, bias, mod_scale, shift) if p is not None))
  # The arithmetic runs on the compact (examples, *features) arrays where all
  # are of that form (XLA:CPU runs the sums over the examples in reverse mode
  # faster on them than on x-rank arrays with size-1 axes), else at x's rank.
  frame = _CompactFrame.of(x_shape, axes, (scale, bias), (modulation_scale, modulation_shift))
  if frame is None:
    frame = _RankFrame(x_shape, axes)
  gamma, beta = (None if p is None else frame.param(p).astype(acc) for p in (scale, bias))
  mod_scale, shift = (
    None if e is None else frame.modulation(m, e).astype(acc)
    for m, e in ((modulation_scale, mod_scale), (modulation_shift, shift))
  )
  if zero_centered_scale and gamma is not None:  # without a learned γ the factor is 1
    gamma = 1 + gamma
  if mod_scale is not None:
    factor = 1 + mod_scale
    gamma = factor if gamma is None else gamma * factor
    beta = None if beta is None else beta * factor
  if shift is not None:
    beta = shift if beta is None else beta + shift
  return frame.out(gamma), frame.out(beta), out


def fold_into(module, x, scale, bias, *, feature_axes, modulation_scale, modulation_shift, others=()):
  """:func:`fold` with a module's settings: its ``dtype``,
  ``force_float32_reductions`` and ``zero_centered_scale`` (where it has
  them) and its class name in errors."""
  return fold(
    x,
    scale,
    bias,
    feature_axes=feature_axes,
    modulation_scale=modulation_scale,
    modulation_shift=modulation_shift,
    zero_centered_scale=getattr(module, "zero_centered_scale", False),
    dtype=module.dtype,
    force_float32_reductions=getattr(module, "force_float32_reductions", True),
    others=others,
    owner=type(module).__name__,
  )


class _RankFrame:
  """Arithmetic at ``x``'s rank: parameters and modulations reshaped to it."""

  def __init__(self, x_shape, axes):
    self.x_shape, self.axes = x_shape, axes

  def param(self, p):
    if jnp.ndim(p) == len(self.x_shape):
      return jnp.asarray(p)
    return jnp.reshape(p, tuple(self.x_shape[a] if a in self.axes else 1 for a in range(len(self.x_shape))))

  def modulation(self, m, expanded):
    """A modulation as given (``m``) and checked at ``x``'s rank (``expanded``)."""
    return expanded

  def out(self, a):
    return a


class _CompactFrame:
  """Arithmetic on ``(1 or N, *features)`` arrays, reshaped to ``x``'s rank
  at the end; for feature-shaped parameters and modulations of the shapes
  ``(N, *features)`` or ``features``."""

  def __init__(self, x_shape, axes):
    self.x_shape, self.axes = x_shape, axes
    self.features = tuple(x_shape[a] for a in axes)

  @classmethod
  def of(cls, x_shape, axes, params, modulations):
    frame = cls(x_shape, axes)
    if 0 in axes or any(p is not None and jnp.shape(p) != frame.features for p in params):
      return None
    if any(m is not None and frame.lead(m) is None for m in modulations):
      return None
    return frame

  def lead(self, m):
    shape = jnp.shape(m)
    if shape == (self.x_shape[0], *self.features):
      return self.x_shape[0]
    return 1 if shape == self.features else None

  def param(self, p):
    return jnp.reshape(p, (1, *self.features))

  def modulation(self, m, expanded):
    return jnp.reshape(m, (self.lead(m), *self.features))

  def out(self, a):
    if a is None:
      return None
    full = tuple(self.x_shape[i] if i in self.axes else 1 for i in range(len(self.x_shape)))
    return jnp.reshape(a, (a.shape[0],) + full[1:])
