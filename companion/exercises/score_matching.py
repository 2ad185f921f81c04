"""Hidden tests of the exercises of chapter 4 (continuous-time score matching).

* ``hutchinson_trace(fn, x, xi)`` (warm-up): the Skilling-Hutchinson estimate of the
  trace of the Jacobian of a batch function, the trace estimator of chapter 4's sliced
  score matching, with ``jax.jvp`` and ``jax.vmap``.
* ``denoiser_loss(denoiser, sde, weight, x0, t, z)`` (derivation): the per-sample
  denoising score-matching loss of a *denoiser* network D(x, t) ~ E[x_0 | x_t], for any
  weighting lambda(t): the chapter writes the loss for a score network and prints the
  noise predictor's form; the reader substitutes Tweedie's score (a D - x) / b^2.
* ``preconditioned_langevin(score_fn, x, z, step_size, M)`` (derivation): one step of
  Langevin dynamics whose drift is preconditioned by a positive definite matrix M; the
  reader derives, from chapter 3's Fokker-Planck argument, the noise that keeps p in
  place (any square root of its covariance is accepted).
* ``dsm_minimum(sde, t, data_var, d)`` (derivation): the value the b(t)^2-weighted
  denoising loss at time t cannot go below, for Gaussian data N(0, data_var I_d)
  (:mod:`companion.exercises.score_floor`).

Inputs come from a fixed NumPy seed. Messages name the case and say how the answer is
wrong (and, for the predictable mistakes, which one), never what the right value is; a
factor is reported only in words ("about twice"), never to more digits than the
tolerance allows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from companion import sde as sdes
from companion.exercises._calling import call_compiled_each
from companion.exercises._core import (
    Mismatch,
    as_array,
    exercise,
    expect_close,
    is_close,
)

__all__: list[str] = []  # importing the module registers its exercises; nothing to import

# ----------------------------------------------------------------------------- helpers


def _rng():
    return np.random.default_rng(20210404)


def _f32(a):
    return jnp.asarray(a, dtype=jnp.float32)


def _column(v, x):
    """A per-sample quantity ``(n,)`` shaped to broadcast against ``x`` ``(n, *dims)``."""
    return jnp.reshape(v, (-1,) + (1,) * (x.ndim - 1))


def _per_sample_sum(a):
    return jnp.sum(jnp.reshape(a, (a.shape[0], -1)), axis=1)


def _name_variant(arr, variants, rtol, atol):
    """The message of the first known wrong answer ``(message, values)`` that ``arr``
    matches, else None."""
    for message, values in variants:
        if is_close(arr, values, rtol, atol):
            return message
    return None


# ----------------------------------------------------------------------- hutchinson_trace


def _hutchinson_trace(fn, x, xi):
    """Reference: mean over probes p of xi_p . (J xi_p), per sample."""
    jv = jax.vmap(lambda xp: jax.jvp(fn, (x,), (xp,))[1])(xi)
    return jnp.mean(jnp.sum(xi * jv, axis=-1), axis=0)


def _diagnose_hutchinson(arr, fn, x, xi):
    want = np.asarray(_hutchinson_trace(fn, x, xi), np.float64)
    P = xi.shape[0]
    jv = jax.vmap(lambda xp: jax.jvp(fn, (x,), (xp,))[1])(xi)
    variants = [
        ("a sum over the probes instead of their mean: the estimate would grow with the number "
         "of probes", P * want),
        ("only the first probe is used; the estimate averages over all of them",
         np.asarray(jnp.sum(xi[0] * jv[0], axis=-1))),
        ("this is xi . fn(x), the function's values projected on the probes: the estimator needs "
         "the Jacobian (a Jacobian-vector product)",
         np.asarray(jnp.mean(jnp.sum(xi * fn(x)[None], -1), 0))),
        ("this is the squared norm of J xi, not the quadratic form xi . (J xi)",
         np.asarray(jnp.mean(jnp.sum(jv**2, -1), 0))),
    ]
    if P == 1:
        variants = variants[2:]  # a sum and the first probe equal the mean for one probe
    return _name_variant(arr, variants, 1e-4, 1e-5)


@exercise(
    "hutchinson_trace",
    chapter=4,
    hint="Skilling and Hutchinson's trace estimator (chapter 4, sliced score matching): for each "
    "probe, the quadratic form of the Jacobian in that probe, then one estimate per sample; never "
    "build the Jacobian.",
    hint2="The JAX box of chapter 4's sliced score-matching section shows jax.jvp on a whole "
    "batch and jax.vmap over a leading axis. Dot each Jacobian-vector product with its own probe over each sample's coordinates "
    "(not over the batch), then combine the probes so that the estimate does not depend on how "
    "many there are.",
    blocked=("companion.divergence:*", "jax:jacfwd", "jax:jacrev", "jax:hessian"),  # no Jacobian
    reference=_hutchinson_trace,
)
def _test_hutchinson_trace(fn):
    rng = _rng()
    A = _f32(rng.normal(size=(3, 3)))

    def nonlinear(x):  # samples do not interact; the Jacobian is not symmetric
        return jnp.tanh(x @ A.T) + 0.5 * x**2

    def linear(x):
        return x @ A.T

    labels, args = [], []
    for label, f, P in (("a nonlinear function, 5 probes", nonlinear, 5),
                        ("a nonlinear function, 1 probe", nonlinear, 1),
                        ("a linear function, 4 probes", linear, 4)):
        x = _f32(rng.normal(size=(7, 3)))
        xi = _f32(rng.choice([-1.0, 1.0], size=(P, 7, 3)))
        labels.append(label)
        args.append((f, x, xi))
    gots = call_compiled_each(fn, args)
    for label, got, want, (f, x, xi) in zip(labels, gots, call_compiled_each(_hutchinson_trace, args), args):
        what = f"hutchinson_trace ({label})"
        arr = as_array(got, what)
        if arr.shape != want.shape:
            raise Mismatch(f"{what}: expected one estimate per sample, shape {want.shape}, got {arr.shape}")
        expect_close(got, want, what=what, rtol=1e-4, atol=1e-5,
                     diagnose=lambda a, f=f, x=x, xi=xi: _diagnose_hutchinson(a, f, x, xi))
    # With many Gaussian probes the estimate must approach the exact trace. Called as it
    # is: traced, a Python loop over the 4000 probes (a right answer) would unroll into a
    # program that takes minutes to compile.
    x = _f32(rng.normal(size=(2, 3)))
    xi = _f32(rng.normal(size=(4000, 2, 3)))
    got = as_array(fn(nonlinear, x, xi), "hutchinson_trace (4000 Gaussian probes)")
    jacobians = jax.jit(jax.vmap(jax.jacfwd(lambda xi_: nonlinear(xi_[None])[0])))(x)
    exact = np.trace(np.asarray(jacobians, np.float64), axis1=1, axis2=2)
    if got.shape != exact.shape or np.max(np.abs(got - exact)) > 0.3:  # ~6 standard errors
        raise Mismatch("hutchinson_trace: with 4000 Gaussian probes the average is far from the trace "
                       "of the Jacobian (is it an unbiased estimator?)")


# ----------------------------------------------------------------------------- denoiser_loss


def _denoiser_variants(denoiser, sde, weight, x0, t, z):
    """The reference and the known wrong answers, each ``(n,)``."""
    a, b, lam = sde.mean_coefficient(t), sde.kernel_std(t), weight(t)
    xt = _column(a, x0) * x0 + _column(b, x0) * z
    xhat = denoiser(xt, t)
    err = _per_sample_sum((xhat - x0) ** 2) / 2
    d = int(np.prod(x0.shape[1:]))
    return {
        "right": lam * a**2 / b**2 * err,
        "no a2": lam / b**2 * err,
        "no b2": lam * a**2 * err,
        "a over b": lam * a / b * err,
        "mean": lam * a**2 / b**2 * err / d,
        "no half": lam * a**2 / b**2 * err * 2,
        "noise target": lam / b**2 * _per_sample_sum((xhat - z) ** 2) / 2,
        "tweedie over b": lam / 2 * _per_sample_sum((_column(a, x0) * xhat - xt + z) ** 2),  # b s = a D - x_t
    }


def _denoiser_loss(denoiser, sde, weight, x0, t, z):
    """Reference: lambda(t) a(t)^2 / b(t)^2 || D(x_t, t) - x0 ||^2 / 2 with x_t = a x0 + b z:
    the loss of the score (a D - x_t) / b^2 (Tweedie), summed over a sample's coordinates."""
    a, b = sde.mean_coefficient(t), sde.kernel_std(t)
    xt = _column(a, x0) * x0 + _column(b, x0) * z
    sq = (denoiser(xt, t) - x0) ** 2
    return weight(t) * a**2 / b**2 * jnp.sum(sq.reshape(sq.shape[0], -1), axis=1) / 2


