"""Pallas kernels (placeholder while the fused path is brought up)."""


def applies(name, x, reduction_axes, feature_axes, use_mean):
  return False


def standardize(*args, **kwargs):
  raise NotImplementedError
