"""XLA:CPU settings for the experiments' command lines.

XLA:CPU (jaxlib 0.10 onwards at least) hands reductions and convolution epilogues to
YNNPACK fusions. For the CIFAR ResNets' training step on a 2-core machine
those fusions are slower than XLA's own loops: turning them off with
``--xla_cpu_experimental_ynn_fusion_type=`` raised ResNet-8 training from 475
to 633 images/s (BN) and from 439 to 672 (GN) at 4 × 32 images (figures and
command in ``benchmarks/results/train_throughput_cpu_2core.md``). It changes
how XLA fuses the same operations, not what they compute; results differ
only by float rounding.

:func:`configure` sets the flag before JAX starts its backend. It appends to
``XLA_FLAGS`` and leaves a user's own YNNPACK setting alone, and it does
nothing on jaxlib versions older than the flag (XLA aborts on unknown flags).
Set ``JAXNORM_KEEP_YNN=1`` to keep XLA's default.
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
_FIRST_JAXLIB_WITH_FLAG = (0, 10)  # the oldest checked; older ones keep XLA's default


def _jaxlib_version() -> tuple[int, ...]:
  import jaxlib  # local: the version only

  parts = []
  for part in jaxlib.__version__.split(".")[:2]:
    digits = "".join(ch for ch in part if ch.isdigit())
    parts.append(int(digits or 0))
  return tuple(parts)


def configure(environ=os.environ) -> str:
  """Turn XLA:CPU's YNNPACK fusions off for this process; returns XLA_FLAGS.

  Call before the first JAX computation: XLA reads the flags once, when it
  starts the backend.
  """
  flags = environ.get("XLA_FLAGS", "")
  if YNN_FLAG in flags or environ.get("JAXNORM_KEEP_YNN") == "1" or _jaxlib_version() < _FIRST_JAXLIB_WITH_FLAG:
    return flags
  environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()
  return environ["XLA_FLAGS"]
