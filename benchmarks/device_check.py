"""One-call accelerator check: numerics and speed of jaxnorm's fast paths.

    python -m benchmarks.device_check --out DIR [--smoke] [--budget-s 265]

writes ``DIR/device_check.json`` and ``DIR/device_check.md`` (rewritten
after every section, so a run cut short still leaves what it measured).
It is sized for one call of the device tool (at most 5 minutes of wall
time, compilation included, on one NVIDIA H100); ``benchmarks/device_run.sh``
is that call's command, wheels and install included. The numerics live in
``benchmarks/device_numerics.py``, the report in ``device_report.py``; the
timing reuses ``benchmarks/norm_bench.py``. Sections, in order:

* **environment**: device kind, platform, jax / jaxlib / flax / optax /
  torch versions, git commit, hardware.
* **bandwidth**: the device's copy bandwidth, measured: a jitted ``x + 1``
  on a large float32 array (and PyTorch's ``copy_`` where CUDA is
  available), counting bytes read plus written. Layer times are reported as
  a fraction of the JAX figure.
* **numerics**: group, batch, layer, RMS and instance norm in NHWC, NCHW
  and 2-D layouts under ``jaxnorm.implementation("fused")`` and
  ``("pallas")``, compiled (not interpreted) on the default device in
  float32: outputs, statistics (mean, variance, through the dispatch point
  ``moments_and_normalize``) and gradients (with respect to x, scale and
  bias; and of a loss on the statistics, which exercises their cotangents)
  against float64 references computed on the host CPU in NumPy from the
  textbook formulas and their analytic gradients (no jaxnorm or JAX code).
  Error = max |device − reference| / max |reference| per array; each case
  records the path that ran (Pallas kernel, fused, or the reference
  composition) and passes when every error is within its tolerance and
  the path is the expected one. Never skipped.
* **layers**: forward and forward + backward times of GN, BN, LN and RMS
  norm for ``implementation("pallas")``, ``implementation("fused")``,
  ``implementation("reference")`` (JAX's own autodiff of the composition,
  the candidate where the fused path loses), ``flax.linen`` (same shapes
  and dtypes) and PyTorch's native CUDA kernels
  (where ``torch.cuda`` is available): ResNet-20 activations at N = 128 and
  2048 (32×32×16, 16×16×32, 8×8×64; GN with 8 groups), a diffusion-UNet
  GroupNorm 8×64×64×320 with 32 groups, a transformer LayerNorm / RMSNorm
  16×2048×4096; float32 and bfloat16 inputs (float32 parameters for JAX,
  as in a mixed-precision model; PyTorch uses parameters of the input's
  dtype); NHWC and NCHW for the convolution shapes. Where the Pallas
  kernels do not cover a case (they need channels last and a power-of-two
  channel count) the ``pallas`` entry is skipped, since it would time the
  fused path again. Timing reuses ``benchmarks/norm_bench.py``:
  compiled first, then interleaved rounds, median over rounds of the mean
  over repetitions, with asynchronous dispatch, so for the smallest arrays
  the figures are launch overhead rather than kernel time. Each JAX
  implementation is also timed **inside one program** (``in_program``):
  ``--in-program K`` calls in a ``lax.fori_loop`` whose carry is the
  previous call's output (forward: ``x ← y``; forward + backward: ``x ←
  ∂x``, the parameter gradients summed), one dispatch for all ``K``, so the
  figure is the device's time per call rather than the host's.
* **train_step**: a CIFAR ResNet-20 SGD step (``experiments.models.
  CifarResNet``; ``norm_bench.train_step_fn``) with jaxnorm's BN and GN
  (``implementation("auto")`` and ``("reference")``) and with
  flax.linen's, at per-device batches 2, 8, 32 and 128 on one device:
  compiled temporary memory and images/s. All 24 steps compile in parallel (threads) before any is
  timed; concurrent compilation may perturb XLA's convolution autotuning,
  for jaxnorm's and flax's steps alike.

Inputs and initial weights are drawn with the ``rbg`` generator (threefry
takes seconds to compile per shape on XLA:CPU); the numerics inputs come
from NumPy. Compilation runs on ``--workers`` threads, never while
something is being timed.

**Budget.** ``--budget-s`` (default 265) counts from the start of the
process; the timing sections (layers, then train_step) skip what would not
finish inside it and record every skipped case with the reason. The layer
timings leave :data:`TRAIN_RESERVE` of the budget to the training steps.

**Smoke.** ``--smoke`` runs every section at toy sizes (a few shapes,
ResNet-8 with width 8 at batch 2, few repetitions, LLVM at -O0) in well
under a minute on a CPU (about 30 s on two idle cores), where the Pallas
kernels run interpreted and PyTorch's CPU kernels stand in for CUDA;
``tests/benchmarks/test_device_check.py`` runs it. On a GPU it is a quick compiled
check of the whole script.

A watchdog ends the process ``--grace-s`` (default 15) seconds after the
budget, writing what was measured with the running section marked
``interrupted``: with the default 265 s budget the check stays under
5 minutes even if a compilation hangs.

Exit status: 0 when every section ran and every numerics case passed, 1
otherwise (the files are written either way), 2 for bad arguments, 3 when
the watchdog stopped the run.
"""

