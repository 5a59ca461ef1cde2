"""The package layout changed, its behaviour did not: every public function
and module gives the outputs the code before the move gave
(``tests/data/outputs_before_layout.npz``, written by
``layout_outputs.py`` at commit 32f054e).

Bitwise where the bits can be expected to match: the same jax and jaxlib
and the same CPU model as the machine that wrote the file (XLA:CPU compiles
for the host's vector units, and other builds may order a reduction
differently). Elsewhere to float32 rounding: of the largest value of each
output (a gradient that sums many terms rounds on that scale), and for the
two inputs offset by 1e4, of the mean of values near 1e4 (about 1e-3 to
1e-2, depending on the order the build sums in).
"""

import pathlib

import numpy as np
import pytest

from tests.jaxnorm import layout_outputs

SAVED = pathlib.Path(__file__).resolve().parents[1] / "data" / "outputs_before_layout.npz"


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
    assert value.dtype == before.dtype and value.shape == before.shape, name
    if same_build:
      if not np.array_equal(value, before, equal_nan=True):
        changed.append(name)
    elif not np.allclose(value, before, rtol=2e-5, atol=_rounding(name, before), equal_nan=True):
      changed.append(name)
  assert not changed, f"{len(changed)} outputs differ ({'bitwise' if same_build else 'beyond rounding'}): {changed}"


OFFSET = ("batch_norm_offset/y", "layer_norm_offset")  # inputs 1e4 + N(0, 1)


def _rounding(name: str, before: np.ndarray) -> float:
  """The absolute tolerance of ``name`` across jax builds (module docstring)."""
  if name in OFFSET:
    return 5e-2
  finite = before[np.isfinite(before)] if before.dtype.kind in "fc" else before
  return 2e-5 * max(1.0, float(np.max(np.abs(finite), initial=0.0)))
