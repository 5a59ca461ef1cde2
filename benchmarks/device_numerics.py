"""The device check's numerics: jaxnorm's fast paths against float64 NumPy.

Group, batch, layer, RMS and instance norm in NHWC, NCHW and 2-D layouts
run under ``jaxnorm.implementation("fused")`` and ``("pallas")``, compiled
on the default device in float32. Each case compares, array by array, the
output, the statistics (mean and variance through the dispatch point
``moments_and_normalize``) and the gradients (of ``Σ y·c`` with respect to
x, scale and bias, and of ``Σ c₁·μ + c₂·σ²`` with respect to x, which
exercises the statistics' cotangents) with :func:`reference_result`: the
textbook formulas and their analytic gradients in float64 NumPy on the
host, independent of jaxnorm and JAX. Error = max |device − reference| /
max |reference| (absolute where the reference is 0); a case passes when
every error is within its tolerance and the forward program took the
expected path (a ``pallas_call`` where the kernels cover the input, the
fused path otherwise).
"""

from __future__ import annotations

import dataclasses
import math
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from jaxnorm._core import dispatch as _dispatch  # the dispatch point, for the statistics

EPSILON = {"gn": 1e-6, "bn": 1e-5, "ln": 1e-6, "rms": 1e-6, "in": 1e-6}
TOLERANCE = 1e-4  # max |device − reference| / max |reference|, float32
OFFSET_TOLERANCE = 1e-2  # x = 1e4 + N(0, 1): x − μ loses ~1e-3 in float32


def error_text(e: BaseException) -> str:
  """An exception in one line of at most ~600 characters, for the report."""
  return f"{type(e).__name__}: {str(e).strip()[:600]}"


@dataclasses.dataclass(frozen=True)
class NumericsCase:
  """One normalizer call, checked against a float64 reference.

  ``reduction_axes`` only for layer/RMS norm (default: the last axis);
  ``pallas`` says whether the Pallas kernels cover it (channels last, a
  power-of-two channel count, a reduced axis that is not a channel axis).
  """

  name: str
  norm: str  # 'gn', 'bn', 'ln', 'rms', 'in'
  layout: str
  shape: tuple[int, ...]
  smoke_shape: tuple[int, ...]
  channel_axis: int
  pallas: bool
  groups: int | None = None
  reduction_axes: tuple[int, ...] | None = None
  offset: float = 3.0
  spread: float = 2.0
  tolerance: float = TOLERANCE
  in_smoke: bool = False  # part of the --smoke subset (one case per normalizer)


NUMERICS_CASES = (
  NumericsCase("gn_nhwc", "gn", "NHWC", (8, 32, 32, 64), (2, 4, 4, 16), 3, True, groups=8, in_smoke=True),
  NumericsCase("gn_nchw", "gn", "NCHW", (8, 64, 32, 32), (2, 16, 4, 4), 1, False, groups=8),
  NumericsCase("gn_2d", "gn", "2-D", (256, 64), (4, 16), 1, False, groups=8),
  NumericsCase("bn_nhwc", "bn", "NHWC", (32, 16, 16, 32), (4, 4, 4, 8), 3, True),
  NumericsCase("bn_nchw", "bn", "NCHW", (32, 32, 16, 16), (4, 8, 4, 4), 1, False, in_smoke=True),
  NumericsCase("bn_2d", "bn", "2-D", (1024, 64), (16, 8), 1, True),
  NumericsCase("ln_nhwc", "ln", "NHWC", (8, 16, 16, 64), (2, 4, 4, 8), 3, True, reduction_axes=(1, 2, 3)),
  NumericsCase("ln_nchw", "ln", "NCHW", (8, 64, 16, 16), (2, 8, 4, 4), 1, False, reduction_axes=(1, 2, 3)),
  NumericsCase("ln_2d", "ln", "2-D", (256, 1024), (4, 32), 1, False, in_smoke=True),
  NumericsCase(
    "rms_nhwc", "rms", "NHWC", (8, 16, 16, 64), (2, 4, 4, 8), 3, True, reduction_axes=(1, 2, 3), in_smoke=True
  ),
  NumericsCase("rms_2d", "rms", "2-D", (256, 1024), (4, 32), 1, False),
  NumericsCase("in_nhwc", "in", "NHWC", (8, 16, 16, 64), (2, 4, 4, 8), 3, True, in_smoke=True),
  NumericsCase("in_nchw", "in", "NCHW", (8, 64, 16, 16), (2, 8, 4, 4), 1, False),
  NumericsCase(
    "gn_nhwc_offset_1e4",
    "gn",
    "NHWC",
    (8, 32, 32, 64),
    (2, 4, 4, 16),
    3,
    True,
    groups=8,
    offset=1e4,
    spread=1.0,
    tolerance=OFFSET_TOLERANCE,
  ),
)


