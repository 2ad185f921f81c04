"""Hidden tests of the exercises of chapter 3 (the reverse-time SDE).

* ``langevin_corrector_step`` (warm-up): one corrector step, batch-averaged norms.
* ``reverse_drift`` (derivation): the reverse drift f - grad(g^2) - g^2 grad log p_t of
  dx = f dt + g(x, t) dw, whose noise level depends on x (the chapter derives g(t) only).
* ``reverse_diffusion_step`` (find the bug): the chapter prints a colleague's step whose
  noise variance ignores the shrink psi over the step (right for VE, wrong for VP).
* ``corrector_width`` (derivation, then a decision): a Gaussian mode's std after many
  corrector steps recomputed from the samples, sqrt(1 + alpha snr^2) times its own (the
  chapter computes only the fixed-step 1 / sqrt(1 - snr^2)).

Every freedom the statements allow is varied (SDEs, dimensions, float32 and float64,
scalars and arrays); messages say how an answer is wrong, never what is right.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from companion import sde as sde_lib
from companion import toy
from companion.exercises._core import as_array, exercise, expect_close, is_close

__all__: list[str] = []  # importing the module registers its exercises; nothing to import

# ----------------------------------------------------------------------------- references

# The chapter's "write it yourself" (every exercise): no sampler or step of
# companion.sampling, no sde.transition, sde.reverse_drift or sde.probability_flow_drift.
_NOT_YOURS = ("companion.sampling:*", "companion.sde:LinearSDE.transition",
              "companion.sde:LinearSDE.reverse_drift", "companion.sde:LinearSDE.probability_flow_drift")


def _langevin_corrector_step(score_fn, x, t, z, snr, alpha):
    """Reference: x + e s + sqrt(2 e) z, e = 2 alpha (snr mean||z|| / mean||s||)^2."""
    score = score_fn(x, t)
    norm = lambda v: jnp.mean(jnp.sqrt(jnp.sum(v**2, axis=1)))  # noqa: E731
    step = 2 * alpha * (snr * norm(z) / norm(score)) ** 2
    return x + step * score + jnp.sqrt(2 * step) * z


def _reverse_drift(sde, score_fn, x, t):
    """Reference: f - grad(g^2) - g^2 score, with grad(g^2) = 2 g grad(g)."""
    g = sde.diffusion(x, t)[:, None]
    return sde.drift(x, t) - 2 * g * sde.diffusion_grad(x, t) - g**2 * score_fn(x, t)


def _reverse_diffusion_step(sde, score_fn, x, t, t_next, z):
    """Reference: x - (psi - 1) x + G^2 s(x, t) + G z with (psi, G) the forward transition
    t_next -> t: psi = a(t) / a(t_next), G^2 = b(t)^2 - psi^2 b(t_next)^2."""
    psi = sde.mean_coefficient(t) / sde.mean_coefficient(t_next)
    g = jnp.sqrt(jnp.maximum(sde.kernel_std(t) ** 2 - psi**2 * sde.kernel_std(t_next) ** 2, 0.0))
    return x - (psi - 1) * x + g**2 * score_fn(x, t) + g * z


def _corrector_width(snr, alpha):
    """Reference: the fixed point V = sigma^2 (1 + alpha snr^2) of the corrector's variance
    map, with the step 2 alpha snr^2 sigma^4 / V recomputed from the samples."""
    return np.sqrt(1 + np.asarray(alpha, np.float64) * np.asarray(snr, np.float64) ** 2)


# ---------------------------------------------------------------------------------- cases


def _toy_score(x, t):
    """A made-up score with a strong time dependence: -(x - 1) / (0.05 + t)."""
    return -(x - 1.0) / (0.05 + t)


@functools.cache
def _sdes_and_scores():
    """(name, sde, exact score of the four-Gaussian mixture under it) for the course's
    three SDEs and one more. Built once and shared by every test of this module: each
    score function compiles its program once per shape, not once per test."""
    mix = toy.four_gaussians_2d()
    return tuple(
        (name, s, toy.exact_score(mix, s))
        for name, s in [("VE(0.01, 50)", sde_lib.VE(sigma_min=0.01, sigma_max=50.0)),
                        ("VP(0.1, 20)", sde_lib.VP(beta_min=0.1, beta_max=20.0)),
                        ("sub-VP(0.1, 20)", sde_lib.SubVP(beta_min=0.1, beta_max=20.0)),
                        ("VP(1, 5)", sde_lib.VP(beta_min=1.0, beta_max=5.0))])


def _cases(seed):
    """(label, sde, score_fn, x (n, d), t): the four SDEs, each with the exact mixture score
    (d = 2, float32) and with a simple time-dependent score (d = 3, float64 NumPy)."""
    rng = np.random.default_rng(seed)
    cases = []
    for name, s, exact in _sdes_and_scores():
        t = float(rng.uniform(0.3, 0.9))
        spread = float(np.sqrt(4.25 * s.mean_coefficient(t) ** 2 + s.kernel_std(t) ** 2))
        x = jnp.asarray(spread * rng.normal(size=(6, 2)), jnp.float32)
        cases.append((f"{name}, exact mixture score, t = {t:.2f}", s, exact, x, t))
        x = rng.normal(size=(5, 3))
        cases.append((f"{name}, a simple time-dependent score in 3-D, t = {t:.2f}", s, _toy_score, x, t))
    return cases


# ------------------------------------------------------------------ langevin_corrector_step

# A few float32 operations on values of size <~ 10: rtol 1e-4. The mistakes change the step
# size by a factor 1/alpha >= 1.01 or more, or by a different factor for each sample.
_LANGEVIN_RTOL, _LANGEVIN_ATOL = 1e-4, 1e-5


def _diagnose_langevin(arr, score_fn, x, t, z, snr, alpha):
    x64, z64, sc = (np.asarray(v, np.float64) for v in (x, z, score_fn(x, t)))
    zn, sn = np.linalg.norm(z64, axis=1), np.linalg.norm(sc, axis=1)
    eps = 2 * alpha * (snr * zn.mean() / sn.mean()) ** 2
    near = functools.partial(is_close, arr, rtol=_LANGEVIN_RTOL, atol=_LANGEVIN_ATOL)
    per = (2 * alpha * (snr * zn / sn) ** 2)[:, None]
    if near(x64 + per * sc + np.sqrt(2 * per) * z64):
        return "the norms are taken per sample; average them over the batch, so every sample takes the same step"
    # mean ||z||^2 / mean ||s||^2 is also ||Z||^2 / ||S||^2, the norms of the whole batch
    squares = 2 * alpha * snr**2 * np.mean(zn**2) / np.mean(sn**2)
    if near(x64 + squares * sc + np.sqrt(2 * squares) * z64):
        return ("the step averages the squared norms over the batch (the same ratio as the norm "
                "of the whole batch at once); the rule averages each sample's norm itself, then "
                "squares the ratio")
    if near(x64 + eps * sc + np.sqrt(eps) * z64):
        return "the noise is too small by a factor sqrt(2) for the step size"
    if near(x64 + eps / 2 * sc + np.sqrt(eps) * z64):
        return "the step size is off by a factor close to 2"
    inv = 2 * alpha * (snr * sn.mean() / zn.mean()) ** 2
    if near(x64 + inv * sc + np.sqrt(2 * inv) * z64):
        return "the ratio of norms is upside down: the step grows with ||z|| and shrinks with ||score||"
    no_alpha = 2 * (snr * zn.mean() / sn.mean()) ** 2
    if abs(alpha - 1) > 1e-3 and near(x64 + no_alpha * sc + np.sqrt(2 * no_alpha) * z64):
        return "alpha is missing from the step size"
    return None


def _langevin_cases():
    rng = np.random.default_rng(20210304)
    cases = []
    for label, s, score_fn, x, t in _cases(20210305):
        z = (jnp.asarray if isinstance(x, jnp.ndarray) else np.asarray)(rng.normal(size=x.shape), x.dtype)
        snr = float(rng.uniform(0.05, 0.3))
        alpha = 1.0 if isinstance(s, sde_lib.VE) else float(
            (s.mean_coefficient(t) / s.mean_coefficient(t - 0.01)) ** 2)
        cases.append((f"{label}, snr = {snr:.2f}, alpha = {alpha:.3f}", score_fn, x, t, z, snr, alpha))
    return cases


@exercise(
    "langevin_corrector_step",
    chapter=3,
    hint="The corrector equation of chapter 3 (section 'Three samplers'): a Langevin step "
         "whose size comes from the signal-to-noise rule; the norms in that rule are "
         "averaged over the batch, not taken per sample.",
    hint2="Each sample's Euclidean norm of the score and of z, each averaged over the "
          "batch (average the norms, not their squares), give the step size through snr "
          "and alpha; then one Langevin move: the step times the score plus noise whose "
          "variance is twice the step.",
    blocked=_NOT_YOURS,
    reference=_langevin_corrector_step,
)
def _test_langevin_corrector_step(fn):
    for label, score_fn, x, t, z, snr, alpha in _langevin_cases():
        want = np.asarray(_langevin_corrector_step(score_fn, x, t, z, snr, alpha), np.float64)
        what = f"case '{label}'"
        arr = as_array(fn(score_fn, x, t, z, snr, alpha), what)
        expect_close(arr, want, what=what, rtol=_LANGEVIN_RTOL, atol=_LANGEVIN_ATOL,
                     diagnose=lambda arr: _diagnose_langevin(arr, score_fn, x, t, z, snr, alpha))


# ---------------------------------------------------------------------------- reverse_drift


class _NoiseSDE:
    """A forward SDE dx = f dt + g(x, t) dw whose scalar noise level depends on x; it offers
    only ``drift(x, t)`` (n, d), ``diffusion(x, t)`` (n,) and ``diffusion_grad(x, t)``
    (n, d), the gradient of each sample's g, computed in the dtype of ``x``."""

    __slots__ = ("drift", "diffusion", "diffusion_grad", "_label")

    def __init__(self, label, f, g, dg):
        self._label, self.drift, self.diffusion, self.diffusion_grad = label, f, g, dg

    def __repr__(self):
        return f"an SDE with a noise level that depends on x ({self._label})"