_DENOISER_MESSAGES = {
    "no a2": "the weight misses a(t)^2: Tweedie's score has a(t) in front of the denoiser",
    "no b2": "the weighting is not divided by b(t)^2: write the loss for the score network "
             "first, then substitute Tweedie's score",
    "a over b": "the weight has a(t) / b(t) where the substitution gives a square",
    "mean": "a mean over each sample's coordinates; the loss sums the squared error over them",
    "no half": "twice the loss: the factor 1/2 is missing",
    "noise target": "the noise predictor's loss with the denoiser in place of zhat: a denoiser's "
                    "target is the clean x_0, not the noise z",
    "tweedie over b": "the score is (a D - x_t) / b(t), not / b(t)^2 (Tweedie's formula)",
}


def _diagnose_denoiser(arr, case):
    variants = {k: np.asarray(v, np.float64) for k, v in _denoiser_variants(*case).items()}
    right = variants.pop("right")
    named = [(_DENOISER_MESSAGES[k], v) for k, v in variants.items() if not is_close(v, right, 1e-4, 1e-5)]
    return _name_variant(arr, named, 1e-4, 1e-5)


def _denoiser_cases():
    rng = _rng()
    A = _f32(rng.normal(size=(2, 2)))
    C = _f32(rng.normal(size=(3, 3)) / 2)

    def den_2d(x, t):  # mixes a sample's coordinates, depends on t
        return jnp.tanh(x @ A.T) * (1.0 + _column(t, x)) + 0.1 * x

    def den_3d(x, t):
        return jnp.sin(x @ C) - 0.2 * _column(t, x) * x

    def den_images(x, t):  # (n, 2, 3): across one image's pixels
        return jnp.tanh(x + jnp.roll(x, 1, axis=2)) * (0.5 + _column(t, x))

    vp, ve, sub = sdes.VP(), sdes.VE(), sdes.SubVP()
    cases = []
    for label, sde, weight, den, shape in (
            ("VP SDE, lambda = b(t)^2, d = 2", vp, lambda t: vp.kernel_std(t) ** 2, den_2d, (6, 2)),
            ("VP SDE, lambda = g(t)^2, d = 3", vp, lambda t: vp.diffusion(t) ** 2, den_3d, (5, 3)),
            ("VE SDE, lambda = 1, d = 2", ve, lambda t: jnp.ones_like(t), den_2d, (4, 2)),
            ("sub-VP SDE, lambda = 1 + t, samples of shape (2, 3)", sub, lambda t: 1.0 + t,
             den_images, (5, 2, 3)),
            ("VP SDE, lambda = b(t)^2, a batch of one", vp, lambda t: vp.kernel_std(t) ** 2,
             den_3d, (1, 3))):
        x0 = _f32(rng.normal(size=shape) * 2)
        t = _f32(rng.uniform(0.05, 1.0, size=shape[0]))
        z = _f32(rng.normal(size=shape))
        cases.append((label, (den, sde, weight, x0, t, z)))
    return cases


