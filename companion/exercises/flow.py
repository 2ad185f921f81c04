"""Hidden tests of the exercises of chapter 5 (the probability flow ODE).

* ``bits_per_dim(log_p, n_dims, n_levels, data_range)`` (warm-up): bits per dimension of
  discrete data from the log density of its rescaled, dequantised version (chapter 5's
  dequantisation bound).
* ``pf_drift(sde, denoiser, x, t)`` (derivation): the velocity of the probability flow
  ODE written with a denoiser E[x_0 | x_t = x] instead of a score: chapter 5's ODE and
  chapter 4's Tweedie formula put together.
* ``divergence_plan(jac, tol)`` (decision): the exact divergence or a Skilling-Hutchinson
  estimate, and how many JVPs, for a standard error at most ``tol``: chapter 5's probe
  variances, which hold for a symmetric matrix, applied to a Jacobian that is not one.
* ``log_density_ode(velocity, x, t)`` (derivation): the right-hand side of the augmented
  ODE that carries a sample and its log density along a flow dx/dt = u(x, t), for any
  velocity field and any sample shape.

Inputs come from a fixed NumPy seed; messages say how an answer is wrong (and, for the
predictable mistakes, which one), never what the right value is.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from companion import sde as sdes
from companion.exercises._calling import call_compiled_each
from companion.exercises._core import (
    Mismatch,
    as_array,
    as_pair,
    exercise,
    expect_close,
    is_close,
)

__all__: list[str] = []  # importing the module registers its exercises; nothing to import

# ----------------------------------------------------------------------------- references


def _pf_drift(sde, denoiser, x, t):
    """Reference: f(x, t) - g(t)^2 score / 2, with Tweedie's score (a(t) xhat_0 - x) / b(t)^2."""
    a, b, g = (v[:, None] for v in (sde.mean_coefficient(t), sde.kernel_std(t), sde.diffusion(t)))
    score = (a * denoiser(x, t) - x) / b**2
    return sde.drift(x, t) - 0.5 * g**2 * score


def _bits_per_dim(log_p, n_dims, n_levels, data_range):
    """Reference: -(log p + d log((hi - lo) / n_levels)) / (d log 2)."""
    lo, hi = data_range
    return -(log_p + n_dims * math.log((hi - lo) / n_levels)) / (n_dims * math.log(2))


def _rng():
    return np.random.default_rng(20210505)


def _f32(a):
    return jnp.asarray(a, dtype=jnp.float32)


# ----------------------------------------------------------------------------- bits_per_dim


def _diagnose_bpd(arr, log_p, D, K, data_range):
    lo, hi = data_range
    log_bin = D * math.log((hi - lo) / K)
    variants = [
        ("nats, not bits: log_p is a natural logarithm", -(log_p + log_bin) / D),
        ("bits for the whole sample: the number of dimensions is missing in the division",
         -(log_p + log_bin) / math.log(2)),
        ("the bin's volume is missing: a density is not a probability", -log_p / (D * math.log(2))),
        ("the bin's volume enters with the wrong sign", -(log_p - log_bin) / (D * math.log(2))),
        ("the volume of one bin counts one coordinate only (it is a product of n_dims widths)",
         -(log_p + log_bin / D) / (D * math.log(2))),
        ("the right size with the wrong sign: bits/dim is a cost, -log2 P per dimension",
         (log_p + log_bin) / (D * math.log(2))),
        ("a logarithm in base 10, not 2", -(log_p + log_bin) / (D * math.log(10))),
    ]
    return next((m for m, v in variants if is_close(arr, v, 1e-5, 1e-5)), None)


