"""Default training configuration and its validation.

Config files in ``configs/`` start from :func:`default_config` and change
what their experiment needs; every key is documented here.
"""

from __future__ import annotations

import ast

import ml_collections

import jaxnorm

SCHEDULES = ("cosine", "step")
EXECUTIONS = ("auto", "vmap", "microbatch", "scan")


def default_config() -> ml_collections.ConfigDict:
  """ResNet-20 + BN on CIFAR-10 with the GN paper's per-device statistics."""
  c = ml_collections.ConfigDict()

  # Data.
  c.data_dir = ""  # '' -> $JAXNORM_DATA, else ~/.cache/jaxnorm
  c.download = True  # fetch the official archive when the files are absent
  c.train_examples = 0  # > 0: train on the first N examples (a reduced run)
  c.augment = True  # pad-4 random crop + horizontal flip

  # Model: CIFAR ResNet-(6n+2).
  c.depth = 20
  c.width = 16
  c.preact = False
  c.shortcut = "pad"  # 'pad' (option A) or 'projection'
  c.zero_init_last = True  # γ = 0 for the last norm of each block
  c.residual = True  # False: the plain network, no shortcuts (needs zero_init_last=False)
  c.norm = "bn"  # any jaxnorm.create_norm name
  c.norm_kwargs = ml_collections.ConfigDict()  # e.g. num_groups=8

  # Statistics protocol. The global batch is num_devices × per_device_batch.
  # Per-device statistics (the GN paper's protocol) normalize each device's
  # examples separately; with fewer physical devices than num_devices the
  # examples of each simulated device form a ghost batch.
  c.num_devices = 8
  c.per_device_batch = 16
  c.sync_batch_stats = False  # True: statistics over the global batch (SyncBN)
  # The statistics-batch protocol: > 0 splits each device's batch into ghost
  # batches of this many examples, over which batch norm ('bn', 'bn+ws')
  # computes its statistics, while the optimization (global batch, learning
  # rate, steps) stays that of the full batch. Norms without batch
  # statistics do not depend on it. 0: statistics over the device's batch.
  c.statistics_batch = 0
  # How simulated devices run: 'vmap' batches them into one call per
  # physical device and step; 'microbatch' loops over them and averages
  # gradients (fast on XLA:CPU; per-device statistics only); 'scan' runs
  # the vmap step in lax.scan, an epoch per call, with the data, its order,
  # the augmentation and the evaluation on the device. 'auto' picks scan on
  # GPU/TPU; on CPU, microbatch with per-device statistics at >= 32 images
  # per device, else vmap (the fastest there, as measured).
  c.execution = "auto"

  # Optimization: SGD with momentum, linear LR scaling, warm-up, decay.
  c.epochs = 30
  c.base_lr = 0.1  # at lr_reference_batch; scaled linearly with the batch
  c.lr_reference_batch = 128
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4
  c.decay_norm_params = True  # also decay norm γ/β (and other 1-D params)
  c.schedule = "cosine"  # 'cosine' or 'step' (÷10 at 50% and 75%)
  c.warmup_epochs = 1.0

  # Evaluation and bookkeeping.
  c.eval_batch_size = 500
  c.eval_with_batch_stats = False  # also evaluate with batch statistics
  c.report_last_evals = 5  # result = median test error of the last N evals
  # Evaluate on the test set after every eval_every-th epoch and after each
  # of the last report_last_evals epochs (the ones the result is taken
  # from); the other epochs record the training metrics only. Evaluation is
  # a forward pass over the 10,000 test images, so on a small training
  # subset it can cost more than the epoch itself.
  c.eval_every = 1
  c.seed = 0
  c.checkpoint = True  # orbax checkpoint every epoch; rerun resumes
  # Within an epoch too (per-step modes; 'scan' saves at epoch ends): every
  # this many minutes (0: only on SIGTERM/SIGINT), the newest
  # checkpoint_keep_within_epoch kept. A SIGKILL loses at most this much.
  c.checkpoint_every_minutes = 2.0
  c.checkpoint_keep_within_epoch = 2
  c.progress = True  # tqdm bar per epoch
  c.dataset_note = ""  # extra words about the data copy for result files
  # At init and after every epoch, probe a fixed training batch: mean, std
  # and drift of each norm layer's input, gradient norm of every layer, into
  # metrics.jsonl (experiments/diagnostics.py). Costs one extra forward and
  # backward pass per evaluation.
  c.diagnostics = False
  return c