@exercise(
    "denoiser_loss",
    chapter=4,
    hint="The denoising score-matching loss of chapter 4 is written for a score network s_theta. "
    "Tweedie's formula says which score a denoiser stands for; substitute it, use how x_t was "
    "made from x_0 and z, and simplify. One number per sample.",
    hint2="x_t comes from the kernel of chapter 2 with the given z. After the substitution the "
    "noise z cancels from the residual and what is left is the denoiser's error on x_0, times a "
    "factor built from a(t) and b(t); the weighting in front is no longer lambda(t) alone. Sum "
    "the squared error over every coordinate of a sample, whatever its shape.",
    blocked=("companion.losses:*",),
    reference=_denoiser_loss,
)
def _test_denoiser_loss(fn):
    cases = _denoiser_cases()
    args = [case for _, case in cases]
    wants = call_compiled_each(_denoiser_loss, args)
    for (label, case), got, want in zip(cases, call_compiled_each(fn, args), wants):
        what = f"denoiser_loss ({label})"
        arr = as_array(got, what)
        if arr.shape != want.shape:
            raise Mismatch(f"{what}: expected one loss per sample, shape {want.shape}, got {arr.shape}")
        expect_close(got, want, what=what, rtol=1e-4, atol=1e-5,
                     diagnose=lambda a, case=case: _diagnose_denoiser(a, case))