@exercise(
    "bits_per_dim",
    chapter=5,
    hint="Chapter 5's dequantisation bound: a discrete value covers a bin in the rescaled space; "
    "its probability is about the density times the bin's volume. The answer is in bits, per "
    "dimension.",
    hint2="The bin's width is the data range divided by n_levels, in each of the n_dims "
    "coordinates: its volume is a product of n_dims widths. log_p is in nats; a bit is a "
    "logarithm in base 2.",
    blocked=(
        "companion.likelihood:nats_to_bits_per_dim",
        "companion.likelihood:bits_per_dim",
    ),
    reference=_bits_per_dim,
)
def _test_bits_per_dim(fn):
    rng = _rng()
    for n_dims, n_levels, data_range in ((2, 256, (-1.0, 1.0)), (64, 17, (0.0, 1.0)), (3, 32, (-4.0, 4.0)),
                                         (1, 2, (0.0, 2.0))):
        log_p = rng.normal(size=5) * 3 + 2
        got = fn(jnp.asarray(log_p), n_dims, n_levels, data_range)
        expect_close(got, _bits_per_dim(log_p, n_dims, n_levels, data_range),
                     what=f"bits_per_dim (n_dims={n_dims}, {n_levels} levels, range {data_range})",
                     rtol=1e-5, atol=1e-5,
                     diagnose=lambda arr, a=(log_p, n_dims, n_levels, data_range): _diagnose_bpd(arr, *a))


# ----------------------------------------------------------------------------- pf_drift


def _pf_variants(sde, denoiser, x, t):
    """Known wrong answers of pf_drift: (message, values)."""
    a, b, g = (v[:, None] for v in (sde.mean_coefficient(t), sde.kernel_std(t), sde.diffusion(t)))
    f, xhat0 = sde.drift(x, t), denoiser(x, t)
    score = (a * xhat0 - x) / b**2
    return [
        ("g(t)^2 times the score where the probability flow has half of it: that is the reverse "
         "SDE's drift (chapter 3), not the ODE's", f - g**2 * score),
        ("the score term has the wrong sign (check Tweedie's formula and the sign in front of "
         "the score in the probability flow ODE)", f + 0.5 * g**2 * score),
        ("the score is built as (xhat_0 - x) / b^2, without the mean coefficient a(t) in front of "
         "the denoiser", f - 0.5 * g**2 * (xhat0 - x) / b**2),
        ("the score is divided by b(t), not b(t)^2 (Tweedie's formula, chapter 4)",
         f - 0.5 * g**2 * (a * xhat0 - x) / b),
        ("the forward drift f(x, t) is missing", -0.5 * g**2 * score),
        ("the denoiser is used as if it were the score", f - 0.5 * g**2 * xhat0),
    ]


def _diagnose_pf(arr, case):
    right = np.asarray(_pf_drift(*case), np.float64)
    named = [(m, np.asarray(v, np.float64)) for m, v in _pf_variants(*case)]
    return next((m for m, v in named if not is_close(v, right, 1e-4, 1e-4) and is_close(arr, v, 1e-4, 1e-4)),
                None)


@exercise(
    "pf_drift",
    chapter=5,
    hint="Two results meet here: the probability flow ODE (chapter 5) needs the score, and Tweedie's "
    "formula (chapter 4) says how the score and the denoiser E[x_0 | x_t] determine each other.",
    hint2="Solve Tweedie's formula for the score, with a(t) and b(t) from the SDE at the times t "
    "(one per sample: reshape them so that each multiplies its own row), and put it in the "
    "probability flow's velocity. Compare the factor in front of g(t)^2 with the reverse SDE's.",
    blocked=(
        "companion.sde:LinearSDE.probability_flow_drift",
        "companion.sde:LinearSDE.reverse_drift",
        "companion.losses:velocity_from_score",
        "companion.ode_sampling:*",
    ),
    reference=_pf_drift,
)
def _test_pf_drift(fn):
    rng = _rng()
    labels, cases = [], []
    for sde, d, n in ((sdes.VP(), 2, 5), (sdes.SubVP(), 3, 4), (sdes.VE(), 2, 5), (sdes.VP(), 1, 1)):
        mu = _f32(rng.normal(size=d))
        W = _f32(rng.normal(size=(d, d)) / d)

        def denoiser(x, t, mu=mu, W=W):  # depends on x and t, mixes a sample's coordinates
            return mu + jnp.tanh(x @ W) * (1.0 - jnp.asarray(t)[:, None])

        x = _f32(rng.normal(size=(n, d)) * 2)
        t = _f32(rng.uniform(0.05, 1.0, size=n))
        labels.append(f"pf_drift ({type(sde).__name__} SDE, d = {d}, n = {n})")
        cases.append((sde, denoiser, x, t))
    wants = call_compiled_each(_pf_drift, cases)
    for label, case, got, want in zip(labels, cases, call_compiled_each(fn, cases), wants):
        expect_close(got, want, what=label, rtol=1e-4, atol=1e-4,
                     diagnose=lambda arr, case=case: _diagnose_pf(arr, case))