def _noise_sdes(d, rng):
    """Three forward SDEs in dimension d: g(x, t) through tanh of a projection, through the
    norm of x, and a g of t only (where the answer is Anderson's drift)."""
    v = rng.normal(size=d)
    v = v / np.linalg.norm(v)
    _xp = lambda x: jnp if isinstance(x, jnp.ndarray) else np  # noqa: E731
    th = lambda x: _xp(x).tanh(x @ v.astype(x.dtype))  # noqa: E731
    root = lambda x: _xp(x).sqrt(1.0 + _xp(x).sum(x**2, axis=1))  # noqa: E731
    f_ou = lambda x, t: -(1.0 + t) * x  # noqa: E731
    return [
        _NoiseSDE("g = sqrt(1 + t) (1 + tanh(v . x) / 2), f = -(1 + t) x", f_ou,
                  lambda x, t: np.sqrt(1.0 + t) * (1.0 + 0.5 * th(x)),
                  lambda x, t: (np.sqrt(1.0 + t) * 0.5 * (1.0 - th(x) ** 2))[:, None] * v.astype(x.dtype)),
        _NoiseSDE("g = (1/2 + t) sqrt(1 + |x|^2), f = -x/2 + 0.3 sin x",
                  lambda x, t: -0.5 * x + 0.3 * _xp(x).sin(x),
                  lambda x, t: (0.5 + t) * root(x),
                  lambda x, t: (0.5 + t) * x / root(x)[:, None]),
        _NoiseSDE("g = sqrt(2 + t), independent of x", f_ou,
                  lambda x, t: _xp(x).full(x.shape[:1], np.sqrt(2.0 + t), dtype=x.dtype),
                  lambda x, t: _xp(x).zeros_like(x)),
    ]