# ------------------------------------------------------------------ preconditioned_langevin


def _preconditioned_langevin(score_fn, x, z, step_size, M):
    """Reference: x + delta M score(x) + sqrt(2 delta) L z with L L^T = M (Cholesky)."""
    L = jnp.linalg.cholesky(M)
    return x + step_size * score_fn(x) @ M.T + jnp.sqrt(2 * step_size) * z @ L.T


def _langevin_cases():
    rng = _rng()
    out = []
    for label, d, n, step, kind in (("d = 2, a full M", 2, 5, 0.1, "full"),
                                    ("d = 3, a diagonal M", 3, 4, 0.05, "diag"),
                                    ("d = 3, a full M, step 0.3", 3, 6, 0.3, "full"),
                                    ("d = 1, a batch of one", 1, 1, 0.2, "full")):
        if kind == "diag":
            M = np.diag(rng.uniform(0.2, 3.0, size=d))
        else:
            B = rng.normal(size=(d, d))
            M = B @ B.T / d + 0.3 * np.eye(d)
        mu = rng.normal(size=d)
        P = rng.normal(size=(d, d))
        P = P @ P.T / d + np.eye(d)  # the precision of a Gaussian: score -(x - mu) P

        mu, P = _f32(mu), _f32(P)

        def score(x, mu=mu, P=P):
            return -(x - mu) @ P.T + 0.1 * jnp.sin(x)

        x = _f32(rng.normal(size=(n, d)) * 2)
        out.append((f"{label}, {n} samples", score, x, step, _f32(M)))
    return out


def _z_probes(x):
    """The noises a step is called with: z = 0, each basis vector e_j, and a random z
    (NumPy arrays: no compilation)."""
    n, d = x.shape
    zeros = np.zeros((n, d), np.float32)
    basis = [np.broadcast_to(np.eye(d, dtype=np.float32)[j], (n, d)) for j in range(d)]
    return [zeros, *basis, np.random.default_rng(7).normal(size=(n, d)).astype(np.float32)]


def _affine_in_z(outs, x):
    """The reader's step as mean + C z, from its outputs at :func:`_z_probes`: (mean (n, d),
    C (n, d, d)), and the check that it is affine in z (the random z)."""
    d = x.shape[1]
    outs = [as_array(o, "preconditioned_langevin") for o in outs]
    mean = outs[0]
    if mean.shape != x.shape:
        raise Mismatch(f"preconditioned_langevin: expected the new points, shape {x.shape}, got {mean.shape}")
    C = np.stack([o - mean for o in outs[1:d + 1]], axis=-1)  # column j: the response to e_j
    z = np.asarray(_z_probes(x)[-1], np.float64)
    if not np.allclose(outs[-1], mean + np.einsum("nij,nj->ni", C, z), rtol=1e-4, atol=1e-4):
        raise Mismatch("preconditioned_langevin: the new point is not the old one plus a fixed "
                       "linear map of the noise z (one step draws no noise of its own)")
    return mean, C


