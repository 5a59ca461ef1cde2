"""The experiments' XLA:CPU setting: appended once, a user's choice kept."""

import os
import subprocess
import sys

import pytest

from experiments import xla_cpu


@pytest.fixture
def new_jaxlib(monkeypatch):
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 10))


def test_appends_the_flag_to_existing_flags(new_jaxlib):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_cpu.configure(env) == "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type="
  assert xla_cpu.configure(env).count("ynn") == 1  # idempotent
  assert xla_cpu.configure({}) == "--xla_cpu_experimental_ynn_fusion_type="


def test_keeps_a_users_own_setting_and_the_opt_out(new_jaxlib):
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}
  assert xla_cpu.configure(mine) == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
  env = {"JAXNORM_KEEP_YNN": "1"}
  assert xla_cpu.configure(env) == "" and "XLA_FLAGS" not in env


def test_older_jaxlib_gets_no_unknown_flag(monkeypatch):
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 4))
  env = {}
  assert xla_cpu.configure(env) == "" and "XLA_FLAGS" not in env


def test_the_installed_jaxlib_accepts_the_flag():
  """XLA aborts on an unknown flag: a subprocess with the flag set must run."""
  flags = xla_cpu.configure({})
  result = subprocess.run(
    [sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
    env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "3.0"
