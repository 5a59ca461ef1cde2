"""Fixtures of the experiments tests: a tiny CIFAR-10 look-alike
(``tiny_cifar.py``, ``RECORDS`` records per file) and a loader that
accepts it (``tiny_records``: a module that trains on the tiny files marks
itself ``pytestmark = pytest.mark.usefixtures("tiny_records")``; the data
tests check the real sizes)."""

import pytest

from tiny_cifar import RECORDS
from tiny_cifar import load_tiny_records
from tiny_cifar import write_tiny_cifar


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("cifar")
  write_tiny_cifar(root, RECORDS)
  return root


@pytest.fixture
def tiny_records(monkeypatch):
  """The loader enforces the real file size; the tiny files have RECORDS records."""
  load_tiny_records(monkeypatch, RECORDS)