from __future__ import annotations

import time

_START = time.perf_counter()  # the budget counts from here, imports included

import argparse
import concurrent.futures
import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import platform
import sys
import threading
import traceback
from collections.abc import Callable

# JAX takes 75 % of GPU memory by default; leave room for PyTorch's peer.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from benchmarks import norm_bench as nb
from benchmarks.device_numerics import error_text
from benchmarks.device_numerics import numerics
from benchmarks.device_report import BYTES_FORMULA
from benchmarks.device_report import LAYER_NOTES
from benchmarks.device_report import SECTIONS
from benchmarks.device_report import layer_summary
from benchmarks.device_report import markdown
from experiments import provenance

torch = nb.torch
tqdm = nb.tqdm

JSON_NAME, MARKDOWN_NAME = "device_check.json", "device_check.md"
DEFAULT_BUDGET_S = 265.0
DEFAULT_GRACE_S = 15.0  # the watchdog ends the run at budget + grace
TRAIN_RESERVE = 0.3  # share of the budget the layer timings leave to train_step


def _elapsed() -> float:
  return time.perf_counter() - _START


def _progress(iterable, desc: str, total: int | None = None):
  # Off a terminal (the device tool's log) update rarely: every line stays.
  interval = 0.5 if sys.stderr.isatty() else 15.0
  return tqdm(iterable, desc=desc, total=total, mininterval=interval, file=sys.stderr, dynamic_ncols=True)


def _log(message: str) -> None:
  print(f"[{_elapsed():6.1f} s] {message}", flush=True)


# --- environment -----------------------------------------------------------------


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def torch_device() -> str | None:
  """'cuda' where PyTorch sees a GPU, else None."""
  try:
    return "cuda" if torch is not None and torch.cuda.is_available() else None
  except Exception:  # a broken CUDA install must not stop the check
    return None


def environment() -> dict:
  device = jax.devices()[0]
  env = {
    "device_kind": device.device_kind,
    "platform": device.platform,
    "device_count": jax.device_count(),
    "python": platform.python_version(),
    "versions": {
      "jax": jax.__version__,
      "jaxlib": _version("jaxlib"),
      "flax": _version("flax"),
      "optax": _version("optax"),
      "numpy": np.__version__,
      "torch": torch.__version__ if torch is not None else None,
      "jaxnorm": jaxnorm.__version__,
      "jax_cuda_plugin": _version("jax-cuda13-plugin") or _version("jax-cuda12-plugin"),
    },
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "git_commit": provenance.git_commit(),
    "jaxnorm_default_implementation": jaxnorm.get_implementation(),
    "xla_python_client_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
  }
  try:
    env["hardware"] = provenance.hardware()
  except Exception as e:
    env["hardware"] = {"error": error_text(e)}
  if torch_device() == "cuda":
    env["torch_cuda"] = {"version": torch.version.cuda, "device": torch.cuda.get_device_name(0)}
  return env


# --- bandwidth -------------------------------------------------------------------


