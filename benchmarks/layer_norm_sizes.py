"""LayerNorm forward + backward against the floor and PyTorch, by size.

    python benchmarks/layer_norm_sizes.py --out benchmarks/results/layer_norm_sizes_cpu_2core

times jaxnorm's LayerNorm, the elementwise floor (``x * a + b`` and its
gradient) and PyTorch's LayerNorm (where installed) on ``(B, 512, 768)``
float32 inputs for several batch sizes ``B``, interleaved in one process
(``benchmarks.norm_bench``'s harness), and reads XLA's ``bytes accessed``
of the two compiled programs. From ``B = 2`` (1.5 MiB per array: every
array of the program fits the cache) to ``B = 16`` (25 MiB per array) the
figures separate what the size changes (the cache) from what it does not
(how many full-size passes the program makes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax

from benchmarks import norm_bench
from experiments import provenance

PEERS = ("jaxnorm", "floor", "torch")


def bytes_accessed(case: norm_bench.Case, name: str) -> float:
  """XLA's ``bytes accessed`` of the compiled forward + backward program of
  ``name``, in units of the input array's size."""
  inputs = norm_bench.case_inputs(case)
  jitted, args = norm_bench.timed_computation(norm_bench.jax_functions(case)[name], "forward+backward", inputs)
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list in older jax
  return float(cost["bytes accessed"]) / inputs[0].nbytes


def measure(batches, seq: int, features: int, rounds: int, reps: int) -> list[dict]:
  rows = []
  for batch in batches:
    case = norm_bench.Case("ln", (batch, seq, features), "NTD", "float32")
    seconds, _ = norm_bench.bench_case(case, "forward+backward", rounds, reps, peers=PEERS)
    row = {"shape": list(case.shape), "ms": {k: v * 1e3 for k, v in seconds.items()}}
    row["jaxnorm_over_floor"] = seconds["jaxnorm"] / seconds["floor"]
    if "torch" in seconds:
      row["torch_over_floor"] = seconds["torch"] / seconds["floor"]
      row["jaxnorm_over_torch"] = seconds["jaxnorm"] / seconds["torch"]
    row["bytes_accessed_per_input"] = {name: bytes_accessed(case, name) for name in ("jaxnorm", "floor")}
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


def markdown(result: dict) -> str:
  lines = [
    "# LayerNorm by size",
    "",
    f"Hardware: {result['hardware'].get('cpu', '?')}; commit {result['git_commit']}.",
    f"Command: `{result['command']}`. Forward + backward, float32, ms per call (median over rounds).",
    "",
    "| shape | jaxnorm | floor | torch | jaxnorm / floor | torch / floor | jaxnorm / torch "
    "| bytes accessed / input: jaxnorm | floor |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for row in result["rows"]:
    ms, moved = row["ms"], row["bytes_accessed_per_input"]

    def fmt(value, digits=3):
      return "–" if value is None else f"{value:.{digits}f}"

    cells = [
      "×".join(map(str, row["shape"])),
      fmt(ms["jaxnorm"]),
      fmt(ms["floor"]),
      fmt(ms.get("torch")),
      fmt(row["jaxnorm_over_floor"], 2),
      fmt(row.get("torch_over_floor"), 2),
      fmt(row.get("jaxnorm_over_torch"), 2),
      fmt(moved["jaxnorm"], 1),
      fmt(moved["floor"], 1),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8, 16])
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--features", type=int, default=768)
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--out", help="file stem: writes STEM.json and STEM.md")
  args = parser.parse_args()
  for name in ("seq", "features", "rounds", "reps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
  if min(args.batches) < 1:
    parser.error(f"--batches must all be at least 1, got {args.batches}")
  commit = provenance.git_commit()
  start = time.time()
  rows = measure(args.batches, args.seq, args.features, args.rounds, args.reps)
  result = {
    "rows": rows,
    "hardware": provenance.hardware(),
    "git_commit": commit,
    "jax": jax.__version__,
    "command": " ".join(["python", "benchmarks/layer_norm_sizes.py", *sys.argv[1:]]),
    "wall_seconds": time.time() - start,
  }
  if args.out:
    stem = args.out.removesuffix(".json").removesuffix(".md")
    with open(f"{stem}.json", "w") as f:
      json.dump(result, f, indent=1)
    with open(f"{stem}.md", "w") as f:
      f.write(markdown(result))


if __name__ == "__main__":
  main()
