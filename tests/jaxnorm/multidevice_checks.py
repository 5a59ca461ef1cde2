"""Cross-device checks on 8 simulated CPU devices.

Run by tests/jaxnorm/test_multidevice.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set
before JAX starts). Prints one JSON object: check name -> max abs error
against the float64 reference computed on the gathered global array.
"""

import json
import warnings

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxnorm as jn
from references import f64
from references import standardize

# As pyproject.toml's filterwarnings (pytest does not reach this subprocess):
# a DeprecationWarning attributed to jaxnorm or experiments is an error.
warnings.filterwarnings("error", category=DeprecationWarning, module=r"(jaxnorm|experiments)\b")

D = 8


def err(a, b):
  return float(np.max(np.abs(f64(a) - f64(b))))


def main():
  """Runs every check; returns {name: max abs error}."""
  assert jax.device_count() == D, jax.devices()
  mesh = Mesh(np.array(jax.devices()), ("data",))
  rng = np.random.default_rng(0)
  results = {}

  def shard_map(f, in_specs, out_specs):
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs))

  # 1. Unequal per-device counts: device d holds d+1 valid rows of 8 (a padded,
  #    uneven shard), with a different offset per device.
  x = rng.normal(size=(D * 8, 5)).astype(np.float32) + np.repeat(np.arange(D) * 4.0, 8)[:, None]
  valid = (np.arange(8)[None, :] < (np.arange(D) + 1)[:, None]).reshape(-1)
  mask = np.broadcast_to(valid[:, None], x.shape)
  xv = f64(x)[valid]

  m = shard_map(
    lambda xd, md: jn.moments(xd, 0, mask=md, axis_name="data", keepdims=True),
    (P("data"), P("data")),
    P("data"),
  )(x, mask)
  results["unequal_counts_mean"] = err(m.mean, np.tile(xv.mean(0), (D, 1)))
  results["unequal_counts_var"] = err(m.var, np.tile(xv.var(0), (D, 1)))
  results["unequal_counts_count"] = err(m.count, np.full((D, 5), valid.sum()))
  per_device_mean = np.mean([f64(x[d * 8 : d * 8 + d + 1]).mean(0) for d in range(D)], 0)
  results["naive_pmean_of_means_error"] = err(per_device_mean, xv.mean(0))

  # 2. SyncBN module under shard_map equals BN on the global batch.
  xb = rng.normal(1.0, 2.0, (D * 4, 6, 6, 3)).astype(np.float32)
  bn_sync = jn.BatchNorm(use_running_average=False, axis_name="data", momentum=0.9)
  variables = bn_sync.init(jax.random.key(0), xb[:4])

  def sync_step(xd):
    y, upd = bn_sync.apply(variables, xd, mutable=["batch_stats"])
    return y, upd["batch_stats"]["mean"][None], upd["batch_stats"]["var"][None]

  y, mean, var = shard_map(sync_step, P("data"), (P("data"), P("data"), P("data")))(xb)
  z, gmean, gvar = standardize(xb, (0, 1, 2), 1e-5)
  results["sync_bn_output"] = err(y, z)
  results["sync_bn_running_mean"] = err(mean, np.tile(0.1 * gmean.reshape(1, 3), (D, 1)))
  results["sync_bn_running_var"] = err(var, np.tile(0.9 + 0.1 * gvar.reshape(1, 3), (D, 1)))

  # 3. Per-device BN (no axis_name) equals BN over each device's ghost batch.
  bn_local = jn.BatchNorm(use_running_average=False)
  y = shard_map(lambda xd: bn_local.apply(variables, xd, mutable=["batch_stats"])[0], P("data"), P("data"))(xb)
  ghost = np.concatenate([standardize(xb[d * 4 : (d + 1) * 4], (0, 1, 2), 1e-5)[0] for d in range(D)])
  results["per_device_bn_output"] = err(y, ghost)

  # 4. pmap with axis_index_groups: two groups of four devices reduce separately.
  xp = rng.normal(size=(D, 3, 4)).astype(np.float32) + np.arange(D)[:, None, None]
  groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
  mp = jax.pmap(lambda xd: jn.moments(xd, 0, axis_name="data", axis_index_groups=groups), axis_name="data")(xp)
  expected = np.stack([f64(xp[:4]).reshape(-1, 4).mean(0)] * 4 + [f64(xp[4:]).reshape(-1, 4).mean(0)] * 4)
  expected_var = np.stack([f64(xp[:4]).reshape(-1, 4).var(0)] * 4 + [f64(xp[4:]).reshape(-1, 4).var(0)] * 4)
  results["axis_index_groups_mean"] = err(mp.mean, expected)
  results["axis_index_groups_var"] = err(mp.var, expected_var)
  ybn = jax.pmap(lambda xd: jn.batch_norm(xd, axis_name="data", axis_index_groups=groups)[0], axis_name="data")(xp)
  zg = np.concatenate(
    [standardize(xp[:4].reshape(-1, 4), (0,), 1e-5)[0], standardize(xp[4:].reshape(-1, 4), (0,), 1e-5)[0]]
  )
  results["axis_index_groups_batch_norm"] = err(ybn.reshape(-1, 4), zg)

  # 5. SPMD jit on a sharded global array: no axis_name, XLA inserts the
  #    collectives, and the result equals the unsharded computation.
  xs = jax.device_put(xb, NamedSharding(mesh, P("data")))
  y_spmd = jax.jit(lambda a: jn.group_norm(a, num_groups=3) + jn.batch_norm(a)[0])(xs)
  y_ref = jn.group_norm(xb, num_groups=3) + jn.batch_norm(xb)[0]
  results["spmd_sharded_input"] = err(y_spmd, y_ref)
  results["spmd_output_is_sharded"] = float(len(y_spmd.sharding.device_set) != D)

  # 6. NNX: jaxnorm.nnx.BatchNorm(axis_name) under shard_map, as a flax.nnx
  #    model is run there (split outside, merge inside, updated state out).
  results.update(nnx_checks(shard_map, xb, rng))
  return results


