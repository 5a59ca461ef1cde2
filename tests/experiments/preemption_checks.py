"""One training process that a real SIGTERM stops, for test_preemption.py.

    python tests/experiments/preemption_checks.py DATA WORKDIR EXECUTION SIGNAL_AT [--group] [--signal INT]

Trains a tiny config (ResNet-8, 4 steps per epoch, 2 epochs) through the
command line's error handling (``cli.exit_on_user_error``), so the exit
status and the message are the user's. ``SIGNAL_AT`` > 0 sends the process
SIGTERM (or SIGINT) from inside its ``SIGNAL_AT``-th compiled training call
(a step, or a whole epoch with ``execution='scan'``): the signal arrives
while that call is in flight, as a scheduler's would. ``--group`` trains
seeds 0 and 1 as one group into ``WORKDIR/s0`` and ``WORKDIR/s1``. On a
finished run it prints ``RESULT`` and the JSON of the runs' metrics and
results.
"""

import functools
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

RECORDS = 64


def signalling(make, signal_at: int, signum: int):
  """``make`` (a builder of compiled training calls) whose calls send this
  process ``signum`` from inside the ``signal_at``-th call, counted over
  every call of every call it builds (0: never)."""
  calls = {"n": 0}

  def made(*args, **kwargs):
    fn = make(*args, **kwargs)

    def call(*a):
      calls["n"] += 1
      out = fn(*a)
      if calls["n"] == signal_at:
        os.kill(os.getpid(), signum)
      return out

    return call

  return made


def main():
  data, workdir, execution, signal_at = sys.argv[1:5]
  signal_at, group = int(signal_at), "--group" in sys.argv
  signum = (
    signal.SIGINT if "--signal" in sys.argv and sys.argv[sys.argv.index("--signal") + 1] == "INT" else signal.SIGTERM
  )
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  os.environ["JAX_PLATFORMS"] = "cpu"

  from experiments import cli
  from experiments import config as config_lib
  from experiments import data as data_lib
  from experiments import engine
  from experiments import parallel
  from experiments import train

  data_lib.load_cifar10 = functools.partial(data_lib.load_cifar10, records_per_file=RECORDS)
  c = config_lib.default_config()
  c.data_dir, c.download = data, False
  c.depth, c.width, c.norm = 8, 8, "bn"
  c.num_devices, c.per_device_batch = 4, 8
  c.epochs, c.train_examples, c.eval_batch_size = 2, 128, 32
  c.progress, c.checkpoint, c.warmup_epochs = False, True, 0.0
  c.execution = execution
  c.eval_with_batch_stats = True

  engine.make_step = signalling(engine.make_step, signal_at, signum)
  parallel.make_scan_epoch = signalling(parallel.make_scan_epoch, signal_at, signum)

  if group:
    configs = [c.copy_and_resolve_references() for _ in (0, 1)]
    for seed, config in enumerate(configs):
      config.seed = seed
    dirs = [Path(workdir) / f"s{seed}" for seed in (0, 1)]
  else:
    configs, dirs = [c], [Path(workdir)]
  results = cli.exit_on_user_error(train.train_group, configs, dirs)
  runs = []
  for d, result in zip(dirs, results):
    metrics = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    runs.append({"metrics": [{k: v for k, v in m.items() if "sec" not in k} for m in metrics], "result": result})
  print("RESULT " + json.dumps(runs))


if __name__ == "__main__":
  main()
