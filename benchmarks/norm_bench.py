"""Normalization layers: jaxnorm against flax.linen, PyTorch and the floor.

    python benchmarks/norm_bench.py --out benchmarks/results/cpu

runs everything (about five minutes on two CPU cores) and writes
``OUT.json`` and ``OUT.md``. Sections:

* **layers**: group norm (8 groups) and batch norm on the ResNet-20 CIFAR
  activations (N=128: 32×32×16, 16×16×32, 8×8×64) in NHWC and NCHW, and
  layer and RMS norm on a transformer shape (8×512×768); float32 and bfloat16 inputs
  (float32 parameters, as in a mixed-precision model); forward alone and
  forward + backward (the VJP with respect to input, scale and bias, for a
  given cotangent; the output is returned too, as the next layer needs it).
  Peers:

  - ``flax``: ``flax.linen``'s module with its defaults. flax's GroupNorm
    takes channels last only, so its NCHW figure includes the two
    transposes an NCHW user needs.
  - ``torch``: PyTorch's native kernels (``pip install -e '.[bench]'``),
    NCHW tensors, and ``channels_last`` ones for NHWC.
  - ``floor``: ``x * a + b`` with per-channel ``a``, ``b`` (and its VJP):
    reading and writing the tensor once, which no normalizer can beat.
  - ``jaxnorm-reference``: jaxnorm's composed path (the fused one off).
  - ``jaxnorm-modulated``: jaxnorm's module with a call-time modulation
    (``layer(x, scale=s, shift=t)``, ``s`` and ``t`` of shape ``(N, C)``,
    as a DiT or a diffusion UNet conditions its norms; inputs of the timed
    program, differentiated too, as in training): it should cost no more
    than the plain norm, since it is folded into ``γ``, ``β`` and applied
    in the same pass. Its ratio to ``jaxnorm`` and the temporary memory of
    both (``memory_analysis()``) are in the summary.
  - ``jaxnorm-again``: ``jaxnorm`` compiled a second time (an A/A pair:
    its ratio to ``jaxnorm`` is the noise of the measurement).

``--peers`` times a subset (e.g. ``--peers jaxnorm jaxnorm-modulated
jaxnorm-again`` for the modulation's cost alone).

* **memory**: temporary memory of a compiled ResNet-20 training step
  (``memory_analysis()``, deterministic), jaxnorm's norms against the same
  model with flax's.
* **end-to-end**: images/s of that training step (batch 128, one device).

Timing follows the project's protocol: everything compiled first, then
rounds that visit every implementation of a case in turn (interleaved, so
load on a shared machine hits all alike); each figure is the median over
rounds of the mean time of ``--reps`` calls. Ratios of figures from one run
are what to compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import jaxnorm
from experiments import models
from experiments import provenance

try:
  import torch
except ImportError:  # the optional peer
  torch = None

RESNET20_SHAPES = ((128, 32, 32, 16), (128, 16, 16, 32), (128, 8, 8, 64))
TRANSFORMER_SHAPE = (8, 512, 768)
GROUPS = 8
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Case:
  norm: str  # 'gn', 'bn', 'ln' or 'rms'
  shape: tuple[int, ...]  # logical (N, H, W, C) or (N, T, D)
  layout: str  # 'NHWC', 'NCHW' or 'NTD'
  dtype: str
  groups: int = GROUPS  # group norm only

  @property
  def channel_axis(self) -> int:
    return 1 if self.layout == "NCHW" else -1

  @property
  def array_shape(self) -> tuple[int, ...]:
    if self.layout == "NCHW":
      n, h, w, c = self.shape
      return (n, c, h, w)
    return self.shape

  @property
  def channels(self) -> int:
    return self.shape[-1]


def _param_shape(case: Case) -> tuple[int, ...]:
  """Per-channel parameters, broadcast against the array (for the floor)."""
  full = [1] * len(case.array_shape)
  full[case.channel_axis] = case.channels
  return tuple(full)


def _to_nhwc(x):
  return jnp.transpose(x, (0, 2, 3, 1))


def _to_nchw(x):
  return jnp.transpose(x, (0, 3, 1, 2))


def jax_functions(case: Case) -> dict[str, Callable]:
  """``name -> f(x, scale, bias)`` for every JAX implementation."""
  c = case.channel_axis

  def jaxnorm_fn(x, scale, bias):
    if case.norm == "gn":
      return jaxnorm.group_norm(x, scale, bias, num_groups=case.groups, channel_axis=c)
    if case.norm == "bn":
      zeros = jnp.zeros((case.channels,))
      y, _ = jaxnorm.batch_norm(x, scale, bias, zeros, zeros + 1, axis=c)
      return y
    if case.norm == "rms":
      return jaxnorm.rms_norm(x, scale)
    return jaxnorm.layer_norm(x, scale, bias)

  def flax_fn(x, scale, bias):
    params = {"params": {"scale": scale, "bias": bias}}
    if case.norm == "gn":
      layer = nn.GroupNorm(num_groups=case.groups)
      if case.layout == "NCHW":
        return _to_nchw(layer.apply(params, _to_nhwc(x)))
      return layer.apply(params, x)
    if case.norm == "bn":
      zeros = jnp.zeros((case.channels,))
      stats = {"batch_stats": {"mean": zeros, "var": zeros + 1}}
      layer = nn.BatchNorm(use_running_average=False, axis=c)
      y, _ = layer.apply({**params, **stats}, x, mutable=["batch_stats"])
      return y
    if case.norm == "rms":
      return nn.RMSNorm().apply({"params": {"scale": scale}}, x)
    return nn.LayerNorm().apply(params, x)

  def floor_fn(x, scale, bias):
    return x * scale.reshape(_param_shape(case)) + bias.reshape(_param_shape(case))

  def modulated_fn(x, scale, bias, mod_scale, shift):
    if case.norm == "gn":
      layer = jaxnorm.GroupNorm(num_groups=case.groups, channel_axis=c)
    elif case.norm == "bn":
      layer = jaxnorm.BatchNorm(use_running_average=False, axis=c)
    elif case.norm == "rms":
      layer = jaxnorm.RMSNorm()
    else:
      layer = jaxnorm.LayerNorm()
    variables = {"params": {"scale": scale, "bias": bias}} if case.norm != "rms" else {"params": {"scale": scale}}
    if case.norm == "bn":
      zeros = jnp.zeros((case.channels,))
      variables["batch_stats"] = {"mean": zeros, "var": zeros + 1}
    y, _ = layer.apply(variables, x, scale=mod_scale, shift=shift, mutable=["batch_stats"])
    return y

  def reference_fn(x, scale, bias):
    with jaxnorm.implementation("reference"):
      return jaxnorm_fn(x, scale, bias)

  return {
    "jaxnorm": jaxnorm_fn,
    "jaxnorm-reference": reference_fn,
    "jaxnorm-modulated": modulated_fn,
    "jaxnorm-again": lambda x, scale, bias: jaxnorm_fn(x, scale, bias),
    "flax": flax_fn,
    "floor": floor_fn,
  }


def torch_function(case: Case, mode: str, device: str = "cpu"):
  """A no-argument callable running PyTorch's native kernel, or None.

  ``device`` is a torch device ("cpu", "cuda"); the callable does not
  synchronize, so time it with :func:`_time` (which does).
  """
  if torch is None:
    return None
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[case.dtype]
  gen = torch.Generator(device).manual_seed(0)
  if case.norm in ("ln", "rms"):
    x = torch.randn(case.shape, generator=gen, device=device).to(dtype)
  else:
    n, h, w, ch = case.shape
    x = torch.randn((n, ch, h, w), generator=gen, device=device).to(dtype)
    if case.layout == "NHWC":
      x = x.contiguous(memory_format=torch.channels_last)
  weight = torch.ones(case.channels, dtype=dtype, device=device)
  bias = torch.zeros(case.channels, dtype=dtype, device=device)
  running_mean = torch.zeros(case.channels, dtype=dtype, device=device)
  running_var = torch.ones(case.channels, dtype=dtype, device=device)
  F = torch.nn.functional

  def forward(x, weight, bias):
    if case.norm == "gn":
      return F.group_norm(x, case.groups, weight, bias, 1e-6)
    if case.norm == "bn":
      return F.batch_norm(x, running_mean, running_var, weight, bias, training=True)
    if case.norm == "rms":
      return F.rms_norm(x, (case.channels,), weight, 1e-6)
    return F.layer_norm(x, (case.channels,), weight, bias, 1e-6)

  if mode == "forward":

    def run():
      with torch.no_grad():
        return forward(x, weight, bias)

    return run
  xr, wr, br = (t.clone().requires_grad_(True) for t in (x, weight, bias))
  cot = torch.randn_like(x)
  wrt = (xr, wr) if case.norm == "rms" else (xr, wr, br)  # RMS norm has no bias

  def run_backward():
    y = forward(xr, wr, br)
    return torch.autograd.grad(y, wrt, cot)

  return run_backward


def _block(out):
  """Waits for ``out``: JAX arrays, and PyTorch's CUDA queue if it is in use."""
  jax.block_until_ready(out)  # torch tensors pass through
  if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
    torch.cuda.synchronize()
  return out


