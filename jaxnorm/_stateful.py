"""One home for the normalizers that keep running state, for linen and NNX.

BatchNorm, BatchRenorm and EvoNorm-B0 differ in what they compute and in
the state they keep; every module of them then does the same thing: resolve
training or evaluation mode, check the input, read its running state, call
the pure function, and, in training, store the new state and report the
batch moments. A :class:`StatefulNorm` declares a normalizer once: its
parameters, its running state and its computation. :func:`linen_apply`
(inside ``@nn.compact``) and :func:`nnx_apply` run that sequence for a
``flax.linen`` and a ``flax.nnx`` module, which read their settings from
the same attribute names.

Adding a normalizer with running state means writing its pure function
(state in, new state out) in ``functional/<family>.py``, declaring it there,
beside the function, as a :class:`StatefulNorm`, and writing its two
modules, in ``linen/<family>.py`` and ``nnx/<family>.py``: their fields or
constructor arguments, and a ``__call__`` that returns
``linen_apply(SPEC, self, ...)`` or ``nnx_apply(SPEC, self, ...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnorm._core import axes as _axes
from jaxnorm._core.modulation import fold_into
from jaxnorm._core.running_stats import BATCH_MOMENTS
from jaxnorm._core.running_stats import stored_value

Array = jax.Array


class RunningStat(NamedTuple):
  """One running-state variable (collection ``batch_stats`` in linen,
  ``nnx.BatchStat`` in NNX).

  ``per_feature``: a statistic of the feature shape, kept in float32 (or
  ``param_dtype`` without ``force_float32_reductions``), initialized by
  ``init(shape, dtype)``; otherwise a scalar int32 counter starting at 0.
  """

  name: str
  init: Callable[..., Array] = jnp.zeros
  per_feature: bool = True


def _never(module) -> bool:
  return False


@dataclasses.dataclass(frozen=True)
class StatefulNorm:
  """A normalizer with running state, declared once for linen and NNX.

  Attributes:
    owner: the name in error messages (the modules' class name).
    params: ``module -> ((name, initializer attribute), ...)``: the learned
      parameters this configuration has, of the feature shape.
    state: ``module -> (RunningStat, ...)``: the running state it keeps.
    feature_axes: ``(module, x) -> axes`` the per-feature variables vary
      along, canonical (linen creates them at the first call, of those
      sizes; NNX modules from ``num_features``).
    compute: ``(module, x, params, state, *, use_running_average, mask,
      axis_name, dtype) -> (y, new state, per-batch moments or None)``;
      ``params`` and ``state`` are dicts of arrays (a missing parameter is
      None; ``scale`` and ``bias`` carry a call's modulation folded in), the
      new state a dict with every name of ``state(module)``, ``dtype`` the
      output dtype (the module's ``dtype`` unless a modulation sets it).
    always_running: ``module -> bool``: normalize with the running state in
      training too and never update it (``running_stats="frozen"``).
    validate: ``module -> None``: checks the settings, before anything else
      (raises ``ValueError`` naming the setting).
  """

  owner: str
  params: Callable[[Any], tuple[tuple[str, str], ...]]
  state: Callable[[Any], tuple[RunningStat, ...]]
  feature_axes: Callable[[Any, Array], tuple[int, ...]]
  compute: Callable[..., tuple[Array, dict, Any]]
  always_running: Callable[[Any], bool] = _never
  validate: Callable[[Any], None] = lambda module: None


def state_dtype(module, stat: RunningStat):
  if not stat.per_feature:
    return jnp.int32
  return jnp.float32 if module.force_float32_reductions else module.param_dtype


def initial_state(module, stat: RunningStat, features: tuple[int, ...]) -> Array:
  if not stat.per_feature:
    return jnp.zeros((), jnp.int32)
  return stat.init(features, state_dtype(module, stat))


def scale_and_bias(module) -> tuple[tuple[str, str], ...]:
  """The ``scale``/``bias`` parameters a module's ``use_scale``/``use_bias`` ask for."""
  return (("scale", "scale_init"),) * bool(module.use_scale) + (("bias", "bias_init"),) * bool(module.use_bias)


def report_batch_moments(module, per_batch) -> None:
  """Sows the moments ``(num_batches, *features)`` of each batch a linen
  layer used into :data:`BATCH_MOMENTS`, for :func:`jaxnorm.precise_batch_stats`."""
  if per_batch is None or module.is_initializing():
    return
  module.sow(BATCH_MOMENTS, "mean", per_batch.mean)
  module.sow(BATCH_MOMENTS, "var", per_batch.var)


def _modulated(spec: StatefulNorm, module, x, params: dict, scale, shift) -> tuple[dict, Any]:
  """The parameters with a call's modulation folded into ``scale`` and
  ``bias`` (:func:`jaxnorm._core.modulation.fold`), and the output dtype."""
  gamma, beta, dtype = fold_into(
    module,
    x,
    params.get("scale"),
    params.get("bias"),
    feature_axes=spec.feature_axes(module, x),
    modulation_scale=scale,
    modulation_shift=shift,
    others=tuple(v for k, v in params.items() if k not in ("scale", "bias")),
  )
  return {**params, "scale": gamma, "bias": beta}, dtype


def linen_apply(spec: StatefulNorm, module, x, use_running_average: bool | None, mask, scale=None, shift=None) -> Array:
  """The sequence for a ``flax.linen`` module, inside its ``@nn.compact``
  ``__call__``: creates the variables at the first call (state before
  parameters, as flax orders them), never updates state during ``init``
  (where ``axis_name`` is ignored, as in flax), and reports the batch
  moments for :func:`jaxnorm.precise_batch_stats`. ``scale`` and ``shift``
  are the call's modulation."""
  import flax.linen as nn

  spec.validate(module)
  if spec.always_running(module):
    use_running_average = True
  else:
    use_running_average = nn.merge_param("use_running_average", module.use_running_average, use_running_average)
  _axes.check_floating(x, owner=spec.owner)
  features = tuple(jnp.shape(x)[a] for a in spec.feature_axes(module, x))
  variables = {
    stat.name: module.variable("batch_stats", stat.name, initial_state, module, stat, features)
    for stat in spec.state(module)
  }
  params = {
    name: module.param(name, getattr(module, init), features, module.param_dtype) for name, init in spec.params(module)
  }
  initializing = module.is_initializing()
  params, dtype = _modulated(spec, module, x, _with_defaults(params), scale, shift)
  y, new, per_batch = spec.compute(
    module,
    x,
    params,
    {k: v.value for k, v in variables.items()},
    use_running_average=use_running_average,
    mask=mask,
    axis_name=None if initializing else module.axis_name,
    dtype=dtype,
  )
  if not use_running_average and not initializing:
    for name, variable in variables.items():
      variable.value = stored_value(new[name], variable.value.dtype)
    report_batch_moments(module, per_batch)
  return y


def nnx_apply(spec: StatefulNorm, module, x, use_running_average: bool | None, mask, scale=None, shift=None) -> Array:
  """The sequence for a ``flax.nnx`` module whose parameters and
  ``nnx.BatchStat`` variables are attributes of the declared names; the
  mode comes from the call, else from the module (``model.train()``,
  ``model.eval()``, ``nnx.view``). A module with a ``promote_dtype``
  attribute (flax.nnx's BatchNorm has one) promotes the input, parameters
  and statistics with it, as flax does. ``scale`` and ``shift`` are the
  call's modulation."""
  spec.validate(module)
  if spec.always_running(module):
    use_running_average = True
  else:
    if use_running_average is None:
      use_running_average = module.use_running_average
    if use_running_average is None:
      raise ValueError(
        f"{spec.owner}: use_running_average is None both in the constructor and in the call; pass "
        "use_running_average=True/False to either, or use model.train() / model.eval()."
      )
  _axes.check_floating(x, owner=spec.owner)
  stats = spec.state(module)
  params = {name: getattr(module, name)[...] for name, _ in spec.params(module)}
  state = {stat.name: getattr(module, stat.name)[...] for stat in stats}
  promote = getattr(module, "promote_dtype", None)
  if promote is not None:
    promoted = [stat.name for stat in stats if stat.per_feature]
    values = promote((x, *(state[k] for k in promoted), *params.values()), dtype=module.dtype)
    x = values[0]
    state.update(zip(promoted, values[1 : 1 + len(promoted)]))
    params = dict(zip(params, values[1 + len(promoted) :]))
  params, dtype = _modulated(spec, module, x, _with_defaults(params), scale, shift)
  y, new, _ = spec.compute(
    module,
    x,
    params,
    state,
    use_running_average=use_running_average,
    mask=mask,
    axis_name=module.axis_name,
    dtype=dtype,
  )
  if not use_running_average:
    for stat in stats:
      variable = getattr(module, stat.name)
      replace_value(variable, jax.lax.stop_gradient(stored_value(new[stat.name], variable[...].dtype)))
  return y


def replace_value(variable, value) -> None:
  """Replaces an ``nnx.Variable``'s value, whose dtype may change (a complex
  input makes the running mean complex, as in flax.nnx's BatchNorm):
  ``set_value`` where flax has it, the ``value`` setter before (flax 0.12.0;
  ``variable[...] = value`` would cast to the old dtype)."""
  if hasattr(type(variable), "set_value"):
    variable.set_value(value)
  else:
    variable.value = value


def _with_defaults(present: dict) -> dict:
  """The parameters ``compute`` may read: scale and bias always (None when
  the configuration has none), plus those declared."""
  return {"scale": None, "bias": None, **present}
