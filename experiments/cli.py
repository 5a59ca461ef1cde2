"""How the experiment command lines end: a message and an exit status, not a traceback.

Every command (``experiments.train``, ``sweep``, ``depth``, ``report``,
``diagnostics``) runs its work through :func:`exit_on_user_error`. This
module imports nothing but the standard library, so the jax-free commands
(``experiments.report``) stay jax-free.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class RunFailure(RuntimeError):
  """A run that cannot go on (non-finite loss, no readable checkpoint); the
  message says where and what to do. The command lines end on it with status
  1 and the message, without a traceback."""


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
  except KeyboardInterrupt:
    print("interrupted: finished epochs and points are kept; rerun the same command to resume", file=sys.stderr)
    raise SystemExit(130) from None
