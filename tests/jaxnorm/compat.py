"""What the tests need from jax that its oldest supported version (the
floor in pyproject.toml) spells differently."""

import jax


def enable_x64(enabled: bool = True):
  """Context manager: 64-bit types on (or off) inside it.

  ``jax.enable_x64`` from jax 0.8; ``jax.experimental.enable_x64`` /
  ``disable_x64`` before (deprecated since).
  """
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(enabled)
  from jax import experimental

  return experimental.enable_x64() if enabled else experimental.disable_x64()
