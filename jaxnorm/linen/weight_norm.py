"""Weight normalization for flax.linen, a drop-in for ``flax.linen.WeightNorm``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes as _dtypes
from flax.linen import transforms
from jax.nn import initializers

from jaxnorm.functional.weight_norm import scale_initializer
from jaxnorm.functional.weight_norm import weight_norm_axes
from jaxnorm.functional.weight_norm import weight_normalize
from jaxnorm.linen._params import wrapped_name

Initializer = Any


class WeightNorm(nn.Module):
  r"""Weight normalization of a wrapped layer's weights, a drop-in for
  ``flax.linen.WeightNorm``.

  Before the wrapped layer runs, each of its parameters whose path
  (``"<layer>/<path>"``) contains one of the strings of ``variable_filter``
  (all of them when it is empty or None) is replaced by
  :math:`g \cdot v/\lVert v\rVert`, the norm over every axis but
  ``feature_axes`` (:func:`jaxnorm.functional.weight_normalize`). The same
  fields, call and variables as flax's: the wrapped layer's parameters
  ``v`` stay in its own ``params``, and this module's ``params`` hold one
  ``"<layer>/<path>/scale"`` (``g``, one per feature) per normalized
  parameter when ``use_scale``. Only the wrapped layer's ``params`` are
  normalized, never its other collections.

  ``scale_init`` defaults to ones, as in flax: each normalized weight
  starts at unit norm, whatever the wrapped layer's initializer.
  ``scale_init="norm"`` starts ``g`` at the norm of the initial weight, as
  PyTorch's ``weight_norm`` does, so that wrapping a layer leaves its
  initial function unchanged (flax has no such option: google/flax#4138).
  The norm is computed in at least float32.

  Attributes:
    layer_instance: the module whose weights are normalized.
    epsilon: added to the squared norms.
    dtype: of the normalized weights (default: the weight's and the
      scale's promoted).
    param_dtype: of the scales.
    use_scale: learn ``g`` (else each weight keeps unit norm).
    scale_init: initializer of ``g``, or ``"norm"``.
    feature_axes: the axes of a weight that keep a norm (and a scale) each;
      None or ``()``: one for the whole weight.
    variable_filter: substrings of the parameter paths to normalize
      (default ``{"kernel"}``).

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxnorm
    >>> model = jaxnorm.WeightNorm(nn.Dense(3))
    >>> v = model.init(jax.random.key(0), jnp.ones((2, 4)))
    >>> jax.tree.map(jnp.shape, v["params"])
    {'layer_instance': {'bias': (3,), 'kernel': (4, 3)}, 'layer_instance/kernel/scale': (3,)}
  """

  layer_instance: nn.Module
  epsilon: float = 1e-12
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_scale: bool = True
  scale_init: Initializer = initializers.ones
  feature_axes: Any = -1
  variable_filter: Iterable | None = dataclasses.field(default_factory=lambda: {"kernel"})

  @nn.compact
  def __call__(self, *args, **kwargs):
    """Calls the wrapped layer with ``*args, **kwargs`` on its normalized weights."""
    return transforms.map_variables(
      lambda layer: layer(*args, **kwargs),
      "params",
      trans_in_fn=lambda variables: jax.tree_util.tree_map_with_path(self._normalize, variables),
      init=self.is_initializing(),
    )(self.layer_instance)

  def _normalize(self, path, value):
    value = jnp.asarray(value)
    name = wrapped_name(self.layer_instance, path)
    if self.variable_filter and not any(part in name for part in self.variable_filter):
      return value
    features, _ = weight_norm_axes(value.ndim, self.feature_axes, owner="WeightNorm")
    scale = None
    if self.use_scale:
      init = scale_initializer(self.scale_init, value, feature_axes=self.feature_axes, owner="WeightNorm")
      scale = self.param(f"{name}/scale", init, tuple(value.shape[a] for a in features), self.param_dtype)
    dtype = _dtypes.canonicalize_dtype(*([value] if scale is None else [value, scale]), dtype=self.dtype)
    return weight_normalize(
      value, scale, feature_axes=self.feature_axes, epsilon=self.epsilon, dtype=dtype, owner="WeightNorm"
    )