def _drift_cases():
    """(label, sde, score_fn, x, t): dimensions 1, 2 and 3, float32 JAX and float64 NumPy."""
    rng = np.random.default_rng(20210301)
    cases = []
    for d, as_jax in ((2, True), (1, False), (3, False), (2, False)):
        t = float(rng.uniform(0.2, 0.9))
        for s in _noise_sdes(d, rng):
            x = (jnp.asarray if as_jax else np.asarray)(1.5 * rng.normal(size=(5, d)), np.float32 if as_jax else None)
            kind = "float32 JAX" if as_jax else "float64 NumPy"
            cases.append((f"{s!r}, d = {d}, {kind} x, t = {t:.2f}", s, _toy_score, x, t))
    return cases


# float32 products of values of size <~ 30 (g^2 <~ 10 times scores <~ 3): rtol 1e-4. Each
# mistake moves the answer by at least a term of size ~0.1 where g depends on x.
_DRIFT_RTOL, _DRIFT_ATOL = 1e-4, 1e-4


def _diagnose_drift(arr, sde, score_fn, x, t):
    x64 = np.asarray(x, np.float64)
    f = np.asarray(sde.drift(x64, t), np.float64)
    g = np.asarray(sde.diffusion(x64, t), np.float64)[:, None]
    dg = np.asarray(sde.diffusion_grad(x64, t), np.float64)
    s = np.asarray(score_fn(x64, t), np.float64)
    new = 2 * g * dg  # the gradient of g^2
    near = functools.partial(is_close, arr, rtol=_DRIFT_RTOL, atol=_DRIFT_ATOL)
    if near(f - g**2 * s):
        return ("this is Anderson's drift for a noise level that depends on t only; here g "
                "depends on x, so step 3 of the derivation changes (the Laplacian acts on g^2 p)")
    if near(-f + new + g**2 * s):
        return "this is the drift in the forward-running time tau = T - t; the statement asks for it in t"
    if near(f - 0.5 * new - 0.5 * g**2 * s):
        return "this is the probability flow's drift for this SDE (chapter 5), not the reverse SDE's"
    if near(f - 0.5 * new - g**2 * s):
        return ("the term from the x-dependence of g is half what the derivation gives: the 1/2 "
                "of the Fokker-Planck equation stays with the part that remains a diffusion")
    if near(f + new - g**2 * s):
        return "the term from the x-dependence of g has the wrong sign"
    if near(f - dg - g**2 * s) or near(f - 2 * dg - g**2 * s):
        return ("the term from the x-dependence of g uses the gradient of g; the Laplacian acts "
                "on g^2 p, so it is the gradient of g^2 that appears")
    if near(f - new + g**2 * s):
        return "the score term has the wrong sign"
    if near(f - new - g * s):
        return "the score is multiplied by g; the reverse drift uses g^2"
    return None


