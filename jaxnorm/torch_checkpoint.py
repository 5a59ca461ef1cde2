"""PyTorch (and timm) checkpoints: a layer's tensors as jaxnorm variables.

A torch ``state_dict`` names a layer's tensors ``<prefix>.weight``,
``<prefix>.running_mean``, …; jaxnorm (as flax) names them ``scale``,
``mean``, … in the collections ``params`` and ``batch_stats``, keeps
per-channel vectors flat, and stores kernels with the output channels
last. :func:`from_torch` translates one layer; a model loads layer by
layer, each prefix into the matching subtree of its variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# For each kind of layer: collection -> {jaxnorm name: torch name}. Torch
# names a layer may lack (bias=False, affine=False) are optional; the torch
# names listed in IGNORED are read and dropped.
LAYOUTS: dict[str, dict[str, dict[str, str]]] = {
  "batch_norm": {
    "params": {"scale": "weight", "bias": "bias"},
    "batch_stats": {"mean": "running_mean", "var": "running_var"},
  },
  "group_norm": {"params": {"scale": "weight", "bias": "bias"}},
  "layer_norm": {"params": {"scale": "weight", "bias": "bias"}},
  "instance_norm": {"params": {"scale": "weight", "bias": "bias"}},
  "rms_norm": {"params": {"scale": "weight"}},
  "filter_response_norm": {"params": {"scale": "weight", "bias": "bias", "tau": "tau"}},
  "evonorm_s0": {"params": {"scale": "weight", "bias": "bias", "v": "v"}},
  "evonorm_b0": {"params": {"scale": "weight", "bias": "bias", "v": "v"}, "batch_stats": {"var": "running_var"}},
  "conv": {"params": {"kernel": "weight", "bias": "bias"}},
  "standardized_conv": {"params": {"kernel": "weight", "bias": "bias", "gain": "gain"}},
  "linear": {"params": {"kernel": "weight", "bias": "bias"}},
}
KINDS: tuple[str, ...] = tuple(LAYOUTS)
IGNORED = ("num_batches_tracked",)  # torch's step counter (momentum=None averages over it)
_REQUIRED = {"kernel", "mean", "var", "v", "tau", "gain"}


def _array(value) -> np.ndarray:
  """A torch tensor (on any device, with or without grad) or an array, as a
  NumPy copy: a state dict's tensors are the module's live buffers, which
  go on changing when the module trains."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
      value = value.float()
    value = value.numpy()
  return np.array(value, copy=True)


def _to_jaxnorm(name: str, value: np.ndarray, key: str) -> np.ndarray:
  """Torch's layout to jaxnorm's: kernels ``(O, I, *K)`` → ``(*K, I, O)``
  (a linear ``(O, I)`` → ``(I, O)``); per-channel tensors such as timm's
  ``(1, C, 1, 1)`` → ``(C,)``."""
  if name == "kernel":
    if value.ndim < 2:
      raise ValueError(f"from_torch: {key!r} has shape {value.shape}; a kernel has 2 or more axes (out, in, ...).")
    return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
  if value.ndim > 1:
    channels = [n for n in value.shape if n != 1]
    if len(channels) > 1:
      raise ValueError(f"from_torch: {key!r} has shape {value.shape}; expected one value per channel.")
    return value.reshape(-1)
  return value


