"""The training step of experiments/, exported for CUDA and TPU on 8 CPU devices.

Run by tests/jaxnorm/test_export.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. Builds the jitted
step exactly as ``experiments/train.py`` does (``train.build_model``,
``make_optimizer``, ``make_step`` with ``execution='vmap'``), gives it
``jax.ShapeDtypeStruct`` inputs with the shardings training uses (state
replicated, images and labels split over ``'data'``) and exports it with
``jax.export`` for each platform. Prints one JSON object: for each
``"<variant>/<platform>"``, facts about the exported module, or ``error``
with the exception (one failure does not hide the others).
"""

from __future__ import annotations

import json
import traceback

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_export import PLATFORMS
from test_export import TRITON
from test_export import export_for
from test_export import with_device

import jaxnorm
from experiments import config as config_lib
from experiments import engine
from experiments import parallel
from experiments import train
from tests.experiments.train_multidevice_checks import small_config

# variant -> (config overrides, physical devices, implementation)
VARIANTS = {
  "per_device_bn": ({}, 8, "auto"),  # the GN paper's per-device statistics
  "synced_bn": ({"sync_batch_stats": True}, 8, "auto"),  # SyncBN: psum over 'data'
  # 8 simulated devices on 2 physical ones: vmapped inside shard_map.
  "per_device_bn_4_per_device": ({}, 2, "auto"),
  "per_device_bn_pallas": ({}, 8, "pallas"),
}


def abstract_inputs(config, mesh):
  """Train state, images, labels and key as sharded ShapeDtypeStructs."""
  model = train.build_model(config)
  tx = train.make_optimizer(config, train.make_schedule(config, 10))

  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(parallel.DATA_AXIS))
  state = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
    jax.eval_shape(lambda: parallel.init_state(model, tx, jax.random.key(0))),
  )
  n = config_lib.global_batch(config)
  images = jax.ShapeDtypeStruct((n, 32, 32, 3), jnp.uint8, sharding=split)
  labels = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=split)
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
  return model, tx, (state, images, labels, key)


def export_step(overrides, devices, implementation, platform) -> dict:
  config = small_config(execution="vmap", eval_batch_size=64, **overrides)
  config_lib.validate(config, devices)
  mesh = parallel.make_mesh(jax.devices()[:devices])
  model, tx, args = abstract_inputs(config, mesh)
  # The shard_map body is lowered under the shard_map's mesh, so that mesh
  # carries the target's abstract device (jax >= 0.12 needs a GPU there to
  # lower Triton kernels); the inputs keep the concrete devices' shardings.
  step = engine.make_step(model, tx, with_device(mesh, platform), config, engine.execution_mode(config, devices))
  with jaxnorm.implementation(implementation):
    exported = export_for(platform, step, *args)
  module = exported.mlir_module()
  n_state = len(jax.tree.leaves(args[0]))
  return {
    "platforms": list(exported.platforms),
    "nr_devices": exported.nr_devices,
    "mesh_devices": mesh.size,
    "all_reduce": module.count("stablehlo.all_reduce"),
    "triton": module.count(TRITON),
    "inputs": len(exported.in_avals),
    "state_inputs": n_state,
    "data_sharded_inputs": data_sharded_inputs(module),
  }


def data_sharded_inputs(module: str) -> list[int]:
  """Indices of @main's arguments whose sharding splits an axis over the
  devices (Shardy: ``[{"data"}, ...]``; GSPMD: ``{devices=[8,...]...}``);
  the others are replicated."""
  main = next(line for line in module.splitlines() if "func.func public @main(" in line)
  arguments = main.split(") -> (")[0].split("%arg")[1:]
  return [i for i, a in enumerate(arguments) if '{"data"' in a or "{devices=[" in a]


def main():
  assert jax.device_count() == 8, jax.devices()
  results = {}
  for name, (overrides, devices, implementation) in VARIANTS.items():
    for platform in PLATFORMS:
      try:
        results[f"{name}/{platform}"] = export_step(overrides, devices, implementation, platform)
      except Exception as e:  # reported per variant by the test
        results[f"{name}/{platform}"] = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"}
  return results


if __name__ == "__main__":
  print(json.dumps(main()))
