"""Checks of single arguments: types, ranges, choices, axes, masks and
named axes. Their messages name the argument, the value received and what
would be valid. The validation of a normalizer's whole call is
:mod:`jaxnorm._core.axes`, built on these.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax import lax

Axes = int | Sequence[int]


def canonicalize_axes(axes: Axes, ndim: int, *, name: str = "axes", owner: str = "jaxnorm") -> tuple[int, ...]:
  """Returns `axes` as a sorted tuple of non-negative ints.

  Raises:
    TypeError: an axis is not an integer.
    ValueError: an axis is out of range for rank `ndim`, or repeated.
  """
  if axes is None:
    raise TypeError(f"{owner}: {name}=None; pass an int or a sequence of ints.")
  items = list(axes) if isinstance(axes, Iterable) else [axes]
  out = []
  for a in items:
    if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
      raise TypeError(f"{owner}: {name}={axes!r} contains {a!r}; axes must be integers.")
    a = int(a)
    if not -ndim <= a < ndim:
      raise ValueError(
        f"{owner}: {name}={axes!r} is out of range for an input of rank {ndim}; valid axes are {-ndim}..{ndim - 1}."
      )
    out.append(a % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"{owner}: {name}={axes!r} names the same axis twice.")
  return tuple(sorted(out))


def single_axis(axis: Axes, ndim: int, *, name: str, owner: str) -> int:
  """``axis`` as one non-negative int; ValueError if it names several."""
  axes = canonicalize_axes(axis, ndim, name=name, owner=owner)
  if len(axes) != 1:
    raise ValueError(f"{owner}: {name}={axis!r} names {len(axes)} axes; pass one axis (an int, e.g. -1).")
  return axes[0]


def check_floating(x: Any, *, name: str = "x", owner: str = "jaxnorm"):
  """Raises TypeError unless `x` has a floating or complex dtype."""
  dtype = jax.numpy.result_type(x)
  if not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
    raise TypeError(
      f"{owner}: {name} has dtype {dtype}; normalization needs a floating "
      f"point input (cast it with x.astype(jnp.float32))."
    )


def check_mask(mask: Any, shape: tuple[int, ...], *, owner: str = "jaxnorm"):
  """Checks that `mask` broadcasts to `shape` without growing it."""
  if mask is None:
    return None
  mask_shape = tuple(np.shape(mask))
  try:
    broadcast = np.broadcast_shapes(mask_shape, shape)
  except ValueError:
    broadcast = None
  if broadcast != tuple(shape):
    raise ValueError(
      f"{owner}: mask of shape {mask_shape} does not broadcast to the input "
      f"shape {tuple(shape)}; give a mask of shape {tuple(shape)} or one "
      f"with size-1 axes where it should broadcast."
    )
  if len(mask_shape) < len(shape):
    mask = jax.numpy.reshape(mask, (1,) * (len(shape) - len(mask_shape)) + mask_shape)
  return mask


def check_axis_name(axis_name: Any, *, owner: str = "jaxnorm"):
  """Raises a clear error if `axis_name` is not bound by vmap/pmap/shard_map."""
  if axis_name is None:
    return
  names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
  for n in names:
    try:
      lax.axis_size(n)
    except NameError as e:
      raise ValueError(
        f"{owner}: axis_name={axis_name!r} is not bound here; call the "
        f"normalizer inside jax.vmap / jax.pmap / jax.shard_map with "
        f"axis_name={n!r} (or a mesh axis of that name), or pass "
        f"axis_name=None for per-device statistics."
      ) from e


def check_positive_int(value: Any, *, name: str, owner: str):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{owner}: {name}={value!r}; expected a positive integer.")


def resolve_groups(
  channels: int,
  num_groups: int | None,
  group_size: int | None,
  *,
  owner: str = "group_norm",
) -> tuple[int, int]:
  """Returns (num_groups, group_size) for `channels`, validating the choice."""
  # Each message starts with flax's sentence for the same mistake (code that
  # matches flax's errors keeps working), then says what to do.
  if (num_groups is None) == (group_size is None):
    raise ValueError(
      f"{owner}: Either `num_groups` or `group_size` should be specified. "
      f"Give exactly one of num_groups and group_size (got "
      f"num_groups={num_groups!r}, group_size={group_size!r}); to use "
      f"group_size, pass num_groups=None."
    )
  if group_size is not None:
    check_positive_int(group_size, name="group_size", owner=owner)
    if channels % group_size:
      raise ValueError(
        f"{owner}: Number of channels ({channels}) is not multiple of the group size ({group_size}). "
        f"group_size={group_size} does not divide {channels} "
        f"channels; choose a divisor of {channels} or set num_groups."
      )
    return channels // group_size, int(group_size)
  check_positive_int(num_groups, name="num_groups", owner=owner)
  if channels % num_groups:
    raise ValueError(
      f"{owner}: Number of groups ({num_groups}) does not divide the number of channels ({channels}). "
      f"num_groups={num_groups} does not divide {channels} "
      f"channels; choose a divisor of {channels} or set group_size."
    )
  return int(num_groups), channels // num_groups


def check_non_negative_int(value: Any, *, name: str, owner: str):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{owner}: {name}={value!r}; expected a non-negative integer.")


def check_at_least(value: Any, minimum: float, *, name: str, owner: str, fix: str):
  """Raises ValueError if a concrete `value` is below `minimum`.

  Traced values (inside ``jit``) cannot be checked and pass through.
  """
  try:
    concrete = float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return
  if not concrete >= minimum:  # also catches NaN
    raise ValueError(f"{owner}: {name}={value!r} is less than {minimum}; {fix}.")


def check_choice(value: Any, choices: Sequence[Any], *, name: str, owner: str):
  """Raises ValueError unless `value` is one of `choices`."""
  if value not in choices:
    valid = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{owner}: {name}={value!r} is not a valid choice; choose one of {valid}.")


def check_keywords(given: Iterable[str], accepted: Iterable[str], *, owner: str):
  """Raises TypeError naming the keywords of `given` not in `accepted`."""
  accepted = sorted(accepted)
  unknown = sorted(set(given) - set(accepted))
  if unknown:
    raise TypeError(f"{owner}: unknown keyword arguments {unknown}; the accepted ones are {accepted}.")


def check_virtual_batch(batch: int, virtual_batch_size: int | None, *, owner: str) -> int:
  """Returns the number of virtual batches of `virtual_batch_size` in `batch`."""
  if virtual_batch_size is None:
    return 1
  check_positive_int(virtual_batch_size, name="virtual_batch_size", owner=owner)
  if batch % virtual_batch_size:
    raise ValueError(
      f"{owner}: virtual_batch_size={virtual_batch_size} does not divide the "
      f"batch of {batch} examples (axis 0); choose a divisor of {batch}, "
      f"pad the batch, or set virtual_batch_size=None."
    )
  return batch // virtual_batch_size


def check_reduction(owner: str, x: Any, axes: Axes, mask: Any, axis_name: Any) -> tuple[tuple[int, ...], Any]:
  """:func:`jaxnorm.moments`'s arguments: canonical ``axes`` of a floating
  ``x``, the mask at ``x``'s rank, and a bound ``axis_name``."""
  check_floating(x, owner=owner)
  reduced = canonicalize_axes(axes, jax.numpy.ndim(x), owner=owner)
  mask = check_mask(mask, jax.numpy.shape(x), owner=owner)
  check_axis_name(axis_name, owner=owner)
  return reduced, mask
