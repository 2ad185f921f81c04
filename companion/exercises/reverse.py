"""Hidden tests of the exercises of chapter 3 (the reverse-time SDE).

* ``reverse_drift(sde, score_fn, x, t)``: f - g^2 score, Eq. (eq-reverse-sde), chapter 3.
* ``reverse_diffusion_step(sde, score_fn, x, t, t_next, z)``: one step of the
  reverse-diffusion predictor, Eq. (eq-reverse-diffusion).
* ``langevin_corrector_step(score_fn, x, t, z, snr, alpha)``: one Langevin corrector step
  with the snr rule and batch-averaged norms, Eq. (eq-langevin-corrector).
* ``reverse_sampler(sde, score_fn, key, shape, n_steps, eps)`` (conceptual): a whole
  reverse-time sampler, judged by the distribution it produces
  (``metrics.mixture_report`` on a mixture the chapter never shows), for SDEs that offer
  only ``drift``, ``diffusion``, ``prior_sample`` and ``T``.

Every case uses the course's SDEs (VE, VP, sub-VP) and either the exact score of the
four-Gaussian mixture or a simple, strongly time-dependent score, with inputs from a
fixed seed. Messages say how an answer is wrong, never what the right value is.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from companion import sde as sde_lib
from companion import toy
from companion.exercises._core import Mismatch, as_array, exercise, expect_close, is_close

__all__: list[str] = []  # importing the module registers its exercises; nothing to import

# ----------------------------------------------------------------------------- references


def _reverse_drift(sde, score_fn, x, t):
    """Reference: f(x, t) - g(t)^2 score(x, t)."""
    return sde.drift(x, t) - sde.diffusion(t) ** 2 * score_fn(x, t)


def _reverse_diffusion_step(sde, score_fn, x, t, t_next, z):
    """Reference: x - (r - 1) x + G^2 s(x, t) + G z with (r, G) the forward transition t_next -> t."""
    r = sde.mean_coefficient(t) / sde.mean_coefficient(t_next)
    g = jnp.sqrt(jnp.maximum(sde.kernel_std(t) ** 2 - r**2 * sde.kernel_std(t_next) ** 2, 0.0))
    return x - (r - 1) * x + g**2 * score_fn(x, t) + g * z


def _batch_norm(v):
    return jnp.mean(jnp.sqrt(jnp.sum(v**2, axis=1)))


def _langevin_corrector_step(score_fn, x, t, z, snr, alpha):
    """Reference: x + e s + sqrt(2 e) z, e = 2 alpha (snr mean||z|| / mean||s||)^2."""
    score = score_fn(x, t)
    step = 2 * alpha * (snr * _batch_norm(z) / _batch_norm(score)) ** 2
    return x + step * score + jnp.sqrt(2 * step) * z


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
        for name, s in [
            ("VE(0.01, 50)", sde_lib.VE(sigma_min=0.01, sigma_max=50.0)),
            ("VP(0.1, 20)", sde_lib.VP(beta_min=0.1, beta_max=20.0)),
            ("sub-VP(0.1, 20)", sde_lib.SubVP(beta_min=0.1, beta_max=20.0)),
            ("VP(1, 5)", sde_lib.VP(beta_min=1.0, beta_max=5.0)),
        ]
    )


def _cases(seed):
    """(label, sde, score_fn, x (n, 2) float32, t) for the course's three SDEs."""
    rng = np.random.default_rng(seed)
    cases = []
    for name, s, exact in _sdes_and_scores():
        t = float(rng.uniform(0.3, 0.9))
        spread = float(np.sqrt(4.25 * s.mean_coefficient(t) ** 2 + s.kernel_std(t) ** 2))
        x = jnp.asarray(spread * rng.normal(size=(6, 2)), jnp.float32)
        cases.append((f"{name}, exact mixture score, t = {t:.2f}", s, exact, x, t))
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

    near = functools.partial(is_close, arr, rtol=_DRIFT_RTOL, atol=_DRIFT_ATOL)
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
        "Eq. (eq-reverse-sde): Anderson's drift, written in the time t that runs from T "
        "down to 0. The sign of dt is not part of the drift."
    ),
    hint2=(
        "Two ingredients at (x, t): the forward drift and the score, the latter weighted by "
        "the squared diffusion (sde.diffusion gives g, not g^2). A factor 1/2 belongs to "
        "chapter 5's ODE, not here."
    ),
    blocked=(
        "companion.sde:LinearSDE.reverse_drift",
        "companion.sde:LinearSDE.probability_flow_drift",
    ),
    reference=_reverse_drift,
)
def _test_reverse_drift(fn):
    for label, s, score_fn, x, t in _cases(20210301):
        want = np.asarray(_reverse_drift(s, score_fn, x, t), np.float64)
        what = f"case '{label}'"
        arr = as_array(fn(s, score_fn, x, t), what)
        expect_close(arr, want, what=what, rtol=_DRIFT_RTOL, atol=_DRIFT_ATOL,
                     diagnose=lambda arr: _diagnose_drift(arr, s, score_fn, x, t))


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

    near = functools.partial(is_close, arr, rtol=_STEP_RTOL, atol=_STEP_ATOL)
    if near(x64 - (r - 1) * x64 + g2_no_r * sc + np.sqrt(g2_no_r) * z64):
        return "the step's noise variance is too large: the noise already present at t_next is shrunk by r^2 over the step too"
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
        "Eq. (eq-reverse-diffusion): the forward process over one step is itself a linear "
        "Gaussian map (a shrink factor and a noise level); the reverse step undoes it, "
        "using the score at (x, t)."
    ),
    hint2=(
        "The shrink factor over the step is the ratio of the mean coefficients at the two "
        "times; the step's noise variance is what the kernel's variance at t adds to the "
        "shrunk variance at t_next. Both come from sde.mean_coefficient and sde.kernel_std."
    ),
    blocked=(
        "companion.sde:LinearSDE.transition",
        "companion.sampling:reverse_diffusion",
        "companion.sampling:reverse_diffusion_step",
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
        expect_close(arr, want, what=what, rtol=_STEP_RTOL, atol=_STEP_ATOL,
                     diagnose=lambda arr: _diagnose_step(arr, s, score_fn, x, t, t_next, z))


# ------------------------------------------------------------------ langevin_corrector_step

# A few float32 operations on values of size <~ 10: rtol 1e-4. The mistakes change the step
# size by a factor 2 or more, or (per-sample norms) by a different factor for each sample.
_LANGEVIN_RTOL, _LANGEVIN_ATOL = 1e-4, 1e-5


def _diagnose_langevin(arr, score_fn, x, t, z, snr, alpha):
    x64, z64 = np.asarray(x, np.float64), np.asarray(z, np.float64)
    sc = np.asarray(score_fn(x, t), np.float64)
    zn, sn = np.linalg.norm(z64, axis=1), np.linalg.norm(sc, axis=1)
    eps = 2 * alpha * (snr * zn.mean() / sn.mean()) ** 2

    near = functools.partial(is_close, arr, rtol=_LANGEVIN_RTOL, atol=_LANGEVIN_ATOL)
    per = (2 * alpha * (snr * zn / sn) ** 2)[:, None]
    if near(x64 + per * sc + np.sqrt(2 * per) * z64):
        return "the norms are taken per sample; average them over the batch, so every sample takes the same step"
    frob = 2 * alpha * (snr * np.linalg.norm(z64) / np.linalg.norm(sc)) ** 2
    if near(x64 + frob * sc + np.sqrt(2 * frob) * z64):
        return "the norms are of the whole batch at once; take each sample's norm, then average over the batch"
    if near(x64 + eps * sc + np.sqrt(eps) * z64):
        return "the noise is too small by a factor sqrt(2) for the step size"
    if near(x64 + eps / 2 * sc + np.sqrt(eps) * z64):
        return "the step size is off by a factor close to 2"
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
        alpha = 1.0 if isinstance(s, sde_lib.VE) else float(
            (s.mean_coefficient(t) / s.mean_coefficient(t - 0.01)) ** 2)
        cases.append((f"{label}, snr = {snr:.2f}, alpha = {alpha:.3f}", score_fn, x, t, z, snr, alpha))
    return cases


@exercise(
    "langevin_corrector_step",
    chapter=3,
    hint=(
        "Eq. (eq-langevin-corrector): a Langevin step whose size comes from the "
        "signal-to-noise rule; the norms in that rule are averaged over the batch, not "
        "taken per sample."
    ),
    hint2=(
        "Each sample's Euclidean norm of the score and of z, each averaged over the "
        "batch, give the step size through snr and alpha; then one Langevin move: the "
        "step times the score plus noise whose variance is twice the step."
    ),
    blocked=(
        "companion.sampling:langevin_step_size",
        "companion.sampling:langevin_step",
        "companion.sampling:predictor_corrector",
    ),
    reference=_langevin_corrector_step,
)
def _test_langevin_corrector_step(fn):
    for label, score_fn, x, t, z, snr, alpha in _langevin_cases():
        want = np.asarray(_langevin_corrector_step(score_fn, x, t, z, snr, alpha), np.float64)
        what = f"case '{label}'"
        arr = as_array(fn(score_fn, x, t, z, snr, alpha), what)
        expect_close(arr, want, what=what, rtol=_LANGEVIN_RTOL, atol=_LANGEVIN_ATOL,
                     diagnose=lambda arr: _diagnose_langevin(arr, score_fn, x, t, z, snr, alpha))


# ------------------------------------------------------------------------- reverse_sampler


class _MinimalSDE:
    """An SDE that offers only what the statement allows: ``T``, ``drift(x, t)``,
    ``diffusion(t)`` and ``prior_sample(key, shape)`` (no reverse drift, no kernel)."""

    __slots__ = ("__sde",)

    def __init__(self, sde):
        self.__sde = sde

    @property
    def T(self):
        return self.__sde.T

    def drift(self, x, t):
        return self.__sde.drift(x, t)

    def diffusion(self, t):
        return self.__sde.diffusion(t)

    def prior_sample(self, key, shape):
        return self.__sde.prior_sample(key, shape)

    def __repr__(self):
        return "an SDE with only T, drift(x, t), diffusion(t) and prior_sample(key, shape)"


def _reverse_sampler(sde, score_fn, key, shape, n_steps, eps):
    """Reference: Euler-Maruyama on the reverse SDE, Eq. (eq-reverse-em), uniform grid from
    T down to eps, no noise on the last step; a ``lax.scan`` over the steps."""
    import jax

    h = (sde.T - eps) / n_steps
    key, k0 = jax.random.split(key)
    x = sde.prior_sample(k0, shape)
    ts = sde.T - h * jnp.arange(n_steps)
    noise_on = jnp.arange(n_steps) < n_steps - 1

    def body(x, inputs):
        t, k, on = inputs
        tb = jnp.full((shape[0],), t)
        g = sde.diffusion(tb)[:, None]
        x = x + (g**2 * score_fn(x, tb) - sde.drift(x, tb)) * h
        return x + on * g * jnp.sqrt(h) * jax.random.normal(k, shape), None

    x, _ = jax.lax.scan(body, x, (ts, jax.random.split(key, n_steps), noise_on))
    return x


def _sampler_mixture():
    """A three-component 2-D mixture that no chapter shows (unequal weights and shapes)."""
    means = jnp.array([[-2.0, 1.0], [1.5, 1.5], [0.5, -2.0]])
    covs = jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.15, 0.0], [0.0, 0.4]],
                      [[0.25, -0.12], [-0.12, 0.25]]])
    return toy.GaussianMixture(means, covs, jnp.array([0.5, 0.3, 0.2]))


