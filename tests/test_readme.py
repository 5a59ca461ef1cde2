"""The README's Python examples run as written (in order, one namespace)."""

import re
from pathlib import Path

import numpy as np


def test_readme_python_examples_run():
  text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert len(blocks) >= 2
  namespace = {}
  for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)
  # The NNX examples end in eval mode with updated running averages, and training lowered the loss.
  model = namespace["model"]
  assert model.bn.use_running_average is True
  assert not np.allclose(model.bn.mean[...], 0.0)
  losses = namespace["losses"]
  assert len(losses) == 5 and losses[-1] < losses[0]
