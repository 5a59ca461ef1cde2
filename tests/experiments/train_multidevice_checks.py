"""Training-step checks on 8 simulated CPU devices.

Run by tests/experiments/test_train.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. Prints one JSON
object of max abs differences between the parameters and running statistics
that different device layouts produce from the same batches.
"""

import json
import warnings

import jax
import numpy as np

from experiments import config as config_lib
from experiments import engine
from experiments import parallel
from experiments import train

# As pyproject.toml's filterwarnings (pytest does not reach this subprocess):
# a DeprecationWarning attributed to jaxnorm or experiments is an error.
warnings.filterwarnings("error", category=DeprecationWarning, module=r"(jaxnorm|experiments)\b")


def run_steps(config, mode, devices=None, steps=2):
  """Train state after `steps` steps on fixed random batches."""
  devices = jax.devices()[:1] if devices is None else devices
  model = train.build_model(config)
  mesh = parallel.make_mesh(devices)
  tx = train.make_optimizer(config, train.make_schedule(config, steps))
  state = parallel.init_state(model, tx, jax.random.key(0))
  step = engine.make_step(model, tx, mesh, config, mode)
  rng = np.random.default_rng(0)
  n = config_lib.global_batch(config)
  for i in range(steps):
    batch = {
      "images": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      "labels": rng.integers(0, 10, n).astype(np.int32),
    }
    batch = parallel.put_global_batch(batch, mesh)
    state, _ = step(state, batch["images"], batch["labels"], jax.random.key(i))
  return jax.device_get(state)


def run_scan_epoch(config, devices, steps=2, seeds=(0,)):
  """Train state after one scan-engine epoch of `steps` steps on a fixed
  random training set (the order and keys drawn on the device). Several
  seeds train as one group (a leading run axis), each initialised and keyed
  by its seed; the result is then the list of their states."""
  model = train.build_model(config)
  mesh = parallel.make_mesh(devices)
  tx = train.make_optimizer(config, train.make_schedule(config, steps))

  initial = lambda seed: parallel.init_state(model, tx, jax.random.key(seed))
  runs = len(seeds) if len(seeds) > 1 else 0
  state = engine.stack_runs([initial(s) for s in seeds]) if runs else initial(seeds[0])
  root_key = engine.stack_keys([jax.random.key(s) for s in seeds]) if runs else jax.random.key(seeds[0])
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  n = config_lib.global_batch(config)
  rng = np.random.default_rng(1)
  data = parallel.put_replicated(
    {
      "images": rng.integers(0, 256, (steps * n, 32, 32, 3), dtype=np.uint8),
      "labels": rng.integers(0, 10, steps * n).astype(np.int32),
    },
    mesh,
  )
  simulated = 1 if config.sync_batch_stats else config.num_devices // mesh.size
  run_epoch = parallel.make_scan_epoch(
    model, tx, mesh, simulated=simulated, augment=True, batch=n, steps=steps, runs=runs
  )
  state, _ = run_epoch(state, data["images"], data["labels"], root_key, 0)
  state = jax.device_get(state)
  return [engine.unstack_run(state, r) for r in range(runs)] if runs else state


def max_diff(a, b):
  leaves = zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats)))
  return max(float(np.max(np.abs(u - v))) for u, v in leaves)


def small_config(**overrides):
  c = config_lib.default_config()
  c.depth, c.width, c.num_devices, c.per_device_batch = 8, 8, 8, 4
  c.warmup_epochs = 0.0
  for k, v in overrides.items():
    if k == "norm_kwargs":
      c.norm_kwargs.update(v)
    else:
      c[k] = v
  return c


def main_scan():
  """The scan engine: the same comparisons, an epoch per compiled call."""
  assert jax.device_count() == 8, jax.devices()
  eight = jax.devices()
  scan = {
    "per_device_8": run_scan_epoch(small_config(), eight),
    "ghost_1": run_scan_epoch(small_config(), eight[:1]),
    "synced_8": run_scan_epoch(small_config(sync_batch_stats=True), eight),
    "global_1": run_scan_epoch(small_config(num_devices=1, per_device_batch=32), eight[:1]),
    "gn_8": run_scan_epoch(small_config(norm="gn", norm_kwargs={"num_groups": 2}), eight),
    "gn_1": run_scan_epoch(small_config(norm="gn", norm_kwargs={"num_groups": 2}), eight[:1]),
    # Two seeds in one program on 8 devices, against each seed alone.
    "group_per_device_8": run_scan_epoch(small_config(), eight, seeds=(0, 5)),
    "seed5_per_device_8": run_scan_epoch(small_config(), eight, seeds=(5,)),
    "group_synced_8": run_scan_epoch(small_config(sync_batch_stats=True), eight, seeds=(0, 5)),
    "seed5_synced_8": run_scan_epoch(small_config(sync_batch_stats=True), eight, seeds=(5,)),
  }
  return {
    "scan_group_per_device_8_vs_alone": max(
      max_diff(scan["group_per_device_8"][0], scan["per_device_8"]),
      max_diff(scan["group_per_device_8"][1], scan["seed5_per_device_8"]),
    ),
    "scan_group_synced_8_vs_alone": max(
      max_diff(scan["group_synced_8"][0], scan["synced_8"]),
      max_diff(scan["group_synced_8"][1], scan["seed5_synced_8"]),
    ),
    "scan_group_seeds_differ": max_diff(scan["group_per_device_8"][0], scan["group_per_device_8"][1]),
    "scan_per_device_8_vs_ghost_1": max_diff(scan["per_device_8"], scan["ghost_1"]),
    "scan_synced_8_vs_global_1": max_diff(scan["synced_8"], scan["global_1"]),
    "scan_gn_8_vs_1": max_diff(scan["gn_8"], scan["gn_1"]),
    "scan_per_device_vs_synced": max_diff(scan["per_device_8"], scan["synced_8"]),
  }


def main():
  assert jax.device_count() == 8, jax.devices()
  eight = jax.devices()
  per_device_8 = run_steps(small_config(), "vmap", eight)
  ghost_1 = run_steps(small_config(), "vmap", eight[:1])
  synced_8 = run_steps(small_config(sync_batch_stats=True), "vmap", eight)
  # One device, one BN over the whole global batch: plain global statistics.
  global_1 = run_steps(small_config(num_devices=1, per_device_batch=32), "vmap", eight[:1])
  return {
    "per_device_8_vs_ghost_1": max_diff(per_device_8, ghost_1),
    "synced_8_vs_global_1": max_diff(synced_8, global_1),
    "per_device_vs_synced": max_diff(per_device_8, synced_8),
  }


if __name__ == "__main__":
  import sys

  print(json.dumps(main_scan() if sys.argv[1:] == ["scan"] else main()))
