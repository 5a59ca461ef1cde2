"""Cross-device statistics on 8 simulated CPU devices (in a subprocess).

The device count is fixed when JAX starts, so the checks live in
``multidevice_checks.py`` and run with ``XLA_FLAGS`` set; each test below
asserts one of the errors that script measures against float64 NumPy.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("multidevice_checks.py")


@pytest.fixture(scope="module")
def errors():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
  "check,tolerance",
  [
    ("unequal_counts_count", 0.0),
    ("unequal_counts_mean", 1e-5),
    ("unequal_counts_var", 1e-4),
    ("sync_bn_output", 1e-5),
    ("sync_bn_running_mean", 1e-6),
    ("sync_bn_running_var", 1e-6),
    ("per_device_bn_output", 1e-5),
    ("axis_index_groups_mean", 1e-5),
    ("axis_index_groups_var", 1e-5),
    ("axis_index_groups_batch_norm", 1e-5),
    ("spmd_sharded_input", 1e-5),
    ("spmd_output_is_sharded", 0.0),
    ("nnx_sync_bn_output", 1e-5),
    ("nnx_sync_bn_running_mean", 1e-6),
    ("nnx_sync_bn_running_var", 1e-6),
    ("nnx_sync_bn_vs_flax_nnx", 1e-5),
    ("nnx_unequal_counts_running_mean", 1e-5),
    ("nnx_unequal_counts_running_var", 1e-4),
    ("nnx_unequal_counts_output", 1e-4),
  ],
)
def test_eight_devices(errors, check, tolerance):
  assert errors[check] <= tolerance, (check, errors[check])


def test_naive_mean_of_means_would_be_wrong(errors):
  # The unequal-count setup really does distinguish exact merging from
  # averaging per-device means.
  assert errors["naive_pmean_of_means_error"] > 1.0


def test_flax_nnx_would_get_unequal_counts_wrong(errors):
  # The NNX unequal-count setup distinguishes exact merging from flax's
  # average of per-device means (so the jaxnorm.nnx check above can fail):
  # flax is off, or NaN from the device without valid images.
  assert not errors["flax_nnx_unequal_counts_mean_error"] <= 1e-2
