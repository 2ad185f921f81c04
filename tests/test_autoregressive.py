"""The linear autoregressive baseline: a normalised, causal model fitted by maximum likelihood."""

import itertools

import jax
import numpy as np
import pytest

from companion import autoregressive as ar
from companion import data


def _random_params(d, n_levels, seed=0):
    rng = np.random.default_rng(seed)
    return {"weight": rng.normal(0, 2, (d, d, n_levels)).astype(np.float32),
            "bias": rng.normal(0, 1, (d, n_levels)).astype(np.float32), "l2": np.float32(0)}


def test_probabilities_of_all_images_sum_to_one():
    d, n_levels = 4, 3
    params = _random_params(d, n_levels)
    every = np.array(list(itertools.product(range(n_levels), repeat=d)), np.int32)
    total = np.exp(np.asarray(ar.log_prob(params, every, n_levels), np.float64)).sum()
    assert abs(total - 1) < 1e-5


def test_a_pixel_sees_only_the_pixels_before_it():
    d, n_levels = 6, 4
    params = _random_params(d, n_levels)
    v = np.array([[0, 1, 2, 3, 0, 1]], np.int32)
    changed = v.copy()
    changed[0, 3] = 2  # pixel 3 changes: the logits of pixels 0..3 must not
    a, b = (np.asarray(ar.logits(params, x, n_levels)) for x in (v, changed))
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert not np.allclose(a[:, 4:], b[:, 4:])


def test_bits_per_dim_is_minus_log2_probability_per_pixel():
    params = _random_params(5, 3)
    v = np.random.default_rng(1).integers(0, 3, (7, 5)).astype(np.int32)
    bits = ar.bits_per_dim(params, v, 3)
    assert bits.shape == (7,)
    np.testing.assert_allclose(bits, -np.asarray(ar.log_prob(params, v, 3)) / (5 * np.log(2)), rtol=1e-6)


def test_fit_recovers_a_dependence_and_beats_independent_pixels():
    # pixel 1 copies pixel 0 (levels 0 or 2), pixel 0 is a fair coin: 1 bit per image
    rng = np.random.default_rng(2)
    first = 2 * rng.integers(0, 2, 400)
    v = np.stack([first, first], 1).astype(np.int32)
    params = ar.fit(v, 3, l2=0.0, steps=200)
    bits = ar.bits_per_dim(params, v, 3).mean()
    assert abs(bits - 0.5) < 0.02  # 1 bit for two pixels; independent pixels would need 1 per pixel
    np.testing.assert_array_equal(params["weight"][1, 0], 0)  # pixel 1 never informs pixel 0


def test_choose_l2_uses_only_the_training_images_and_returns_the_best():
    v = np.random.default_rng(3).integers(0, 3, (60, 4)).astype(np.int32)
    l2, scores = ar.choose_l2(v, 3, grid=(0.0, 1.0), n_valid=20, steps=50)
    assert set(scores) == {0.0, 1.0} and scores[l2] == min(scores.values())


def test_samples_follow_the_model():
    d, n_levels = 2, 2
    params = _random_params(d, n_levels, seed=4)
    x = np.asarray(ar.sample(params, jax.random.key(0), 20000, (d,)))
    assert x.shape == (20000, 2) and x.min() >= 0 and x.max() < n_levels
    every = np.array(list(itertools.product(range(n_levels), repeat=d)), np.int32)
    p = np.exp(np.asarray(ar.log_prob(params, every, n_levels)))
    freq = np.array([np.mean(np.all(x == e, 1)) for e in every])
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / 20000) + 1e-3)


def test_save_load_round_trip(tmp_path):
    params = _random_params(3, 2)
    back = ar.load(ar.save(params, tmp_path / "ar.msgpack"))
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])


def test_the_shipped_model_on_the_test_digits():
    params = ar.load()
    test_levels, _ = data.load_digits("test")
    bits = ar.bits_per_dim(params, test_levels)
    # chapter 7's figure (deterministic given the checkpoint)
    assert 1.9 < bits.mean() < 2.2 and np.isclose(params["l2"], ar.L2_GRID, rtol=1e-6).any()


def test_bad_levels_are_refused():
    params = _random_params(2, 3)
    with pytest.raises(ValueError, match="levels"):
        ar.log_prob(params, np.array([[0, 3]]), 3)
    with pytest.raises(TypeError, match="integer"):
        ar.log_prob(params, np.array([[0.0, 1.0]]), 3)