def bandwidth(elements: int, rounds: int, reps: int, torch_on: str | None, section: dict) -> dict:
  """Copy bandwidth in bytes/s: read + write of a float32 array."""
  x = jnp.ones((elements,), jnp.float32)
  add = jax.jit(lambda x: x + 1)
  fns = {"jax": functools.partial(add, x)}
  if torch_on:
    src = torch.ones(elements, dtype=torch.float32, device=torch_on)
    dst = torch.empty_like(src)
    fns["torch"] = functools.partial(dst.copy_, src)
  seconds = nb._interleaved(fns, rounds, reps, torch_settle=0)
  nbytes = 2 * 4 * elements
  result = {
    "bytes_per_call": nbytes,
    "formula": "float32 array of n elements: 2·4·n bytes (read x, write the result)",
    "jax_x_plus_1": {"seconds": seconds["jax"], "bytes_per_s": nbytes / seconds["jax"]},
    "bytes_per_s": nbytes / seconds["jax"],
  }
  if "torch" in seconds:
    result["torch_copy"] = {"seconds": seconds["torch"], "bytes_per_s": nbytes / seconds["torch"], "device": torch_on}
  return result


# --- layer timings ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerCase:
  family: str
  case: nb.Case


def layer_cases(smoke: bool) -> list[LayerCase]:
  """Most informative first: float32 before bfloat16, NHWC before NCHW."""
  if smoke:
    return [  # one per peer kernel: GN (with Pallas), BN in bfloat16 NCHW, RMS
      LayerCase("resnet20 toy", nb.Case("gn", (2, 8, 8, 16), "NHWC", "float32")),
      LayerCase("resnet20 toy", nb.Case("bn", (2, 8, 8, 16), "NCHW", "bfloat16")),
      LayerCase("transformer toy", nb.Case("rms", (2, 8, 64), "NTD", "float32")),
    ]
  resnet = [
    (f"resnet20 N={n}", (n, h, w, c)) for n in (128, 2048) for h, w, c in ((32, 32, 16), (16, 16, 32), (8, 8, 64))
  ]
  cases = []
  for dtype in ("float32", "bfloat16"):
    for layout in ("NHWC", "NCHW"):
      for norm in ("gn", "bn"):
        cases += [LayerCase(family, nb.Case(norm, shape, layout, dtype)) for family, shape in resnet]
      cases.append(LayerCase("unet", nb.Case("gn", (8, 64, 64, 320), layout, dtype, groups=32)))
    for norm in ("ln", "rms"):
      cases.append(LayerCase("transformer", nb.Case(norm, (16, 2048, 4096), "NTD", dtype)))
  return cases


def _under(implementation: str, f: Callable) -> Callable:
  def g(*args):
    with jaxnorm.implementation(implementation):
      return f(*args)

  return g


MODES = ("forward", "forward+backward")
IMPLEMENTATIONS = ("pallas", "fused", "reference", "flax")
# The training step's variants: norm_bench's, and jaxnorm's reference path
# (plain JAX autodiff of the composition, no custom derivative rule), whose
# figures are the evidence a per-platform "auto" rule would need.
TRAIN_VARIANTS = (*nb.MODEL_VARIANTS, ("gn", "jaxnorm-reference"), ("bn", "jaxnorm-reference"))


def _nbytes(mode: str, elements: int, x_itemsize: int, y_itemsize: int) -> int:
  per_element = x_itemsize + y_itemsize
  if mode == "forward+backward":
    per_element *= 2  # + dy (as y) + dx (as x)
  return elements * per_element


def _figures(seconds: float, nbytes: int, copy_bytes_per_s: float | None) -> dict:
  out = {"seconds": seconds, "bytes": nbytes, "bytes_per_s": nbytes / seconds}
  if copy_bytes_per_s:
    out["fraction_of_copy"] = out["bytes_per_s"] / copy_bytes_per_s
  return out