@exercise(
    "reverse_drift",
    chapter=3,
    hint="Redo the four steps of chapter 3's derivation ('Why the score appears') with "
         "1/2 Laplacian(g^2 p) in place of 1/2 g^2 Laplacian(p). Add and subtract the "
         "whole Laplacian(g^2 p), then write it as the divergence of a flux: the product "
         "rule now gives two terms, not one.",
    hint2="The gradient of g^2 p is p times the gradient of g^2 plus g^2 times the gradient "
          "of p, and the gradient of p is p times the score. Collect every term of the "
          "flux that multiplies p into the drift in tau, then turn it into the drift in t "
          "(every term changes sign). sde.diffusion_grad gives the gradient of g, not of "
          "g^2: use the chain rule.",
    blocked=_NOT_YOURS,
    reference=_reverse_drift,
)
def _test_reverse_drift(fn):
    for label, s, score_fn, x, t in _drift_cases():
        x64 = np.asarray(x, np.float64)
        want = np.asarray(_reverse_drift(s, score_fn, x64, t), np.float64)
        what = f"case '{label}'"
        arr = as_array(fn(s, score_fn, x, t), what)
        expect_close(arr, want, what=what, rtol=_DRIFT_RTOL, atol=_DRIFT_ATOL,
                     diagnose=lambda arr: _diagnose_drift(arr, s, score_fn, x, t))


# ------------------------------------------------------------------- reverse_diffusion_step

# G^2 = b(t)^2 - psi^2 b(t_next)^2 loses up to ~1e-7 / G^2 <~ 1e-4 relative to cancellation
# in float32 (steps of at least 0.03), and a reader may compute it another way: rtol 2e-3,
# atol 1e-4. The mistakes (the colleague's G^2 for VP, G for G^2, the score at t_next, +f)
# change the answer by >= 1e-2 on these cases.
_STEP_RTOL, _STEP_ATOL = 2e-3, 1e-4


