"""The hidden tests of chapter 3 accept right answers and reject plausible wrong ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises, sampling


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


# ---------------------------------------------------------------------------- reverse_drift


def drift_right(sde, score_fn, x, t):
    return sde.drift(x, t) - sde.diffusion(t) ** 2 * score_fn(x, t)


def drift_right_companion(sde, score_fn, x, t):
    return sde.reverse_drift(score_fn, x, t)


DRIFT_WRONG = {
    "calls the companion (LinearSDE.reverse_drift)": drift_right_companion,
    "sign of the score term": lambda s, f, x, t: s.drift(x, t) + s.diffusion(t) ** 2 * f(x, t),
    "probability flow drift": lambda s, f, x, t: s.drift(x, t) - 0.5 * s.diffusion(t) ** 2 * f(x, t),
    "g instead of g^2": lambda s, f, x, t: s.drift(x, t) - s.diffusion(t) * f(x, t),
    "drift in tau": lambda s, f, x, t: -s.drift(x, t) + s.diffusion(t) ** 2 * f(x, t),
    "no forward drift": lambda s, f, x, t: -s.diffusion(t) ** 2 * f(x, t),
}


@pytest.mark.parametrize("fn", [drift_right])
def test_reverse_drift_accepts_right_answers(fn):
    assert check("reverse_drift", fn)


@pytest.mark.parametrize("wrong", DRIFT_WRONG.values(), ids=DRIFT_WRONG.keys())
def test_reverse_drift_rejects_wrong_answers(wrong):
    assert not check("reverse_drift", wrong)


def test_reverse_drift_diagnoses(capsys):
    exercises.check("reverse_drift", DRIFT_WRONG["probability flow drift"])
    assert "probability flow" in capsys.readouterr().out
    exercises.check("reverse_drift", DRIFT_WRONG["drift in tau"])
    assert "tau" in capsys.readouterr().out


# ------------------------------------------------------------------- reverse_diffusion_step


def step_right(sde, score_fn, x, t, t_next, z):
    r = sde.mean_coefficient(t) / sde.mean_coefficient(t_next)
    g2 = sde.kernel_std(t) ** 2 - r**2 * sde.kernel_std(t_next) ** 2
    return x - (r - 1) * x + g2 * score_fn(x, t) + jnp.sqrt(g2) * z


def step_right_companion(sde, score_fn, x, t, t_next, z):
    r, q = sde.transition(t_next, t)
    return (2 - r) * x + q**2 * score_fn(x, t) + q * z


def _parts(sde, t, t_next):
    r = sde.mean_coefficient(t) / sde.mean_coefficient(t_next)
    return r, sde.kernel_std(t) ** 2 - r**2 * sde.kernel_std(t_next) ** 2


def step_no_r(sde, f, x, t, t_next, z):
    r, _ = _parts(sde, t, t_next)
    g2 = sde.kernel_std(t) ** 2 - sde.kernel_std(t_next) ** 2
    return x - (r - 1) * x + g2 * f(x, t) + jnp.sqrt(g2) * z


def step_g_on_score(sde, f, x, t, t_next, z):
    r, g2 = _parts(sde, t, t_next)
    return x - (r - 1) * x + jnp.sqrt(g2) * f(x, t) + jnp.sqrt(g2) * z


def step_score_at_next(sde, f, x, t, t_next, z):
    r, g2 = _parts(sde, t, t_next)
    return x - (r - 1) * x + g2 * f(x, t_next) + jnp.sqrt(g2) * z


def step_drift_sign(sde, f, x, t, t_next, z):
    r, g2 = _parts(sde, t, t_next)
    return x + (r - 1) * x + g2 * f(x, t) + jnp.sqrt(g2) * z


def step_euler_maruyama(sde, f, x, t, t_next, z):  # a different sampler: not this step
    h = t - t_next
    return x - sde.reverse_drift(f, x, t) * h + sde.diffusion(t) * jnp.sqrt(h) * z


STEP_WRONG = {
    "calls the companion (LinearSDE.transition)": step_right_companion,
    "G^2 without r^2": step_no_r,
    "G on the score": step_g_on_score,
    "score at t_next": step_score_at_next,
    "sign of f": step_drift_sign,
    "an Euler-Maruyama step": step_euler_maruyama,
}


@pytest.mark.parametrize("fn", [step_right])
def test_reverse_diffusion_step_accepts_right_answers(fn):
    assert check("reverse_diffusion_step", fn)


@pytest.mark.parametrize("wrong", STEP_WRONG.values(), ids=STEP_WRONG.keys())
def test_reverse_diffusion_step_rejects_wrong_answers(wrong):
    assert not check("reverse_diffusion_step", wrong)


def test_reverse_diffusion_step_diagnoses(capsys):
    exercises.check("reverse_diffusion_step", step_no_r)
    assert "shrunk by r^2" in capsys.readouterr().out
    exercises.check("reverse_diffusion_step", step_score_at_next)
    assert "t_next" in capsys.readouterr().out


def test_the_reference_is_the_companion_predictor():
    """The exercise's step is the one sampling.reverse_diffusion takes."""
    from companion import sde, toy

    s = sde.VP()
    score = toy.exact_score(toy.four_gaussians_2d(), s)
    x = jnp.ones((3, 2))
    z = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)), jnp.float32)
    ref = exercises.get("reverse_diffusion_step").reference(s, score, x, 0.5, 0.45, z)
    _, mean = sampling.reverse_diffusion_step(s, score, x, jnp.float32(0.5), jnp.float32(0.45), jax.random.key(0))
    q = s.transition(0.45, 0.5)[1]
    np.testing.assert_allclose(ref - q * z, mean, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ langevin_corrector_step


def langevin_right(score_fn, x, t, z, snr, alpha):
    s = score_fn(x, t)
    step = 2 * alpha * (snr * jnp.linalg.norm(z, axis=1).mean() / jnp.linalg.norm(s, axis=1).mean()) ** 2
    return x + step * s + jnp.sqrt(2 * step) * z


def langevin_right_companion(score_fn, x, t, z, snr, alpha):
    s = score_fn(x, t)
    step = sampling.langevin_step_size(s, z, snr, alpha)[:, None]
    return x + step * s + jnp.sqrt(2 * step) * z


def _langevin(norms, factor=2.0, noise=2.0, invert=False):
    def fn(score_fn, x, t, z, snr, alpha):
        s = score_fn(x, t)
        zn, sn = norms(z), norms(s)
        ratio = sn / zn if invert else zn / sn
        step = factor * alpha * (snr * ratio) ** 2
        step = step[:, None] if jnp.ndim(step) else step
        return x + step * s + jnp.sqrt(noise * step) * z

    return fn


def per_sample(v):
    return jnp.linalg.norm(v, axis=1)


def batch_mean(v):
    return jnp.linalg.norm(v, axis=1).mean()


def frobenius(v):
    return jnp.linalg.norm(v)


LANGEVIN_WRONG = {
    "calls the companion (sampling.langevin_step_size)": langevin_right_companion,
    "per-sample norms": _langevin(per_sample),
    "norm of the whole batch": _langevin(frobenius),
    "noise sqrt(step)": _langevin(batch_mean, noise=1.0),
    "missing the factor 2": _langevin(batch_mean, factor=1.0, noise=2.0),
    "ratio upside down": _langevin(batch_mean, invert=True),
}


@pytest.mark.parametrize("fn", [langevin_right])
def test_langevin_corrector_step_accepts_right_answers(fn):
    assert check("langevin_corrector_step", fn)


@pytest.mark.parametrize("wrong", LANGEVIN_WRONG.values(), ids=LANGEVIN_WRONG.keys())
def test_langevin_corrector_step_rejects_wrong_answers(wrong):
    assert not check("langevin_corrector_step", wrong)


def test_langevin_corrector_step_diagnoses(capsys):
    exercises.check("langevin_corrector_step", LANGEVIN_WRONG["per-sample norms"])
    assert "per sample" in capsys.readouterr().out
    exercises.check("langevin_corrector_step", LANGEVIN_WRONG["noise sqrt(step)"])
    assert "factor sqrt(2)" in capsys.readouterr().out


# ------------------------------------------------------------------------- reverse_sampler


def _sampler(sde, score_fn, key, shape, n_steps, eps, *, score_factor=1.0, noise=True,
             prior=True, drift_sign=-1.0):
    """Reverse-time Euler-Maruyama in a Python loop; the keywords make it wrong."""
    h = (sde.T - eps) / n_steps
    key, k0 = jax.random.split(key)
    x = sde.prior_sample(k0, shape) if prior else jax.random.normal(k0, shape)
    for k in range(n_steps):
        t = jnp.full((shape[0],), sde.T - k * h)
        g = sde.diffusion(t)[:, None]
        x = x + drift_sign * (sde.drift(x, t) - score_factor * g**2 * score_fn(x, t)) * h
        if noise:
            key, kz = jax.random.split(key)
            x = x + g * jnp.sqrt(h) * jax.random.normal(kz, shape)
    return x


def sampler_right(sde, score_fn, key, shape, n_steps, eps):
    return _sampler(sde, score_fn, key, shape, n_steps, eps)


def sampler_library(sde, score_fn, key, shape, n_steps, eps):
    return sampling.euler_maruyama(sde, score_fn, key, shape, n_steps=n_steps, eps=eps)[0]


SAMPLER_WRONG = {
    "calls the companion (sampling.euler_maruyama)": sampler_library,
    "factor 1/2 on the score (probability-flow drift, with noise)":
        lambda *a: _sampler(*a, score_factor=0.5),
    "no noise": lambda *a: _sampler(*a, noise=False),
    "score term with the wrong sign": lambda *a: _sampler(*a, score_factor=-1.0),
    "forward drift direction (time not reversed)": lambda *a: _sampler(*a, drift_sign=1.0),
}


def test_reverse_sampler_accepts_a_right_answer():
    assert check("reverse_sampler", sampler_right)


@pytest.mark.parametrize("wrong", SAMPLER_WRONG.values(), ids=SAMPLER_WRONG.keys())
def test_reverse_sampler_rejects_wrong_answers(wrong, capsys):
    assert not check("reverse_sampler", wrong)


def test_reverse_sampler_says_how_the_modes_are_wrong(capsys):
    exercises.check("reverse_sampler", SAMPLER_WRONG["no noise"])
    assert "times as wide" in capsys.readouterr().out
    exercises.check("reverse_sampler", sampler_library)
    assert "write it yourself" in capsys.readouterr().out


def test_reverse_sampler_reference_is_within_the_band_on_other_seeds():
    """The reference's time-discretisation bias at 250 steps is well inside the band."""
    from companion import metrics, toy
    from companion.exercises.reverse import (_reverse_sampler, _sampler_cases,
                                             _sampler_mixture)

    mix = _sampler_mixture()
    for label, s in _sampler_cases():
        x = _reverse_sampler(s, toy.exact_score(mix, s), jax.random.key(7), (10_000, 2), 250, 1e-3)
        report = metrics.mixture_report(x, mix.perturbed(s, 1e-3))
        assert report.max_z < 0.8 * report.threshold, (label, str(report))
