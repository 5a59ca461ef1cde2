"""Weight normalization for flax.nnx, a drop-in for ``flax.nnx.WeightNorm``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as _nnx_dtypes
from jax.nn import initializers

from jaxnorm.functional.weight_norm import scale_initializer
from jaxnorm.functional.weight_norm import weight_norm_axes
from jaxnorm.functional.weight_norm import weight_normalize
from jaxnorm.nnx._params import substituted
from jaxnorm.nnx._params import wrapped_params

Initializer = Any
KERNELS = nnx.PathContains("kernel")  # flax's default variable_filter


def _key_without_drawing(rngs: nnx.Rngs) -> jax.Array:
  """A key for the scales that leaves ``rngs``' params stream where it is:
  flax's WeightNorm draws no key, so the layers built after it get the
  same keys as with flax's. It is derived from, and differs from, the key
  the stream gives next."""
  stream = rngs["params"]
  return jax.random.fold_in(jax.random.fold_in(stream.key[...], stream.count[...]), 0x5CA1E)


class WeightNorm(nnx.Module):
  r"""Weight normalization of a wrapped layer's weights, a drop-in for
  ``flax.nnx.WeightNorm``.

  Each call replaces every parameter of ``layer_instance`` that
  ``variable_filter`` selects (an nnx filter on its path, by default
  ``nnx.PathContains("kernel")``) by :math:`g \cdot v/\lVert v\rVert`, the
  norm over every axis but ``feature_axes``
  (:func:`jaxnorm.functional.weight_normalize`), and calls the layer. The
  same constructor and call as flax's, and ``scales``, a dict from each
  normalized parameter's path to its ``g``.

  Where it differs from flax:

  * the wrapped layer sees :math:`g\,v/\lVert v\rVert` only for the length
    of the call, and its parameter stays ``v`` (flax's nnx ``WeightNorm``
    writes the normalized weight over ``v``, so the optimizer updates
    :math:`w` rather than ``v`` and ``g``, unlike linen and the paper:
    google/flax#5576);
  * each ``g`` is an ``nnx.Param`` (flax keeps plain arrays, which an
    optimizer over ``nnx.Param`` does not train), created with
    ``param_dtype``;
  * ``scale_init="norm"`` starts ``g`` at the norm of the initial weight,
    as PyTorch's ``weight_norm`` does (google/flax#4138); the default is
    flax's, ones;
  * ``promote_dtype`` is applied to each weight and its scale (flax
    accepts it and does not use it); the norm is computed in at least
    float32.

  No key is drawn from ``rngs`` (as in flax; a random ``scale_init`` gets
  one derived from the params stream without advancing it).

  Args:
    layer_instance: the module whose weights are normalized.
    feature_axes: the axes of a weight that keep a norm (and a scale) each;
      None or ``()``: one for the whole weight.
    use_scale: learn ``g`` (else each weight keeps unit norm).
    scale_init: initializer of ``g``, or ``"norm"``.
    epsilon: added to the squared norms.
    dtype: of the normalized weights (default: the weight's and the
      scale's promoted).
    param_dtype: of the scales.
    variable_filter: which parameters to normalize.
    promote_dtype: promotes ``(weight, scale)`` with ``dtype``.
    rngs: for a random ``scale_init``.

  Example:
    >>> import jax.numpy as jnp, jaxnorm
    >>> from flax import nnx
    >>> model = jaxnorm.nnx.WeightNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    >>> {path: g.shape for path, g in model.scales.items()}
    {('kernel',): (3,)}
    >>> model(jnp.ones((2, 4))).shape
    (2, 3)
  """

  def __init__(
    self,
    layer_instance: nnx.Module,
    *,
    feature_axes: Any = -1,
    use_scale: bool = True,
    scale_init: Initializer = initializers.ones,
    epsilon: float = 1e-12,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    variable_filter: Any = KERNELS,
    promote_dtype: Any = _nnx_dtypes.promote_dtype,
    rngs: nnx.Rngs,
  ):
    self.layer_instance = layer_instance
    self.feature_axes = () if feature_axes is None else feature_axes
    self.use_scale = use_scale
    self.scale_init = scale_init
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.variable_filter = nnx.filterlib.to_predicate(variable_filter)
    self.promote_dtype = promote_dtype
    scales = {}
    if use_scale:
      key = None
      for path, param in self._normalized_params():
        init = scale_initializer(scale_init, param[...], feature_axes=self.feature_axes, owner="WeightNorm")
        key = _key_without_drawing(rngs) if key is None else jax.random.fold_in(key, len(scales))
        features, _ = weight_norm_axes(param.ndim, self.feature_axes, owner="WeightNorm")
        scales[path] = nnx.Param(init(key, tuple(param.shape[a] for a in features), param_dtype))
    self.scales = nnx.data(scales)

  def _normalized_params(self):
    return [(path, param) for path, param in wrapped_params(self.layer_instance) if self.variable_filter(path, param)]

  def __call__(self, x, *args, **kwargs):
    """Calls the wrapped layer with its normalized weights."""
    replacements = []
    for path, param in self._normalized_params():
      scale = None
      if self.use_scale:
        if path not in self.scales:
          raise RuntimeError(
            f"WeightNorm: no scale for the parameter {path} of the wrapped layer: its parameters changed "
            f"after WeightNorm was built (it has scales for {sorted(self.scales)}); build WeightNorm around "
            "the layer as it will be called."
          )
        scale = self.scales[path][...]
      weight, scale = self.promote_dtype((param[...], scale), dtype=self.dtype)
      normalized = weight_normalize(
        weight, scale, feature_axes=self.feature_axes, epsilon=self.epsilon, owner="WeightNorm"
      )
      replacements.append((param, normalized))
    with substituted(replacements):
      return self.layer_instance(x, *args, **kwargs)
