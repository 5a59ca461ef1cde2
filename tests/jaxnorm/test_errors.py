"""Bad configuration or input gets a clear error naming the argument."""

import jax
import jax.numpy as jnp
import pytest

import jaxnorm as jn

X = jnp.ones((2, 4, 4, 12))
KEY = jax.random.key(0)


@pytest.mark.parametrize(
  "call,error,match",
  [
    # groups that do not divide the channels
    (
      lambda: jn.group_norm(X, num_groups=5),
      ValueError,
      r"num_groups=5 does not divide 12 channels; choose a divisor of 12",
    ),
    (lambda: jn.group_norm(X, num_groups=None, group_size=5), ValueError, r"group_size=5 does not divide 12 channels"),
    (
      lambda: jn.GroupNorm(num_groups=5).init(KEY, X),
      ValueError,
      r"GroupNorm: Number of groups \(5\) does not divide the number of channels \(12\)\. num_groups=5 does not divide 12 channels",
    ),
    (
      lambda: jn.GroupNorm(num_groups=2, channel_axis=1).init(KEY, jnp.ones((2, 3, 4))),
      ValueError,
      r"num_groups=2 does not divide 3 channels",
    ),
    (lambda: jn.group_norm(X, num_groups=0), ValueError, r"num_groups=0; expected a positive integer"),
    # num_groups and group_size both (or neither) given
    (
      lambda: jn.group_norm(X, num_groups=4, group_size=3),
      ValueError,
      r"exactly one of num_groups and group_size .*num_groups=4, group_size=3",
    ),
    (lambda: jn.GroupNorm(num_groups=None).init(KEY, X), ValueError, r"exactly one of num_groups and group_size"),
    (
      lambda: jn.group_norm(X, reduction_axes=(1, 2)),
      ValueError,
      r"reduction_axes=\(1, 2\) must include the channel axis 3",
    ),
    # axes out of range
    (
      lambda: jn.layer_norm(X, reduction_axes=4),
      ValueError,
      r"layer_norm: reduction_axes=4 is out of range for an input of rank 4; valid axes are -4..3",
    ),
    (lambda: jn.batch_norm(X, axis=-5), ValueError, r"batch_norm: axis=-5 is out of range"),
    (
      lambda: jn.BatchNorm(axis=7, use_running_average=False).init(KEY, X),
      ValueError,
      r"BatchNorm: axis=7 is out of range",
    ),
    (lambda: jn.group_norm(X, num_groups=4, channel_axis=4), ValueError, r"channel_axis=4 is out of range"),
    (lambda: jn.instance_norm(X, feature_axes=(1, 5)), ValueError, r"feature_axes=\(1, 5\) is out of range"),
    (lambda: jn.moments(X, (1, -3)), ValueError, r"names the same axis twice"),
    (lambda: jn.moments(X, 1.5), TypeError, r"axes must be integers"),
    (lambda: jn.instance_norm(X, feature_axes=0), ValueError, r"include the batch axis 0"),
    (lambda: jn.InstanceNorm(feature_axes=0).init(KEY, X), ValueError, r"include the batch axis 0"),
    # masks that do not match x
    (
      lambda: jn.moments(X, 0, mask=jnp.ones((3, 4), bool)),
      ValueError,
      r"mask of shape \(3, 4\) does not broadcast to the input shape \(2, 4, 4, 12\)",
    ),
    (lambda: jn.group_norm(X, num_groups=4, mask=jnp.ones((2, 4, 4, 6), bool)), ValueError, r"group_norm: mask"),
    (lambda: jn.LayerNorm().init(KEY, X, mask=jnp.ones((5,), bool)), ValueError, r"mask"),
    (
      lambda: jn.BatchNorm(use_running_average=False).init(KEY, X, mask=jnp.ones((2, 4, 4, 12, 1), bool)),
      ValueError,
      r"mask",
    ),
    # parameters of the wrong shape
    (
      lambda: jn.layer_norm(X, jnp.ones(5)),
      ValueError,
      r"layer_norm: scale has shape \(5,\).*give scale the shape \(12,\)",
    ),
    (lambda: jn.batch_norm(X, None, jnp.ones(3)), ValueError, r"bias has shape \(3,\)"),
    (
      lambda: jn.batch_norm(X, running_mean=jnp.zeros(3), running_var=jnp.ones(12)),
      ValueError,
      r"running_mean has shape \(3,\); expected the feature shape \(12,\)",
    ),
    (lambda: jn.batch_norm(X, use_running_average=True), ValueError, r"use_running_average=True needs running_mean"),
    # dtype
    (
      lambda: jn.layer_norm(jnp.ones((2, 3), jnp.int32)),
      TypeError,
      r"layer_norm: x has dtype int32; normalization needs a floating point input",
    ),
  ],
)
def test_error_messages(call, error, match):
  with pytest.raises(error, match=match):
    call()


