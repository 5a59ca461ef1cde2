"""Data-parallel training steps with per-device or synchronised statistics.

``num_devices`` simulated devices run on the available physical devices (a
``Mesh`` with one axis, ``'data'``). Each physical device holds
``num_devices / physical`` simulated devices. Two ways to run them:

* **vmap** (any backend): inside ``shard_map``, the physical device's
  examples are reshaped to ``(simulated, per_device_batch, ...)`` and the
  loss is vmapped over the simulated devices, so each one normalizes only
  its own examples — the GN paper's per-GPU statistics, as ghost batches.
  With ``sync_batch_stats`` there is no vmap: batch-statistics layers get
  ``axis_name='data'`` and reduce over every physical device (SyncBN).
* **microbatch** (XLA:CPU, per-device statistics): a Python loop of one
  jitted gradient call per simulated device, gradients and running
  statistics averaged. This is exactly what data parallelism computes, and
  on XLA:CPU many small calls are several times faster than one large one.
* **scan**: the vmap step inside ``lax.scan``, a whole epoch per compiled
  call, with the training set, its order, the augmentation and the
  evaluation on the device (:func:`make_scan_epoch`,
  :func:`make_scan_eval`): no host round trip per step.

Both give the same update (up to float summation order); a test checks it.
Gradients, running statistics and metrics are averaged over devices, as in
ordinary data parallelism.

**Several runs in one program.** With ``runs=R`` every step, epoch and
evaluation maker returns the same computation vmapped over a leading run
axis of length R: the state, the batches (per run: each run has its own
data order) and the keys carry it, the training set and the test set do
not. Independent seeds of one configuration thus train together, each as
it would alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import augment as augment_lib
from experiments import data as data_lib

DATA_AXIS = "data"


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def init_state(model, tx, key) -> TrainState:
  """Step 0: the model's parameters and batch statistics initialised from
  ``key`` (on one 32×32 RGB image, evaluation mode) and ``tx``'s state."""
  variables = model.init(key, jnp.zeros((1, 32, 32, 3)), train=False)
  params = variables["params"]
  return TrainState(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}), tx.init(params))


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def put_global_batch(batch, mesh: Mesh, *, runs: bool = False):
  """Places a host batch (identical on every process) sharded over 'data'
  (its examples axis: 0, or 1 behind a leading run axis with ``runs``)."""
  axis = 1 if runs else 0
  for leaf in jax.tree.leaves(batch):
    if np.shape(leaf)[axis] % mesh.size:
      raise ValueError(
        f"batch size {np.shape(leaf)[axis]} is not divisible by the {mesh.size} devices on the "
        f"{DATA_AXIS!r} mesh axis; use a batch size that is a multiple of the device count."
      )
  sharding = NamedSharding(mesh, P(None, DATA_AXIS) if runs else P(DATA_AXIS))
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  index, count = jax.process_index(), jax.process_count()

  def local(a):
    n = a.shape[axis] // count
    return jax.make_array_from_process_local_data(sharding, _slice_along(a, index * n, (index + 1) * n, axis))

  return jax.tree.map(local, batch)


def _slice_along(a: np.ndarray, start: int, stop: int, axis: int) -> np.ndarray:
  """``a[start:stop]`` along ``axis`` (a host array)."""
  return a[(slice(None),) * axis + (slice(start, stop),)]


def over_runs(fn: Callable, runs: int, in_axes) -> Callable:
  """``fn`` vmapped over a leading run axis when ``runs`` > 0, else ``fn``."""
  return jax.vmap(fn, in_axes=in_axes) if runs else fn


def preprocess(key, images, augment: bool):
  """uint8 NHWC -> normalized float32, with crop+flip when training."""
  if augment:
    return augment_lib.augment(key, images)
  return augment_lib.normalize_images(images)


