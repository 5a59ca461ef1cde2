"""benchmarks/device_check.py: the one-call accelerator check, at toy size.

``--smoke`` runs every section on the CPU (the Pallas kernels interpreted,
PyTorch's CPU kernels standing in for CUDA); these tests pin that the JSON
it writes has every section, sane figures and passing numerics, that the
time budget skips cases visibly rather than dropping them, and that bad
arguments get a message, not a traceback. No timing is asserted.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, timeout=240):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  return subprocess.run(
    [sys.executable, "-m", "benchmarks.device_check", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_smoke_run(tmp_path):
  """One run (about 30 s on two idle cores), checked section by section.

  A single test rather than a module fixture, so pytest-xdist runs it once.
  """
  proc = _run("--out", str(tmp_path), "--smoke")
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  smoke = json.loads((tmp_path / "device_check.json").read_text()), (tmp_path / "device_check.md").read_text()
  _check_environment(smoke)
  _check_every_section(smoke)
  _check_numerics(smoke)
  _check_layers(smoke)
  _check_training_step(smoke)


def _check_environment(smoke):
  result, _ = smoke
  env = result["environment"]
  assert env["device_kind"] and env["platform"] == "cpu"
  assert env["versions"]["jax"] and env["versions"]["jaxlib"] and env["versions"]["flax"]
  assert env["git_commit"]
  assert result["smoke"] is True and _positive(result["wall_s"])


def _check_every_section(smoke):
  result, markdown = smoke
  sections = result["sections"]
  assert set(sections) == {"bandwidth", "numerics", "layers", "train_step"}
  for name, section in sections.items():
    assert section["status"] == "done", (name, section.get("error"))
    assert _positive(section["wall_s"])
  for heading in ("# Device check", "## Copy bandwidth", "## Numerics", "## Layers", "## Training step"):
    assert heading in markdown


def _check_numerics(smoke):
  """Every case passed, on the path expected for it; the kernels really ran."""
  numerics = smoke[0]["sections"]["numerics"]
  cases = numerics["cases"]
  assert numerics["all_passed"] and not numerics["failed"]
  assert {c["norm"] for c in cases} == {"gn", "bn", "ln", "rms", "in"}
  assert {c["implementation"] for c in cases} == {"fused", "pallas"}
  for case in cases:
    assert case["passed"], case
    assert case["path"] == case["expected_path"]
    assert set(case["errors"]) == {"y", "mean", "var", "dx", "dscale", "dbias", "dx_of_stats"}
    assert 0 <= case["max_error"] <= case["tolerance"]
  assert numerics["pallas_kernel_cases"] >= 1  # the kernels really ran


def _check_layers(smoke):
  result = smoke[0]
  copy = result["sections"]["bandwidth"]["bytes_per_s"]
  assert _positive(copy)
  layers = result["sections"]["layers"]
  assert layers["timed"] == len(layers["rows"]) and layers["skipped"] == 0
  assert {r["mode"] for r in layers["rows"]} == {"forward", "forward+backward"}
  for row in layers["rows"]:
    res = row["results"]
    for name in ("fused", "reference", "flax"):
      entry = res[name]
      assert _positive(entry["seconds"]) and _positive(entry["fraction_of_copy"])
      assert entry["bytes"] >= 2 * row["elements"]  # at least x read and y written, 1 byte each
      inside = entry["in_program"]  # timed inside one lax.fori_loop program too
      assert _positive(inside["seconds"]) and inside["calls"] == 2 and inside["bytes"] == entry["bytes"]
    assert "seconds" in res["pallas"] if row["pallas_applies"] else "skipped" in res["pallas"]
    assert "seconds" in res["torch"] or "skipped" in res["torch"]
  assert any(r["pallas_applies"] for r in layers["rows"])


def test_the_in_program_loop_feeds_each_call_the_previous_output():
  """The looped programs keep every call (the carry depends on each) and
  stay finite; forward applies the norm K times, as K calls in a row do."""
  import jax.numpy as jnp

  from benchmarks import device_check as dc
  from benchmarks import norm_bench as nb

  case = nb.Case("gn", (2, 4, 4, 16), "NHWC", "float32", groups=4)
  inputs = nb.case_inputs(case)
  f = nb.jax_functions(case)["jaxnorm"]
  x, scale, bias, _ = inputs
  looped, args = dc.looped_computation(f, "forward", inputs, 3)
  expected = f(f(f(x, scale, bias), scale, bias), scale, bias)
  assert jnp.allclose(looped(*args), expected, atol=1e-5)
  looped, args = dc.looped_computation(f, "forward+backward", inputs, 25)
  dx, ds, db = looped(*args)
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in (dx, ds, db))
  text = looped.lower(*args).as_text()
  assert "while" in text  # one program, the loop inside it


def _check_training_step(smoke):
  train = smoke[0]["sections"]["train_step"]
  assert train["timed"] == len(train["rows"]) >= 1
  for row in train["rows"]:
    libraries = ("jaxnorm", "jaxnorm-reference", "flax")
    assert set(row["images_per_sec"]) == {f"{norm}/{library}" for norm in ("gn", "bn") for library in libraries}
    assert all(_positive(v) for v in row["images_per_sec"].values())
    assert all(m["temp_bytes"] >= 0 for m in row["memory"].values())


@pytest.mark.slow
def test_exhausted_budget_records_every_case_as_skipped(tmp_path):
  proc = _run(
    "--out", str(tmp_path), "--smoke", "--sections", "layers", "train_step", "--budget-s", "0.5", "--grace-s", "600"
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads((tmp_path / "device_check.json").read_text())
  layers, train = result["sections"]["layers"], result["sections"]["train_step"]
  assert layers["timed"] == 0 and layers["skipped"] == len(layers["rows"]) > 0
  assert all("time budget" in r["skipped"] for r in layers["rows"])
  assert train["timed"] == 0 and train["skipped"] == len(train["rows"]) > 0
  assert "skipped" in (tmp_path / "device_check.md").read_text()


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--smoke"], "--out"),
    (["--out", "{tmp}", "--budget-s", "-3"], "positive float"),
    (["--out", "{tmp}", "--budget-s", "soon"], "positive float"),
    (["--out", "{tmp}", "--reps", "0"], "positive int"),
    (["--out", "{tmp}", "--sections", "everything"], "invalid choice"),
    (["--out", "{file}"], "is a file"),
  ],
)
def test_bad_arguments_give_a_message_not_a_traceback(argv, message, tmp_path, capsys):
  from benchmarks import device_check

  (tmp_path / "a_file").write_text("")
  argv = [a.format(tmp=tmp_path / "out", file=tmp_path / "a_file") for a in argv]
  with pytest.raises(SystemExit) as exit_info:
    device_check.parse_args(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