def _time(fn: Callable, reps: int) -> float:
  _block(fn())  # one untimed call: caches and threads warm
  start = time.perf_counter()
  for _ in range(reps):
    out = fn()
  _block(out)
  return (time.perf_counter() - start) / reps


# PyTorch's OpenMP workers keep spinning for a while after a call, which
# would slow down whatever runs next on two cores; let them go idle first.
TORCH_SETTLE_SECONDS = 0.3


def _interleaved(
  fns: dict[str, Callable], rounds: int, reps: int, torch_settle: float = TORCH_SETTLE_SECONDS, seed: int = 0
) -> dict[str, float]:
  """Median over rounds of the mean seconds per call, visiting each in turn.

  Each round visits the implementations in a fresh random order (seeded),
  so none always runs right after the same neighbour: rotating one fixed
  order would keep every implementation behind the same one (the first
  behind the last, PyTorch, whose spinning worker threads slow it down).
  After the entry named ``torch``, sleeps ``torch_settle`` seconds (CPU
  threads; 0 for CUDA).
  """
  for fn in fns.values():  # compile / warm up
    _block(fn())
  names = list(fns)
  order = np.random.default_rng(seed)
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k in order.permutation(names):
      times[k].append(_time(fns[k], reps))
      if k == "torch" and torch_settle:
        time.sleep(torch_settle)
  return {k: float(np.median(v)) for k, v in times.items()}


