"""The distributions hold the jaxnorm package only, and the wheel works alone.

Builds the sdist and the wheel from a copy of the repository's tracked files
with the installed setuptools (the backend pyproject.toml names), checks
their file lists, installs the wheel into a fresh virtualenv and imports
jaxnorm there, with the repository off the path and no ``experiments``
package to be found.
"""

import os
import pathlib
import shutil
import site
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
# What a distribution may hold besides the package: its metadata.
METADATA = {"PKG-INFO", "README.md", "pyproject.toml", "setup.cfg", "MANIFEST.in", "LICENSE"}

pytestmark = pytest.mark.slow


def _tracked_copy(dst: pathlib.Path) -> pathlib.Path:
  """The files git tracks (the tree a clean clone has), copied to ``dst``."""
  listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
  for name in filter(None, listed.decode().split("\0")):
    source = ROOT / name
    if source.is_file():
      (dst / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, dst / name)
  return dst


@pytest.fixture(scope="module")
def distributions(tmp_path_factory):
  if shutil.which("git") is None or not (ROOT / ".git").exists():
    pytest.skip("needs a git checkout to list the tracked files")
  source = _tracked_copy(tmp_path_factory.mktemp("source"))
  out = tmp_path_factory.mktemp("dist")
  build = (
    "import sys\nfrom setuptools import build_meta as b\n"
    "out = sys.argv[1]  # read first: the backend rewrites sys.argv\n"
    "names = b.build_sdist(out), b.build_wheel(out)\nprint('built', *names)\n"
  )
  proc = subprocess.run([sys.executable, "-c", build, str(out)], cwd=source, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  sdist, wheel = [line for line in proc.stdout.splitlines() if line.startswith("built ")][-1].split()[1:]
  return out / sdist, out / wheel


def test_wheel_holds_the_jaxnorm_package_only(distributions):
  _, wheel = distributions
  assert wheel.name == f"jaxnorm-{VERSION}-py3-none-any.whl"
  names = zipfile.ZipFile(wheel).namelist()
  outside = [n for n in names if not n.startswith(("jaxnorm/", f"jaxnorm-{VERSION}.dist-info/"))]
  assert not outside, outside
  sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "jaxnorm").rglob("*.py")}
  assert sources <= set(names), sources - set(names)
  assert "jaxnorm/py.typed" in names  # PEP 561: the package's annotations are for type checkers


def test_sdist_holds_the_jaxnorm_package_and_its_metadata_only(distributions):
  sdist, _ = distributions
  top = f"jaxnorm-{VERSION}/"
  with tarfile.open(sdist) as tar:
    names = [m.name for m in tar.getmembers() if m.isfile()]
  assert all(n.startswith(top) for n in names), names
  inside = [n[len(top) :] for n in names]
  outside = [n for n in inside if not n.startswith(("jaxnorm/", "jaxnorm.egg-info/")) and n not in METADATA]
  assert not outside, outside
  assert "jaxnorm/py.typed" in inside


def test_the_wheel_installs_and_imports_without_the_repository(distributions, tmp_path):
  _, wheel = distributions
  env_dir = tmp_path / "venv"
  venv.create(env_dir, with_pip=False)
  python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
  # Without the repository on PYTHONPATH (tests/conftest.py puts it there):
  # its jaxnorm.egg-info would make pip think jaxnorm is installed already.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)]
  proc = subprocess.run(install, cwd=tmp_path, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The dependencies (jax, flax, numpy) from this environment's
  # site-packages, appended after the new environment's own: a path line in
  # a .pth file adds the directory without running the .pth files in it, so
  # this environment's editable install of the repository stays inactive.
  purelib = subprocess.run(
    [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  (pathlib.Path(purelib) / "_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
  check = (
    "import importlib.util, pathlib, sys\n"
    "import jax.numpy as jnp\n"
    "import jaxnorm, jaxnorm.nnx\n"
    "print(pathlib.Path(jaxnorm.__file__).resolve())\n"
    "print(importlib.util.find_spec('experiments') is None, importlib.util.find_spec('benchmarks') is None)\n"
    "y = jaxnorm.layer_norm(jnp.arange(8.0).reshape(2, 4))\n"
    "print(float(abs(y.mean(-1)).max()) < 1e-6)\n"
    "print(jaxnorm.__version__)\n"
  )
  proc = subprocess.run([str(python), "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  location, no_experiments, works, version = proc.stdout.split("\n")[:4]
  assert pathlib.Path(location).is_relative_to(env_dir.resolve()), location
  assert no_experiments == "True True"
  assert works == "True"
  assert version == VERSION  # from the wheel's metadata, which pyproject.toml wrote
