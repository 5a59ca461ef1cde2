"""Fixed-input outputs of every public function and module of jaxnorm.

``python -m tests.jaxnorm.layout_outputs FILE`` writes them to an ``.npz``
file. ``tests/data/outputs_before_layout.npz`` was written this way by the
code before the package moved into ``functional/``, ``linen/``, ``nnx/``
and ``_core/`` (commit 32f054e); ``test_layout_outputs.py`` compares the
current code's outputs with it. Only the public API is used, so the same
function runs against both layouts.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxnorm as jn


def _inputs():
  keys = jax.random.split(jax.random.key(20261204), 8)
  nhwc = jax.random.normal(keys[0], (4, 5, 5, 8)) * 2.0 + 0.5
  nchw = jnp.transpose(nhwc, (0, 3, 1, 2))
  tokens = jax.random.normal(keys[1], (3, 7, 16)) * 1.5 - 0.25
  offset = jax.random.normal(keys[2], (4, 5, 5, 8)) + 1e3  # |mean| ≫ std
  mask = jax.random.bernoulli(keys[3], 0.7, (4, 5, 5, 8))
  scale = jax.random.uniform(keys[4], (8,), minval=0.5, maxval=1.5)
  bias = jax.random.normal(keys[5], (8,)) * 0.1
  kernel = jax.random.normal(keys[6], (3, 3, 4, 8))
  return dict(nhwc=nhwc, nchw=nchw, tokens=tokens, offset=offset, mask=mask, scale=scale, bias=bias, kernel=kernel)


def _functions(i) -> dict:
  x, s, b, m = i["nhwc"], i["scale"], i["bias"], i["mask"]
  out = {}
  mo = jn.moments(x, (0, 1, 2))
  out["moments/mean"], out["moments/var"], out["moments/count"] = mo.mean, mo.var, mo.count
  mo = jn.moments(x, (1, 2, 3), mask=m)
  out["moments_mask/mean"], out["moments_mask/var"] = mo.mean, mo.var
  column = lambda v: v[:, None, None, None]
  out["normalize"] = jn.normalize(
    x, column(mo.mean), column(mo.var), s.reshape(1, 1, 1, 8), b.reshape(1, 1, 1, 8), epsilon=1e-5
  )
  for name, kwargs in {
    "plain": {},
    "ghost": {"virtual_batch_size": 2},
    "mask": {"mask": m},
    "fast_variance": {"use_fast_variance": True},
  }.items():
    y, st = jn.batch_norm(x, s, b, jnp.zeros(8), jnp.ones(8), **kwargs)
    out[f"batch_norm_{name}/y"], out[f"batch_norm_{name}/mean"], out[f"batch_norm_{name}/var"] = y, st.mean, st.var
  y, st = jn.batch_norm(x, s, b, jnp.zeros(8), jnp.ones(8), running_stats="cumulative", running_count=jnp.asarray(3))
  out["batch_norm_cumulative/y"], out["batch_norm_cumulative/mean"], out["batch_norm_cumulative/count"] = (
    y,
    st.mean,
    st.count,
  )
  y, _ = jn.batch_norm(x, s, b, jnp.full(8, 0.3), jnp.full(8, 2.0), use_running_average=True)
  out["batch_norm_eval/y"] = y
  y, st = jn.batch_norm(i["offset"], s, b, jnp.zeros(8), jnp.ones(8))
  out["batch_norm_offset/y"], out["batch_norm_offset/var"] = y, st.var
  r_max, d_max = jn.batch_renorm_limits(7, warmup_delay=2, r_max_warmup_steps=10, d_max_warmup_steps=4)
  out["batch_renorm_limits"] = jnp.stack([r_max, d_max])
  y, st = jn.batch_renorm(x, s, b, jnp.full(8, 0.4), jnp.full(8, 3.0), r_max=r_max, d_max=d_max)
  out["batch_renorm/y"], out["batch_renorm/mean"], out["batch_renorm/var"] = y, st.mean, st.var
  t = i["tokens"]
  out["layer_norm"] = jn.layer_norm(t, jnp.linspace(0.5, 1.5, 16), jnp.linspace(-0.1, 0.1, 16))
  out["layer_norm_chw"] = jn.layer_norm(x, s, b, reduction_axes=(1, 2, 3), feature_axes=-1)
  out["layer_norm_mask"] = jn.layer_norm(x, s, b, reduction_axes=(1, 2, 3), mask=m)
  out["layer_norm_offset"] = jn.layer_norm(i["offset"], reduction_axes=(1, 2, 3))
  out["rms_norm"] = jn.rms_norm(t, jnp.linspace(0.5, 1.5, 16))
  out["instance_norm"] = jn.instance_norm(x, s, b)
  out["instance_norm_nchw"] = jn.instance_norm(i["nchw"], s, b, feature_axes=1)
  out["group_norm"] = jn.group_norm(x, s, b, num_groups=4)
  out["group_norm_nchw"] = jn.group_norm(i["nchw"], s, b, num_groups=2, channel_axis=1)
  out["group_norm_size"] = jn.group_norm(x, s, b, num_groups=None, group_size=4, mask=m)
  out["group_norm_bf16"] = jn.group_norm(x.astype(jnp.bfloat16), s, b, num_groups=4).astype(jnp.float32)
  out["standardize_weight"] = jn.standardize_weight(i["kernel"])
  out["standardize_weight_scaled"] = jn.standardize_weight(i["kernel"], s, scaled=True, activation_gain=1.7)
  out["filter_response_norm"] = jn.filter_response_norm(x, s, b, jnp.full(8, -0.2), learned_epsilon=jnp.asarray(0.01))
  y, var = jn.evonorm_b0(x, s, b, jnp.full(8, 0.7), jnp.ones(8))
  out["evonorm_b0/y"], out["evonorm_b0/var"] = y, var
  y, _ = jn.evonorm_b0(x, s, b, jnp.full(8, 0.7), jnp.full(8, 2.0), use_running_average=True)
  out["evonorm_b0_eval/y"] = y
  out["evonorm_s0"] = jn.evonorm_s0(x, s, b, jnp.full(8, 0.7), num_groups=4)
  folded = jn.fold_batch_norm(
    {"kernel": i["kernel"], "bias": b}, {"scale": s, "bias": -b}, {"mean": jnp.full(8, 0.1), "var": jnp.full(8, 2.0)}
  )
  out["fold_batch_norm/kernel"], out["fold_batch_norm/bias"] = folded["kernel"], folded["bias"]

  def loss(fn, x, s, b):
    return jnp.sum(jnp.sin(fn(x, s, b)))

  grads = {
    "batch_norm": lambda x, s, b: jn.batch_norm(x, s, b, virtual_batch_size=2)[0],
    "layer_norm": lambda x, s, b: jn.layer_norm(x, s, b, reduction_axes=(1, 2, 3)),
    "group_norm": lambda x, s, b: jn.group_norm(x, s, b, num_groups=4),
    "rms_norm": lambda x, s, b: jn.rms_norm(x, s) + b.reshape(1, 1, 1, 8),
  }
  for name, fn in grads.items():
    for implementation in ("auto", "reference"):
      with jn.implementation(implementation):
        gx, gs, gb = jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2))(x, s, b)
        tangent = jax.jvp(lambda x, fn=fn: fn(x, s, b), (x,), (jnp.cos(x),))[1]
      out[f"grad_{name}_{implementation}/x"], out[f"grad_{name}_{implementation}/scale"] = gx, gs
      out[f"grad_{name}_{implementation}/bias"], out[f"jvp_{name}_{implementation}"] = gb, tangent
  return out


LINEN = {
  "BatchNorm": lambda: jn.BatchNorm(momentum=0.9),
  "BatchNorm_ghost": lambda: jn.BatchNorm(virtual_batch_size=2, running_stats="cumulative"),
  "BatchRenorm": lambda: jn.BatchRenorm(r_max=2.0, d_max=1.0),
  "EvoNormB0": lambda: jn.EvoNormB0(),
  "LayerNorm": lambda: jn.LayerNorm(reduction_axes=(1, 2, 3)),
  "RMSNorm": lambda: jn.RMSNorm(),
  "InstanceNorm": lambda: jn.InstanceNorm(),
  "GroupNorm": lambda: jn.GroupNorm(num_groups=4),
  "EvoNormS0": lambda: jn.EvoNormS0(num_groups=4),
  "FilterResponseNorm": lambda: jn.FilterResponseNorm(learn_epsilon=True),
  "StandardizedConv": lambda: jn.StandardizedConv(features=6, kernel_size=(3, 3), scaled=True),
}

NNX = {
  "BatchNorm": lambda rngs: jn.nnx.BatchNorm(8, momentum=0.9, rngs=rngs),
  "BatchNorm_ghost": lambda rngs: jn.nnx.BatchNorm(8, virtual_batch_size=2, running_stats="cumulative", rngs=rngs),
  "BatchRenorm": lambda rngs: jn.nnx.BatchRenorm(8, r_max=2.0, d_max=1.0, rngs=rngs),
  "EvoNormB0": lambda rngs: jn.nnx.EvoNormB0(8, rngs=rngs),
  "LayerNorm": lambda rngs: jn.nnx.LayerNorm(8, reduction_axes=(1, 2, 3), rngs=rngs),
  "RMSNorm": lambda rngs: jn.nnx.RMSNorm(8, rngs=rngs),
  "InstanceNorm": lambda rngs: jn.nnx.InstanceNorm(8, rngs=rngs),
  "GroupNorm": lambda rngs: jn.nnx.GroupNorm(8, num_groups=4, rngs=rngs),
  "EvoNormS0": lambda rngs: jn.nnx.EvoNormS0(8, num_groups=4, rngs=rngs),
  "FilterResponseNorm": lambda rngs: jn.nnx.FilterResponseNorm(8, learn_epsilon=True, rngs=rngs),
  "StandardizedConv": lambda rngs: jn.nnx.StandardizedConv(8, 6, (3, 3), scaled=True, rngs=rngs),
}


def _flatten(prefix: str, tree) -> dict:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {prefix + jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _linen(i) -> dict:
  x, out = i["nhwc"], {}
  for name, make in LINEN.items():
    module = make()
    mode = {"use_running_average": False} if hasattr(module, "use_running_average") else {}
    variables = module.init(jax.random.key(1), x, **mode)
    # Perturb the parameters so that scale and bias matter.
    variables = jax.tree.map(lambda v: v * 1.25 + 0.05 if v.dtype == jnp.float32 else v, variables)
    y, updates = module.apply(variables, x, mutable=["batch_stats"], **mode)
    out.update(_flatten(f"linen/{name}/train", {"y": y, **updates}))
    if "batch_stats" in variables:
      eval_y = module.apply({**variables, **updates}, x, use_running_average=True)
      out[f"linen/{name}/eval"] = eval_y
  return out


def _nnx(i) -> dict:
  x, out = i["nhwc"], {}
  for name, make in NNX.items():
    model = make(nnx.Rngs(1))
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(lambda v: v * 1.25 + 0.05, params)
    model = nnx.merge(graph, params, rest)
    y = model(x)
    stats = {k: v[...] for k, v in vars(model).items() if isinstance(v, nnx.BatchStat)}
    out.update(_flatten(f"nnx/{name}/train", {"y": y, **stats}))
    if stats:
      model.eval()
      out[f"nnx/{name}/eval"] = model(x)
  return out


# The factory's names when the outputs were saved; later names have their own tests.
SAVED_NORM_NAMES = (
  "bn",
  "bn+ws",
  "brn",
  "ghost_bn",
  "gn",
  "gn+ws",
  "ln",
  "in",
  "rms",
  "frn",
  "evonorm_b0",
  "evonorm_s0",
  "none",
)


def _factory(i) -> dict:
  x, out = i["nhwc"], {}
  for name in SAVED_NORM_NAMES:
    kwargs = {"virtual_batch_size": 2} if name == "ghost_bn" else {}
    if name in ("gn", "gn+ws", "evonorm_s0"):
      kwargs["num_groups"] = 4
    spec = jn.create_norm(name, **kwargs)
    layer = spec.layer(train=True)
    variables = layer.init(jax.random.key(2), x)
    y, _ = layer.apply(variables, x, mutable=["batch_stats"])
    out[f"create_norm/{name}/linen"] = y
    out[f"create_norm/{name}/nnx"] = spec.nnx_layer(8, rngs=nnx.Rngs(2))(x)
  return out


def outputs() -> dict[str, np.ndarray]:
  """Every output, by name, as NumPy arrays."""
  i = _inputs()
  out = {**_functions(i), **_linen(i), **_nnx(i), **_factory(i)}
  return {k: np.asarray(v) for k, v in out.items()}


def environment() -> dict[str, str]:
  """What the bits depend on besides the code: the JAX build and the CPU."""
  import platform

  import jaxlib

  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
  except OSError:
    pass
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "cpu": cpu, "backend": jax.default_backend()}


if __name__ == "__main__":
  jax.config.update("jax_numpy_rank_promotion", "raise")  # as in the tests
  values = outputs()
  env = environment()
  np.savez_compressed(sys.argv[1], **values, **{f"__env__/{k}": np.asarray(v) for k, v in env.items()})
  print(f"wrote {len(values)} outputs to {sys.argv[1]} ({env})")
