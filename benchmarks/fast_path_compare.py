"""The fused path against an earlier version of itself, in one process.

    git show ed091f5:jaxnorm/_fused.py > /tmp/baseline_fused.py
    python -m benchmarks.fast_path_compare --baseline /tmp/baseline_fused.py

loads the baseline ``jaxnorm/_fused.py`` as a module beside the current one
and times the forward + backward pass (output and VJP with respect to input,
scale and bias) of both on the ``benchmarks/norm_bench.py`` shapes (GN and
BN on the ResNet-20 activations, NHWC and NCHW; LN 8×512×768; float32 and
bfloat16), interleaved, median over rounds; then the temporary memory of a
compiled ResNet-20 training step (batch 128) with each. The baseline must
expose ``standardize`` with the current signature (true since the fused
path exists). Ratios are current / baseline: below 1 is faster or smaller.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnorm
from benchmarks import norm_bench
from experiments import models
from experiments import provenance
from jaxnorm._core import dispatch as _dispatch

SHAPES = [("gn", s, layout) for s in norm_bench.RESNET20_SHAPES for layout in ("NHWC", "NCHW")]
SHAPES += [("bn", s, layout) for s in norm_bench.RESNET20_SHAPES for layout in ("NHWC", "NCHW")]
SHAPES += [("ln", norm_bench.TRANSFORMER_SHAPE, "NTD")]


def _load(path):
  spec = importlib.util.spec_from_file_location("baseline_fused", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while it runs
  spec.loader.exec_module(module)
  return module


def _use(module):
  _dispatch._fused = module  # read when a function is traced


def layer_times(impls, dtypes, rounds, reps):
  rows = []
  for dtype in dtypes:
    for norm, shape, layout in SHAPES:
      case = norm_bench.Case(norm, shape, layout, dtype)
      inputs = norm_bench.case_inputs(case)
      fns = {}
      for name, module in impls.items():
        _use(module)
        jitted, args = norm_bench.timed_computation(
          norm_bench.jax_functions(case)["jaxnorm"], "forward+backward", inputs
        )
        fns[name] = lambda jitted=jitted, args=args: jitted(*args)
        jax.block_until_ready(fns[name]())  # traced now, with this module in place
      times = norm_bench._interleaved(fns, rounds, reps, torch_settle=0)
      rows.append(
        dict(
          norm=norm,
          shape=shape,
          layout=layout,
          dtype=dtype,
          baseline_ms=times["baseline"] * 1e3,
          current_ms=times["current"] * 1e3,
          ratio=times["current"] / times["baseline"],
        )
      )
      print(json.dumps(rows[-1]), flush=True)
  return rows


def step_memory(impls):
  out = {}
  for norm in ("gn", "bn"):
    for name, module in impls.items():
      _use(module)
      model = models.CifarResNet(depth=20, width=16, norm=norm_bench.norm_spec(norm, "jaxnorm"))
      images, labels = jnp.zeros((128, 32, 32, 3)), jnp.zeros((128,), jnp.int32)
      variables = model.init(jax.random.key(0), images[:2], train=False)
      params, stats = variables["params"], variables.get("batch_stats", {})
      tx = optax.sgd(0.1, momentum=0.9)

      def step(params, stats, opt_state, model=model, images=images, labels=labels, tx=tx):
        def loss_fn(params):
          logits, updates = model.apply(
            {"params": params, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
          )
          return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates_, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates_), updates, opt_state, loss

      compiled = jax.jit(step).lower(params, stats, tx.init(params)).compile()
      out[f"{norm}_{name}_MiB"] = compiled.memory_analysis().temp_size_in_bytes / 2**20
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--baseline", required=True, help="a copy of an earlier jaxnorm/_fused.py")
  parser.add_argument("--out", default=None, help="write the figures to this JSON file")
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--reps", type=int, default=10)
  args = parser.parse_args()
  try:
    impls = {"baseline": _load(args.baseline), "current": _dispatch._fused}
  except (OSError, SyntaxError) as error:
    parser.error(f"--baseline {args.baseline!r} could not be loaded: {error}")
  provenance.git_commit()  # cached: the commit the run imported
  rows = layer_times(impls, args.dtypes, args.rounds, args.reps)
  summary = {
    dtype: math.exp(np.mean([math.log(r["ratio"]) for r in rows if r["dtype"] == dtype])) for dtype in args.dtypes
  }
  result = {
    "geomean_ratio": summary,
    "memory": step_memory(impls),
    "rows": rows,
    "baseline": args.baseline,
    "git_commit": provenance.git_commit(),
    "hardware": provenance.hardware(),
    "jaxnorm": jaxnorm.__version__,
  }
  print(json.dumps({k: result[k] for k in ("geomean_ratio", "memory")}, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
