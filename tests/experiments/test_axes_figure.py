"""The axes figure reads the same reduction-axes definitions the normalizers use."""

import jax
import numpy as np
import pytest

import jaxnorm
from experiments import axes_figure
from jaxnorm._core import reduction_axes as _reduction_axes

N, C, H, W = axes_figure.N, axes_figure.C, axes_figure.H, axes_figure.W


def shaded_counts() -> dict[str, int]:
  return {p.title.split(" (")[0]: int(p.mask.sum()) for p in axes_figure.panels()}


def test_each_panel_shades_one_statistic_of_the_right_size():
  assert shaded_counts() == {
    "Batch Norm": N * H * W,
    "Ghost BN": axes_figure.VIRTUAL_BATCH * H * W,
    "Layer Norm": C * H * W,
    "Instance Norm": H * W,
    "Group Norm": C // axes_figure.NUM_GROUPS * H * W,
    "FRN": H * W,
  }


def test_shaded_elements_are_what_batch_norm_pools():
  """Perturbing a shaded element moves the statistic; an unshaded one does not."""
  x = jax.random.normal(jax.random.key(0), (N, C, H, W))
  panel = axes_figure.panels()[0]
  mask = panel.mask.reshape(N, C, H, W)
  stats = lambda x: jaxnorm.batch_norm(x, axis=1)[1].mean
  c = C - 1  # the shaded statistic is the last channel's
  inside = np.argwhere(mask)[0]
  outside = np.argwhere(~mask)[0]
  assert stats(x.at[tuple(inside)].add(1.0))[c] != stats(x)[c]
  assert stats(x.at[tuple(outside)].add(1.0))[c] == stats(x)[c]


# (definition, a normalizer that computes with it, the panels drawn from it)
PATCHES = [
  ("instance_norm_axes", lambda x: jaxnorm.instance_norm(x, feature_axes=1), {"Instance Norm", "FRN"}),
  ("group_norm_axes", lambda x: jaxnorm.group_norm(x, num_groups=3, channel_axis=1), {"Group Norm"}),
  ("batch_norm_axes", lambda x: jaxnorm.batch_norm(x, axis=1)[0], {"Batch Norm", "Ghost BN"}),
  ("filter_response_norm_axes", lambda x: jaxnorm.filter_response_norm(x, channel_axis=1), {"FRN"}),
]
IDS = [p[0] for p in PATCHES]


@pytest.mark.parametrize("definition, normalize, titles", PATCHES, ids=IDS)
def test_the_normalizer_computes_with_the_definition(definition, normalize, titles, monkeypatch):
  original = getattr(_reduction_axes, definition)
  calls = []

  def spy(*args, **kwargs):
    calls.append(args)
    return original(*args, **kwargs)

  monkeypatch.setattr(_reduction_axes, definition, spy)
  normalize(jax.random.normal(jax.random.key(1), (N, C, H, W)))
  assert calls


@pytest.mark.parametrize("definition, normalize, titles", PATCHES, ids=IDS)
def test_changing_a_definition_changes_the_figure(definition, normalize, titles, monkeypatch):
  before = shaded_counts()
  original = getattr(_reduction_axes, definition)
  # Reduce one axis fewer: drop the last reduced axis.
  monkeypatch.setattr(_reduction_axes, definition, lambda *a, **k: original(*a, **k)[:-1])
  after = shaded_counts()
  assert {t for t in before if after[t] != before[t]} == titles
  assert all(after[t] < before[t] for t in titles)
  if definition != "batch_norm_axes":  # batch norm's feature-shaped statistics need every axis but C
    x = jax.random.normal(jax.random.key(1), (N, C, H, W))
    monkeypatch.setattr(_reduction_axes, definition, original)
    y_before = normalize(x)
    monkeypatch.setattr(_reduction_axes, definition, lambda *a, **k: original(*a, **k)[:-1])
    assert not np.allclose(y_before, normalize(x))


def test_create_norm_ln_uses_the_layer_norm_definition():
  assert tuple(jaxnorm.create_norm("ln").kwargs["reduction_axes"]) == _reduction_axes.layer_norm_axes(4)


def test_figure_is_written(tmp_path):
  axes_figure.draw(tmp_path / "axes.png")
  assert (tmp_path / "axes.png").stat().st_size > 20_000