def statistics_layout(case: NumericsCase, shape):
  """``(view shape, reduction axes, parameter axes)`` of the statistics.

  Written from the definitions, independently of jaxnorm: group norm splits
  the channel axis in place into ``(G, C/G)`` and reduces all but the batch
  and group axes; batch norm reduces all but the channels; instance norm
  the spatial axes; layer / RMS norm ``reduction_axes``.
  """
  nd, c = len(shape), case.channel_axis
  if case.norm == "gn":
    view = shape[:c] + (case.groups, shape[c] // case.groups) + shape[c + 1 :]
    return view, tuple(a for a in range(1, nd + 1) if a != c), (c, c + 1)
  if case.norm == "bn":
    return shape, tuple(a for a in range(nd) if a != c), (c,)
  if case.norm == "in":
    return shape, tuple(a for a in range(1, nd) if a != c), (c,)
  return shape, case.reduction_axes or (nd - 1,), (c,)


def public_function(case: NumericsCase, shape) -> Callable:
  """``f(x, scale, bias) -> y`` through jaxnorm's public functions."""
  c, eps = case.channel_axis, EPSILON[case.norm]
  _, reduction, _ = statistics_layout(case, shape)
  if case.norm == "gn":
    return lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=case.groups, channel_axis=c, epsilon=eps)
  if case.norm == "bn":
    return lambda x, s, b: jaxnorm.batch_norm(x, s, b, axis=c, epsilon=eps)[0]
  if case.norm == "ln":
    return lambda x, s, b: jaxnorm.layer_norm(x, s, b, reduction_axes=reduction, feature_axes=c, epsilon=eps)
  if case.norm == "rms":
    return lambda x, s, b: jaxnorm.rms_norm(x, s, reduction_axes=reduction, feature_axes=c, epsilon=eps)
  return lambda x, s, b: jaxnorm.instance_norm(x, s, b, feature_axes=c, epsilon=eps)


def _param_view(p, view, params):
  return p.reshape(tuple(n if a in params else 1 for a, n in enumerate(view)))


def statistics_function(case: NumericsCase, shape) -> Callable:
  """``f(x, scale, bias) -> (mean, var)`` through jaxnorm's dispatch point."""
  view, reduction, params = statistics_layout(case, shape)

  def f(x, s, b):
    _, moments = _dispatch.standardize(
      x.reshape(view),
      _param_view(s, view, params),
      None if case.norm == "rms" else _param_view(b, view, params),
      reduction_axes=reduction,
      feature_axes=params,
      epsilon=EPSILON[case.norm],
      mask=None,
      axis_name=None,
      axis_index_groups=None,
      use_mean=case.norm != "rms",
      use_fast_variance=False,
      dtype=None,
      force_float32_reductions=True,
    )
    return moments.mean, moments.var

  return f