def from_torch(
  state_dict: Mapping[str, Any],
  prefix: str,
  kind: str,
  *,
  like: Mapping[str, Any] | None = None,
  cumulative: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
  """The variables of one jaxnorm layer from a PyTorch ``state_dict``.

  Reads the tensors named ``<prefix>.<torch name>`` and returns them under
  jaxnorm's collections and names, in jaxnorm's layout:

  ============================  ====================================================
  ``kind``                      torch tensors → jaxnorm variables
  ============================  ====================================================
  ``batch_norm``                weight, bias → params scale, bias; running_mean,
                                running_var → batch_stats mean, var
                                (``num_batches_tracked`` dropped)
  ``group_norm``,               weight, bias → scale, bias
  ``layer_norm``,
  ``instance_norm``
  ``rms_norm``                  weight → scale
  ``filter_response_norm``      weight, bias, tau → scale, bias, tau (timm's
                                ``FilterResponseNormTlu2d``)
  ``evonorm_s0``                weight, bias, v → scale, bias, v (timm's
                                ``EvoNorm2dS0``)
  ``evonorm_b0``                … and running_var → batch_stats var
  ``conv``                      weight ``(O, I, *K)`` → kernel ``(*K, I, O)``; bias
  ``standardized_conv``         … and gain → gain (timm's ``ScaledStdConv2d``:
                                use ``epsilon = N·eps`` and multiply the gain by
                                its ``gamma``, kept outside the state dict)
  ``linear``                    weight ``(O, I)`` → kernel ``(I, O)``; bias
  ============================  ====================================================

  Per-channel tensors of shape ``(1, C, 1, 1)`` (timm's) become ``(C,)``.
  Every tensor under the prefix must be used (a key left over, say a
  ``weight`` of a layer read as the wrong kind, is an error), and a bias or
  scale may be absent (``bias=False``, ``affine=False``). The running
  statistics load as they are. To go on training as PyTorch does, build
  the BatchNorm with ``momentum=1 − torch_momentum`` (PyTorch's momentum is
  the weight of the new batch, flax's that of the old average) and
  ``unbiased_running_var=True``; for PyTorch's ``momentum=None`` (an
  average over all batches) use ``running_stats="cumulative"`` and load
  with ``cumulative=True``, which reads ``num_batches_tracked`` as
  ``batch_stats/count``.

  Args:
    state_dict: ``module.state_dict()``: torch tensors or arrays.
    prefix: the layer's name in it (``"layer1.0.bn1"``); ``""`` for a
      state dict of the layer alone.
    kind: one of :data:`KINDS`.
    like: optional: the layer's variables as jaxnorm creates them (``{"params":
      …, "batch_stats": …}``); each loaded array must have its shape, and
      every variable there must be loaded.
    cumulative: ``batch_norm`` only: also load ``num_batches_tracked`` as
      ``batch_stats/count`` (for ``running_stats="cumulative"``).

  Returns:
    ``{"params": {...}, "batch_stats": {...}}`` (the collections the kind
    has), NumPy arrays in the checkpoint's dtype.

  Raises:
    ValueError: an unknown kind, a missing or left-over key, or a shape
      that does not match ``like``; the message names the key and both
      shapes.

  Example:
    >>> import numpy as np
    >>> state = {"bn.weight": np.ones(3), "bn.bias": np.zeros(3), "bn.running_mean": np.zeros(3),
    ...          "bn.running_var": np.ones(3), "bn.num_batches_tracked": np.array(10)}
    >>> sorted((c, sorted(v)) for c, v in from_torch(state, "bn", "batch_norm").items())
    [('batch_stats', ['mean', 'var']), ('params', ['bias', 'scale'])]
  """
  if kind not in LAYOUTS:
    raise ValueError(f"from_torch: kind={kind!r}; choose one of {', '.join(repr(k) for k in KINDS)}.")
  if not isinstance(prefix, str):
    raise TypeError(f"from_torch: prefix={prefix!r}; pass the layer's name in the state dict, e.g. 'layer1.0.bn1'.")
  dot = f"{prefix}." if prefix else ""
  present = {key[len(dot) :]: key for key in state_dict if key.startswith(dot) and "." not in key[len(dot) :]}
  layout = LAYOUTS[kind]
  out: dict[str, dict[str, np.ndarray]] = {}
  used = set()
  missing = [t for names in layout.values() for n, t in names.items() if n in _REQUIRED and t not in present]
  if missing:
    raise ValueError(
      f"from_torch: the state dict has no {dot + missing[0]!r} for a {kind} layer (keys under "
      f"{prefix!r}: {sorted(present) or 'none'})."
    )
  for collection, names in layout.items():
    for name, torch_name in names.items():
      if torch_name not in present:
        continue
      key = present[torch_name]
      out.setdefault(collection, {})[name] = _to_jaxnorm(name, _array(state_dict[key]), key)
      used.add(torch_name)
  if cumulative:
    if kind != "batch_norm" or "num_batches_tracked" not in present:
      raise ValueError(
        f"from_torch: cumulative=True reads {dot + 'num_batches_tracked'!r} of a batch_norm layer; "
        f"{'the state dict has none' if kind == 'batch_norm' else f'kind={kind!r}'}."
      )
    out["batch_stats"]["count"] = _array(state_dict[present["num_batches_tracked"]]).astype(np.int32)
  left = sorted(set(present) - used - set(IGNORED))
  if left:
    raise ValueError(
      f"from_torch: {', '.join(repr(dot + k) for k in left)} not used by a {kind} layer "
      f"(it reads {sorted(n for names in layout.values() for n in names.values())}); is the layer of another kind?"
    )
  if like is not None:
    _check_like(out, like, kind, dot)
  return out


def _check_like(out, like, kind: str, dot: str) -> None:
  """Every variable of ``like`` loaded, with its shape."""
  torch_names = {name: torch_name for names in LAYOUTS[kind].values() for name, torch_name in names.items()}
  for collection, variables in like.items():
    for name, expected in variables.items():
      key = dot + torch_names.get(name, name)
      if name not in out.get(collection, {}):
        raise ValueError(f"from_torch: {collection}/{name} of the layer has no tensor: {key!r} is missing.")
      got = out[collection][name].shape
      if tuple(got) != tuple(np.shape(expected)):
        raise ValueError(
          f"from_torch: {key!r} gives {collection}/{name} of shape {got}; the layer has {tuple(np.shape(expected))}."
        )
