"""Hidden tests of the exercises of chapter 3 (the reverse-time SDE).

* ``reverse_drift(sde, score_fn, x, t)``: f - g^2 score, Eq. (eq-reverse-sde), chapter 3.
* ``reverse_diffusion_step(sde, score_fn, x, t, t_next, z)``: one step of the
  reverse-diffusion predictor, Eq. (eq-reverse-diffusion).
* ``langevin_corrector_step(score_fn, x, t, z, snr, alpha)``: one Langevin corrector step
  with the snr rule and batch-averaged norms, Eq. (eq-langevin-corrector).

Every case uses the course's SDEs (VE, VP, sub-VP) and either the exact score of the
four-Gaussian mixture or a simple, strongly time-dependent score, with inputs from a
fixed seed. Messages say how an answer is wrong, never what the right value is.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from companion import sde as sde_lib
from companion import toy
from companion.exercises._core import Mismatch, as_array, exercise, expect_close

# ----------------------------------------------------------------------------- references


def _reverse_drift(sde, score_fn, x, t):
    """Reference: f(x, t) - g(t)^2 score(x, t)."""
    return sde.drift(x, t) - sde.diffusion(t) ** 2 * score_fn(x, t)


def _reverse_diffusion_step(sde, score_fn, x, t, t_next, z):
    """Reference: x - (r - 1) x + G^2 s(x, t) + G z with (r, G) the forward transition t_next -> t."""
    r, g = sde.transition(t_next, t)
    return x - (r - 1) * x + g**2 * score_fn(x, t) + g * z


def _batch_norm(v):
    return jnp.mean(jnp.sqrt(jnp.sum(v**2, axis=1)))


def _langevin_corrector_step(score_fn, x, t, z, snr, alpha):
    """Reference: x + e s + sqrt(2 e) z, e = 2 alpha (snr mean||z|| / mean||s||)^2."""
    score = score_fn(x, t)
    step = 2 * alpha * (snr * _batch_norm(z) / _batch_norm(score)) ** 2
    return x + step * score + jnp.sqrt(2 * step) * z


def _close(a, b, rtol, atol) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all(np.isfinite(a))) and bool(np.allclose(a, b, rtol=rtol, atol=atol))


# ---------------------------------------------------------------------------------- cases


def _toy_score(x, t):
    """A made-up score with a strong time dependence: -(x - 1) / (0.05 + t)."""
    return -(x - 1.0) / (0.05 + t)


def _cases(seed):
    """(label, sde, score_fn, x (n, 2) float32, t) for the course's three SDEs."""
    rng = np.random.default_rng(seed)
    mix = toy.four_gaussians_2d()
    cases = []
    for name, s in [
        ("VE(0.01, 50)", sde_lib.VE(sigma_min=0.01, sigma_max=50.0)),
        ("VP(0.1, 20)", sde_lib.VP(beta_min=0.1, beta_max=20.0)),
        ("sub-VP(0.1, 20)", sde_lib.SubVP(beta_min=0.1, beta_max=20.0)),
        ("VP(1, 5)", sde_lib.VP(beta_min=1.0, beta_max=5.0)),
    ]:
        t = float(rng.uniform(0.3, 0.9))
        spread = float(np.sqrt(4.25 * s.mean_coefficient(t) ** 2 + s.kernel_std(t) ** 2))
        x = jnp.asarray(spread * rng.normal(size=(6, 2)), jnp.float32)
        cases.append((f"{name}, exact mixture score, t = {t:.2f}", s, toy.exact_score(mix, s), x, t))
        x = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
        cases.append((f"{name}, a simple time-dependent score, t = {t:.2f}", s, _toy_score, x, t))
    return cases


# ---------------------------------------------------------------------------- reverse_drift

# float32 products of size up to ~1e3 (VE's g^2 ~ 1e4 times scores ~ 0.1): agreement to a few
# float32 roundings, rtol 1e-4. The mistakes (a factor 1/2, a sign, g for g^2, -f) change
# the answer by O(1) relative on these cases.
_DRIFT_RTOL, _DRIFT_ATOL = 1e-4, 1e-4


