"""Spectral normalization for flax.linen, a drop-in for ``flax.linen.SpectralNorm``."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes as _dtypes
from flax.linen import transforms

from jaxnorm._core import axes as _axes
from jaxnorm.functional.spectral_norm import as_matrix
from jaxnorm.functional.spectral_norm import spectral_normalize
from jaxnorm.linen._params import wrapped_name


class SpectralNorm(nn.Module):
  r"""Spectral normalization of a wrapped layer's weights, a drop-in for
  ``flax.linen.SpectralNorm``.

  Before the wrapped layer runs, each of its parameters of rank ≥ 2 is
  divided by its largest singular value, estimated by ``n_steps`` power
  iterations (:func:`jaxnorm.functional.spectral_normalize`). The same
  fields, call (``update_stats`` keyword-only) and variables as flax's: the
  wrapped layer's parameters stay in its own ``params``, and per weight the
  ``batch_stats`` (``collection_name``) of this module hold
  ``"<layer>/<path>/u"`` (the ``(1, out)`` vector the iteration continues
  from, drawn from the ``params`` RNG) and ``"<layer>/<path>/sigma"``;
  ``update_stats=True`` (training, with the collection mutable) stores the
  new ones. Parameters of rank ≤ 1 (biases) are left as they are, and
  ``n_steps=0`` leaves every weight as it is, as in flax. Only the wrapped
  layer's ``params`` are normalized: its other collections (a wrapped
  BatchNorm's running statistics) pass through unchanged and stay mutable.

  Where it goes further than flax: the power iteration runs in at least
  float32, its products at the highest precision; and the normalized
  weights are never written into ``params`` (flax's ``SpectralNorm``
  returns them in ``params`` when applied with ``mutable=True``, so a
  training loop that keeps that update trains :math:`W/\sigma` in place of
  :math:`W`).

  Attributes:
    layer_instance: the module whose weights are normalized.
    n_steps: power iterations per call.
    epsilon: added to the squared norms.
    dtype: of the normalized weights (default: the weight's and ``u``'s
      promoted).
    param_dtype: of ``u`` and ``sigma``.
    error_on_non_matrix: raise for a weight of rank > 2 instead of
      flattening its leading axes.
    collection_name: the collection of ``u`` and ``sigma``.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxnorm
    >>> model = jaxnorm.SpectralNorm(nn.Dense(3))
    >>> v = model.init(jax.random.key(0), jnp.ones((2, 4)), update_stats=False)
    >>> jax.tree.map(jnp.shape, v["batch_stats"])
    {'layer_instance/kernel/sigma': (), 'layer_instance/kernel/u': (1, 3)}
    >>> y, updates = model.apply(v, jnp.ones((2, 4)), update_stats=True, mutable=["batch_stats"])
  """

  layer_instance: nn.Module
  n_steps: int = 1
  epsilon: float = 1e-12
  dtype: Any = None
  param_dtype: Any = jnp.float32
  error_on_non_matrix: bool = False
  collection_name: str = "batch_stats"

  @nn.compact
  def __call__(self, *args, update_stats: bool, **kwargs):
    """Calls the wrapped layer with ``*args, **kwargs`` on its spectrally
    normalized weights; ``update_stats`` stores the new ``u`` and ``sigma``."""
    _axes.check_non_negative_int(self.n_steps, name="n_steps", owner="SpectralNorm")
    normalize = functools.partial(self._normalize, update_stats=update_stats)
    return transforms.map_variables(
      lambda layer: layer(*args, **kwargs),
      "params",
      trans_in_fn=lambda variables: jax.tree_util.tree_map_with_path(normalize, variables),
      init=self.is_initializing(),
    )(self.layer_instance)

  def _normalize(self, path, value, *, update_stats: bool):
    value = jnp.asarray(value)
    if value.ndim <= 1 or self.n_steps < 1:
      return value
    matrix = as_matrix(value, error_on_non_matrix=self.error_on_non_matrix, owner="SpectralNorm")
    name = wrapped_name(self.layer_instance, path)
    u_name, sigma_name = f"{name}/u", f"{name}/sigma"
    u = self.variable(
      self.collection_name,
      u_name,
      jax.random.normal,
      self.make_rng("params") if not self.has_variable(self.collection_name, u_name) else None,
      (1, matrix.shape[-1]),
      self.param_dtype,
    )
    sigma = self.variable(self.collection_name, sigma_name, jnp.ones, (), self.param_dtype)
    dtype = _dtypes.canonicalize_dtype(value, u.value, dtype=self.dtype)
    normalized, new_u, new_sigma = spectral_normalize(
      value, u.value, n_steps=self.n_steps, epsilon=self.epsilon, dtype=dtype, owner="SpectralNorm"
    )
    if update_stats:
      u.value, sigma.value = new_u, new_sigma
    return normalized