# ----------------------------------------------------------------------- divergence_plan


def _divergence_plan(jac, tol):
    """Reference: the cheapest way to a divergence with standard error <= tol, as
    (method, JVPs). A probe sees only the symmetric part S of J (xi^T J xi = xi^T S xi):
    one probe's variance is 2 sum S_ij^2 (Gaussian), 2 sum_{i != j} S_ij^2 (Rademacher);
    P probes divide it by P. The exact trace costs d JVPs. Ties: exact, then Rademacher."""
    jac = np.asarray(jac, np.float64)
    sym = (jac + jac.T) / 2
    var = {"rademacher": _rademacher_var(jac), "gaussian": 2 * np.sum(sym**2)}
    plans = [("exact", jac.shape[0])] + [(k, max(1, math.ceil(v / tol**2))) for k, v in var.items()]
    return min(plans, key=lambda plan: plan[1])  # min keeps the first of a tie


def _rademacher_var(jac):
    sym = (jac + jac.T) / 2
    return 2 * np.sum(sym[~np.eye(len(jac), dtype=bool)] ** 2)


def _plan_cases():
    """(label, jac, tol): the tolerance puts var / tol^2 (the probes needed) at a chosen
    fraction between integers, so no rounding of the reference is ever in doubt."""
    rng = _rng()

    def at(jac, probes):  # the tol at which Rademacher probes need var / tol^2 = probes
        return float(np.sqrt(_rademacher_var(jac) / probes))

    near_diag = np.diag(rng.uniform(-2, 2, 50)) + 0.01 * rng.normal(size=(50, 50))
    k = rng.normal(size=(20, 20))
    spin = -0.7 * np.eye(20) + (k - k.T)  # shrink plus rotation: S = -0.7 I
    dense = rng.normal(size=(10, 10))
    tie = np.diag(rng.uniform(1, 3, 16)) + 0.3 * rng.normal(size=(16, 16))
    lopsided = np.diag(rng.uniform(-1, 1, 30)) + np.triu(0.2 * rng.normal(size=(30, 30)), 1)
    return [
        ("a 2-D flow, tight tolerance", rng.normal(size=(2, 2)), 0.05),
        ("a nearly diagonal Jacobian, d = 50", near_diag, at(near_diag, 7.4)),
        ("a shrink plus a rotation, d = 20", spin, 0.05),
        ("a dense Jacobian, d = 10", dense, at(dense, 13.6)),
        ("as many probes as coordinates, d = 16", tie, at(tie, 15.5)),
        ("a triangular coupling, d = 30", lopsided, at(lopsided, 4.3)),
        ("a loose tolerance, d = 64", np.diag(rng.uniform(-1, 1, 64)) + 0.05 * rng.normal(size=(64, 64)),
         2.5),
    ]


def _plan_variants(jac, tol):
    """Known wrong counts of Rademacher probes: (message, count)."""
    jac = np.asarray(jac, np.float64)
    sym, off, var = (jac + jac.T) / 2, ~np.eye(len(jac), dtype=bool), _rademacher_var(jac)
    return [
        ("the probes' variance is computed from J itself; a probe sees only J's symmetric part "
         "(xi^T J xi = xi^T J^T xi)", math.ceil(2 * np.sum(jac[off] ** 2) / tol**2)),
        ("the count divides the variance by tol, not tol^2: tol is a standard error",
         math.ceil(var / tol)),
        ("the count is rounded (or cut) where it must be rounded up: with fewer probes the "
         "standard error is above tol", int(np.floor(var / tol**2))),
        ("the variance misses a factor 2", math.ceil(var / 2 / tol**2)),
        ("the count is the Gaussian probes' (their squared entries are not 1)",
         math.ceil(2 * np.sum(sym**2) / tol**2)),
    ]


