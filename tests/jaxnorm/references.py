"""Float64 NumPy references that the tests compare against."""

import numpy as np


def f64(a):
  return np.asarray(a, dtype=np.float64)


def standardize(x, axes, eps, mask=None, centre=True):
  """(x - mean) / sqrt(var + eps) over `axes`, only masked-in entries counted."""
  x = f64(x)
  axes = tuple(axes)
  w = np.ones_like(x) if mask is None else np.broadcast_to(np.asarray(mask, np.float64), x.shape)
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


def channel_shape(ndim, channel_axis, channels):
  shape = [1] * ndim
  shape[channel_axis] = channels
  return tuple(shape)


def ghost_batch_norm(x, virtual_batch_size, eps, channel_axis=-1):
  """Each consecutive group of examples standardized with its own statistics.

  Returns (y, mean of the group means, mean of the group variances).
  """
  x = f64(x)
  c = channel_axis % x.ndim
  groups = x.shape[0] // virtual_batch_size
  ys, means, variances = [], [], []
  for g in range(groups):
    part = x[g * virtual_batch_size : (g + 1) * virtual_batch_size]
    axes = tuple(a for a in range(x.ndim) if a != c)
    y, mean, var = standardize(part, axes, eps)
    ys.append(y)
    means.append(mean.reshape(-1))
    variances.append(var.reshape(-1))
  return np.concatenate(ys), np.mean(means, 0), np.mean(variances, 0)


def batch_renorm(x, gamma, beta, run_mean, run_var, r_max, d_max, eps):
  """Ioffe (2017), Algorithm 1, for (N, ..., C) inputs; returns (y, r, d)."""
  x = f64(x)
  axes = tuple(range(x.ndim - 1))
  mu_b = x.mean(axes)
  sigma_b = np.sqrt(x.var(axes) + eps)
  sigma = np.sqrt(f64(run_var) + eps)
  r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
  d = np.clip((mu_b - f64(run_mean)) / sigma, -d_max, d_max)
  x_hat = (x - mu_b) / sigma_b * r + d
  return f64(gamma) * x_hat + f64(beta), r, d


def standardize_weight(w, eps, scaled=False, gain=None, activation_gain=1.0):
  """Per output channel (last axis) over all other axes."""
  w = f64(w)
  flat = w.reshape(-1, w.shape[-1])
  n = flat.shape[0]
  mean, var = flat.mean(0), flat.var(0)
  denom = np.sqrt((n if scaled else 1) * var + eps)
  g = np.ones(w.shape[-1]) if gain is None else f64(gain)
  return (w - mean) / denom * g * activation_gain


def filter_response_norm(x, gamma, beta, tau, eps, channel_axis=-1):
  """Singh & Krishnan (2020): nu2 = mean of x^2 over the spatial axes."""
  x = f64(x)
  c = channel_axis % x.ndim
  spatial = tuple(a for a in range(1, x.ndim) if a != c)
  nu2 = (x**2).mean(spatial, keepdims=True)
  shape = channel_shape(x.ndim, c, x.shape[c])
  y = f64(gamma).reshape(shape) * x / np.sqrt(nu2 + eps) + f64(beta).reshape(shape)
  return y if tau is None else np.maximum(y, f64(tau).reshape(shape))


def evonorm_b0(x, gamma, beta, v, eps, batch_var=None):
  """Liu et al. (2020), NHWC; batch_var=None means training (batch variance)."""
  x = f64(x)
  if batch_var is None:
    batch_var = x.var((0, 1, 2))
  inst_var = x.var((1, 2), keepdims=True)
  den = np.maximum(np.sqrt(f64(batch_var) + eps), f64(v) * x + np.sqrt(inst_var + eps))
  return x / den * f64(gamma) + f64(beta)


def evonorm_s0(x, gamma, beta, v, groups, eps):
  """Liu et al. (2020), NHWC: group std over (H, W, channels of the group)."""
  x = f64(x)
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  std = np.sqrt(g.var((1, 2, 4), keepdims=True) + eps)
  std = np.broadcast_to(std, g.shape).reshape(x.shape)
  sig = 1 / (1 + np.exp(-f64(v) * x))
  return x * sig / std * f64(gamma) + f64(beta)