def looped_computation(f: Callable, mode: str, inputs: tuple, iterations: int) -> tuple[Callable, tuple]:
  """``iterations`` calls of ``f`` in one jitted ``lax.fori_loop``, each
  fed the previous one's output, so XLA can neither hoist nor drop any.

  Forward: ``x ← f(x, scale, bias)`` (a normalized input normalizes to
  itself, so values stay bounded). Forward + backward: ``x ← ∂x`` of the
  VJP for the fixed cotangent, the parameter gradients summed into the
  carry. ``∂x`` of a call drifts in scale from call to call (it is close to
  the cotangent's residual), so each call's input is rescaled by the RMS of
  its first row: a read of a few hundred elements, and a multiplication XLA
  fuses into the call's first pass over ``x``.
  """
  x, scale, bias, cot = inputs

  if mode == "forward":

    def forward(i, x):
      return f(x, scale, bias).astype(x.dtype)

    return jax.jit(lambda x: jax.lax.fori_loop(0, iterations, forward, x)), (x,)

  def step(i, carry):
    x, ds_sum, db_sum = carry
    row = x.reshape(-1)[: x.shape[-1]].astype(jnp.float32)
    x = (x * jax.lax.rsqrt(jnp.mean(row * row) + 1e-30)).astype(x.dtype)
    y, pullback = jax.vjp(f, x, scale, bias)
    dx, ds, db = pullback(cot.astype(y.dtype))
    return dx.astype(x.dtype), ds_sum + ds, db_sum + db

  def loop(x, scale, bias):
    return jax.lax.fori_loop(0, iterations, step, (x, jnp.zeros_like(scale), jnp.zeros_like(bias)))

  return jax.jit(loop), (x, scale, bias)


def time_layer_case(
  lc: LayerCase, rounds: int, reps: int, pool, torch_on, torch_settle, copy_bw, iterations: int = 0
) -> list[dict]:
  """Both modes of one case: compile everything in parallel, then time
  (and, with ``iterations``, time each JAX implementation inside one
  program too)."""
  case = lc.case
  inputs = nb.case_inputs(case)
  base = nb.jax_functions(case)
  fns = {name: _under(name, base["jaxnorm"]) for name in ("pallas", "fused", "reference")}
  fns["flax"] = base["flax"]
  results = {mode: {} for mode in MODES}
  pallas_applies = "pallas_call" in str(jax.make_jaxpr(fns["pallas"])(*inputs[:3]))
  if not pallas_applies:
    del fns["pallas"]
    for mode in MODES:
      results[mode]["pallas"] = {"skipped": "the Pallas kernels do not cover this case (it runs the fused path)"}

  def compile_one(item):
    name, mode, looped = item
    if looped:
      jitted, args = looped_computation(fns[name], mode, inputs, iterations)
    else:
      jitted, args = nb.timed_computation(fns[name], mode, inputs)
    return jitted.lower(*args).compile(), args

  items = [(name, mode, looped) for name in fns for mode in MODES for looped in (False, True)[: 1 + bool(iterations)]]
  futures = dict(zip(items, (pool.submit(compile_one, item) for item in items)))
  # Wait for every compilation: tracing in other threads would hold the GIL
  # and slow the dispatch being timed.
  concurrent.futures.wait(futures.values())
  n = math.prod(case.array_shape)
  rows = []
  for mode in MODES:
    timed, sizes, looped = {}, {}, {}
    for name in fns:
      try:
        compiled, args = futures[(name, mode, False)].result()
        out = nb._block(compiled(*args))
        y = out if mode == "forward" else out[0]
        timed[name] = functools.partial(compiled, *args)
        sizes[name] = _nbytes(mode, n, inputs[0].dtype.itemsize, y.dtype.itemsize)
        if iterations:
          compiled, args = futures[(name, mode, True)].result()
          looped[name] = functools.partial(compiled, *args)
      except Exception as e:
        results[mode][name] = {"error": error_text(e)}
    if torch_on:
      try:
        peer = nb.torch_function(case, mode, device=torch_on)
        nb._block(peer())
        timed["torch"] = peer
        itemsize = {"float32": 4, "bfloat16": 2}[case.dtype]  # torch's tensors have the case's dtype
        sizes["torch"] = _nbytes(mode, n, itemsize, itemsize)
      except Exception as e:
        results[mode]["torch"] = {"error": error_text(e)}
    else:
      why = "torch.cuda is not available" if torch is not None else "torch is not installed"
      results[mode]["torch"] = {"skipped": why}
    try:
      seconds = nb._interleaved(timed, rounds, reps, torch_settle=torch_settle)
      for name, s in seconds.items():
        results[mode][name] = _figures(s, sizes[name], copy_bw)
        if name == "torch":
          results[mode][name]["device"] = torch_on
      if looped:
        for name, s in nb._interleaved(looped, rounds, 1).items():
          results[mode][name]["in_program"] = {**_figures(s / iterations, sizes[name], copy_bw), "calls": iterations}
    except Exception as e:
      for name in timed:
        results[mode][name] = {"error": error_text(e)}
    rows.append(
      {
        "family": lc.family,
        **dataclasses.asdict(case),
        "array_shape": list(case.array_shape),
        "mode": mode,
        "elements": n,
        "pallas_applies": pallas_applies,
        "results": {k: results[mode][k] for k in (*IMPLEMENTATIONS, "torch") if k in results[mode]},
      }
    )
  return rows


