"""The Python examples of the README and of the documentation pages run as
written (each file's blocks in order, in one namespace), and the API
reference names every public name."""

import re
from pathlib import Path

import numpy as np
import pytest

import jaxnorm
import jaxnorm.nnx

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))


def _run_python_blocks(name: str) -> dict:
  blocks = re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(), flags=re.S)
  namespace = {}
  for block in blocks:
    exec(compile(block, name, "exec"), namespace)
  return namespace


def test_readme_python_examples_run():
  namespace = _run_python_blocks("README.md")
  assert "y" in namespace and namespace["y"].shape == (8, 32, 32, 16)


@pytest.mark.parametrize("page", [p for p in PAGES if "```python" in (ROOT / p).read_text()])
def test_documentation_python_examples_run(page):
  namespace = _run_python_blocks(page)
  if page == "docs/getting_started.md":
    # The NNX examples end in eval mode with updated running averages, and training lowered the loss.
    model = namespace["model"]
    assert model.bn.use_running_average is True
    assert not np.allclose(model.bn.mean[...], 0.0)
    losses = namespace["losses"]
    assert len(losses) == 5 and losses[-1] < losses[0]


def test_api_reference_documents_every_public_name():
  text = (ROOT / "docs" / "api.md").read_text()
  documented = set(re.findall(r"\.\. auto(?:function|class|data):: (jaxnorm(?:\.nnx|\.linen)?\.\w+)", text))
  namespaces = {"nnx", "functional", "linen"}  # modules: their names are documented one by one
  public = {f"jaxnorm.{n}" for n in jaxnorm.__all__ if n not in namespaces} | {
    f"jaxnorm.nnx.{n}" for n in jaxnorm.nnx.__all__
  }
  # jaxnorm.linen's classes are jaxnorm's (documented as such); its own names:
  public |= {f"jaxnorm.linen.{n}" for n in jaxnorm.linen.__all__ if not hasattr(jaxnorm, n)}
  assert documented == public, (sorted(public - documented), sorted(documented - public))
