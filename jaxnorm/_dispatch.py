"""Which implementation computes the standardizing normalizers.

Three implementations compute the same function:

* ``"reference"``: the statistics engine and :func:`jaxnorm.normalize`
  composed with ``jax.numpy``; JAX differentiates it. It handles every
  option (masks, ``axis_name``, ``use_fast_variance``, learned ε, complex
  inputs) and every transformation, forward-mode autodiff included.
* ``"fused"``: :mod:`jaxnorm._fused`, a ``jax.custom_vjp`` whose reductions
  suit the layout and whose backward pass is one elementwise pass plus small
  reductions, keeping only the input and per-group statistics for it.
* ``"pallas"``: :mod:`jaxnorm._pallas`, Pallas GPU kernels for batch and
  group normalization.

``"auto"`` (the default) uses the Pallas kernels on a GPU where they apply,
the fused path elsewhere, and the reference whenever an option needs it. The
fused and Pallas paths define reverse-mode derivatives only (``grad``,
``vjp``, any order); for forward-mode autodiff (``jax.jvp``, ``jacfwd``,
forward-over-reverse Hessian-vector products) select ``"reference"``.

The choice is read when a function is traced, so it applies to everything
traced inside::

    with jaxnorm.implementation("reference"):
      hvp = jax.jvp(jax.grad(loss), (params,), (v,))

The environment variable ``JAXNORM_IMPLEMENTATION`` sets the initial value.
"""

from __future__ import annotations

import contextlib
import os
import threading

from jaxnorm import _axes

IMPLEMENTATIONS = ("auto", "fused", "reference", "pallas")

_state = threading.local()


def _default() -> str:
  name = os.environ.get("JAXNORM_IMPLEMENTATION", "auto")
  _axes.check_choice(
      name, IMPLEMENTATIONS, name="JAXNORM_IMPLEMENTATION", owner="jaxnorm"
  )
  return name


_GLOBAL = [_default()]


def get_implementation() -> str:
  """The implementation in effect (see :func:`implementation`)."""
  return getattr(_state, "override", None) or _GLOBAL[0]


def set_implementation(name: str) -> None:
  """Sets the implementation globally: one of :data:`IMPLEMENTATIONS`."""
  _axes.check_choice(name, IMPLEMENTATIONS, name="name", owner="set_implementation")
  _GLOBAL[0] = name


@contextlib.contextmanager
def implementation(name: str):
  """Context manager selecting ``"auto"``, ``"fused"``, ``"reference"`` or
  ``"pallas"`` for the functions traced inside (this thread only)."""
  _axes.check_choice(name, IMPLEMENTATIONS, name="name", owner="implementation")
  previous = getattr(_state, "override", None)
  _state.override = name
  try:
    yield
  finally:
    _state.override = previous