def _diagnose_step(arr, s, score_fn, x, t, t_next, z):
    x64, z64 = np.asarray(x, np.float64), np.asarray(z, np.float64)
    psi = float(s.mean_coefficient(t) / s.mean_coefficient(t_next))
    bt2, bn2 = float(s.kernel_std(t) ** 2), float(s.kernel_std(t_next) ** 2)
    g2 = bt2 - psi**2 * bn2
    sc = np.asarray(score_fn(x, t), np.float64)
    sc_next = np.asarray(score_fn(x, t_next), np.float64)

    def step(g2_, score=sc, mean=x64 - (psi - 1) * x64):
        g2_ = max(g2_, 0.0)
        return mean + g2_ * score + np.sqrt(g2_) * z64
    near = functools.partial(is_close, arr, rtol=_STEP_RTOL, atol=_STEP_ATOL)
    if near(step(bt2 - bn2)):
        return "this is still the colleague's step: its noise variance is right only where psi = 1 (VE)"
    if near(step(bt2 - psi * bn2)):
        return ("the noise variance multiplies b(t_next)^2 by psi; but it is the variance of "
                "psi x_{t_next} that b(t)^2 contains, and a factor on x scales a variance differently")
    if near(step(psi**2 * (bt2 - bn2))) or near(step(bt2 / psi**2 - bn2)):
        return ("the noise variance is still off: it is what b(t)^2, the variance of x_t given "
                "x_0, leaves after the part carried over from x_{t_next}")
    if near(x64 / psi + g2 * sc + np.sqrt(max(g2, 0.0)) * z64):
        return "the drift part changed: x - (psi - 1) x was not the bug (it reverses the forward increment)"
    if near(x64 - (psi - 1) * x64 + np.sqrt(max(g2, 0.0)) * sc + np.sqrt(max(g2, 0.0)) * z64):
        return "the score is multiplied by G; it takes G^2"
    if near(step(g2, score=sc_next)):
        return "the score is taken at t_next; the step starts at (x, t)"
    if near(step(g2, mean=x64 + (psi - 1) * x64)):
        return "the drift increment f = (psi - 1) x has the wrong sign: the reverse step subtracts it"
    if near(x64 - (psi - 1) * x64 + g2 * sc):
        return "there is no noise term"
    h, g = t - t_next, float(s.diffusion(t))
    if near(x64 - (np.asarray(s.drift(x64, t), np.float64) - g**2 * sc) * h + g * np.sqrt(h) * z64):
        return ("this is an Euler-Maruyama step of the reverse SDE; the exercise asks for the "
                "reverse-diffusion step, built on the exact forward transition")
    return None


@exercise(
    "reverse_diffusion_step",
    chapter=3,
    hint="The bug is in one line. Over the step the forward process is x_t = psi x_{t_next} "
         "+ G z, with z independent of x_{t_next}; chapter 2's kernel gives the variance of "
         "x_t and of x_{t_next} given x_0. Compare the two sides.",
    hint2="Given x_0, x_t has variance b(t)^2 (sde.kernel_std(t) squared). Write the variance "
          "of psi x_{t_next} + G z given x_0 in terms of psi, b(t_next) and G, set the two "
          "equal and solve for G^2. For VE psi = 1, which is why the colleague's code works "
          "there.",
    blocked=_NOT_YOURS,
    reference=_reverse_diffusion_step,
)
def _test_reverse_diffusion_step(fn):
    rng = np.random.default_rng(20210302)
    for label, s, score_fn, x, t in _cases(20210303):
        t_next = t - float(rng.uniform(0.03, 0.1))
        z = rng.normal(size=np.shape(x)).astype(np.asarray(x).dtype)
        z = jnp.asarray(z) if isinstance(x, jnp.ndarray) else z
        want = np.asarray(_reverse_diffusion_step(s, score_fn, x, t, t_next, z), np.float64)
        what = f"case '{label}', t_next = {t_next:.2f}"
        arr = as_array(fn(s, score_fn, x, t, t_next, z), what)
        expect_close(arr, want, what=what, rtol=_STEP_RTOL, atol=_STEP_ATOL,
                     diagnose=lambda arr: _diagnose_step(arr, s, score_fn, x, t, t_next, z))


