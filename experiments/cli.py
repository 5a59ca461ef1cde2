"""How the experiment command lines end: a message and an exit status, not a traceback.

Every command (``experiments.train``, ``sweep``, ``depth``, ``report``,
``diagnostics``) runs its work through :func:`exit_on_user_error`. This
module imports nothing but the standard library, so the jax-free commands
(``experiments.report``) stay jax-free.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

#: The exit status of a command stopped by a signal after saving (as a shell
#: reports a process that signal killed): rerun the command to resume.
EXIT_STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130}


class RunFailure(RuntimeError):
  """A run that cannot go on (non-finite loss, no readable checkpoint); the
  message says where and what to do. The command lines end on it with status
  1 and the message, without a traceback."""


class Preempted(Exception):
  """Training stopped on a signal after writing a checkpoint
  (:mod:`experiments.preemption`); the message says where, and that rerunning
  the same command resumes. ``exit_status`` is :data:`EXIT_STATUS` of the
  signal."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.exit_status = EXIT_STATUS[signal.Signals(signum)]


def exit_on_user_error(fn: Callable, *args):
  """``fn(*args)``; a bad config or missing data (the ValueError and
  FileNotFoundError this pipeline raises for them, each saying what to do)
  ends the command with its message and status 2 instead of a traceback."""
  try:
    return fn(*args)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  except RunFailure as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from None
  except Preempted as e:
    print(f"stopped: {e}", file=sys.stderr)
    raise SystemExit(e.exit_status) from None
  except KeyboardInterrupt:
    print("interrupted: finished epochs and points are kept; rerun the same command to resume", file=sys.stderr)
    raise SystemExit(130) from None