def case_inputs(case: Case) -> tuple[jax.Array, ...]:
  """``(x, scale, bias, cotangent)``: x in the case's dtype, the rest float32."""
  dtype = DTYPES[case.dtype]
  kx, kc, ks = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, case.array_shape, jnp.float32).astype(dtype)
  cot = jax.random.normal(kc, case.array_shape, jnp.float32)
  scale = 1 + 0.1 * jax.random.normal(ks, (case.channels,))
  bias = jnp.zeros((case.channels,))
  return x, scale, bias, cot


def modulation_inputs(case: Case) -> tuple[jax.Array, jax.Array]:
  """``(scale, shift)`` of a per-example modulation, shape ``(N, C)``, float32."""
  ks, kt = jax.random.split(jax.random.key(1))
  shape = (case.shape[0], case.channels)
  return 0.1 * jax.random.normal(ks, shape), 0.1 * jax.random.normal(kt, shape)


def timed_computation(f: Callable, mode: str, inputs: tuple, extra: tuple = ()) -> tuple[Callable, tuple]:
  """The jitted computation timed for ``mode`` and its arguments.

  ``"forward"``: ``f(x, scale, bias, *extra)``; ``"forward+backward"``:
  ``f``'s output and its VJP with respect to input, scale, bias and
  ``extra`` (a modulation), as training needs.
  """
  x, scale, bias, cot = inputs
  if mode == "forward":
    return jax.jit(f), (x, scale, bias, *extra)

  def vjp(cot, *primals):
    y, pullback = jax.vjp(f, *primals)
    return y, pullback(cot.astype(y.dtype))

  return jax.jit(vjp), (cot, x, scale, bias, *extra)