def split_devices(a, simulated: int):
  """``(simulated · b, ...) -> (simulated, b, ...)``: each simulated
  device's examples, in order."""
  return a.reshape((simulated, a.shape[0] // simulated) + a.shape[1:])


def device_loss(model, params, batch_stats, images, labels, capture: Callable | None = None):
  """Cross-entropy of one device's examples in training mode; returns
  ``(loss, (new batch_stats, metrics, captured))``.

  ``capture`` (optional) maps a dict to a context manager around the
  forward pass that fills it (the diagnostics' norm-input recorder,
  :func:`experiments.diagnostics.norm_input_recorder`); ``captured`` is
  that dict, empty without it.
  """
  variables = {"params": params, "batch_stats": batch_stats}
  captured = {}
  with capture(captured) if capture is not None else contextlib.nullcontext():
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, (dict(updates).get("batch_stats", {}), {"loss": loss, "accuracy": accuracy}, captured)


def _mean0(tree):
  return jax.tree.map(lambda a: jnp.mean(a, axis=0), tree)


def device_gradients(model, params, batch_stats, images, labels, *, simulated: int, capture=None):
  """One physical device's share of a step, inside ``shard_map``: the
  gradients over its ``simulated`` devices (vmapped, each normalizing its
  own examples), with the new batch statistics and metrics, averaged over
  simulated devices and then over the mesh (``pmean``). Returns ``(grads,
  batch_stats, metrics, captured)``; ``captured`` (see :func:`device_loss`)
  is per simulated device (a leading axis when ``simulated`` > 1), not
  reduced. The one gradient computation of training, the scan engine, the
  depth experiment and the diagnostics probes."""
  if simulated == 1:
    loss_fn = lambda p: device_loss(model, p, batch_stats, images, labels, capture)
  else:

    def loss_fn(p):
      per_device = jax.vmap(lambda x, y: device_loss(model, p, batch_stats, x, y, capture))
      losses, (stats, metrics, captured) = per_device(
        split_devices(images, simulated), split_devices(labels, simulated)
      )
      return jnp.mean(losses), (_mean0(stats), _mean0(metrics), captured)

  (_, (stats, metrics, captured)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  grads, stats, metrics = lax.pmean((grads, stats, metrics), DATA_AXIS)
  return grads, stats, metrics, captured


def _apply_gradients(tx, state: TrainState, grads, batch_stats) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(state.step + 1, params, batch_stats, opt_state)


def make_step_body(model, tx, mesh: Mesh, *, simulated: int, augment: bool) -> Callable:
  """``(state, images, labels, key) -> (state, metrics)``, not jitted:
  augment, per-device gradients, average, update. The vmap step jits it; the
  scan engine runs it inside ``lax.scan``."""

  def device_step(state, images, labels):
    grads, stats, metrics, _ = device_gradients(
      model, state.params, state.batch_stats, images, labels, simulated=simulated
    )
    return _apply_gradients(tx, state, grads, stats), metrics

  # check_vma=False: gradients of the replicated parameters stay per-device
  # (as under pmap) and are averaged by the explicit pmean above. With
  # check_vma=True JAX would insert the psum itself, and the pmean on top
  # would silently turn the mean into a sum over devices.
  sharded = jax.shard_map(
    device_step,
    mesh=mesh,
    in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS)),
    out_specs=(P(), P()),
    check_vma=False,
  )

  def step(state, images, labels, key):
    return sharded(state, preprocess(key, images, augment), labels)

  return step


def make_vmap_step(model, tx, mesh: Mesh, *, simulated: int, augment: bool, runs: int = 0) -> Callable:
  """One jitted step: augment, per-device gradients, average, update (of
  each of ``runs`` runs, with their own batches and keys)."""
  body = make_step_body(model, tx, mesh, simulated=simulated, augment=augment)
  return jax.jit(over_runs(body, runs, in_axes=0), donate_argnums=0)


def put_replicated(tree, mesh: Mesh):
  """Host arrays (identical on every process) as global arrays replicated
  over the mesh: the scan engine's device-resident data."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, sharding, lambda index: a[index]), tree)


def make_scan_epoch(
  model, tx, mesh: Mesh, *, simulated: int, augment: bool, batch: int, steps: int, runs: int = 0
) -> Callable:
  """The scan engine's training call: one epoch of ``steps`` steps in one
  compiled program, ``(state, images, labels, root_key, epoch) -> (state,
  metrics stacked over steps)``.

  ``images``/``labels`` are the whole training set on the device
  (:func:`put_replicated`). The epoch's order
  (:func:`experiments.data.device_epoch_permutation`), each step's batch,
  its augmentation key and the step itself all run on the device, so there
  is no host round trip per step. Every step is the vmap step's
  (:func:`make_step_body`), with the same order and keys as the per-step
  loop, so both train the same model. With ``runs``, ``state`` and
  ``root_key`` carry a leading run axis: each run draws its own order and
  keys from its own root key.
  """
  body = make_step_body(model, tx, mesh, simulated=simulated, augment=augment)

  def run_epoch(state, images, labels, root_key, epoch):
    order = data_lib.device_epoch_permutation(root_key, images.shape[0], epoch)
    step_key = jax.random.fold_in(root_key, 1)

    def one_step(state, i):
      index = lax.dynamic_slice_in_dim(order, i * batch, batch)
      key = jax.random.fold_in(step_key, epoch * steps + i)
      return body(state, jnp.take(images, index, axis=0), jnp.take(labels, index, axis=0), key)

    return lax.scan(one_step, state, jnp.arange(steps))

  return jax.jit(over_runs(run_epoch, runs, in_axes=(0, None, None, 0, None)), donate_argnums=0)


def make_microbatch_step(model, tx, *, simulated: int, augment: bool, runs: int = 0) -> Callable:
  """A step that loops over simulated devices with one jitted call each
  (each call vmapped over ``runs`` runs, when given)."""

  def prepare(images, labels, key):
    return split_devices(preprocess(key, images, augment), simulated), split_devices(labels, simulated)

  def accumulate(total, params, batch_stats, images, labels):
    (_, (stats, metrics, _)), grads = jax.value_and_grad(
      lambda p: device_loss(model, p, batch_stats, images, labels), has_aux=True
    )(params)
    new = (grads, stats, metrics)
    return new if total is None else jax.tree.map(jnp.add, total, new)

  def finish(state, total):
    grads, stats, metrics = jax.tree.map(lambda a: a / simulated, total)
    return _apply_gradients(tx, state, grads, stats), metrics

  prepare = jax.jit(over_runs(prepare, runs, in_axes=0))
  accumulate = jax.jit(over_runs(accumulate, runs, in_axes=0))
  finish = jax.jit(over_runs(finish, runs, in_axes=0), donate_argnums=0)
  device = (lambda a, d: a[:, d]) if runs else (lambda a, d: a[d])

  def step(state, images, labels, key):
    xs, ys = prepare(images, labels, key)
    total = None
    for d in range(simulated):
      total = accumulate(total, state.params, state.batch_stats, device(xs, d), device(ys, d))
    return finish(state, total)

  return step


def make_eval_step(model, mesh: Mesh, *, simulated: int = 0, runs: int = 0) -> Callable:
  """Sums of loss and correct predictions over the masked-in examples, one
  batch per call (jitted :func:`make_eval_body`); with ``runs``, the
  variables carry a run axis and so do the sums."""
  return jax.jit(over_runs(make_eval_body(model, mesh, simulated=simulated), runs, in_axes=(0, None, None, None)))


def make_scan_eval(model, mesh: Mesh, *, batch: int, simulated: int = 0, runs: int = 0) -> Callable:
  """The scan engine's evaluation: ``(variables, images, labels, mask) ->
  sums`` over every batch of a device-resident, padded evaluation set (a
  multiple of ``batch`` examples, ``mask`` False on the padding), in one
  compiled program. The sums are the per-batch ones added in order, as the
  per-step evaluation adds them on the host."""
  body = make_eval_body(model, mesh, simulated=simulated)

  def run(variables, images, labels, mask):
    def one_batch(total, i):
      take = lambda a: lax.dynamic_slice_in_dim(a, i * batch, batch)
      sums = body(variables, take(images), take(labels), take(mask))
      return jax.tree.map(jnp.add, total, sums), None

    zeros = {"loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32), "count": jnp.zeros((), jnp.int32)}
    return lax.scan(one_batch, zeros, jnp.arange(images.shape[0] // batch))[0]

  return jax.jit(over_runs(run, runs, in_axes=(0, None, None, None)))


def make_eval_body(model, mesh: Mesh, *, simulated: int = 0) -> Callable:
  """Sums of loss and correct predictions over the masked-in examples of
  one batch, not jitted.

  ``simulated == 0`` evaluates with the running statistics. ``simulated >
  0`` evaluates in training mode (batch statistics, updates discarded) with
  that many simulated devices per physical device, to measure the
  train/test discrepancy of batch-dependent normalizers.
  """

  def logits_fn(variables, images):
    if not simulated:
      return model.apply(variables, images, train=False)
    forward = lambda x: model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
    out = jax.vmap(forward)(split_devices(images, simulated))
    return out.reshape((-1,) + out.shape[2:])

  def device_eval(variables, images, labels, mask):
    logits = logits_fn(variables, augment_lib.normalize_images(images))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    sums = {
      "loss": jnp.sum(jnp.where(mask, loss, 0.0)),
      "correct": jnp.sum(mask & correct),
      "count": jnp.sum(mask),
    }
    return lax.psum(sums, DATA_AXIS)

  return jax.shard_map(
    device_eval,
    mesh=mesh,
    in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)),
    out_specs=P(),
  )