class Budget:
  """Seconds left before a deadline, and whether a step estimated to take
  ``estimate`` seconds still fits."""

  def __init__(self, deadline: float):
    self.deadline = deadline

  def left(self) -> float:
    return self.deadline - _elapsed()

  def fits(self, estimate: float) -> bool:
    return self.left() >= estimate


def _estimate(durations: list[float], first: float) -> float:
  return 1.3 * max(durations[-3:]) if durations else first


def layers(args, pool, budget: Budget, torch_on, copy_bw, section: dict) -> dict:
  rows, durations = [], []
  section["rows"] = rows  # filled as cases finish (the watchdog writes them)
  settle = 0.0 if torch_on == "cuda" or args.smoke else nb.TORCH_SETTLE_SECONDS
  reason = f"time budget: --budget-s {args.budget_s:g} minus the share kept for train_step"
  for lc in _progress(layer_cases(args.smoke), "layers"):
    if not budget.fits(_estimate(durations, first=0.0)):
      for mode in MODES:
        rows.append({"family": lc.family, **dataclasses.asdict(lc.case), "mode": mode, "skipped": reason})
      continue
    start = time.perf_counter()
    try:
      rows += time_layer_case(lc, args.rounds, args.reps, pool, torch_on, settle, copy_bw, args.in_program)
    except Exception as e:
      for mode in MODES:
        rows.append({"family": lc.family, **dataclasses.asdict(lc.case), "mode": mode, "error": error_text(e)})
    durations.append(time.perf_counter() - start)
  return {
    "bytes_formula": BYTES_FORMULA,
    "timing": (
      f"median over {args.rounds} interleaved rounds of the mean of {args.reps} calls (asynchronous dispatch)"
      + (f"; in program: {args.in_program} calls in one lax.fori_loop, median over rounds" if args.in_program else "")
    ),
    "notes": LAYER_NOTES,
    "rows": rows,
    "summary": layer_summary(rows),
    "timed": sum("results" in r for r in rows),
    "skipped": sum("skipped" in r for r in rows),
  }


# --- ResNet-20 training step -----------------------------------------------------


TRAIN_TIMING_S = 10.0  # kept from the budget for timing the compiled steps


