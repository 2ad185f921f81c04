"""companion.train_digits: the shipped checkpoints of chapter 7 and the training script."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import data, likelihood, nets, train_digits, training


@pytest.fixture(scope="module")
def shipped():
    return train_digits.load()


def test_shipped_checkpoints_are_small_and_load(shipped):
    for name in (train_digits.SCORE_FILE, train_digits.CLASSIFIER_FILE):
        assert (train_digits.CHECKPOINT_DIR / name).stat().st_size < 10 * 2**20
    model, classifier = shipped
    assert isinstance(model, nets.UNet) and isinstance(classifier, nets.TimeClassifier)
    x = jnp.zeros((3, 8, 8, 1))
    assert model(x, 0.5).shape == (3, 8, 8, 1) and classifier(x, 0.5).shape == (3, 10)


def test_shipped_classifier_reads_clean_test_digits(shipped):
    _, classifier = shipped
    levels, labels = data.load_digits("test")
    x = data.dequantize(jax.random.key(1), levels)
    acc = float(jnp.mean(jnp.argmax(classifier(x, 1e-3), axis=1) == labels))
    assert acc > 0.97  # measured 0.99 on the 360 test digits
    # and knows nothing at t = 1, where the forward SDE has erased the digit (chance 0.1; SE 0.016)
    x1, _ = train_digits.SDE.perturb(jax.random.key(2), x, jnp.ones(x.shape[0]))
    assert float(jnp.mean(jnp.argmax(classifier(x1, 1.0), axis=1) == labels)) < 0.2


def test_shipped_model_reproduces_the_stored_evaluation(shipped):
    """The figures stored beside the checkpoint (all 360 test digits, --evaluate) against a
    fresh evaluation of 24 digits with other keys: within 4 standard errors of the fresh
    mean (from the spread over its 24 digits, which includes the Monte-Carlo noise)."""
    model, _ = shipped
    stored = train_digits.stored_evaluation()
    assert stored["n_digits"] == 360 and stored["bits_per_dim_se"] < 0.05
    fresh = train_digits.evaluate(model, n_digits=24, seed=7, n_t=32)
    se = fresh["bits_per_dim_se"]
    assert abs(fresh["bits_per_dim"] - stored["bits_per_dim"]) < 4 * se, (fresh, stored)
    assert abs(fresh["sde_bound_bits_per_dim"] - stored["sde_bound_bits_per_dim"]) < 4 * fresh["sde_bound_se"]
    assert fresh["n_digits"] == 24 and fresh["mc_sd"] is None


def test_a_looser_solver_tolerance_moves_bits_per_dim_by_thousandths(shipped):
    """Chapter 7's spot-check solves at rtol = atol = 1e-4, the stored evaluation at 1e-5.
    On its first 8 digits, same dequantisation and probes: measured mean difference 5e-4,
    largest 8.5e-3 bits/dim (on 32 digits: 1.0e-3 and 8.5e-3). The bounds leave a factor
    of about 2-5 for float32 and platform differences; a tolerance that mattered (an
    error of the spot-check's standard error, ~0.04) would fail them."""
    model, _ = shipped
    levels, _ = data.load_digits("test")
    k_probe, k_deq = jax.random.split(jax.random.key(0), 10)[3:5]  # chapter 7's keys
    bpd = {tol: np.asarray(likelihood.bits_per_dim(train_digits.SDE, model, levels[:8], n_levels=data.DIGITS_LEVELS,
                                                   key=k_probe, dequantize_key=k_deq, rtol=tol, atol=tol))
           for tol in (1e-5, 1e-4)}
    diff = bpd[1e-4] - bpd[1e-5]
    assert abs(diff.mean()) < 3e-3 and np.abs(diff).max() < 0.02, diff


def test_script_trains_and_saves_a_classifier(tmp_path, capsys):
    assert train_digits.main(["--only", "classifier", "--steps", "20", "--out-dir", str(tmp_path), "--no-progress"]) == 0
    assert "classifier: 20 steps" in capsys.readouterr().out
    restored = training.load_checkpoint(train_digits.classifier(), tmp_path / train_digits.CLASSIFIER_FILE)
    assert restored(jnp.zeros((1, 8, 8, 1)), 0.5).shape == (1, 10)
    assert not (tmp_path / train_digits.SCORE_FILE).exists()