def _diagnose_drift(arr, sde, score_fn, x, t):
    f = np.asarray(sde.drift(x, t), np.float64)
    g = float(sde.diffusion(t))
    s = np.asarray(score_fn(x, t), np.float64)

    def near(v):
        return _close(arr, v, _DRIFT_RTOL, _DRIFT_ATOL)

    if np.max(np.abs(f)) > _DRIFT_ATOL and near(-f + g**2 * s):
        return "this is the drift in the forward-running time tau = T - t; Eq. (eq-reverse-sde) is written in t"
    if near(f + g**2 * s):
        if np.max(np.abs(f)) <= _DRIFT_ATOL:  # VE: f = 0, so -f + g^2 s is the same answer
            return ("the score term has the wrong sign (with f = 0 this is also the drift in the "
                    "forward-running time tau = T - t; Eq. (eq-reverse-sde) is written in t)")
        return "the score term has the wrong sign"
    if near(f - 0.5 * g**2 * s):
        return "a factor 1/2 on the score term: that is the probability flow drift (chapter 5), not the reverse SDE's"
    if near(f - g * s):
        return "the score is multiplied by g(t); the reverse drift uses g(t)^2"
    if near(-g**2 * s):
        return "the forward drift f(x, t) is missing"
    return None


@exercise(
    "reverse_drift",
    chapter=3,
    hint=(
        "Anderson's drift is the forward drift minus g(t)^2 times the score, both at (x, t): "
        "use sde.drift(x, t), sde.diffusion(t) (which is g, not g^2) and score_fn(x, t). "
        "The sign of dt is not part of the drift."
    ),
    reference=_reverse_drift,
)
def _test_reverse_drift(fn):
    for label, s, score_fn, x, t in _cases(20210301):
        want = np.asarray(_reverse_drift(s, score_fn, x, t), np.float64)
        what = f"case '{label}'"
        arr = as_array(fn(s, score_fn, x, t), what)
        if arr.shape == want.shape and np.all(np.isfinite(arr)) and not _close(arr, want, _DRIFT_RTOL, _DRIFT_ATOL):
            msg = _diagnose_drift(arr, s, score_fn, x, t)
            if msg:
                raise Mismatch(f"{what}: {msg}")
        expect_close(arr, want, what=what, rtol=_DRIFT_RTOL, atol=_DRIFT_ATOL)


# ------------------------------------------------------------------- reverse_diffusion_step

# G^2 = s(t)^2 - r^2 s(t_next)^2 loses up to ~1e-7 / G^2 <~ 1e-4 relative to cancellation in
# float32 (steps of at least 0.03), and a reader may compute it another way: rtol 2e-3,
# atol 1e-4. The mistakes (G^2 without r^2 for VP, G for G^2, the score at t_next, +f)
# change the answer by >= 1e-2 on these cases.
_STEP_RTOL, _STEP_ATOL = 2e-3, 1e-4


def _diagnose_step(arr, s, score_fn, x, t, t_next, z):
    x64, z64 = np.asarray(x, np.float64), np.asarray(z, np.float64)
    r = float(s.mean_coefficient(t) / s.mean_coefficient(t_next))
    g2 = float(s.kernel_std(t) ** 2 - r**2 * s.kernel_std(t_next) ** 2)
    g2_no_r = float(s.kernel_std(t) ** 2 - s.kernel_std(t_next) ** 2)
    sc = np.asarray(score_fn(x, t), np.float64)
    sc_next = np.asarray(score_fn(x, t_next), np.float64)

    def near(v):
        return _close(arr, v, _STEP_RTOL, _STEP_ATOL)

    if near(x64 - (r - 1) * x64 + g2_no_r * sc + np.sqrt(g2_no_r) * z64):
        return "G^2 is s(t)^2 - s(t_next)^2; the noise already there at t_next is shrunk by r over the step (r^2 s(t_next)^2)"
    if near(x64 - (r - 1) * x64 + np.sqrt(g2) * sc + np.sqrt(g2) * z64):
        return "the score is multiplied by G; it takes G^2"
    if near(x64 - (r - 1) * x64 + g2 * sc_next + np.sqrt(g2) * z64):
        return "the score is taken at t_next; the step starts at (x, t)"
    if near(x64 + (r - 1) * x64 + g2 * sc + np.sqrt(g2) * z64):
        return "the drift increment f = (r - 1) x has the wrong sign: the reverse step subtracts it"
    if near(x64 - (r - 1) * x64 + g2 * sc):
        return "there is no noise term"
    return None