def _sampler_cases():
    return [("VE(0.01, 20)", sde_lib.VE(sigma_min=0.01, sigma_max=20.0)),
            ("sub-VP(0.1, 20)", sde_lib.SubVP(beta_min=0.1, beta_max=20.0))]


# n = 10^4 samples, 250 steps and eps = 1e-3: the reference's
# Euler-Maruyama bias at this step count is below the Monte Carlo error of every statistic
# (tests/exercises/test_reverse.py measures max |z| for it), and mixture_report at
# level 1e-3 rejects blurred or shifted modes and moved weights (its power is measured
# in tests/test_metrics.py).
_SAMPLER_N, _SAMPLER_STEPS, _SAMPLER_EPS = 10_000, 250, 1e-3


def _test_reverse_sampler_impl(fn):
    import jax

    from companion import metrics

    mix = _sampler_mixture()
    for i, (label, s) in enumerate(_sampler_cases()):
        what = f"case '{label}'"
        key = jax.random.fold_in(jax.random.key(20211202), i)
        got = fn(_MinimalSDE(s), toy.exact_score(mix, s), key, (_SAMPLER_N, 2),
                 _SAMPLER_STEPS, _SAMPLER_EPS)
        x = as_array(got, what)
        if x.shape != (_SAMPLER_N, 2):
            raise Mismatch(f"{what}: expected samples of shape {(_SAMPLER_N, 2)}, got {x.shape}")
        bad = int(np.sum(~np.all(np.isfinite(x), axis=1)))
        if bad:
            raise Mismatch(f"{what}: {bad} of {_SAMPLER_N} samples are NaN or inf")
        target = mix.perturbed(s, _SAMPLER_EPS)
        report = metrics.mixture_report(x, target, level=1e-3)
        if report.passed:
            continue
        stats = report.stats
        want = np.sqrt(np.trace(np.asarray(target.covs, np.float64), axis1=1, axis2=2) / 2)
        ratio = float(np.median(stats.spread / want))
        if np.max(np.abs(x)) > 1e3:
            how = "the samples are far from the data (some beyond 1000): the process diverged"
        elif abs(ratio - 1) > 0.05:
            how = f"the modes are {ratio:.2g} times as wide as the data's"
        else:
            how = f"the worst statistic is {report.worst}"
        raise Mismatch(f"{what}: the samples do not follow the data distribution "
                       f"(max |z| = {report.max_z:.1f}, threshold {report.threshold:.1f}); {how}")