def nnx_sync_step(module, shard_map, xs, mask=None):
  """Output and updated running mean/var of an NNX BatchNorm whose devices
  each hold one shard of ``xs`` (and of ``mask``)."""
  from flax import nnx

  graphdef, state = nnx.split(module)

  def step(state, xd, *md):
    m = nnx.merge(graphdef, state)
    y = m(xd, mask=md[0] if md else None)
    return y, m.mean[...][None], m.var[...][None]

  specs = (P(),) + (P("data"),) * (1 if mask is None else 2)
  return shard_map(step, specs, (P("data"), P("data"), P("data")))(state, xs, *(() if mask is None else (mask,)))


def nnx_checks(shard_map, xb, rng):
  from flax import nnx

  from jaxnorm import nnx as jnnx

  out = {}
  ours = nnx_sync_step(jnnx.BatchNorm(3, axis_name="data", momentum=0.9, rngs=nnx.Rngs(0)), shard_map, xb)
  theirs = nnx_sync_step(nnx.BatchNorm(3, axis_name="data", momentum=0.9, rngs=nnx.Rngs(0)), shard_map, xb)
  z, gmean, gvar = standardize(xb, (0, 1, 2), 1e-5)
  out["nnx_sync_bn_output"] = err(ours[0], z)
  out["nnx_sync_bn_running_mean"] = err(ours[1], np.tile(0.1 * gmean.reshape(1, 3), (D, 1)))
  out["nnx_sync_bn_running_var"] = err(ours[2], np.tile(0.9 + 0.1 * gvar.reshape(1, 3), (D, 1)))
  out["nnx_sync_bn_vs_flax_nnx"] = max(err(a, b) for a, b in zip(ours, theirs))
  # Unequal counts: devices 0-3 hold 1-4 valid images of 4, device 4 none,
  # devices 5-7 two each, the devices' data far apart. jaxnorm merges counts
  # exactly; flax's pmean of per-device means does not (and an empty device
  # makes its mean NaN).
  xu = (xb + np.repeat(np.arange(D) * 3.0, 4)[:, None, None, None]).astype(np.float32)
  valid = (np.arange(4)[None, :] < (np.arange(D) + 1)[:, None] % 5).reshape(-1)
  valid[4 * 5 :] = np.arange(4 * 3) % 4 < 2  # devices 5-7: 2 valid images each
  mask = np.broadcast_to(valid[:, None, None, None], xu.shape)
  ours = nnx_sync_step(jnnx.BatchNorm(3, axis_name="data", momentum=0.9, rngs=nnx.Rngs(0)), shard_map, xu, mask)
  theirs = nnx_sync_step(nnx.BatchNorm(3, axis_name="data", momentum=0.9, rngs=nnx.Rngs(0)), shard_map, xu, mask)
  kept = f64(xu)[valid]
  umean, uvar = kept.mean((0, 1, 2)), kept.var((0, 1, 2))
  out["nnx_unequal_counts_running_mean"] = err(ours[1], np.tile(0.1 * umean, (D, 1)))
  out["nnx_unequal_counts_running_var"] = err(ours[2], np.tile(0.9 + 0.1 * uvar, (D, 1)))
  out["nnx_unequal_counts_output"] = err(np.asarray(ours[0])[valid], (f64(xu)[valid] - umean) / np.sqrt(uvar + 1e-5))
  out["flax_nnx_unequal_counts_mean_error"] = err(theirs[1], np.tile(0.1 * umean, (D, 1)))
  return out


if __name__ == "__main__":
  print(json.dumps(main()))