@exercise(
    "reverse_diffusion_step",
    chapter=3,
    hint=(
        "Over the step, the forward process maps x_{t_next} to r x_{t_next} + G z. Get r from "
        "sde.mean_coefficient at both times, G^2 from sde.kernel_std at both times (the "
        "variance at t minus the shrunk variance at t_next), then return "
        "x - (r - 1) x + G^2 score(x, t) + G z."
    ),
    reference=_reverse_diffusion_step,
)
def _test_reverse_diffusion_step(fn):
    rng = np.random.default_rng(20210302)
    for label, s, score_fn, x, t in _cases(20210303):
        t_next = t - float(rng.uniform(0.03, 0.1))
        z = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
        want = np.asarray(_reverse_diffusion_step(s, score_fn, x, t, t_next, z), np.float64)
        what = f"case '{label}', t_next = {t_next:.2f}"
        arr = as_array(fn(s, score_fn, x, t, t_next, z), what)
        if arr.shape == want.shape and np.all(np.isfinite(arr)) and not _close(arr, want, _STEP_RTOL, _STEP_ATOL):
            msg = _diagnose_step(arr, s, score_fn, x, t, t_next, z)
            if msg:
                raise Mismatch(f"{what}: {msg}")
        expect_close(arr, want, what=what, rtol=_STEP_RTOL, atol=_STEP_ATOL)


# ------------------------------------------------------------------ langevin_corrector_step

# A few float32 operations on values of size <~ 10: rtol 1e-4. The mistakes change the step
# size by a factor 2 or more, or (per-sample norms) by a different factor for each sample.
_LANGEVIN_RTOL, _LANGEVIN_ATOL = 1e-4, 1e-5


def _diagnose_langevin(arr, score_fn, x, t, z, snr, alpha):
    x64, z64 = np.asarray(x, np.float64), np.asarray(z, np.float64)
    sc = np.asarray(score_fn(x, t), np.float64)
    zn, sn = np.linalg.norm(z64, axis=1), np.linalg.norm(sc, axis=1)
    eps = 2 * alpha * (snr * zn.mean() / sn.mean()) ** 2

    def near(v):
        return _close(arr, v, _LANGEVIN_RTOL, _LANGEVIN_ATOL)

    per = (2 * alpha * (snr * zn / sn) ** 2)[:, None]
    if near(x64 + per * sc + np.sqrt(2 * per) * z64):
        return "the norms are taken per sample; average them over the batch, so every sample takes the same step"
    frob = 2 * alpha * (snr * np.linalg.norm(z64) / np.linalg.norm(sc)) ** 2
    if near(x64 + frob * sc + np.sqrt(2 * frob) * z64):
        return "the norms are of the whole batch at once; take each sample's norm, then average over the batch"
    if near(x64 + eps * sc + np.sqrt(eps) * z64):
        return "the noise is sqrt(step) z; Langevin dynamics adds sqrt(2 step) z"
    if near(x64 + eps / 2 * sc + np.sqrt(eps) * z64):
        return "the step size is missing its factor 2 (e = 2 alpha (snr ||z|| / ||s||)^2)"
    inv = 2 * alpha * (snr * sn.mean() / zn.mean()) ** 2
    if near(x64 + inv * sc + np.sqrt(2 * inv) * z64):
        return "the ratio of norms is upside down: the step grows with ||z|| and shrinks with ||score||"
    return None


def _langevin_cases():
    rng = np.random.default_rng(20210304)
    cases = []
    for label, s, score_fn, x, t in _cases(20210305):
        z = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
        snr = float(rng.uniform(0.05, 0.3))
        alpha = 1.0 if isinstance(s, sde_lib.VE) else float(s.transition(t - 0.01, t)[0] ** 2)
        cases.append((f"{label}, snr = {snr:.2f}, alpha = {alpha:.3f}", score_fn, x, t, z, snr, alpha))
    return cases


@exercise(
    "langevin_corrector_step",
    chapter=3,
    hint=(
        "Compute the score at (x, t), then each sample's Euclidean norm of the score and of z "
        "(norm over axis 1) and average each over the batch. The step is "
        "2 alpha (snr ||z|| / ||score||)^2; move by step * score and add sqrt(2 step) z."
    ),
    reference=_langevin_corrector_step,
)
def _test_langevin_corrector_step(fn):
    for label, score_fn, x, t, z, snr, alpha in _langevin_cases():
        want = np.asarray(_langevin_corrector_step(score_fn, x, t, z, snr, alpha), np.float64)
        what = f"case '{label}'"
        arr = as_array(fn(score_fn, x, t, z, snr, alpha), what)
        if arr.shape == want.shape and np.all(np.isfinite(arr)) and not _close(
            arr, want, _LANGEVIN_RTOL, _LANGEVIN_ATOL
        ):
            msg = _diagnose_langevin(arr, score_fn, x, t, z, snr, alpha)
            if msg:
                raise Mismatch(f"{what}: {msg}")
        expect_close(arr, want, what=what, rtol=_LANGEVIN_RTOL, atol=_LANGEVIN_ATOL)