def evaluates_after(config, epoch: int) -> bool:
  """Whether the run evaluates on the test set after ``epoch`` (1-based)."""
  return epoch % config.eval_every == 0 or epoch > config.epochs - config.report_last_evals


def global_batch(config) -> int:
  return config.num_devices * config.per_device_batch


def peak_learning_rate(config) -> float:
  """Linear scaling: base_lr × global batch / lr_reference_batch."""
  return config.base_lr * global_batch(config) / config.lr_reference_batch


def _check_positive(config, name: str) -> None:
  value = config[name]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"config: {name}={value!r}; expected a positive integer.")


def validate_execution(config, num_physical_devices: int) -> None:
  """Raises ValueError for bad values of the keys the training engine reads
  (``num_devices``, ``per_device_batch``, ``sync_batch_stats``,
  ``execution``; ``experiments/engine.py``) on ``num_physical_devices``.
  Part of :func:`validate`; the depth experiment, whose config shares these
  keys, calls it alone."""
  for name in ("num_devices", "per_device_batch"):
    _check_positive(config, name)
  if config.execution not in EXECUTIONS:
    raise ValueError(f"config: execution={config.execution!r}; choose one of {EXECUTIONS}.")
  if config.num_devices % num_physical_devices:
    raise ValueError(
      f"config: num_devices={config.num_devices} simulated devices cannot be "
      f"spread evenly over {num_physical_devices} physical devices; the "
      f"global batch {global_batch(config)} must split into equal per-device "
      f"shards. Use a multiple of {num_physical_devices}."
    )
  if config.execution == "microbatch" and config.sync_batch_stats:
    raise ValueError(
      "config: execution='microbatch' runs simulated devices one after "
      "another, so it cannot synchronise statistics across them; use "
      "execution='vmap' (or 'auto') with sync_batch_stats=True."
    )


def validate(config, num_physical_devices: int) -> None:
  """Raises ValueError for a bad configuration, before any compute."""
  validate_execution(config, num_physical_devices)
  for name in ("epochs", "eval_batch_size", "width", "eval_every", "report_last_evals", "checkpoint_keep_within_epoch"):
    _check_positive(config, name)
  minutes = config.checkpoint_every_minutes
  if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes >= 0:
    raise ValueError(
      f"config: checkpoint_every_minutes={minutes!r}; expected a number of minutes >= 0 (0: only on a signal)."
    )
  for name in ("diagnostics", "residual"):
    if not isinstance(config[name], bool):
      raise ValueError(f"config: {name}={config[name]!r}; expected True or False.")
  if not config.residual and config.zero_init_last:
    raise ValueError(
      "config: residual=False (a plain network) with zero_init_last=True "
      "would start every block at a constant output; set zero_init_last=False."
    )
  if config.schedule not in SCHEDULES:
    raise ValueError(f"config: schedule={config.schedule!r}; choose one of {SCHEDULES}.")
  if config.shortcut not in ("pad", "projection"):
    raise ValueError(f"config: shortcut={config.shortcut!r}; choose 'pad' or 'projection'.")
  if config.eval_batch_size % num_physical_devices:
    raise ValueError(
      f"config: eval_batch_size={config.eval_batch_size} is not divisible by "
      f"{num_physical_devices} devices; use a multiple of {num_physical_devices}."
    )
  validate_statistics_batch(config)
  if config.train_examples and config.train_examples < global_batch(config):
    raise ValueError(
      f"config: train_examples={config.train_examples} is smaller than one global batch ({global_batch(config)})."
    )


