"""Every script in benchmarks/ starts: a name that a refactor of jaxnorm or
experiments removed fails here, not on a device lease.

Each runs in a subprocess from the repository root, the way its docstring
says to run it (``python benchmarks/NAME.py`` or ``python -m
benchmarks.NAME``): the command-line scripts with ``--help`` (their imports
and argument parser, a couple of seconds each), the modules without a
command line by importing them, the shell script through ``bash -n``. The
``slow`` leg also runs the two training-pipeline benchmarks at toy size,
which reaches the code their functions call (the training engine, the
device transfer). ``benchmarks/device_check.py --smoke`` has its own tests
(``test_device_check.py``).
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "__init__.py")
SHELL_SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.sh"))


def _has_command_line(path: Path) -> bool:
  return 'if __name__ == "__main__":' in path.read_text()


def _documented_command(path: Path) -> list[str] | None:
  """The interpreter arguments the script's docstring runs it with."""
  doc = ast.get_docstring(ast.parse(path.read_text())) or ""
  if f"python -m benchmarks.{path.stem}" in doc:
    return ["-m", f"benchmarks.{path.stem}"]
  if f"python benchmarks/{path.name}" in doc:
    return [str(path.relative_to(ROOT))]
  return None


def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
  # As a user runs them: from the root, without the tests' PYTHONPATH.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_starts(name):
  path = BENCHMARKS / name
  if _has_command_line(path):
    command = _documented_command(path)
    assert command, f"{name}: its docstring names no command (python benchmarks/{name} or python -m benchmarks.…)"
    proc = _run([*command, "--help"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout
  else:
    proc = _run(["-c", f"import benchmarks.{path.stem}"])
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("name", SHELL_SCRIPTS)
def test_shell_script_parses(name):
  proc = subprocess.run(["bash", "-n", str(BENCHMARKS / name)], capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_train_throughput_at_toy_size():
  """One step of ResNet-8 (width 4) on 2 simulated devices, through the training engine (about 20 s)."""
  proc = _run(
    [
      "benchmarks/train_throughput.py",
      *("--depth", "8", "--width", "4", "--norms", "bn", "--per-device-batch", "2", "--num-devices", "2"),
      *("--steps", "1", "--execution", "vmap", "--xla-cpu", "default"),
    ],
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '"execution": "vmap"' in proc.stdout and '"images_per_sec"' in proc.stdout


@pytest.mark.slow
def test_data_throughput_at_toy_size():
  """Two batches of 8 through the input pipeline, on the CIFAR-10 copy in $JAXNORM_DATA."""
  root = os.environ.get("JAXNORM_DATA")
  if not root or not (Path(root) / "cifar-10-batches-bin" / "test_batch.bin").is_file():
    pytest.skip("set JAXNORM_DATA to a directory containing cifar-10-batches-bin/")
  proc = _run(
    ["benchmarks/data_throughput.py", "--data-dir", root, "--batch-size", "8", "--num-batches", "2", "--warmup", "1"]
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "images/s" in proc.stdout
