"""Every public function under chex's transformation variants.

``chex.variants`` runs each test with and without ``jax.jit``; the
functions that reduce across devices (``axis_name``) also run under
``jax.pmap`` over this host's devices, each holding a copy of the batch,
where their statistics must equal the batch's own (skipped with one device;
``test_pmap_variants_on_four_devices`` runs them in a subprocess with
four). The expected values come from the eager reference path (the
statistics engine composed with ``jax.numpy``), itself checked against
float64 NumPy elsewhere (``test_functional.py`` and the per-normalizer
files).
"""

import functools
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized

import jaxnorm as jn

C = 8
X = jax.random.normal(jax.random.key(0), (4, 6, 6, C)) * 2.0 + 1.0
KERNEL = jax.random.normal(jax.random.key(1), (3, 3, 4, C))
_k = jax.random.split(jax.random.key(2), 4)
SCALE = 1.0 + 0.1 * jax.random.normal(_k[0], (C,))
BIAS = 0.1 * jax.random.normal(_k[1], (C,))
V = 0.5 + 0.1 * jax.random.normal(_k[2], (C,))
TAU = 0.1 * jax.random.normal(_k[3], (C,))
MEAN, VAR = jnp.full((C,), 0.5), jnp.full((C,), 2.0)

# name -> function of the input and, for the cross-device ones, axis_name.
FUNCTIONS = {
  "moments": lambda x, axis_name=None: jn.moments(x, (0, 1, 2), axis_name=axis_name),
  "normalize": lambda x: jn.normalize(x, *(a.reshape(1, 1, 1, C) for a in (MEAN, VAR, SCALE, BIAS)), epsilon=1e-5),
  "batch_norm": lambda x, axis_name=None: jn.batch_norm(x, SCALE, BIAS, MEAN, VAR, momentum=0.9, axis_name=axis_name),
  "batch_norm_ghost": lambda x: jn.batch_norm(x, SCALE, BIAS, MEAN, VAR, virtual_batch_size=2),
  "batch_renorm": lambda x, axis_name=None: jn.batch_renorm(
    x, SCALE, BIAS, MEAN, VAR, r_max=1.5, d_max=0.5, axis_name=axis_name
  ),
  "layer_norm": lambda x: jn.layer_norm(x, SCALE, BIAS),
  "group_norm": lambda x: jn.group_norm(x, SCALE, BIAS, num_groups=4),
  "group_norm_nchw": lambda x: jn.group_norm(jnp.moveaxis(x, -1, 1), SCALE, BIAS, num_groups=4, channel_axis=1),
  "instance_norm": lambda x: jn.instance_norm(x, SCALE, BIAS),
  "rms_norm": lambda x: jn.rms_norm(x, SCALE),
  "filter_response_norm": lambda x: jn.filter_response_norm(x, SCALE, BIAS, TAU),
  "evonorm_b0": lambda x, axis_name=None: jn.evonorm_b0(x, SCALE, BIAS, V, VAR, axis_name=axis_name),
  "evonorm_s0": lambda x: jn.evonorm_s0(x, SCALE, BIAS, V, num_groups=4),
  "standardize_weight": lambda x: jn.standardize_weight(KERNEL, SCALE, scaled=True),
}
CROSS_DEVICE = ("moments", "batch_norm", "batch_renorm", "evonorm_b0")


def _reference(fn):
  with jn.implementation("reference"):
    return fn(X)


class PublicFunctionsUnderTransformations(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*((name, name) for name in FUNCTIONS))
  def test_equals_the_eager_reference(self, name):
    fn = FUNCTIONS[name]
    got = self.variant(fn)(X)
    expected = _reference(fn)
    chex.assert_trees_all_equal_shapes_and_dtypes(got, expected)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-5)

  @chex.variants(with_pmap=True)
  @parameterized.named_parameters(*((name, name) for name in CROSS_DEVICE))
  def test_statistics_across_copies_of_the_batch_equal_the_batch(self, name):
    """pmap over the host's devices, each with a copy of the batch, reducing
    over the pmap axis ('i'): every device's result is the batch's."""
    got = self.variant(functools.partial(FUNCTIONS[name], axis_name="i"))(X)
    expected = _reference(FUNCTIONS[name])
    if name == "moments":  # the same mean and variance, over every copy's examples
      chex.assert_trees_all_close(got.count, jax.device_count() * expected.count)
      got, expected = (got.mean, got.var), (expected.mean, expected.var)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_pmap_variants_on_four_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  command = [
    sys.executable,
    "-m",
    "pytest",
    "-q",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:xdist",
    __file__,
    "-k",
    "across_copies",
  ]
  proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert f"{len(CROSS_DEVICE)} passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
