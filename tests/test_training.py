"""companion.training: fit (loss decreases, determinism, EMA, sharding) and checkpoints."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from companion import losses, nets, toy, training
from companion import sde as sdes

ROOT = Path(__file__).resolve().parents[1]
SDE = sdes.VP()
MIX = toy.two_gaussians_1d()
LOSS = losses.denoising_score_matching(SDE)


def small_model(seed=0, **kw):
    return nets.ScoreMLP(1, hidden=32, depth=2, sde=SDE, rngs=nnx.Rngs(seed), **kw)


def params_of(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


KW = dict(steps=300, batch_size=128, learning_rate=3e-3, steps_per_call=128, progress=False)


@pytest.fixture(scope="module")
def run():
    model = small_model()
    before = [np.array(p) for p in params_of(model)]
    trained, hist = training.fit(model, LOSS, MIX.sample, key=jax.random.key(0), **KW)
    return model, before, trained, hist


def test_fit_decreases_the_loss(run):
    _, _, _, hist = run
    loss = hist["loss"]
    assert loss.shape == (300,) and np.all(np.isfinite(loss))
    assert loss[-100:].mean() < 0.7 * loss[:20].mean()
    assert hist["grad_norm"].shape == (300,) and hist["steps_per_second"] > 0


def test_fit_leaves_the_input_model_alone(run):
    model, before, trained, _ = run
    for a, b in zip(before, params_of(model)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in zip(before, params_of(trained)))


def test_fit_is_deterministic_whatever_steps_per_call(run):
    model, _, trained, hist = run
    again, hist2 = training.fit(model, LOSS, MIX.sample, key=jax.random.key(0), **{**KW, "steps_per_call": 300})
    np.testing.assert_allclose(hist2["loss"], hist["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(params_of(trained), params_of(again)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    _, hist3 = training.fit(model, LOSS, MIX.sample, key=jax.random.key(1), **KW)
    assert not np.allclose(hist3["loss"], hist["loss"])


def test_the_last_shorter_call_reuses_the_compiled_loop(caplog):
    """300 steps at 128 per call: calls of 128, 128 and 44 steps, one compilation of the
    training loop (the trip count is a run-time argument; no per-step cond)."""
    import logging

    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
        _, hist = training.fit(small_model(), LOSS, MIX.sample, key=jax.random.key(0), **KW)
    compiled = [r.getMessage() for r in caplog.records if "XLA compilation of jit(chunk)" in r.getMessage()]
    assert hist["loss"].shape == (300,) and np.all(np.isfinite(hist["loss"]))
    assert len(compiled) == 1, compiled


def test_one_step_per_call_takes_the_same_steps_as_the_loop():
    """steps_per_call=1 jits the bare step (no loop: the faster for convolutions on
    XLA:CPU, chapter 7's U-Net); same keys, optimiser and EMA, so the same model as the
    loop (float32 roundings). The progress bar reads the losses every 50 steps."""
    mix = toy.four_gaussians_2d()
    make = lambda: nets.ScoreMLP(2, hidden=16, depth=2, sde=SDE, rngs=nnx.Rngs(0))
    kw = dict(steps=60, batch_size=32, key=jax.random.key(3), ema_decay=0.9, optimizer=optax.adam(1e-2))
    a, ha = training.fit(make(), LOSS, mix.sample, steps_per_call=25, progress=False, **kw)
    b, hb = training.fit(make(), LOSS, mix.sample, steps_per_call=1, progress=True, **kw)
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ha["grad_norm"], hb["grad_norm"], rtol=1e-4, atol=1e-5)
    x = mix.sample(jax.random.key(4), 10)
    np.testing.assert_allclose(a(x, 0.3), b(x, 0.3), rtol=1e-4, atol=1e-4)
    assert hb["loss"].shape == (60,) and hb["steps_per_second"] > 0


def test_fit_on_an_array_and_with_ema(run):
    model, _, trained, hist = run
    data = MIX.sample(jax.random.key(5), 1000)
    a, ha = training.fit(model, LOSS, data, key=jax.random.key(0), **KW)
    assert ha["loss"][-100:].mean() < 0.7 * ha["loss"][:20].mean()
    # the EMA does not change the optimisation, only the weights returned
    b, hb = training.fit(model, LOSS, data, key=jax.random.key(0), ema_decay=0.99, **KW)
    np.testing.assert_allclose(hb["loss"], ha["loss"], rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(p, q, atol=1e-6) for p, q in zip(params_of(a), params_of(b)))
    # the EMA weights average the recent weights: their loss is as low as the last weights'
    key = jax.random.key(99)
    big = MIX.sample(jax.random.key(6), 20_000)
    la, lb = float(LOSS(a, big, key)), float(LOSS(b, big, key))
    assert lb < 1.05 * la, (la, lb)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(steps=0), ValueError, "steps"),
        (dict(batch_size=1.5), TypeError, "batch_size"),
        (dict(ema_decay=1.0), ValueError, "ema_decay"),
        (dict(learning_rate=-1.0), ValueError, "learning_rate"),
        (dict(data=np.zeros(10)), ValueError, "data"),
        (dict(data=np.zeros((10, 1), dtype=np.int32)), TypeError, "data"),
        (dict(key=0), TypeError, "key"),
    ],
)
def test_bad_arguments_are_named(kwargs, err, match):
    args = dict(steps=10, batch_size=8, key=jax.random.key(0), progress=False, data=MIX.sample)
    args.update(kwargs)
    data = args.pop("data")
    with pytest.raises(err, match=match):
        training.fit(small_model(), LOSS, data, **args)


SHARDED = textwrap.dedent(
    """
    import json, jax, numpy as np
    from flax import nnx
    from companion import losses, nets, toy, training, sde as sdes
    jax.config.update("jax_default_matmul_precision", "highest")
    sde = sdes.VP(); mix = toy.two_gaussians_1d()
    model = nets.ScoreMLP(1, hidden=32, depth=2, sde=sde, rngs=nnx.Rngs(0))
    kw = dict(steps=40, batch_size=128, learning_rate=3e-3, key=jax.random.key(0), steps_per_call=20,
              progress=False)
    loss = losses.denoising_score_matching(sde)
    m4, h4 = training.fit(model, loss, mix.sample, **kw)
    m1, h1 = training.fit(model, loss, mix.sample, devices=jax.devices()[:1], **kw)
    x = np.linspace(-3, 3, 7)[:, None].astype(np.float32)
    try:
        training.fit(model, loss, mix.sample, **{**kw, "batch_size": 130})
        odd = "accepted"
    except ValueError as e:
        odd = str(e)
    print(json.dumps({"n_devices": jax.device_count(), "loss4": h4["loss"].tolist(), "loss1": h1["loss"].tolist(),
                      "out4": np.asarray(m4(x, 0.5)).tolist(), "out1": np.asarray(m1(x, 0.5)).tolist(),
                      "odd": odd}))
    """
)


def test_data_parallel_training_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n_devices"] == 4
    # the same key, the same minibatches: only the order of the sums differs (float32 tolerance)
    np.testing.assert_allclose(out["loss4"], out["loss1"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["out4"], out["out1"], rtol=1e-3, atol=1e-4)
    assert "batch_size" in out["odd"] and "multiple" in out["odd"]
    # and the same as this (one-device) process
    model = small_model()
    _, hist = training.fit(model, LOSS, MIX.sample, key=jax.random.key(0),
                           **{**KW, "steps": 40, "steps_per_call": 20})
    np.testing.assert_allclose(out["loss1"], hist["loss"], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path, run):
    _, _, trained, _ = run
    path = training.save_checkpoint(trained, tmp_path / "ck" / "model.msgpack")
    assert path.stat().st_size < 100_000  # small: a few thousand float32 parameters
    loaded = training.load_checkpoint(small_model(seed=9), path)
    x, t = jnp.linspace(-3, 3, 11)[:, None], jnp.linspace(0.01, 1, 11)
    np.testing.assert_array_equal(loaded(x, t), trained(x, t))


def test_truncated_or_corrupted_checkpoint_is_refused(tmp_path, run):
    _, _, trained, _ = run
    path = training.save_checkpoint(trained, tmp_path / "model.msgpack")
    blob = path.read_bytes()
    template = small_model(seed=9)
    before = [np.array(p) for p in params_of(template)]
    (tmp_path / "cut.msgpack").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        training.load_checkpoint(template, tmp_path / "cut.msgpack")
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    (tmp_path / "flip.msgpack").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="truncated or corrupted"):
        training.load_checkpoint(template, tmp_path / "flip.msgpack")
    (tmp_path / "junk.msgpack").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint"):
        training.load_checkpoint(template, tmp_path / "junk.msgpack")
    with pytest.raises(FileNotFoundError):
        training.load_checkpoint(template, tmp_path / "missing.msgpack")
    for a, b in zip(before, params_of(template)):  # nothing half-loaded
        np.testing.assert_array_equal(a, b)


def test_template_has_the_architecture_and_zero_weights(tmp_path, run):
    _, _, trained, _ = run
    template = training.template(small_model)
    assert all(not np.any(p) for p in params_of(template))
    path = training.save_checkpoint(trained, tmp_path / "model.msgpack")
    loaded = training.load_checkpoint(template, path)
    x = jnp.linspace(-3, 3, 11)[:, None]
    np.testing.assert_array_equal(loaded(x, 0.5), trained(x, 0.5))


def test_mismatched_architecture_is_refused(tmp_path, run):
    _, _, trained, _ = run
    path = training.save_checkpoint(trained, tmp_path / "model.msgpack")
    with pytest.raises(ValueError, match="does not match.*kernel"):
        training.load_checkpoint(nets.ScoreMLP(1, hidden=16, depth=2, sde=SDE, rngs=nnx.Rngs(0)), path)
    with pytest.raises(ValueError, match="does not match.*layers"):
        training.load_checkpoint(nets.ScoreMLP(1, hidden=32, depth=3, sde=SDE, rngs=nnx.Rngs(0)), path)
    with pytest.raises(ValueError, match="TimeClassifier"):
        training.load_checkpoint(nets.TimeClassifier(1, 2, hidden=32, depth=2, rngs=nnx.Rngs(0)), path)
