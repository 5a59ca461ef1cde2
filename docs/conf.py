"""Sphinx configuration of jaxnorm's documentation.

Build (warnings are errors, as in CI), then run the examples:

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest
"""

import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # jaxnorm from this checkout, installed or not

project = "jaxnorm"
author = "the jaxnorm authors"
release = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
version = release

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.doctest",
  "sphinx.ext.mathjax",
  "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # pages start at their own level-1 title

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# The examples of the pages and of the docstrings (`>>>` blocks) run with
# the package imported under its usual names.
doctest_global_setup = """
import jax
import jax.numpy as jnp
import numpy as np
import jaxnorm
import jaxnorm as jn
from jaxnorm import *
"""

html_theme = "alabaster"
html_title = f"jaxnorm {release}"
html_static_path = []
