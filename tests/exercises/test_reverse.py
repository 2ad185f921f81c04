"""The hidden tests of chapter 3 accept right answers and reject plausible wrong ones,
naming the mistake wherever a diagnosis exists."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises, sampling


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


def message(name, fn, capsys):
    """The report of a failing check (the message and the hint)."""
    capsys.readouterr()
    assert not exercises.check(name, fn)
    return capsys.readouterr().out


# ------------------------------------------------------------------ langevin_corrector_step


def langevin_right(score_fn, x, t, z, snr, alpha):
    s = score_fn(x, t)
    step = 2 * alpha * (snr * jnp.linalg.norm(z, axis=1).mean() / jnp.linalg.norm(s, axis=1).mean()) ** 2
    return x + step * s + jnp.sqrt(2 * step) * z


def langevin_right_numpy(score_fn, x, t, z, snr, alpha):
    s = np.asarray(score_fn(x, t), np.float64)
    z = np.asarray(z, np.float64)
    ratio = np.mean(np.sqrt(np.sum(z**2, 1))) / np.mean(np.sqrt(np.sum(s**2, 1)))
    step = 2 * alpha * snr**2 * ratio**2
    return np.asarray(x, np.float64) + step * s + np.sqrt(2 * step) * z


def langevin_right_companion(score_fn, x, t, z, snr, alpha):
    s = score_fn(x, t)
    step = sampling.langevin_step_size(s, z, snr, alpha)[:, None]
    return x + step * s + jnp.sqrt(2 * step) * z


def _langevin(norms, factor=2.0, noise=2.0, invert=False, use_alpha=True):
    def fn(score_fn, x, t, z, snr, alpha):
        s = score_fn(x, t)
        zn, sn = norms(z), norms(s)
        ratio = sn / zn if invert else zn / sn
        step = factor * (alpha if use_alpha else 1.0) * (snr * ratio) ** 2
        step = step[:, None] if jnp.ndim(step) else step
        return x + step * s + jnp.sqrt(noise * step) * z

    return fn


def per_sample(v):
    return jnp.linalg.norm(v, axis=1)


def batch_mean(v):
    return jnp.linalg.norm(v, axis=1).mean()


def frobenius(v):
    return jnp.linalg.norm(v)


def rms_norm(v):  # averages the squared per-sample norms, then takes the root
    return jnp.sqrt(jnp.mean(jnp.sum(jnp.asarray(v) ** 2, axis=1)))


# each wrong answer, and the words its diagnosis must contain (None: no diagnosis)
LANGEVIN_WRONG = {
    "calls the companion (sampling.langevin_step_size)": (langevin_right_companion, "write it yourself"),
    "per-sample norms": (_langevin(per_sample), "per sample"),
    "norm of the whole batch": (_langevin(frobenius), "squared norms"),
    "mean of the squared norms": (_langevin(rms_norm), "squared norms"),
    "noise sqrt(step)": (_langevin(batch_mean, noise=1.0), "factor sqrt(2)"),
    "missing the factor 2": (_langevin(batch_mean, factor=1.0, noise=2.0), "factor close to 2"),
    "ratio upside down": (_langevin(batch_mean, invert=True), "upside down"),
    "no alpha": (_langevin(batch_mean, use_alpha=False), "alpha is missing"),
}


@pytest.mark.parametrize("fn", [langevin_right, langevin_right_numpy])
def test_langevin_corrector_step_accepts_right_answers(fn):
    assert check("langevin_corrector_step", fn)


@pytest.mark.parametrize("wrong", LANGEVIN_WRONG.values(), ids=LANGEVIN_WRONG.keys())
def test_langevin_corrector_step_names_each_mistake(wrong, capsys):
    fn, words = wrong
    assert words in message("langevin_corrector_step", fn, capsys)


def test_averaged_squares_are_not_called_the_norm_of_the_whole_batch(capsys):
    """Issue 27: a learner who averaged squared per-sample norms did not take 'the norm of
    the whole batch at once'; the message says what they did."""
    out = message("langevin_corrector_step", LANGEVIN_WRONG["mean of the squared norms"][0], capsys)
    assert "averages the squared norms" in out and "whole batch at once;" not in out