# ------------------------------------------------------------------------- corrector_width

# A square root of float32 values near 1: relative error ~1e-7. A simulation, however
# large, is off by >~1e-4 (its Monte-Carlo error); so is the first-order answer at the
# smallest snr (alpha snr^2 / 2 misses (alpha snr^2)^2 / 8 >= 5e-6 at snr = 0.08). rtol 1e-6.
_WIDTH_RTOL, _WIDTH_ATOL = 1e-6, 0.0


def _diagnose_width(arr, snr, alpha):
    r2, a = np.asarray(snr, np.float64) ** 2, np.asarray(alpha, np.float64)
    near = functools.partial(is_close, arr, rtol=_WIDTH_RTOL, atol=_WIDTH_ATOL)
    if near(1 / np.sqrt(1 - a * r2)):
        return ("this is the width for a step held at its value for the exact width (the "
                "chapter's fixed-step computation); the corrector recomputes its step from the "
                "samples, and a wider cloud takes a smaller step")
    if near(1 + a * r2):
        return "this is the ratio of the variances; the question asks for the standard deviations"
    if near(1 / (1 - a * r2)):
        return "this is the fixed-step ratio of the variances, not the width the corrector settles at"
    if near(1 + a * r2 / 2):
        return "this is only the first order in snr^2; the question asks for the exact factor"
    if near(np.sqrt(1 + 2 * a * r2)):
        return "the excess variance is twice too large (mind how the step size and the noise's variance 2 delta combine)"
    if np.any(np.abs(a - 1) > 1e-3) and (near(np.sqrt(1 + r2)) or near(np.sqrt(1 + r2 / a))
                                          or near(np.sqrt(1 + a**2 * r2))):
        return "alpha enters the answer the wrong way (or not at all)"
    return None


def _width_cases():
    """(label, snr, alpha): scalars (Python and NumPy, float32 and float64), arrays, and a
    pair that broadcasts to a table."""
    rng = np.random.default_rng(20210306)
    return [
        ("snr = 0.16, alpha = 1", 0.16, 1.0),
        ("snr = 0.5, alpha = 1 (NumPy float32)", np.float32(0.5), np.float32(1.0)),
        ("snr = 0.08, alpha = 0.95", 0.08, 0.95),
        ("snr = 1.3, alpha = 0.4", 1.3, 0.4),
        ("snr an array (6,), alpha = 0.7", rng.uniform(0.05, 0.9, size=6), 0.7),
        ("snr = 0.3, alpha an array (4,)", 0.3, rng.uniform(0.3, 1.0, size=4)),
        ("snr (3, 1) and alpha (4,), float32", rng.uniform(0.1, 0.6, size=(3, 1)).astype(np.float32),
         rng.uniform(0.5, 1.0, size=4).astype(np.float32)),
    ]


@exercise(
    "corrector_width",
    chapter=3,
    hint="At the point where the cloud stops changing, one corrector step leaves its "
         "variance V unchanged. The step size is not fixed: it depends on V through the "
         "batch-averaged norms of the score, which for a Gaussian cloud of variance V scale "
         "like sqrt(V) / sigma^2.",
    hint2="Write the step size as a function of V (the ratio of the averaged norms is "
          "sigma^2 / sqrt(V)), then the variance after one step, a contraction of x - mu by "
          "1 - step / sigma^2 plus independent noise of variance 2 step, and solve "
          "'variance after = V' for V. The factor asked for is a standard deviation ratio.",
    blocked=_NOT_YOURS,
    reference=_corrector_width,
)
def _test_corrector_width(fn):
    for label, snr, alpha in _width_cases():
        want = _corrector_width(snr, alpha)
        what = f"case '{label}'"
        arr = as_array(fn(snr, alpha), what)
        expect_close(arr, want, what=what, rtol=_WIDTH_RTOL, atol=_WIDTH_ATOL,
                     diagnose=lambda arr: _diagnose_width(arr, snr, alpha))