def _test_divergence_plan_impl(fn):
    for label, jac, tol in _plan_cases():
        what = f"case '{label}'"
        method, cost = _divergence_plan(jac, tol)
        got = fn(jac.copy(), tol)
        if not isinstance(got, (tuple, list)) or len(got) != 2 or not isinstance(got[0], str):
            raise Mismatch(f"{what}: expected a pair (method, cost) with method a string, got "
                           f"{type(got).__name__}")
        got_cost = as_array(got[1], what + ", cost")
        got_method = got[0].strip().lower()
        if got_method not in ("exact", "gaussian", "rademacher"):
            raise Mismatch(f"{what}: the method must be 'exact', 'gaussian' or 'rademacher', "
                           f"got {got[0]!r}")
        if got_cost.shape != () or float(got_cost) != round(float(got_cost)):
            raise Mismatch(f"{what}: the cost is a whole number of JVPs, got {got[1]!r}")
        got_cost = int(got_cost)
        if got_method == "exact" and got_cost != jac.shape[0]:
            raise Mismatch(f"{what}: the exact trace costs one JVP per coordinate (one column "
                           "of the Jacobian each)")
        if got_method != "exact" and got_cost < 1:
            raise Mismatch(f"{what}: an estimate needs at least one probe")
        if got_method == "rademacher" and got_cost != max(1, math.ceil(_rademacher_var(jac) / tol**2)):
            known = [m for m, c in _plan_variants(jac, tol) if max(1, c) == got_cost]
            raise Mismatch(f"{what}: " + (known[0] if len(known) == 1 else  # only an unambiguous diagnosis
                                          "the number of Rademacher probes is wrong"))
        if (got_method, got_cost) == (method, cost):
            continue
        if got_cost == cost:
            raise Mismatch(f"{what}: {got_method!r} costs as much as another method here; on a "
                           "tie the statement says which to prefer")
        if got_method == "gaussian":
            raise Mismatch(f"{what}: Gaussian probes are never cheaper than Rademacher ones "
                           "(compare their variances)")
        raise Mismatch(f"{what}: another method reaches the tolerance with fewer JVPs")


@exercise(
    "divergence_plan",
    chapter=5,
    hint="Count JVPs: the exact trace needs one per coordinate, an estimate one per probe. "
    "The estimate's standard error is a single probe's standard deviation over sqrt(P); "
    "chapters 4 and 5 give a probe's variance, but each for a special case.",
    hint2="Since xi^T J xi = xi^T J^T xi, a probe sees only S = (J + J^T)/2: chapter 5's "
    "variances hold with S in place of A. Then find the smallest whole P with standard "
    "error at most tol (round up, at least one probe), compare the three costs and break "
    "ties as the statement says.",
    reference=_divergence_plan,
)
def _test_divergence_plan(fn):
    _test_divergence_plan_impl(fn)


# ------------------------------------------------------------------------ log_density_ode


def _log_density_ode(velocity, x, t):
    """Reference: (u(x, t), -div u(x, t)); the divergence per sample over all its
    coordinates, by one forward-mode Jacobian per sample (the instantaneous change of
    variables, chapter 5)."""
    n, dims = x.shape[0], x.shape[1:]
    D = math.prod(dims)
    t_b = jnp.broadcast_to(jnp.asarray(t, x.dtype), (n,))

    def one(xi, ti):
        f = lambda y: velocity(y.reshape((1,) + dims), ti[None]).reshape(D)  # noqa: E731
        return jnp.trace(jax.jacfwd(f)(xi.reshape(D)))

    return velocity(x, t), -jax.vmap(one)(x, t_b)