# ---------------------------------------------------------------------------- reverse_drift


def drift_right(sde, score_fn, x, t):
    g = sde.diffusion(x, t)[:, None]
    return sde.drift(x, t) - 2 * g * sde.diffusion_grad(x, t) - g**2 * score_fn(x, t)


def drift_right_grad_of_square(sde, score_fn, x, t):
    # the same answer written as grad(g^2) by autodiff of g^2 through the stand-in's g
    x64 = np.asarray(x, np.float64)
    g = np.asarray(sde.diffusion(x64, t))
    grad_g2 = np.stack([
        np.asarray(jax.grad(lambda xi: sde.diffusion(xi[None], t)[0] ** 2)(jnp.asarray(xi)))
        for xi in x64
    ])
    return np.asarray(sde.drift(x64, t)) - grad_g2 - g[:, None] ** 2 * np.asarray(score_fn(x64, t))


def _drift(new=2.0, score=1.0, sign=1.0, use_dg_alone=False, tau=False):
    def fn(sde, score_fn, x, t):
        g = sde.diffusion(x, t)[:, None]
        dg = sde.diffusion_grad(x, t)
        extra = new * (dg if use_dg_alone else g * dg)
        weight = g**2 if score != "g" else g
        factor = score if score != "g" else 1.0
        out = sign * sde.drift(x, t) - extra - factor * weight * score_fn(x, t)
        return -out if tau else out

    return fn


DRIFT_WRONG = {
    "Anderson's drift (no term from grad g)": (_drift(new=0.0), "depends on t only"),
    "half the new term (g grad g)": (_drift(new=1.0), "half what the derivation gives"),
    "new term with the wrong sign": (_drift(new=-2.0), "wrong sign"),
    "gradient of g, not of g^2": (_drift(new=1.0, use_dg_alone=True), "gradient of g^2"),
    "probability flow drift": (_drift(new=1.0, score=0.5), "probability flow"),
    "drift in tau": (_drift(tau=True), "tau"),
    "score term with the wrong sign": (_drift(score=-1.0), "score term has the wrong sign"),
    "g on the score, not g^2": (_drift(score="g"), "multiplied by g"),
}


@pytest.mark.parametrize("fn", [drift_right, drift_right_grad_of_square])
def test_reverse_drift_accepts_right_answers(fn):
    assert check("reverse_drift", fn)


@pytest.mark.parametrize("wrong", DRIFT_WRONG.values(), ids=DRIFT_WRONG.keys())
def test_reverse_drift_names_each_mistake(wrong, capsys):
    fn, words = wrong
    assert words in message("reverse_drift", fn, capsys)


def test_reverse_drift_reduces_to_andersons_when_g_does_not_depend_on_x():
    """The reference on a noise level of t alone is the chapter's drift f - g^2 score."""
    from companion.exercises import reverse

    rng = np.random.default_rng(0)
    s = reverse._noise_sdes(2, rng)[2]
    x = rng.normal(size=(4, 2))
    g2 = 2.0 + 0.4
    want = s.drift(x, 0.4) - g2 * reverse._toy_score(x, 0.4)
    np.testing.assert_allclose(reverse._reverse_drift(s, reverse._toy_score, x, 0.4), want, rtol=1e-12)


def test_the_stand_in_gradients_are_the_gradients_of_g():
    from companion.exercises import reverse

    for label, s, _, x, t in reverse._drift_cases():
        x = np.asarray(x, np.float64)[:2]
        for i in range(x.shape[1]):
            e = np.zeros_like(x)
            e[:, i] = 1e-6
            numeric = (s.diffusion(x + e, t) - s.diffusion(x - e, t)) / 2e-6
            np.testing.assert_allclose(s.diffusion_grad(x, t)[:, i], numeric, atol=1e-6, err_msg=label)


# ------------------------------------------------------------------- reverse_diffusion_step


