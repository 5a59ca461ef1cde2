"""Page faults and system time per call of a norm_bench program.

    python benchmarks/page_faults.py --norm ln --out benchmarks/results/page_faults_cpu_2core

times forward + backward of one ``benchmarks/norm_bench.py`` case (jaxnorm,
the elementwise floor and flax.linen) and reports, per call, the wall time,
the minor page faults and the system CPU time of the process
(``getrusage``). On XLA:CPU each call allocates its outputs and
temporaries; when glibc has returned that memory to the system, every page
is faulted in again on first write, and the kernel's time for that lands
in whichever program runs. Run it once as it is and once with glibc told
to keep freed memory, e.g.::

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 \\
    MALLOC_TOP_PAD_=268435456 python benchmarks/page_faults.py --norm ln

to see how much of a figure is the allocator's. The ``MALLOC_*`` variables
in effect are recorded with the hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax
import numpy as np

from benchmarks import norm_bench
from experiments import provenance

PEERS = ("jaxnorm", "floor", "flax")


def measure(case: norm_bench.Case, rounds: int, calls: int) -> dict[str, dict[str, float]]:
  """Median over rounds of per-call wall ms, minor faults and system ms."""
  inputs = norm_bench.case_inputs(case)
  fns = norm_bench.jax_functions(case)
  compiled = {}
  for name in PEERS:
    jitted, args = norm_bench.timed_computation(fns[name], "forward+backward", inputs)
    compiled[name] = (jitted.lower(*args).compile(), args)
    jax.block_until_ready(compiled[name][0](*args))
  samples = {name: [] for name in PEERS}
  for _ in range(rounds):
    for name, (program, args) in compiled.items():
      before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
      for _ in range(calls):
        jax.block_until_ready(program(*args))
      wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
      samples[name].append(
        (
          wall / calls * 1e3,
          (after.ru_minflt - before.ru_minflt) / calls,
          (after.ru_stime - before.ru_stime) / calls * 1e3,
        )
      )
  keys = ("wall_ms", "minor_faults", "system_ms")
  return {name: dict(zip(keys, np.median(np.array(s), axis=0).tolist())) for name, s in samples.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--norm", choices=("gn", "bn", "ln", "rms"), default="ln")
  parser.add_argument("--dtype", choices=tuple(norm_bench.DTYPES), default="float32")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--calls", type=int, default=50)
  parser.add_argument("--out", help="file stem: writes STEM.json")
  args = parser.parse_args()
  for name in ("rounds", "calls"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
  if args.norm in ("ln", "rms"):
    case = norm_bench.Case(args.norm, norm_bench.TRANSFORMER_SHAPE, "NTD", args.dtype)
  else:
    case = norm_bench.Case(args.norm, norm_bench.RESNET20_SHAPES[0], "NHWC", args.dtype)
  commit = provenance.git_commit()
  start = time.time()
  figures = measure(case, args.rounds, args.calls)
  for name, f in figures.items():
    print(
      f"{name:8s} {f['wall_ms']:7.2f} ms/call  {f['minor_faults']:7.0f} faults/call  {f['system_ms']:6.2f} system ms/call"
    )
  if args.out:
    result = {
      "case": {"norm": case.norm, "shape": case.shape, "layout": case.layout, "dtype": case.dtype},
      "per_call_median": figures,
      "hardware": provenance.hardware(),
      "git_commit": commit,
      "command": " ".join(["python", "benchmarks/page_faults.py", *sys.argv[1:]]),
      "wall_seconds": time.time() - start,
    }
    stem = args.out.removesuffix(".json")
    with open(f"{stem}.json", "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