def _velocity_cases():
    """(label, velocity, x, t): per-sample velocity fields (t a scalar or one per sample)."""
    rng = _rng()
    A, b = _f32(rng.normal(size=(3, 3))), _f32(rng.normal(size=3))
    W = _f32(rng.normal(size=(2, 2)))

    def tt(t, x):  # t as a column that broadcasts against x
        t = jnp.asarray(t, x.dtype)
        return t.reshape((-1,) + (1,) * (x.ndim - 1)) if t.ndim else t

    def linear(x, t):
        return (x @ A.T) * (1.0 + tt(t, x)) + b

    def nonlinear(x, t):
        return jnp.tanh(x @ W.T) * tt(t, x) + jnp.sin(x[:, ::-1])

    def pixels(x, t):  # (n, 2, 3): elementwise and across one image's pixels
        return x * jnp.sin(x) + tt(t, x) * jnp.roll(x, 1, axis=2) - 0.3 * x**2

    def shrink(x, t):  # the flow of a VP-like SDE for Gaussian data: a scalar per sample
        return -(0.5 + tt(t, x)) * x

    return [
        ("linear field in 3-D, t scalar", linear, _f32(rng.normal(size=(5, 3))), 0.4),
        ("nonlinear field in 2-D, one t per sample", nonlinear, _f32(rng.normal(size=(4, 2))),
         _f32(rng.uniform(0.1, 1.0, size=4))),
        ("samples of shape (2, 3) (tiny images), t scalar", pixels,
         _f32(rng.normal(size=(3, 2, 3))), 0.7),
        ("a batch of one, 3-D", linear, _f32(rng.normal(size=(1, 3))), 0.9),
        ("a contracting field in 5-D, one t per sample", shrink, _f32(rng.normal(size=(6, 5))),
         _f32(rng.uniform(0.0, 1.0, size=6))),
    ]


# float32 Jacobian traces of sums of ~10 terms of size ~3: rtol 1e-4, atol 1e-4. Wrong answers
# (a sign, a missing term, a trace over the whole batch) are off by O(1).
_AUG_RTOL, _AUG_ATOL = 1e-4, 1e-4


def _test_log_density_ode_impl(fn):
    cases = _velocity_cases()
    args = [(velocity, x, t) for _, velocity, x, t in cases]
    wants = call_compiled_each(_log_density_ode, args)
    for (label, _, x, _), got, (want_dx, want_dl) in zip(cases, call_compiled_each(fn, args), wants):
        what = f"case '{label}'"
        dx, dl = as_pair(got, what, "dx/dt", "d log p/dt")
        expect_close(dx, want_dx, what=what + ", dx/dt", rtol=_AUG_RTOL, atol=_AUG_ATOL)
        want_dl = np.asarray(want_dl, np.float64)
        if dl.shape == want_dl.shape and np.all(np.isfinite(dl)):
            if np.allclose(dl, -want_dl, rtol=_AUG_RTOL, atol=_AUG_ATOL) and np.any(
                    np.abs(want_dl) > _AUG_ATOL):
                raise Mismatch(f"{what}: d log p/dt has the right size but the wrong sign: does "
                               "density rise or fall where the flow spreads out?")
        elif dl.size == 1 and x.shape[0] > 1:
            raise Mismatch(f"{what}: d log p/dt is one number for the whole batch; each sample "
                           f"needs its own (expected shape {want_dl.shape})")
        expect_close(dl, want_dl, what=what + ", d log p/dt", rtol=_AUG_RTOL, atol=_AUG_ATOL)


@exercise(
    "log_density_ode",
    chapter=5,
    hint=(
        "Follow one sample along the flow: how does the log density at the moving point "
        "change? The instantaneous change of variables (chapter 5) answers it with the "
        "divergence of the velocity; get the sign from a flow that spreads mass out."
    ),
    hint2=(
        "Return the velocity itself and, per sample, the divergence of u with respect to "
        "that sample's coordinates (all of them, whatever the shape), with the sign that "
        "makes density fall where the flow expands. Flatten each sample, take the trace "
        "of its Jacobian (jax.jacfwd, vmapped), and pass t through unchanged."
    ),
    blocked=(
        "companion.divergence:exact_divergence",
        "companion.divergence:hutchinson_divergence",
        "companion.likelihood:log_prob",
    ),
    reference=_log_density_ode,
)
def _test_log_density_ode(fn):
    _test_log_density_ode_impl(fn)