def check_program(output_fn: Callable, stats_fn: Callable, implementation: str) -> Callable:
  """Everything a case compares, in one function of the inputs.

  The implementation is selected inside, so tracing in any thread sees it.
  """

  def program(x, s, b, cot, cot_mean, cot_var):
    with jaxnorm.implementation(implementation):
      y, pullback = jax.vjp(output_fn, x, s, b)
      dx, ds, db = pullback(cot)
      (mean, var), stats_pullback = jax.vjp(stats_fn, x, s, b)
      (dx_stats, _, _) = stats_pullback((cot_mean, cot_var))
    return {"y": y, "dx": dx, "dscale": ds, "dbias": db, "mean": mean, "var": var, "dx_of_stats": dx_stats}

  return program


def reference_result(case: NumericsCase, shape, inputs) -> dict:
  """What :func:`check_program` computes, in float64 NumPy on the host.

  With ``x̂ = (x − μ)·r``, ``r = 1/√(σ² + ε)``, ``g = γ·∂y`` and means over
  the reduction axes R (n elements): ``y = γ·x̂ + β``,
  ``∂x = r·(g − mean(g) − x̂·mean(g·x̂))`` (RMS: ``μ = 0``, no ``mean(g)``),
  ``∂γ = Σ ∂y·x̂`` and ``∂β = Σ ∂y`` over the non-parameter axes; for the
  loss ``Σ c₁·μ + c₂·σ²`` on the statistics, ``∂x = c₁/n + 2·c₂·(x − μ)/n``.
  """
  x, scale, bias, cot, cot_mean, cot_var = (np.asarray(a, np.float64) for a in inputs)
  view, reduction, params = statistics_layout(case, shape)
  param_shape = tuple(n if a in params else 1 for a, n in enumerate(view))
  others = tuple(a for a in range(len(view)) if a not in params)
  centred = case.norm != "rms"
  n = math.prod(view[a] for a in reduction)
  mean_r = lambda a: a.mean(reduction, keepdims=True)
  xv, dy, gamma = x.reshape(view), cot.reshape(view), scale.reshape(param_shape)
  mean = mean_r(xv) if centred else np.zeros(cot_mean.shape)
  centred_x = xv - mean
  var = mean_r(centred_x**2)
  r = 1 / np.sqrt(var + EPSILON[case.norm])
  xhat = centred_x * r
  y = gamma * xhat + (bias.reshape(param_shape) if centred else 0)
  g = gamma * dy
  dx = r * (g - (mean_r(g) if centred else 0) - xhat * mean_r(g * xhat))
  dx_stats = (cot_mean / n if centred else 0) + 2 * cot_var * centred_x / n
  return {
    "y": y.reshape(shape),
    "dx": dx.reshape(shape),
    "dscale": (dy * xhat).sum(others).reshape(-1),
    "dbias": dy.sum(others).reshape(-1) if centred else np.zeros(scale.shape),
    "mean": mean,
    "var": var,
    "dx_of_stats": np.broadcast_to(dx_stats, view).reshape(shape),
  }


def _jaxpr_text(fn: Callable, implementation: str, args) -> str:
  # A fresh function each time: JAX caches traces per function object, and
  # the implementation in effect is not part of its cache key.
  with jaxnorm.implementation(implementation):
    return str(jax.make_jaxpr(lambda *a: fn(*a))(*args))


def _path(fn: Callable, implementation: str, args) -> str:
  """Which path ``fn(x, s, b)`` takes: 'pallas', 'fused' or 'reference'.

  Read from the forward jaxpr: a ``pallas_call`` is the Pallas path; any
  other program than the reference's is the fused one (whatever custom
  derivative rule it uses).
  """
  text = _jaxpr_text(fn, implementation, args)
  if "pallas_call" in text:
    return "pallas"
  return "reference" if text == _jaxpr_text(fn, "reference", args) else "fused"


def numerics_inputs(case: NumericsCase, shape) -> tuple[np.ndarray, ...]:
  """``(x, scale, bias, cot, cot_mean, cot_var)`` as float32 NumPy arrays."""
  rng = np.random.default_rng(sum(map(ord, case.name)))
  view, reduction, _ = statistics_layout(case, shape)
  channels = shape[case.channel_axis]
  stats_shape = tuple(1 if a in reduction else n for a, n in enumerate(view))
  f32 = lambda a: np.asarray(a, np.float32)
  return (
    f32(case.offset + case.spread * rng.standard_normal(shape)),
    f32(1 + 0.3 * rng.standard_normal(channels)),
    f32(0.5 * rng.standard_normal(channels)),
    f32(rng.standard_normal(shape)),
    f32(rng.standard_normal(stats_shape)),
    f32(rng.standard_normal(stats_shape)),
  )