def train_step(args, pool, budget: Budget, section: dict) -> dict:
  """Every (batch, variant) step compiled in parallel first, then timed.

  Compilation and timing never overlap, except for compilations still
  running when the budget forces the timing to start (``compiling`` on a
  row counts them); batches whose steps did not compile in time are
  recorded as skipped.
  """
  depth, width = (8, 8) if args.smoke else (20, 16)  # GN's 8 groups need 8 channels
  batches = (2,) if args.smoke else (2, 8, 32, 128)
  rows = section["rows"] = []
  if not budget.fits(TRAIN_TIMING_S):  # nothing could be timed: do not start compiling
    rows += [{"batch": b, "skipped": f"time budget: --budget-s {args.budget_s:g}"} for b in batches]
    return {"model": f"CifarResNet(depth={depth}, width={width})", "rows": rows, "timed": 0, "skipped": len(rows)}
  futures = {
    (batch, variant): pool.submit(nb.compile_train_step, *variant, batch, depth, width)
    for batch in batches
    for variant in TRAIN_VARIANTS
  }
  concurrent.futures.wait(list(futures.values()), timeout=max(0.0, budget.left() - TRAIN_TIMING_S))
  durations = []
  for batch in _progress(batches, "train_step"):
    mine = [futures[(batch, variant)] for variant in TRAIN_VARIANTS]
    if not all(f.done() for f in mine):
      rows.append({"batch": batch, "skipped": f"time budget: compilation unfinished (--budget-s {args.budget_s:g})"})
      continue
    if not budget.fits(_estimate(durations, first=0.0)):
      rows.append({"batch": batch, "skipped": f"time budget: --budget-s {args.budget_s:g}"})
      continue
    start = time.perf_counter()
    try:
      steps = [f.result() for f in mine]
      compiling = sum(not f.done() for f in futures.values())
      result = nb.bench_model(batch, args.rounds, max(1, args.reps // 2), depth, width, steps, TRAIN_VARIANTS)
      rows.append({**result, "compiling": compiling, "timing_s": time.perf_counter() - start})
    except Exception as e:
      rows.append({"batch": batch, "error": error_text(e), "traceback": traceback.format_exc()[-3000:]})
    durations.append(time.perf_counter() - start)
  for f in futures.values():
    f.cancel()  # those not started; running ones are abandoned at exit
  return {
    "model": f"CifarResNet(depth={depth}, width={width}), SGD momentum 0.9, one device, random images",
    "jaxnorm_implementation": jaxnorm.get_implementation(),
    "compilation": "all batches and variants compiled in parallel before any timing",
    "rows": rows,
    "timed": sum("images_per_sec" in r for r in rows),
    "skipped": sum("skipped" in r for r in rows),
  }


def _json_safe(obj):
  """Strict JSON: non-finite floats become the strings 'inf' / 'nan'."""
  if isinstance(obj, float) and not math.isfinite(obj):
    return repr(obj)
  if isinstance(obj, dict):
    return {k: _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  return obj


def write(result: dict, out: str) -> None:
  result["wall_s"] = _elapsed()
  with open(os.path.join(out, JSON_NAME), "w") as f:
    json.dump(_json_safe(result), f, indent=1, allow_nan=False, default=str)
  try:
    text = markdown(result)
  except Exception as e:
    text = f"# Device check\n\nThe Markdown report failed ({error_text(e)}); see {JSON_NAME}.\n"
  with open(os.path.join(out, MARKDOWN_NAME), "w") as f:
    f.write(text)


# --- command line ----------------------------------------------------------------


def start_watchdog(result: dict, out: str, at_s: float) -> threading.Timer:
  """At ``at_s`` seconds after the start, writes what was measured (the
  running section marked ``interrupted``) and ends the process with status
  3, so a hung compilation or kernel cannot outlast the lease silently."""

  def fire():
    for section in result["sections"].values():
      if section.get("status") == "running":
        why = f"watchdog: still running at {at_s:.0f} s (--budget-s + --grace-s)"
        section.update(status="interrupted", error=why, wall_s=_elapsed() - section.get("started_s", 0.0))
    for name in result.get("selected_sections", ()):
      result["sections"].setdefault(name, {"status": "not run (watchdog)"})
    result["interrupted"] = True
    for _ in range(3):  # the main thread may be appending rows meanwhile
      try:
        write(result, out)
        break
      except Exception:
        time.sleep(0.05)
    print(f"[{_elapsed():6.1f} s] watchdog: out of time; results so far are in {out}", flush=True)
    os._exit(3)

  timer = threading.Timer(max(0.0, at_s - _elapsed()), fire)
  timer.daemon = True
  timer.start()
  return timer


def _positive(kind):
  def parse(text):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
      raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
    return value

  return parse


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="directory for device_check.json and device_check.md")
  parser.add_argument("--smoke", action="store_true", help="toy sizes (CPU, well under a minute)")
  parser.add_argument(
    "--budget-s",
    type=_positive(float),
    default=DEFAULT_BUDGET_S,
    help=f"seconds from process start after which timing cases are skipped (default {DEFAULT_BUDGET_S:g})",
  )
  parser.add_argument("--rounds", type=_positive(int), default=None, help="timing rounds (default 5; smoke 2)")
  parser.add_argument("--reps", type=_positive(int), default=None, help="calls per round (default 20; smoke 2)")
  parser.add_argument(
    "--in-program",
    type=int,
    default=None,
    help="calls per lax.fori_loop program for the in-program timing (default 20; smoke 2; 0: off)",
  )
  parser.add_argument(
    "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run (default: all)"
  )
  parser.add_argument(
    "--grace-s",
    type=_positive(float),
    default=DEFAULT_GRACE_S,
    help="seconds past the budget after which a watchdog writes the results so far and "
    f"exits with status 3 (default {DEFAULT_GRACE_S:g})",
  )
  parser.add_argument(
    "--workers", type=_positive(int), default=min(8, os.cpu_count() or 1), help="threads compiling in parallel"
  )
  args = parser.parse_args(argv)
  args.in_program = args.in_program if args.in_program is not None else (2 if args.smoke else 20)
  if args.in_program < 0:
    parser.error(f"--in-program {args.in_program}: give a number of calls >= 0 (0 turns the in-program timing off)")
  args.rounds = args.rounds or (2 if args.smoke else 5)
  args.reps = args.reps or (2 if args.smoke else 20)
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    parser.error(f"--out {args.out!r} is a file; give a directory (it is created if missing)")
  try:
    os.makedirs(args.out, exist_ok=True)
    probe = os.path.join(args.out, ".write_test")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    parser.error(f"--out {args.out!r} is not a writable directory ({e.strerror})")
  return args


def run_section(result, name, out, fn):
  """Runs ``fn(section)``, which may fill ``section`` as it goes; records
  its status and wall time, then rewrites the output files."""
  start = time.perf_counter()
  _log(f"{name} ...")
  section = result["sections"][name] = {"status": "running", "started_s": _elapsed()}
  try:
    section.update(fn(section))
    section["status"] = "done"
  except Exception as e:
    section.update(status="error", error=error_text(e), traceback=traceback.format_exc()[-3000:])
  section["wall_s"] = time.perf_counter() - start
  write(result, out)
  _log(f"{name}: {section['status']} in {section['wall_s']:.1f} s")
  return section


def main(argv=None) -> int:
  args = parse_args(argv)
  workers = args.workers
  result = {
    "command": "python -m benchmarks.device_check " + " ".join(sys.argv[1:] if argv is None else argv),
    "smoke": args.smoke,
    "budget_s": args.budget_s,
    "rounds": args.rounds,
    "reps": args.reps,
    "selected_sections": list(args.sections),
    "sections": {},
  }
  # Threefry takes seconds to compile on XLA:CPU for every new shape (the
  # ResNet's initialization alone, 40 s on two cores); the counter-based
  # generator compiles at once. Only benchmark inputs and initial weights
  # are drawn with it; the numerics inputs come from NumPy.
  jax.config.update("jax_default_prng_impl", "rbg")
  if args.smoke:  # toy sizes: compile time is all there is; LLVM -O0 cuts a third
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  result["environment"] = env = environment()  # initializes JAX's backend before PyTorch's CUDA
  env["prng_impl"] = "rbg"
  _log(f"device {env['device_kind']} ({env['platform']}), jax {jax.__version__}, commit {env['git_commit']}")
  torch_on = torch_device() or ("cpu" if args.smoke and torch is not None else None)
  write(result, args.out)
  watchdog = start_watchdog(result, args.out, args.budget_s + args.grace_s)
  budget_end = args.budget_s
  copy_bw = None
  # Not a with-block: leaving it would wait for compilations abandoned at
  # the budget; the process ends with os._exit instead (see __main__).
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
  if "bandwidth" in args.sections:
    elements = 2**20 if args.smoke else 2**28  # 4 MiB / 1 GiB of float32
    bw = run_section(result, "bandwidth", args.out, lambda s: bandwidth(elements, args.rounds, args.reps, torch_on, s))
    copy_bw = bw.get("bytes_per_s")
  if "numerics" in args.sections:
    num = run_section(result, "numerics", args.out, lambda s: numerics(args.smoke, pool, s, _progress))
    if num.get("failed"):
      _log("numerics FAILED: " + ", ".join(num["failed"]))
  if "layers" in args.sections:
    reserve = TRAIN_RESERVE * args.budget_s if "train_step" in args.sections else 0.0
    budget = Budget(budget_end - reserve)
    run_section(result, "layers", args.out, lambda s: layers(args, pool, budget, torch_on, copy_bw, s))
  if "train_step" in args.sections:
    run_section(result, "train_step", args.out, lambda s: train_step(args, pool, Budget(budget_end), s))
  watchdog.cancel()
  pool.shutdown(wait=False, cancel_futures=True)
  write(result, args.out)
  print(markdown(result, brief=True), flush=True)
  _log(f"full report: {os.path.join(args.out, MARKDOWN_NAME)} and {JSON_NAME}")
  sections_ok = all(s.get("status") == "done" for s in result["sections"].values())
  numerics_ok = result["sections"].get("numerics", {}).get("all_passed", True)
  return 0 if sections_ok and numerics_ok else 1


if __name__ == "__main__":
  code = main()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # without joining compilation threads abandoned at the budget
