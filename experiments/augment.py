"""On-device CIFAR-10 augmentation and normalization.

The standard recipe: zero-pad by 4 pixels, take a random 32x32 crop, flip
horizontally with probability 0.5, scale to [0, 1] and normalize per channel
with the CIFAR-10 training-set mean and standard deviation. Everything runs
inside ``jax.jit`` from a PRNG key, vectorized over the batch with
``jax.vmap`` (no Python loop per image).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@jax.jit
def normalize_images(images: jax.Array) -> jax.Array:
  """Scales uint8 NHWC images to [0, 1] and normalizes each channel.

  Args:
    images: ``(..., H, W, 3)`` uint8 images.

  Returns:
    float32 array of the same shape: ``(x / 255 - mean) / std``.
  """
  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  shape = (1,) * (x.ndim - 1) + (-1,)  # explicit: works under rank_promotion='raise'
  mean = jnp.asarray(CIFAR10_MEAN, jnp.float32).reshape(shape)
  std = jnp.asarray(CIFAR10_STD, jnp.float32).reshape(shape)
  return (x - mean) / std


@functools.partial(jax.jit, static_argnames=("padding",))
def random_crop_flip(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
  """Zero-pads, randomly crops back to size and randomly flips each image.

  Each image gets its own crop offsets, uniform in ``[0, 2 * padding]`` on
  both axes of the padded image, and is flipped left-right with
  probability 0.5.

  Args:
    key: a PRNG key; the same key gives the same output.
    images: ``(N, H, W, C)`` images of any dtype.
    padding: zero padding added on each side before cropping.

  Returns:
    Array with the shape and dtype of ``images``.
  """
  images = jnp.asarray(images)
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def one(k, img):
    k_crop, k_flip = jax.random.split(k)
    dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * padding + 1)
    crop = lax.dynamic_slice(img, (dy, dx, 0), (h, w, c))
    return jnp.where(jax.random.bernoulli(k_flip), crop[:, ::-1, :], crop)

  return jax.vmap(one)(jax.random.split(key, n), padded)


@jax.jit
def augment(key: jax.Array, images: jax.Array) -> jax.Array:
  """Training augmentation: random crop (pad 4) + flip, then normalization.

  Args:
    key: a PRNG key.
    images: ``(N, 32, 32, 3)`` uint8 images.

  Returns:
    ``(N, 32, 32, 3)`` float32 normalized images.
  """
  return normalize_images(random_crop_flip(key, images, padding=4))