def step_right(sde, score_fn, x, t, t_next, z):
    psi = sde.mean_coefficient(t) / sde.mean_coefficient(t_next)
    g2 = sde.kernel_std(t) ** 2 - psi**2 * sde.kernel_std(t_next) ** 2
    return x - (psi - 1) * x + g2 * score_fn(x, t) + jnp.sqrt(g2) * z


def step_right_another_way(sde, score_fn, x, t, t_next, z):
    # G^2 from the variances of x_t and psi x_{t_next} given x_0, written in NumPy
    a_t, a_n = float(sde.mean_coefficient(t)), float(sde.mean_coefficient(t_next))
    b_t, b_n = float(sde.kernel_std(t)), float(sde.kernel_std(t_next))
    psi = a_t / a_n
    g2 = b_t**2 - (psi * b_n) ** 2
    x = np.asarray(x, np.float64)
    return (2 - psi) * x + g2 * np.asarray(score_fn(x, t)) + np.sqrt(g2) * np.asarray(z)


def step_right_companion(sde, score_fn, x, t, t_next, z):
    r, q = sde.transition(t_next, t)
    return (2 - r) * x + q**2 * score_fn(x, t) + q * z


def _step(g2_of, mean_of=None, score_at_next=False, score_factor=None, noise=True):
    def fn(sde, score_fn, x, t, t_next, z):
        psi = sde.mean_coefficient(t) / sde.mean_coefficient(t_next)
        bt2, bn2 = sde.kernel_std(t) ** 2, sde.kernel_std(t_next) ** 2
        g2 = g2_of(psi, bt2, bn2)
        mean = mean_of(psi, x) if mean_of else x - (psi - 1) * x
        score = score_fn(x, t_next if score_at_next else t)
        weight = score_factor(g2) if score_factor else g2
        return mean + weight * score + (jnp.sqrt(g2) * z if noise else 0.0)

    return fn


def _right_g2(psi, bt2, bn2):
    return bt2 - psi**2 * bn2


def step_euler_maruyama(sde, f, x, t, t_next, z):  # a different sampler: not this step
    h, g = t - t_next, sde.diffusion(t)
    reverse_drift = sde.drift(x, t) - g**2 * f(x, t)  # by hand: the chapter refuses sde.reverse_drift
    return x - reverse_drift * h + g * jnp.sqrt(h) * z


STEP_WRONG = {
    "calls the companion (LinearSDE.transition)": (step_right_companion, "write it yourself"),
    "the colleague's step, unchanged": (_step(lambda psi, bt2, bn2: bt2 - bn2), "still the colleague's"),
    "psi not squared": (_step(lambda psi, bt2, bn2: bt2 - psi * bn2), "scales a variance differently"),
    "psi^2 outside": (_step(lambda psi, bt2, bn2: psi**2 * (bt2 - bn2)), "still off"),
    "the drift part changed to x / psi": (_step(_right_g2, mean_of=lambda psi, x: x / psi), "drift part changed"),
    "G on the score": (_step(_right_g2, score_factor=jnp.sqrt), "multiplied by G"),
    "score at t_next": (_step(_right_g2, score_at_next=True), "t_next"),
    "sign of f": (_step(_right_g2, mean_of=lambda psi, x: x + (psi - 1) * x), "wrong sign"),
    "no noise": (_step(_right_g2, noise=False), "no noise"),
    "an Euler-Maruyama step": (step_euler_maruyama, "Euler-Maruyama"),
}


@pytest.mark.parametrize("fn", [step_right, step_right_another_way])
def test_reverse_diffusion_step_accepts_right_answers(fn):
    assert check("reverse_diffusion_step", fn)


@pytest.mark.parametrize("wrong", STEP_WRONG.values(), ids=STEP_WRONG.keys())
def test_reverse_diffusion_step_names_each_mistake(wrong, capsys):
    fn, words = wrong
    assert words in message("reverse_diffusion_step", fn, capsys)


