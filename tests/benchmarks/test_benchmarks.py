"""The benchmark harnesses measure what they say they measure."""

import jax.numpy as jnp
import pytest

import jaxnorm
from benchmarks import fast_path_compare
from benchmarks import layer_norm_sizes
from benchmarks import norm_bench
from benchmarks import page_faults
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


@pytest.mark.parametrize(
  "norm, shape, layout", [("gn", (4, 4, 4, 16), "NCHW"), ("bn", (4, 4, 4, 16), "NHWC"), ("ln", (2, 8, 16), "NTD")]
)
def test_norm_bench_times_the_modulated_norm_it_says(norm, shape, layout):
  """``jaxnorm-modulated`` is the same norm with a per-example modulation:
  its output is ``jaxnorm``'s times ``1 + s`` plus ``t``; the summary and
  the report carry its ratio and its memory."""
  from benchmarks import norm_bench as nb

  case = nb.Case(norm, shape, layout, "float32", groups=4)
  x, scale, bias, _ = nb.case_inputs(case)
  fns = nb.jax_functions(case)
  n = shape[0]
  s, t = nb.modulation_inputs(case)
  per_example = (
    (lambda a: a[:, :, None, None])
    if layout == "NCHW"
    else (lambda a: a.reshape((n,) + (1,) * (x.ndim - 2) + a.shape[1:]))
  )
  expected = fns["jaxnorm"](x, scale, bias) * (1 + per_example(s)) + per_example(t)
  assert jnp.allclose(fns["jaxnorm-modulated"](x, scale, bias, s, t), expected, atol=1e-5)
  rows = []
  for mode in ("forward", "forward+backward"):
    seconds, temp_bytes = nb.bench_case(
      case, mode, 1, 1, peers=("jaxnorm", "jaxnorm-modulated", "jaxnorm-again", "floor")
    )
    assert set(seconds) == {"jaxnorm", "jaxnorm-modulated", "jaxnorm-again", "floor"}
    assert set(temp_bytes) == {"jaxnorm", "jaxnorm-modulated"}
    rows.append({**nb.dataclasses.asdict(case), "mode": mode, "seconds": seconds, "temp_bytes": temp_bytes})
  summary = nb.summarize(rows)
  assert all({"modulated_over_plain", "again_over_plain", "modulated_extra_temp_bytes"} <= set(s) for s in summary)
  report = nb.markdown({"hardware": {}, "git_commit": "x", "layers": rows, "summary": summary})
  assert "modulated / plain" in report and "again / plain (A/A)" in report


def test_page_faults_measures_every_peer_per_call():
  case = norm_bench.Case("bn", (4, 4, 4, 8), "NHWC", "float32")
  figures = page_faults.measure(case, rounds=2, calls=3)
  assert set(figures) == set(page_faults.PEERS)
  for f in figures.values():
    assert f["wall_ms"] > 0 and f["minor_faults"] >= 0 and f["system_ms"] >= 0


def test_layer_norm_sizes_reports_ratios_and_passes():
  rows = layer_norm_sizes.measure([1, 2], seq=4, features=16, rounds=1, reps=1)
  assert [r["shape"] for r in rows] == [[1, 4, 16], [2, 4, 16]]
  for row in rows:
    assert row["jaxnorm_over_floor"] == row["ms"]["jaxnorm"] / row["ms"]["floor"]
    moved = row["bytes_accessed_per_input"]
    # the floor reads x, ∂y (twice) and writes y, ∂x; LayerNorm also needs its row statistics first
    assert 5 <= moved["floor"] < moved["jaxnorm"], moved
  report = layer_norm_sizes.markdown({"rows": rows, "hardware": {}, "git_commit": "x", "command": "c"})
  assert report.count("\n| 1×4×16 |") == 1 and "| 2×4×16 |" in report


def test_reference_training_step_is_traced_under_the_reference_path():
  """'jaxnorm-reference' compiles the step with JAX's own derivative of the
  composition: no fusion fence (``reduce-precision``) of the fused path."""
  programs = {
    library: norm_bench.compile_train_step("gn", library, batch=2, depth=8, width=8)[0].as_text()
    for library in ("jaxnorm", "jaxnorm-reference")
  }
  assert "reduce-precision" in programs["jaxnorm"]
  assert "reduce-precision" not in programs["jaxnorm-reference"]
  assert _dispatch.get_implementation() == "auto"  # the choice did not leak
