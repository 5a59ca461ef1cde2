"""Test configuration: strict rank promotion and a modest hypothesis profile."""

import os
import pathlib
import sys

import flax
import hypothesis
import jax
import jaxlib
import numpy as np

# The experiments and benchmarks run from the repository root and are not
# installed (the wheel holds jaxnorm only): the tests and the scripts they
# start in subprocesses import them from there.
ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)

# Silent broadcasting between arrays of different rank is a classic source of
# wrong normalization axes; make it an error everywhere in the tests.
jax.config.update("jax_numpy_rank_promotion", "raise")

hypothesis.settings.register_profile(
  "default",
  max_examples=int(os.environ.get("JAXNORM_HYPOTHESIS_EXAMPLES", "25")),
  deadline=None,
  derandomize=True,
  suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile("default")


def pytest_report_header(config):
  """The versions under test, in pytest's header (CI has two legs)."""
  del config
  return f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, numpy {np.__version__}"