def test_the_colleagues_step_is_right_for_ve_only():
    """The chapter's claim behind the exercise: the colleague's G^2 is the exact transition's
    for VE (psi = 1) and not for VP."""
    from companion import sde

    ve, vp = sde.VE(sigma_min=0.01, sigma_max=50.0), sde.VP()
    for s, right in ((ve, True), (vp, False)):
        psi, q = s.transition(0.45, 0.5)
        colleague = s.kernel_std(0.5) ** 2 - s.kernel_std(0.45) ** 2
        assert bool(np.isclose(colleague, q**2, rtol=1e-5)) is right


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


# ------------------------------------------------------------------------- corrector_width


def width_right(snr, alpha):
    return jnp.sqrt(1 + alpha * jnp.asarray(snr) ** 2)


def width_right_numpy(snr, alpha):
    snr, alpha = np.broadcast_arrays(np.asarray(snr, np.float64), np.asarray(alpha, np.float64))
    return np.sqrt(1.0 + alpha * snr * snr)


def width_simulated(snr, alpha):
    """A large simulation of the corrector on a unit Gaussian: right to its Monte-Carlo
    error (~1e-3), not exactly."""
    snr, alpha = np.broadcast_arrays(np.asarray(snr, np.float64), np.asarray(alpha, np.float64))
    out = np.empty(snr.shape)
    rng = np.random.default_rng(0)
    for i in np.ndindex(snr.shape):
        x = rng.normal(size=(20_000, 2))
        for _ in range(60):
            z = rng.normal(size=x.shape)
            step = 2 * alpha[i] * (snr[i] * np.linalg.norm(z, axis=1).mean() / np.linalg.norm(x, axis=1).mean()) ** 2
            x = x - step * x + np.sqrt(2 * step) * z
        out[i] = x.std()
    return out


WIDTH_WRONG = {
    "the fixed-step width": (lambda r, a: 1 / jnp.sqrt(1 - a * jnp.asarray(r) ** 2), "held at its value"),
    "the variance ratio": (lambda r, a: 1 + a * jnp.asarray(r) ** 2, "ratio of the variances"),
    "the fixed-step variance ratio": (lambda r, a: 1 / (1 - a * jnp.asarray(r) ** 2), "fixed-step ratio"),
    "first order only": (lambda r, a: 1 + a * jnp.asarray(r) ** 2 / 2, "first order"),
    "twice the excess variance": (lambda r, a: jnp.sqrt(1 + 2 * a * jnp.asarray(r) ** 2), "twice too large"),
    "alpha ignored": (lambda r, a: jnp.sqrt(1 + jnp.asarray(r) ** 2 + 0 * jnp.asarray(a)), "alpha"),
    "alpha divides": (lambda r, a: jnp.sqrt(1 + jnp.asarray(r) ** 2 / a), "alpha"),
    "a simulation": (width_simulated, None),
}


@pytest.mark.parametrize("fn", [width_right, width_right_numpy])
def test_corrector_width_accepts_right_answers(fn):
    assert check("corrector_width", fn)


@pytest.mark.parametrize("wrong", WIDTH_WRONG.values(), ids=WIDTH_WRONG.keys())
def test_corrector_width_rejects_and_names_each_mistake(wrong, capsys):
    fn, words = wrong
    out = message("corrector_width", fn, capsys)
    assert words is None or words in out


def test_corrector_width_is_what_the_corrector_does():
    """The reference is the fixed point of the corrector with batch-averaged norms: a
    simulation agrees to its Monte-Carlo error (and the fixed-step answer does not)."""
    from companion.exercises.reverse import _corrector_width

    got = width_simulated(np.array([0.5, 0.8]), np.array([1.0, 0.5]))
    want = _corrector_width(np.array([0.5, 0.8]), np.array([1.0, 0.5]))
    np.testing.assert_allclose(got, want, rtol=0.01)
    assert np.all(np.abs(got - 1 / np.sqrt(1 - np.array([0.25, 0.32]))) > 0.02)


def test_the_names_are_in_book_order():
    chapter3 = [n for n in exercises.names() if exercises.get(n).chapter == 3]
    assert chapter3 == ["langevin_corrector_step", "reverse_drift", "reverse_diffusion_step", "corrector_width"]
