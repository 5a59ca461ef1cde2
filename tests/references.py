"""Float64 NumPy references that the tests compare against."""

import numpy as np


def f64(a):
  return np.asarray(a, dtype=np.float64)


def standardize(x, axes, eps, mask=None, centre=True):
  """(x - mean) / sqrt(var + eps) over `axes`, only masked-in entries counted."""
  x = f64(x)
  axes = tuple(axes)
  if mask is None:
    w = np.ones_like(x)
  else:
    w = np.broadcast_to(np.asarray(mask, np.float64), x.shape)
  n = w.sum(axes, keepdims=True)
  safe = np.maximum(n, 1)
  mean = (w * x).sum(axes, keepdims=True) / safe if centre else 0.0 * n
  var = (w * (x - mean) ** 2).sum(axes, keepdims=True) / safe
  return (x - mean) / np.sqrt(var + eps), mean, var


def group_norm(x, groups, eps, channel_axis=-1):
  """Group norm by the paper's formula: move C last, split, standardize."""
  x = np.moveaxis(f64(x), channel_axis, -1)
  n, c = x.shape[0], x.shape[-1]
  g = x.reshape(n, -1, groups, c // groups)
  y, _, _ = standardize(g, axes=(1, 3), eps=eps)
  return np.moveaxis(y.reshape(x.shape), -1, channel_axis)
