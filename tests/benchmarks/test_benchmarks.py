"""The benchmark harnesses measure what they say they measure."""

import jax.numpy as jnp
import pytest

import jaxnorm
from benchmarks import fast_path_compare
from jaxnorm._core import dispatch as _dispatch


def test_fast_path_compare_runs_the_loaded_baseline(tmp_path):
  """`_use` must make the fast path call the loaded module: a harness that
  patched a module no longer consulted would time the current code twice
  and report ratios of 1."""
  path = tmp_path / "baseline_fused.py"
  path.write_text("def standardize(x, scale, bias, **kwargs):\n  raise RuntimeError('the loaded baseline ran')\n")
  current = _dispatch._fused
  x = jnp.ones((2, 4, 4, 8))
  try:
    fast_path_compare._use(fast_path_compare._load(path))
    with jaxnorm.implementation("fused"), pytest.raises(RuntimeError, match="the loaded baseline ran"):
      jaxnorm.group_norm(x, num_groups=2)
  finally:
    fast_path_compare._use(current)
  with jaxnorm.implementation("fused"):
    assert jaxnorm.group_norm(x, num_groups=2).shape == x.shape
