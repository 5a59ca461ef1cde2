"""The package layout: one room per normalizer in each layer, mirrored
front ends, every module in the factory, a shallow import graph."""

import ast
import pathlib

import jaxnorm

PACKAGE = pathlib.Path(jaxnorm.__file__).parent


def _module_name(path: pathlib.Path) -> str:
  parts = ("jaxnorm",) + path.relative_to(PACKAGE).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
  """Module -> the jaxnorm modules it imports at module level."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.parse(path.read_text()).body:
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxnorm"):
        for alias in node.names:  # `from jaxnorm.x import y` imports jaxnorm.x.y if it is a module
          target = f"{node.module}.{alias.name}"
          edges.add(target if target in modules else node.module)
      elif isinstance(node, ast.Import):
        edges |= {a.name for a in node.names if a.name.startswith("jaxnorm")}
    graph[name] = edges - {name}
  return graph


def _depth(graph, name, seen=()) -> int:
  assert name not in seen, f"import cycle: {' -> '.join(seen + (name,))}"
  return max((1 + _depth(graph, m, seen + (name,)) for m in graph[name]), default=0)


def test_the_import_graph_is_at_most_six_levels_deep_and_acyclic():
  graph = _import_graph()
  assert _depth(graph, "jaxnorm") <= 6  # import steps below the package (11 before the layout issue)
  assert _depth(graph, "jaxnorm") >= 4  # the check sees the real graph


def test_the_front_ends_never_import_each_other_and_families_not_each_other():
  for name, edges in _import_graph().items():
    if name.startswith("jaxnorm.linen"):
      assert not any(e.startswith("jaxnorm.nnx") for e in edges), name
    if name.startswith("jaxnorm.nnx"):
      assert not any(e.startswith("jaxnorm.linen") for e in edges), name
    if name.startswith("jaxnorm.functional."):
      assert not any(e.startswith(("jaxnorm.functional.", "jaxnorm.linen", "jaxnorm.nnx")) for e in edges), name
    if name.startswith("jaxnorm._core"):
      assert all(e.startswith("jaxnorm._core") for e in edges), name


def _families(folder: str) -> set[str]:
  return {p.stem for p in (PACKAGE / folder).glob("*.py") if not p.stem.startswith("_")}


def test_linen_and_nnx_mirror_each_other_file_for_file_over_the_functions():
  assert _families("linen") == _families("nnx")
  assert _families("linen") <= _families("functional")


def test_every_module_has_both_front_ends_and_a_factory_entry():
  registered = {
    jaxnorm.create_norm(n, virtual_batch_size=2).module if n == "ghost_bn" else jaxnorm.create_norm(n).module
    for n in jaxnorm.NORM_NAMES
  }
  registered_nnx = {
    jaxnorm.create_norm(n, virtual_batch_size=2).nnx_module if n == "ghost_bn" else jaxnorm.create_norm(n).nnx_module
    for n in jaxnorm.NORM_NAMES
  }
  classes = [name for name in jaxnorm.linen.__all__ if isinstance(getattr(jaxnorm.linen, name), type)]
  for name in classes:
    linen_class, nnx_class = getattr(jaxnorm.linen, name), getattr(jaxnorm.nnx, name)
    assert linen_class.__module__.split(".")[-1] == nnx_class.__module__.split(".")[-1], name
    assert linen_class is getattr(jaxnorm, name)
    # StandardizedConv is the convolution of the "+ws" names; SpectralNorm
    # and WeightNorm wrap a layer and normalize its weights, not activations;
    # the conditional layers take a second input (the conditioning).
    conditional = ("AdaLNZero", "AdaGroupNorm", "FiLM", "ConditionalBatchNorm")
    if name not in ("StandardizedConv", "SpectralNorm", "WeightNorm") + conditional:
      assert linen_class in registered and nnx_class in registered_nnx, name
  assert jaxnorm.create_norm("gn+ws").conv is jaxnorm.StandardizedConv
  assert jaxnorm.create_norm("gn+ws").nnx_conv is jaxnorm.nnx.StandardizedConv
  assert sorted(classes) == sorted(n for n in jaxnorm.nnx.__all__ if isinstance(getattr(jaxnorm.nnx, n), type))
  # Model conversion, in each front end.
  assert jaxnorm.linen.convert.__module__ == "jaxnorm.linen._convert"
  assert jaxnorm.nnx.convert.__module__ == "jaxnorm.nnx._convert"


def test_the_version_is_the_distribution_metadata_of_pyproject():
  """One source of truth: pyproject.toml's version, read back from the
  installed metadata (the built wheel's: tests/jaxnorm/test_packaging.py)."""
  import tomllib

  import jaxnorm

  pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
  assert jaxnorm.__version__ == pyproject["project"]["version"]
  assert '__version__ = "' not in (PACKAGE / "__init__.py").read_text()  # no second, hand-kept copy