@pytest.mark.parametrize(
  "call",
  [
    lambda: jn.moments(X, 0, axis_name="batch"),
    lambda: jn.batch_norm(X, axis_name="batch"),
    lambda: jn.layer_norm(X, axis_name="batch"),
    lambda: jax.jit(lambda x: jn.group_norm(x, num_groups=4, axis_name="batch"))(X),
  ],
)
def test_unbound_axis_name_is_named(call):
  with pytest.raises(ValueError, match=r"axis_name='batch' is not bound here.*jax.vmap"):
    call()


def test_unbound_axis_name_in_module_apply():
  bn = jn.BatchNorm(use_running_average=False, axis_name="batch")
  v = bn.init(KEY, X)  # init ignores axis_name, as in flax
  with pytest.raises(ValueError, match=r"axis_name='batch'"):
    bn.apply(v, X, mutable=["batch_stats"])


def test_missing_use_running_average_is_reported_like_flax():
  with pytest.raises(ValueError, match="use_running_average"):
    jn.BatchNorm().init(KEY, X)


@pytest.mark.parametrize(
  "build, flax_sentence",
  [
    (
      lambda m: m.InstanceNorm(feature_axes=(0, 3)),
      "The channel axes cannot include the leading dimension as this is assumed to be the batch axis.",
    ),
    (lambda m: m.GroupNorm(num_groups=3), "Number of groups (3) does not divide the number of channels (8)."),
    (
      lambda m: m.GroupNorm(num_groups=None, group_size=3),
      "Number of channels (8) is not multiple of the group size (3).",
    ),
    (lambda m: m.GroupNorm(num_groups=4, group_size=2), "Either `num_groups` or `group_size` should be specified."),
  ],
)
def test_messages_contain_flaxs_sentence_then_the_fix(build, flax_sentence):
  """Where flax's own tests pin an error text, ours contains it (checked
  against flax here), followed by jaxnorm's explanation of the fix."""
  import flax.linen as nn

  x = jnp.ones((2, 4, 4, 8))
  with pytest.raises(ValueError) as theirs:
    build(nn).init(jax.random.key(0), x)
  assert flax_sentence in str(theirs.value)
  with pytest.raises(ValueError) as ours:
    build(jn).init(jax.random.key(0), x)
  message = str(ours.value)
  assert flax_sentence in message
  assert len(message.split(flax_sentence, 1)[1].strip()) > 20  # and then the explanation


@pytest.mark.parametrize(
  "module,match",
  [
    (lambda: jn.BatchNorm(running_stats="bogus"), "running_stats='bogus'"),
    (lambda: jn.BatchRenorm(r_max=0.5), "r_max=0.5"),
  ],
)
def test_a_bad_setting_is_named_before_the_missing_mode(module, match):
  """The setting's own message, even when use_running_average is also unset."""
  with pytest.raises(ValueError, match=match):
    module().init(jax.random.key(0), jnp.ones((4, 3)))