def _diagnose_noise(cov, step, M):
    M = np.asarray(M, np.float64)
    d = M.shape[0]
    variants = [
        ("the noise has half the covariance it needs: sqrt(step) instead of sqrt(2 step) in front "
         "of the preconditioned noise", step * M),
        ("the noise is scaled by M itself, not by a square root of M: its covariance is M^2, not "
         "M", 2 * step * M @ M),
        ("the noise is not preconditioned: with the drift step M score, the noise must change "
         "with M too", 2 * step * np.eye(d)),
        ("the noise uses M^-1 where the drift uses M", 2 * step * np.linalg.inv(M)),
    ]
    return next((m for m, v in variants if np.allclose(cov, v, rtol=1e-3, atol=1e-6)), None)


def _diagnose_mean(arr, score, x, step, M):
    s = np.asarray(score(x), np.float64)
    x, M = np.asarray(x, np.float64), np.asarray(M, np.float64)
    variants = [
        ("the drift is not preconditioned: the move along the score is not multiplied by M",
         x + step * s),
        ("the drift uses M^-1; the step asked for moves by step_size M times the score",
         x + step * s @ np.linalg.inv(M).T),
        ("the drift goes down the density: the score term has the wrong sign", x - step * s @ M.T),
    ]
    return next((m for m, v in variants if np.allclose(arr, v, rtol=1e-4, atol=1e-4)), None)


@exercise(
    "preconditioned_langevin",
    chapter=4,
    hint="Chapter 3 showed that Langevin dynamics leaves p in place by writing its Fokker-Planck "
    "equation. Do the same with the drift M times the score and a noise of unknown covariance: "
    "which covariance makes the right-hand side vanish at p? Then discretise as the chapter does.",
    hint2="With drift M grad log p and noise sqrt(2) S dw, the diffusion term of the Fokker-Planck "
    "equation of the chain's density is div(S S^T grad of that density). Choose S S^T so that, "
    "when the chain's density is p, it cancels the drift term (use p grad log p = grad p). "
    "One Euler-Maruyama step of size step_size then needs a matrix square root of that "
    "covariance (any: Cholesky is one).",
    reference=_preconditioned_langevin,
)
def _test_preconditioned_langevin(fn):
    cases = _langevin_cases()
    # each case is one call: its points repeated, once per noise of _z_probes (samples do
    # not interact), and all the cases are one compiled program
    calls = [(score, jnp.asarray(np.tile(x, (x.shape[1] + 2, 1))), jnp.asarray(np.concatenate(_z_probes(x))),
              step, M) for _, score, x, step, M in cases]
    scores = call_compiled_each(lambda score, x: score(x), [(score, x) for _, score, x, _, _ in cases])
    for (label, score, x, step, M), out, s in zip(cases, call_compiled_each(fn, calls), scores):
        what = f"preconditioned_langevin ({label})"
        out = as_array(out, what)
        if out.shape != (x.shape[0] * (x.shape[1] + 2), x.shape[1]):
            raise Mismatch(f"{what}: expected the new points, one per row of x, got shape {out.shape}")
        mean, C = _affine_in_z(list(out.reshape(x.shape[1] + 2, *x.shape)), x)
        want_mean = np.asarray(x, np.float64) + step * np.asarray(s, np.float64) @ np.asarray(M, np.float64).T
        expect_close(mean, want_mean, what=what + ", the move with z = 0", rtol=1e-4, atol=1e-4,
                     diagnose=lambda a, score=score, x=x, step=step, M=M: _diagnose_mean(a, score, x, step, M))
        # any square root of the covariance is right: compare C C^T, per sample
        cov = np.einsum("nij,nkj->nik", C, C)
        want_cov = np.broadcast_to(2 * step * np.asarray(M, np.float64), cov.shape)
        expect_close(cov, want_cov, what=what + ", the covariance of the noise term", rtol=1e-3,
                     atol=1e-6, diagnose=lambda c, step=step, M=M: _diagnose_noise(c[0], step, M))


# ---------------------------------------------------------------------------- dsm_minimum
# The chapter's last exercise has its own module, imported here so that it registers after
# the others and exercises.names() keeps the book's order.

from companion.exercises import score_floor  # noqa: F401