def _compare(device: dict, reference: dict) -> dict:
  errors = {}
  for key, ref in reference.items():
    got = np.asarray(device[key], np.float64)
    if got.size != ref.size:
      errors[key] = float("inf")
      continue
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(got.reshape(ref.shape) - ref))) if ref.size else 0.0
    if not np.all(np.isfinite(got)):
      diff = float("inf")
    errors[key] = diff / scale if scale > 0 else diff
  return errors


def numerics(smoke: bool, pool, section: dict, progress=lambda items, desc: items) -> dict:
  """Every case (the ``in_smoke`` ones with ``smoke``) under "fused" and
  "pallas", compiled on ``pool``'s threads, against its float64 reference.

  Rows go to ``section["cases"]`` as they finish; returns the section.
  """
  jobs = []
  for case in (c for c in NUMERICS_CASES if c.in_smoke or not smoke):
    shape = case.smoke_shape if smoke else case.shape
    inputs = numerics_inputs(case, shape)
    for implementation in ("fused", "pallas"):
      jobs.append((case, shape, implementation, inputs))

  def compile_device(job):
    case, shape, implementation, inputs = job
    output_fn, stats_fn = public_function(case, shape), statistics_function(case, shape)
    program = check_program(output_fn, stats_fn, implementation)
    args = [jnp.asarray(a) for a in inputs]  # float32, on the default device
    paths = (_path(output_fn, implementation, args[:3]), _path(stats_fn, implementation, args[:3]))
    return jax.jit(program).lower(*args).compile(), args, paths

  compiled = [pool.submit(compile_device, job) for job in jobs]
  references = {case.name: reference_result(case, shape, inputs) for case, shape, _, inputs in jobs[::2]}
  rows = section["cases"] = []  # filled as cases finish (the watchdog writes them)
  for job, future in progress(list(zip(jobs, compiled)), "numerics"):
    case, shape, implementation, _ = job
    expected = "pallas" if implementation == "pallas" and case.pallas else "fused"
    row = {
      "name": case.name,
      "norm": case.norm,
      "layout": case.layout,
      "shape": list(shape),
      "implementation": implementation,
      "expected_path": expected,
      "tolerance": case.tolerance,
      "input": f"{case.offset:g} + {case.spread:g}·N(0, 1), float32",
    }
    try:
      executable, args, (path, stats_path) = future.result()
      out = jax.device_get(executable(*args))
      errors = _compare(out, references[case.name])
      row.update(path=path, stats_path=stats_path, errors=errors, max_error=max(errors.values()))
      row["within_tolerance"] = row["max_error"] <= case.tolerance
      row["passed"] = row["within_tolerance"] and path == stats_path == expected
    except Exception as e:
      row.update(passed=False, error=error_text(e), traceback=traceback.format_exc()[-3000:])
    rows.append(row)
  failed = [f"{r['name']}/{r['implementation']}" for r in rows if not r["passed"]]
  return {
    "tolerance": {
      "default": TOLERANCE,
      "gn_nhwc_offset_1e4": OFFSET_TOLERANCE,
      "metric": "max |device − reference| / max |reference| per array (absolute where the reference is 0)",
    },
    "reference": "float64 NumPy on the host: the textbook formulas and their analytic gradients",
    "arrays": "y; dx, dscale, dbias of sum(y·cot); mean, var; dx of sum(mean·c1 + var·c2)",
    "cases": rows,
    "passed": len(rows) - len(failed),
    "failed": failed,
    "all_passed": not failed,
    "pallas_kernel_cases": sum(r.get("path") == "pallas" for r in rows),
  }
