"""The engine every normalizer is built on.

* :mod:`~jaxnorm._core.axes`: argument validation, one call per normalizer;
* :mod:`~jaxnorm._core.reduction_axes`: which axes each normalizer reduces;
* :mod:`~jaxnorm._core.moments`: the statistics (count, mean, variance);
* :mod:`~jaxnorm._core.normalize`: applying them;
* :mod:`~jaxnorm._core.dispatch`: the one place that chooses between the
  reference (moments then normalize), the fused XLA path
  (:mod:`~jaxnorm._core.fused`) and the Pallas kernels
  (:mod:`~jaxnorm._core.pallas`);
* :mod:`~jaxnorm._core.running_stats`: running statistics and their updates.
"""
