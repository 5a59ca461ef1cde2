"""The input-scaling demonstration: standardization with jaxnorm makes gradient descent converge."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import input_scaling


def test_standardize_gives_zero_mean_unit_variance_features():
  x, _ = input_scaling.synthetic_data(500, seed=1)
  z = np.asarray(input_scaling.standardize(jnp.asarray(x)), np.float64)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(z, (x64 - x64.mean(0)) / x64.std(0), atol=1e-4)


def test_features_differ_in_scale_by_orders_of_magnitude():
  x, y = input_scaling.synthetic_data(1000)
  assert x.shape == (1000, 2) and y.shape == (1000,)
  assert x[:, 0].std() / x[:, 1].std() > 100


def test_standardization_makes_gradient_descent_converge(tmp_path):
  out = input_scaling.run(steps=100, num_examples=400)
  raw, std = out["runs"]["raw"], out["runs"]["standardized"]
  # Both start from the same loss (w = 0, b = 0 predicts 0 either way).
  assert raw["losses"][0] == pytest.approx(std["losses"][0], rel=1e-5)
  assert raw["condition_number"] > 1e6 and std["condition_number"] < 2
  # With its best safe step, GD on raw features is stuck far from the optimum;
  # on standardized features it reaches it.
  assert std["final_excess_loss"] < 1e-4 * out["best_loss"]
  assert raw["final_excess_loss"] > 0.5 * raw["losses"][0] - out["best_loss"]
  input_scaling.plot(out, tmp_path / "input_scaling.png")
  assert (tmp_path / "input_scaling.png").stat().st_size > 20_000


@pytest.mark.parametrize("kwargs, match", [({"steps": 0}, "steps=0"), ({"num_examples": 2}, "num_examples=2")])
def test_bad_arguments_name_themselves(kwargs, match):
  with pytest.raises(ValueError, match=match):
    input_scaling.run(**kwargs)