# Norms whose statistics the statistics-batch protocol can split (their
# module takes ``virtual_batch_size``).
GHOST_BATCH_NORMS = ("bn", "bn+ws")


def validate_statistics_batch(config) -> None:
  """Raises ValueError unless ``statistics_batch`` fits the norm and batch."""
  k = config.statistics_batch
  if not isinstance(k, int) or isinstance(k, bool) or k < 0:
    raise ValueError(f"config: statistics_batch={k!r}; expected 0 (off) or a positive integer.")
  if not k or not uses_batch_statistics(config):
    return
  if config.norm not in GHOST_BATCH_NORMS:
    raise ValueError(
      f"config: statistics_batch={k} needs a norm whose statistics can be split "
      f"into ghost batches, one of {GHOST_BATCH_NORMS}; norm={config.norm!r} "
      "(for 'ghost_bn' set norm='bn' and statistics_batch instead of virtual_batch_size)."
    )
  if config.sync_batch_stats:
    raise ValueError(
      f"config: statistics_batch={k} with sync_batch_stats=True; synchronised "
      "statistics span the global batch, ghost batches split each device's: choose one."
    )
  if config.per_device_batch % k:
    raise ValueError(
      f"config: statistics_batch={k} does not divide per_device_batch={config.per_device_batch}; use a divisor of it."
    )


def uses_batch_statistics(config) -> bool:
  """Whether the config's norm layers normalize with batch statistics."""
  return jaxnorm.create_norm(config.norm, **dict(config.norm_kwargs)).has_batch_stats


def statistics_examples(config) -> int:
  """Examples per batch-statistics group: the ghost batch, else the device's batch."""
  return config.statistics_batch or config.per_device_batch


def training_config(config):
  """The config with what cannot change training normalized away.

  Norms without batch statistics do not depend on ``statistics_batch``, so
  points of the statistics-batch protocol that differ only there train
  identically (``tests/experiments/test_train.py`` checks it bitwise) and a sweep runs
  them once.
  """
  config = config.copy_and_resolve_references()
  if config.statistics_batch and not uses_batch_statistics(config):
    with config.unlocked():
      config.statistics_batch = 0
  return config


def split_norm_kwargs_flags(argv: list[str], path: str) -> tuple[list[str], dict]:
  """Takes ``--<path>.<key>=<value>`` (or ``--<path>.<key> <value>``) out of
  a command line: ``(the rest of argv, {key: value})``.

  The normalizer's keyword arguments differ by normalizer, so the default
  config cannot declare them all, and ``ml_collections`` only overrides keys
  a config has. The command lines take these flags out before parsing and
  apply them with :func:`apply_norm_kwargs`, so
  ``--config.norm=gn --config.norm_kwargs.num_groups=4`` works on any config.
  Values are Python literals (``4``, ``1e-5``, ``true``, ``none``) or else
  strings; :func:`jaxnorm.create_norm` then checks the names.
  """
  prefix = f"--{path}."
  rest, found = [], {}
  args = iter(argv)
  for arg in args:
    if not arg.startswith(prefix):
      rest.append(arg)
      continue
    key, sep, value = arg[len(prefix) :].partition("=")
    if not sep:
      value = next(args, None)
      if value is None:
        raise ValueError(f"{arg} needs a value, e.g. {arg}=4.")
    if not key.isidentifier():
      raise ValueError(f"{arg}: {key!r} is not a keyword-argument name.")
    found[key] = _parse_flag_value(value)
  return rest, found


def _parse_flag_value(text: str):
  lowered = text.strip().lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  if lowered in ("none", "null"):
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_norm_kwargs(config, overrides: dict) -> None:
  """Sets ``config.norm_kwargs[key] = value`` for each override (the config
  may be locked, as the command line loads it)."""
  if not overrides:
    return
  with config.unlocked():
    for key, value in overrides.items():
      config.norm_kwargs[key] = value
