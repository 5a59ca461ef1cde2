"""The package layout changed, its behaviour did not: every public function
and module gives the outputs the code before the move gave
(``tests/data/outputs_before_layout.npz``, written by
``layout_outputs.py`` at commit 32f054e).

Bitwise where the bits can be expected to match: the same jax and jaxlib
and the same CPU model as the machine that wrote the file (XLA:CPU compiles
for the host's vector units, and other builds may order a reduction
differently). Elsewhere to float32 rounding.

Two outputs changed on purpose after the move (:data:`CORRECTED`): the
corrected two-pass statistics (``jaxnorm._core.moments.corrected_two_pass``)
remove the rounding error of the mean when ``|mean| ≫ std``. Those are held
to a float64 reference instead, at least as closely as the saved output.
"""

import pathlib

import numpy as np
import pytest

from tests.jaxnorm import layout_outputs

SAVED = pathlib.Path(__file__).resolve().parents[1] / "data" / "outputs_before_layout.npz"


def _standardized64(x, axes, epsilon, scale=None, bias=None):
  x = np.asarray(x, np.float64)
  y = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + epsilon)
  if scale is not None:
    y = y * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)
  return y


# name -> its float64 reference, on layout_outputs.inputs().
CORRECTED = {
  "batch_norm_offset/y": lambda i: _standardized64(i["offset"], (0, 1, 2), 1e-5, i["scale"], i["bias"]),
  "layer_norm_offset": lambda i: _standardized64(i["offset"], (1, 2, 3), 1e-6),
}


@pytest.fixture(scope="module")
def saved():
  with np.load(SAVED) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def current():
  return layout_outputs.outputs()


def test_the_same_outputs_are_computed(saved, current):
  assert sorted(current) == sorted(k for k in saved if not k.startswith("__env__/"))


def test_every_output_is_unchanged(saved, current):
  env = {k.removeprefix("__env__/"): str(v) for k, v in saved.items() if k.startswith("__env__/")}
  same_build = env == layout_outputs.environment()
  changed = []
  for name, value in current.items():
    before = saved[name]
    if name in CORRECTED:
      continue
    assert value.dtype == before.dtype and value.shape == before.shape, name
    if same_build:
      if not np.array_equal(value, before, equal_nan=True):
        changed.append(name)
    elif not np.allclose(value, before, rtol=2e-5, atol=2e-5, equal_nan=True):
      changed.append(name)
  assert not changed, f"{len(changed)} outputs differ ({'bitwise' if same_build else 'beyond rounding'}): {changed}"


def test_the_corrected_outputs_are_closer_to_float64(saved, current):
  """Input 10³ + N(0, 1) in float32, whose own rounding is 3e-5: the
  corrected outputs are within 1e-4 of float64 and no farther than before."""
  inputs = layout_outputs.inputs()
  for name, reference in CORRECTED.items():
    expected = reference(inputs)
    error = np.max(np.abs(np.asarray(current[name], np.float64) - expected))
    error_before = np.max(np.abs(np.asarray(saved[name], np.float64) - expected))
    assert error <= min(error_before, 1e-4), (name, error, error_before)
