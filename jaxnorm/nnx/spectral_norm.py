"""Spectral normalization for flax.nnx, a drop-in for ``flax.nnx.SpectralNorm``."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.linen import dtypes as _dtypes
from jax.nn import initializers

from jaxnorm import _stateful
from jaxnorm._core import axes as _axes
from jaxnorm.functional.spectral_norm import as_matrix
from jaxnorm.functional.spectral_norm import spectral_normalize
from jaxnorm.nnx._params import ModeMixin
from jaxnorm.nnx._params import substituted
from jaxnorm.nnx._params import wrapped_params


class SpectralNorm(ModeMixin, nnx.Module):
  r"""Spectral normalization of a wrapped layer's weights, a drop-in for
  ``flax.nnx.SpectralNorm``.

  Each call divides every parameter of rank ≥ 2 of ``layer_instance`` by
  its largest singular value, estimated by ``n_steps`` power iterations
  (:func:`jaxnorm.functional.spectral_normalize`), and calls the layer. The
  same constructor, call and variables as flax's: ``batch_stats``, a dict
  from ``<path of the parameter> + ("u",)`` (and ``("sigma",)``) to
  ``nnx.BatchStat``, ``u`` drawn from ``rngs.params()``; ``update_stats``
  (the constructor's, flipped by ``model.train()``/``model.eval()`` through
  ``use_running_average``, or the call's) stores the new ones.

  Where it differs from flax (google/flax#5576): flax's nnx ``SpectralNorm``
  writes :math:`W/\sigma` over the wrapped layer's parameter, so each call
  normalizes the previous call's result and the optimizer updates
  :math:`W/\sigma` rather than :math:`W`, unlike linen and the paper. Here
  the layer sees :math:`W/\sigma` only for the length of the call and its
  parameter stays :math:`W`, as in linen: jaxnorm's linen and nnx classes
  give the same outputs, statistics and gradients. The power iteration
  runs in at least float32.

  Args:
    layer_instance: the module whose weights are normalized.
    n_steps: power iterations per call (0: the weights are used as they
      are, as in flax).
    epsilon: added to the squared norms.
    dtype: of the normalized weights (default: the weight's and ``u``'s
      promoted).
    param_dtype: of ``u`` and ``sigma``.
    error_on_non_matrix: raise for a weight of rank > 2 instead of
      flattening its leading axes.
    update_stats: store the new ``u`` and ``sigma`` at each call.
    rngs: draws each ``u``.

  Example:
    >>> import jax.numpy as jnp, jaxnorm
    >>> from flax import nnx
    >>> model = jaxnorm.nnx.SpectralNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    >>> sorted(model.batch_stats)
    [('kernel', 'sigma'), ('kernel', 'u')]
    >>> model(jnp.ones((2, 4))).shape
    (2, 3)
  """

  def __init__(
    self,
    layer_instance: nnx.Module,
    *,
    n_steps: int = 1,
    epsilon: float = 1e-12,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    error_on_non_matrix: bool = False,
    update_stats: bool = True,
    rngs: nnx.Rngs,
  ):
    _axes.check_non_negative_int(n_steps, name="n_steps", owner="SpectralNorm")
    self.layer_instance = layer_instance
    self.n_steps = n_steps
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.error_on_non_matrix = error_on_non_matrix
    # model.train()/.eval() and nnx.view set use_running_average, the opposite of update_stats.
    self.use_running_average = not update_stats
    batch_stats = {}
    for path, param in self._normalized_params():
      key = rngs.params()
      batch_stats[path + ("u",)] = nnx.BatchStat(initializers.normal()(key, (1, param.shape[-1]), param_dtype))
      batch_stats[path + ("sigma",)] = nnx.BatchStat(initializers.ones(key, (), param_dtype))
    self.batch_stats = nnx.data(batch_stats)

  def _normalized_params(self):
    if self.n_steps < 1:
      return []
    chosen = []
    for path, param in wrapped_params(self.layer_instance):
      if param.ndim >= 2:
        as_matrix(
          param[...],
          error_on_non_matrix=self.error_on_non_matrix,
          owner="SpectralNorm",
          subject="Layer instance parameter",
        )
        chosen.append((path, param))
    return chosen

  def _state_of(self, path):
    try:
      return self.batch_stats[path + ("u",)], self.batch_stats[path + ("sigma",)]
    except KeyError:
      raise RuntimeError(
        f"SpectralNorm: no u/sigma batch stat for the parameter {path} of the wrapped layer: its parameters "
        f"changed after SpectralNorm was built (it has them for {sorted({p[:-1] for p in self.batch_stats})}); "
        "build SpectralNorm around the layer as it will be called."
      ) from None

  def __call__(self, x, update_stats: bool | None = None, **kwargs):
    """Calls the wrapped layer on ``x`` (and ``**kwargs``) with its
    spectrally normalized weights; ``update_stats`` overrides the
    module's setting."""
    if update_stats is None:
      update_stats = not self.use_running_average
    replacements = []
    for path, param in self._normalized_params():
      u, sigma = self._state_of(path)
      weight = param[...]
      dtype = _dtypes.canonicalize_dtype(weight, u[...], dtype=self.dtype)
      normalized, new_u, new_sigma = spectral_normalize(
        weight, u[...], n_steps=self.n_steps, epsilon=self.epsilon, dtype=dtype, owner="SpectralNorm"
      )
      if update_stats:
        _stateful.replace_value(u, new_u)
        _stateful.replace_value(sigma, new_sigma)
      replacements.append((param, normalized))
    with substituted(replacements):
      return self.layer_instance(x, **kwargs)
