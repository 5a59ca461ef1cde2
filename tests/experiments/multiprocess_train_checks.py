"""One process of a multi-process training run on CPU, through jax.distributed.

Run by tests/experiments/test_train.py: as 2 processes × 2 devices, and as 1 process × 4
devices, both training the same tiny config. ``--die-after-epoch N`` ends
the process (as a kill would, without cleanup) after epoch N's checkpoint
is saved, so a rerun must resume. Process 0 prints the result as JSON.

    python tests/experiments/multiprocess_train_checks.py DATA WORKDIR PROCESS_ID NUM_PROCESSES PORT [--die-after-epoch N] [--group]

``--signal-at N`` sends SIGTERM to process ``i`` from inside its
``N + i``-th training step: the processes must agree to stop at step ``N``
(process 0's), save there and exit 143 through the command line's error
handling.

``--group`` trains seeds 0 and 1 as one group (``train.train_group``) into
``WORKDIR/s0`` and ``WORKDIR/s1``; the JSON then has one entry per seed.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

RECORDS = 64


def main():
  data, workdir, process_id, num_processes, port = sys.argv[1:6]
  die_after = int(sys.argv[7]) if len(sys.argv) > 7 and sys.argv[6] == "--die-after-epoch" else 0
  group = "--group" in sys.argv
  signal_at = int(sys.argv[sys.argv.index("--signal-at") + 1]) + int(process_id) if "--signal-at" in sys.argv else 0
  devices_per_process = 4 // int(num_processes)
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  if int(num_processes) > 1:
    os.environ["JAX_COORDINATOR_ADDRESS"] = f"localhost:{port}"
    os.environ["JAX_NUM_PROCESSES"] = num_processes
    os.environ["JAX_PROCESS_ID"] = process_id

  import functools

  import jax

  from experiments import cli
  from experiments import config as config_lib
  from experiments import data as data_lib
  from experiments import engine
  from experiments import train

  data_lib.load_cifar10 = functools.partial(data_lib.load_cifar10, records_per_file=RECORDS)
  c = config_lib.default_config()
  c.data_dir, c.download = data, False
  c.depth, c.width, c.norm = 8, 8, "bn"
  c.num_devices, c.per_device_batch = 4, 8
  c.epochs, c.train_examples, c.eval_batch_size = 2, 64, 32
  c.progress, c.checkpoint, c.warmup_epochs = False, True, 0.0

  on_epochs = None
  if die_after:
    done = {"epochs": 0}

    def on_epochs(n):
      done["epochs"] += n
      if done["epochs"] > die_after:  # epoch die_after + 1 finished, before its checkpoint
        os._exit(17)

  if signal_at:
    import signal

    from preemption_checks import signalling

    engine.make_step = signalling(engine.make_step, signal_at, signal.SIGTERM)

  if group:
    configs = [c.copy_and_resolve_references() for _ in (0, 1)]
    for seed, config in enumerate(configs):
      config.seed = seed
    dirs = [Path(workdir) / f"s{seed}" for seed in (0, 1)]
    results = cli.exit_on_user_error(train.train_group, configs, dirs, on_epochs)
  else:
    dirs, results = [Path(workdir)], [cli.exit_on_user_error(train.train_and_evaluate, c, workdir, on_epochs)]
  if jax.process_index() == 0:
    runs = []
    for d, result in zip(dirs, results):
      history = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
      runs.append(
        {
          "process_count": jax.process_count(),
          "device_count": jax.device_count(),
          "train_loss": [m["train_loss"] for m in history],
          "test_error": [m["test_error"] for m in history],
          "epochs_completed": result["epochs_completed"],
        }
      )
    print("RESULT " + json.dumps(runs if group else runs[0]))


if __name__ == "__main__":
  main()