MEASURED_MEMORY = ("jaxnorm", "jaxnorm-modulated")


PEERS = ("jaxnorm", "jaxnorm-modulated", "jaxnorm-again", "jaxnorm-reference", "flax", "floor", "torch")


def bench_case(case: Case, mode: str, rounds: int, reps: int, peers=PEERS) -> tuple[dict[str, float], dict[str, int]]:
  """Seconds per call of the implementations named in ``peers``, and the
  temporary memory of the compiled programs named in :data:`MEASURED_MEMORY`."""
  inputs = case_inputs(case)
  fns, temp_bytes = {}, {}
  for name, f in jax_functions(case).items():
    if name not in peers:
      continue
    extra = modulation_inputs(case) if name == "jaxnorm-modulated" else ()
    jitted, args = timed_computation(f, mode, inputs, extra)
    fns[name] = functools.partial(jitted, *args)
    if name in MEASURED_MEMORY:
      temp_bytes[name] = int(jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes)
  peer = torch_function(case, mode) if "torch" in peers else None
  if peer is not None:
    fns["torch"] = peer
  return _interleaved(fns, rounds, reps), temp_bytes


def layer_cases() -> list[Case]:
  cases = []
  for norm in ("gn", "bn"):
    for layout in ("NHWC", "NCHW"):
      for dtype in DTYPES:
        cases += [Case(norm, s, layout, dtype) for s in RESNET20_SHAPES]
  cases += [Case(norm, TRANSFORMER_SHAPE, "NTD", d) for norm in ("ln", "rms") for d in DTYPES]
  return cases


# --- ResNet-20 training step -------------------------------------------------


def norm_spec(norm: str, library: str) -> jaxnorm.NormSpec:
  """jaxnorm's 'bn'/'gn' spec (libraries 'jaxnorm' and 'jaxnorm-reference'),
  or the same with flax.linen's module ('flax')."""
  spec = jaxnorm.create_norm(norm, **({"num_groups": GROUPS} if norm == "gn" else {}))
  if library == "flax":
    module = {"bn": nn.BatchNorm, "gn": nn.GroupNorm}[norm]
    spec = dataclasses.replace(spec, module=module)
  return spec


