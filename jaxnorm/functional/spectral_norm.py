"""Spectral normalization: divide a weight by its largest singular value.

The largest singular value σ of the weight, seen as a matrix, is estimated
by power iteration from a persistent vector ``u`` (Miyato et al., 2018,
Algorithm 1); one iteration per training step is enough because ``u``
carries over from step to step. Dividing by σ bounds the layer's Lipschitz
constant by 1, which stabilizes GAN discriminators (SN-GAN, SAGAN, BigGAN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._core import axes as _axes

Array = jax.Array


def l2_normalize(x: Array, axis=None, epsilon: float = 1e-12) -> Array:
  """``x / sqrt(Σx² + ε)`` over ``axis`` (all axes when None), flax's form:
  ε is added to the squared norm (PyTorch divides by ``max(‖x‖, ε)``; the
  two agree unless ``‖x‖ < 1e-6``)."""
  return x * lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + epsilon)


def as_matrix(
  weight: Array, *, error_on_non_matrix: bool = False, owner: str = "spectral_normalize", subject: str = "Input"
) -> Array:
  """The weight as the matrix spectral normalization uses: a flax kernel
  of rank > 2 has its leading axes flattened, ``(-1, out)``. ``subject``
  starts the error for a rank > 2 weight with ``error_on_non_matrix`` (flax
  says "Input" in linen, "Layer instance parameter" in nnx)."""
  if weight.ndim > 2:
    if error_on_non_matrix:
      # flax's text, which its tests pin.
      raise ValueError(
        f"{owner}: {subject} is {weight.ndim}D but error_on_non_matrix is True (the weight has shape "
        f"{weight.shape}; pass error_on_non_matrix=False to flatten its leading axes)"
      )
    return jnp.reshape(weight, (-1, weight.shape[-1]))
  return weight


def spectral_normalize(
  weight: Array,
  u: Array,
  *,
  n_steps: int = 1,
  epsilon: float = 1e-12,
  error_on_non_matrix: bool = False,
  dtype=None,
  owner: str = "spectral_normalize",
) -> tuple[Array, Array, Array]:
  r"""The weight divided by its largest singular value, and the new
  power-iteration state.

  With :math:`W` the weight as a matrix (a kernel of rank > 2 flattened to
  ``(-1, out)``) and :math:`u` the ``(1, out)`` vector carried between
  steps, each of ``n_steps`` iterations does

  .. math:: v \leftarrow \frac{u W^\top}{\lVert u W^\top \rVert}, \qquad
            u \leftarrow \frac{v W}{\lVert v W \rVert},

  then :math:`\sigma = v W u^\top` and :math:`\bar W = W/\sigma` (``W``
  unchanged where :math:`\sigma = 0`). No gradient flows through ``u`` and
  ``v`` (the paper's and PyTorch's choice), so the gradient of :math:`\bar
  W` is the exact derivative of :math:`W/\sigma(W)` at the estimated
  singular vectors. This is flax's ``SpectralNorm`` computation; the
  iteration runs in at least float32 (a float16 ``Σx²`` overflows above
  norm 256), and its matrix products at the highest precision.

  Args:
    weight: the weight (a flax kernel, output features last), of rank 2 or
      more.
    u: the ``(1, out)`` left singular vector estimate.
    n_steps: power iterations, at least 1.
    epsilon: added to the squared norms.
    error_on_non_matrix: raise for a weight of rank > 2 instead of
      flattening it.
    dtype: of the normalized weight (default: ``weight`` and ``u``
      promoted).
    owner: name used in error messages.

  Returns:
    ``(weight / σ, new u, σ)``; ``u`` and σ in ``u``'s dtype.

  References:
    Miyato, Kataoka, Koyama & Yoshida, `Spectral Normalization for
    Generative Adversarial Networks <https://arxiv.org/abs/1802.05957>`_,
    2018.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.diag(jnp.array([3.0, 1.0, 0.5]))
    >>> u = jnp.ones((1, 3))
    >>> w_bar, u, sigma = spectral_normalize(w, u, n_steps=20)
    >>> round(float(sigma), 4), round(float(jnp.linalg.norm(w_bar, 2)), 4)
    (3.0, 1.0)
  """
  _axes.check_floating(weight, name="weight", owner=owner)
  _axes.check_positive_int(n_steps, name="n_steps", owner=owner)
  weight = jnp.asarray(weight)
  if weight.ndim < 2:
    raise ValueError(
      f"{owner}: weight has shape {weight.shape}; spectral normalization needs a matrix or a kernel of rank > 2."
    )
  matrix = as_matrix(weight, error_on_non_matrix=error_on_non_matrix, owner=owner)
  u = jnp.asarray(u)
  if u.shape != (1, matrix.shape[-1]):
    raise ValueError(
      f"{owner}: u has shape {u.shape}; a weight of shape {weight.shape} needs u of shape (1, {matrix.shape[-1]})."
    )
  out_dtype = jnp.result_type(weight, u) if dtype is None else dtype
  compute = jnp.promote_types(jnp.result_type(weight, u), jnp.float32)
  matrix, u_iter = matrix.astype(compute), u.astype(compute)
  matmul = lambda a, b: jnp.matmul(a, b, precision=lax.Precision.HIGHEST)
  for _ in range(n_steps):
    v_iter = l2_normalize(matmul(u_iter, matrix.T), epsilon=epsilon)
    u_iter = l2_normalize(matmul(v_iter, matrix), epsilon=epsilon)
  u_iter, v_iter = lax.stop_gradient(u_iter), lax.stop_gradient(v_iter)
  sigma = matmul(matmul(v_iter, matrix), u_iter.T)[0, 0]
  normalized = (matrix / jnp.where(sigma != 0, sigma, 1)).reshape(weight.shape)
  return normalized.astype(out_dtype), u_iter.astype(u.dtype), sigma.astype(u.dtype)
