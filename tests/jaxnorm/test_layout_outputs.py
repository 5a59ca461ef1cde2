"""The package layout changed, its behaviour did not: every public function
and module gives the outputs the code before the move gave
(``tests/data/outputs_before_layout.npz``, written by
``layout_outputs.py`` at commit 32f054e).

Bitwise where the bits can be expected to match: the same jax and jaxlib
and the same CPU model as the machine that wrote the file (XLA:CPU compiles
for the host's vector units, and other builds may order a reduction
differently). Elsewhere to float32 rounding.
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
    elif not np.allclose(value, before, rtol=2e-5, atol=2e-5, equal_nan=True):
      changed.append(name)
  assert not changed, f"{len(changed)} outputs differ ({'bitwise' if same_build else 'beyond rounding'}): {changed}"