def train_step_fn(norm: str, library: str, batch: int, depth: int = 20, width: int = 16):
  """A jitted CIFAR ResNet (ResNet-20 by default) SGD step and its arguments."""
  model = models.CifarResNet(depth=depth, width=width, norm=norm_spec(norm, library))
  images = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3))
  labels = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), images[:2])
  params, stats = variables["params"], variables.get("batch_stats", {})
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(params)

  def loss_fn(params, stats):
    logits, updates = model.apply({"params": params, "batch_stats": stats}, images, train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates.get("batch_stats", {})

  def step(params, stats, opt_state):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  return jax.jit(step), (params, stats, opt_state)


MODEL_VARIANTS = (("gn", "jaxnorm"), ("gn", "flax"), ("bn", "jaxnorm"), ("bn", "flax"))


def compile_train_step(norm: str, library: str, batch: int, depth: int = 20, width: int = 16):
  """The compiled training step of one variant, and its arguments.

  ``library``: 'flax', 'jaxnorm' (the implementation in effect) or
  'jaxnorm-reference' (jaxnorm traced under ``implementation("reference")``).
  """
  step, args = train_step_fn(norm, library, batch, depth, width)
  choice = "reference" if library == "jaxnorm-reference" else jaxnorm.get_implementation()
  with jaxnorm.implementation(choice):  # read while tracing, in this thread
    return step.lower(*args).compile(), args


def bench_model(
  batch: int, rounds: int, reps: int, depth: int = 20, width: int = 16, steps=None, variants=MODEL_VARIANTS
) -> dict:
  """Memory and images/s of the training step for each of ``variants``
  (``(norm, library)`` pairs, see :func:`compile_train_step`).

  ``steps``: their ``compile_train_step`` results, where compiled already
  (e.g. in parallel); by default they are compiled here, one by one.
  """
  if steps is None:
    steps = [compile_train_step(*variant, batch, depth, width) for variant in variants]
  memory, fns = {}, {}
  for (norm, library), (compiled, args) in zip(variants, steps):
    analysis = compiled.memory_analysis()
    memory[f"{norm}/{library}"] = {
      "temp_bytes": int(analysis.temp_size_in_bytes),
      "argument_bytes": int(analysis.argument_size_in_bytes),
      "output_bytes": int(analysis.output_size_in_bytes),
    }
    fns[f"{norm}/{library}"] = functools.partial(compiled, *args)
  seconds = _interleaved(fns, rounds, reps)
  throughput = {k: batch / s for k, s in seconds.items()}
  return {"batch": batch, "memory": memory, "images_per_sec": throughput}


# --- report ------------------------------------------------------------------


def _geomean(values) -> float:
  values = list(values)
  return float(math.exp(sum(math.log(v) for v in values) / len(values)))


def summarize(rows: list[dict]) -> list[dict]:
  """Geometric-mean speed-ups of jaxnorm per (norm, layout, dtype, mode)."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["norm"], r["layout"], r["dtype"], r["mode"]), []).append(r)
  out = []
  for (norm, layout, dtype, mode), rs in groups.items():
    entry = {"norm": norm, "layout": layout, "dtype": dtype, "mode": mode}
    for peer in ("flax", "torch", "jaxnorm-reference"):
      if all(peer in r["seconds"] for r in rs):
        entry[f"speedup_vs_{peer}"] = _geomean(r["seconds"][peer] / r["seconds"]["jaxnorm"] for r in rs)
    if all("floor" in r["seconds"] for r in rs):
      entry["ratio_to_floor"] = _geomean(r["seconds"]["jaxnorm"] / r["seconds"]["floor"] for r in rs)
    if all("jaxnorm-again" in r["seconds"] for r in rs):
      entry["again_over_plain"] = _geomean(r["seconds"]["jaxnorm-again"] / r["seconds"]["jaxnorm"] for r in rs)
    if all("jaxnorm-modulated" in r["seconds"] for r in rs):
      entry["modulated_over_plain"] = _geomean(r["seconds"]["jaxnorm-modulated"] / r["seconds"]["jaxnorm"] for r in rs)
      entry["modulated_extra_temp_bytes"] = max(
        r["temp_bytes"]["jaxnorm-modulated"] - r["temp_bytes"]["jaxnorm"] for r in rs
      )
    out.append(entry)
  return out


def markdown(result: dict) -> str:
  hw = result["hardware"]
  lines = [
    "# Normalization benchmarks",
    "",
    f"Hardware: {hw.get('cpu', hw)}; commit {result['git_commit']}; "
    f"jax {jax.__version__}, flax {flax.__version__}" + (f", torch {torch.__version__}" if torch else "") + ".",
    f"Command: `{result.get('command', 'python benchmarks/norm_bench.py')}`. Times in ms (median over rounds).",
    "",
    "## Speed-up of jaxnorm (geometric mean over the shapes)",
    "",
    "| norm | layout | dtype | mode | vs flax | vs torch | vs jaxnorm-reference | time / floor "
    "| modulated / plain | again / plain (A/A) | modulation's extra temp memory |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for s in result["summary"]:
    cells = [
      f"{s[k]:.2f}×" if k in s else "–" for k in ("speedup_vs_flax", "speedup_vs_torch", "speedup_vs_jaxnorm-reference")
    ]
    cells += [f"{s[k]:.2f}" if k in s else "–" for k in ("ratio_to_floor", "modulated_over_plain", "again_over_plain")]
    cells.append(f"{s['modulated_extra_temp_bytes'] / 1024:.0f} KiB" if "modulated_extra_temp_bytes" in s else "–")
    lines.append(f"| {s['norm']} | {s['layout']} | {s['dtype']} | {s['mode']} | " + " | ".join(cells) + " |")
  names = ["jaxnorm", "jaxnorm-modulated", "jaxnorm-again", "jaxnorm-reference", "flax", "torch", "floor"]
  lines += [
    "",
    "## Layers (ms)",
    "",
    "| norm | shape | layout | dtype | mode | " + " | ".join(names) + " |",
    "|---|---|---|---|---|" + "---|" * len(names),
  ]
  for r in result["layers"]:
    cells = [f"{r['seconds'][k] * 1e3:.3f}" if k in r["seconds"] else "–" for k in names]
    shape = "×".join(map(str, r["shape"]))
    lines.append(f"| {r['norm']} | {shape} | {r['layout']} | {r['dtype']} | {r['mode']} | " + " | ".join(cells) + " |")
  model = result.get("model")
  if model:
    lines += [
      "",
      f"## ResNet-20 training step (batch {model['batch']}, SGD, one device)",
      "",
      "| norm | library | temp memory (MiB) | images/s |",
      "|---|---|---|---|",
    ]
    for key, mem in model["memory"].items():
      norm, library = key.split("/")
      lines.append(f"| {norm} | {library} | {mem['temp_bytes'] / 2**20:.1f} | {model['images_per_sec'][key]:.0f} |")
    for norm in ("gn", "bn"):
      j, f = f"{norm}/jaxnorm", f"{norm}/flax"
      lines.append("")
      lines.append(
        f"{norm}: temp memory jaxnorm/flax = "
        f"{model['memory'][j]['temp_bytes'] / model['memory'][f]['temp_bytes']:.2f}, "
        f"step speed-up = {model['images_per_sec'][j] / model['images_per_sec'][f]:.2f}×."
      )
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--out",
    default="benchmarks/results/cpu",
    help="file stem: writes STEM.json and STEM.md (a .json or .md ending is dropped)",
  )
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--model-batch", type=int, default=128)
  parser.add_argument("--skip-model", action="store_true")
  parser.add_argument("--norms", nargs="+", default=["gn", "bn", "ln", "rms"])
  parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS, help="implementations to time")
  args = parser.parse_args()

  start = time.time()
  provenance.git_commit()  # cached: the commit the run imported, even if the tree changes while it runs
  rows = []
  cases = [c for c in layer_cases() if c.norm in args.norms]
  for case in tqdm(cases, desc="layers"):
    for mode in ("forward", "forward+backward"):
      seconds, temp_bytes = bench_case(case, mode, args.rounds, args.reps, args.peers)
      rows.append({**dataclasses.asdict(case), "mode": mode, "seconds": seconds, "temp_bytes": temp_bytes})
  result = {
    "hardware": provenance.hardware(),
    "git_commit": provenance.git_commit(),
    "versions": {"jax": jax.__version__, "flax": flax.__version__, "torch": torch.__version__ if torch else None},
    "backend": jax.default_backend(),
    "command": " ".join(["python", "benchmarks/norm_bench.py", *sys.argv[1:]]),
    "layers": rows,
    "summary": summarize(rows),
  }
  if not args.skip_model:
    result["model"] = bench_model(args.model_batch, max(3, args.rounds // 2), 3)
  result["wall_seconds"] = time.time() - start
  stem = os.path.splitext(args.out)[0] if args.out.endswith((".json", ".md")) else args.out
  os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
  with open(stem + ".json", "w") as f:
    json.dump(result, f, indent=2)
  with open(stem + ".md", "w") as f:
    f.write(markdown(result))
  print(markdown(result))


if __name__ == "__main__":
  main()