@exercise(
    "reverse_sampler",
    chapter=3,
    hint=(
        "Anderson's reverse-time SDE, Eq. (eq-reverse-sde), run from the prior at t = T "
        "down to t = eps with Euler-Maruyama, Eq. (eq-reverse-em). Time runs backwards: "
        "mind the sign of every increment."
    ),
    hint2=(
        "Start from sde.prior_sample, take n_steps steps of size h = (T - eps) / n_steps; "
        "at each time use the drift of the *reverse* SDE (the forward drift and g^2 times "
        "the score), and fresh noise of standard deviation g sqrt(h). Modes that come out "
        "too wide or too narrow usually mean a wrong factor on the score term; the check "
        "hands you an SDE without reverse_drift or transition."
    ),
    blocked=(
        *(f"companion.sampling:{name}" for name in (
            "euler_maruyama", "euler_maruyama_step", "reverse_diffusion", "reverse_diffusion_step",
            "predictor_corrector", "probability_flow", "reverse_loop")),
        "companion.ode_sampling:probability_flow",
        "companion.sde:LinearSDE.reverse_drift",
        "companion.sde:LinearSDE.probability_flow_drift",
    ),
    reference=_reverse_sampler,
)
def _test_reverse_sampler(fn):
    _test_reverse_sampler_impl(fn)
