"""What result files record about their origin: the commit, even on a copy."""

import re

from experiments import provenance


def test_commit_from_the_repository_names_a_sha(monkeypatch):
  monkeypatch.delenv("JAXNORM_GIT_COMMIT", raising=False)
  commit = provenance.git_commit.__wrapped__()
  assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", commit), commit


def test_a_launcher_named_commit_wins_over_the_copy_s_git(monkeypatch):
  """A tree copied to a device machine may carry a stale .git; the commit the
  launcher names is the one recorded, marked as given."""
  monkeypatch.setenv("JAXNORM_GIT_COMMIT", " 6d53e46 ")
  assert provenance.git_commit.__wrapped__() == "6d53e46 (given by JAXNORM_GIT_COMMIT)"
