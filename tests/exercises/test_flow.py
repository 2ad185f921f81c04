"""The hidden tests of chapter 5 accept right answers and reject plausible wrong ones."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises
from companion.divergence import exact_divergence, hutchinson_divergence


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


# ------------------------------------------------------------------------------ pf_drift


def message(name, fn, capsys):
    capsys.readouterr()
    assert not exercises.check(name, fn)
    return capsys.readouterr().out


def _tweedie_score(sde, denoiser, x, t):
    a, b = sde.mean_coefficient(t)[:, None], sde.kernel_std(t)[:, None]
    return (a * denoiser(x, t) - x) / b**2


def pf_right_by_hand(sde, denoiser, x, t):
    g2 = sde.diffusion(t) ** 2
    return sde.drift(x, t) - g2[:, None] * _tweedie_score(sde, denoiser, x, t) / 2


def pf_right_with_marginal(sde, denoiser, x, t):  # a, b through the kernel; f = A x by hand
    a_x, b = sde.marginal(x, t)  # a(t) x
    a = a_x / x
    score = (a * denoiser(x, t) - x) / b[:, None] ** 2
    return sde.drift(x, t) - 0.5 * sde.diffusion(t)[:, None] ** 2 * score


def pf_companion(sde, denoiser, x, t):
    return sde.probability_flow_drift(lambda y, tt: _tweedie_score(sde, denoiser, y, tt), x, t)


def pf_companion_velocity(sde, denoiser, x, t):  # chapter 8's route, one level beside
    from companion import losses, paths

    velocity = losses.velocity_from_score(
        paths.from_sde(sde), lambda y, tt: _tweedie_score(sde, denoiser, y, tt))
    return velocity(x, t)


def _pf(sde, denoiser, x, t, *, half=0.5, sign=1.0, with_a=True, power=2, with_f=True):
    a = sde.mean_coefficient(t)[:, None] if with_a else 1.0
    b = sde.kernel_std(t)[:, None]
    score = (a * denoiser(x, t) - x) / b**power
    f = sde.drift(x, t) if with_f else 0.0
    return f - sign * half * sde.diffusion(t)[:, None] ** 2 * score


PF_WRONG = {
    "calls the companion (probability_flow_drift)": pf_companion,
    "calls the companion (velocity_from_score)": pf_companion_velocity,
    "g^2 where 1/2 g^2 belongs": lambda *a: _pf(*a, half=1.0),
    "flipped sign": lambda *a: _pf(*a, sign=-1.0),
    "Tweedie without a(t)": lambda *a: _pf(*a, with_a=False),
    "Tweedie over b, not b^2": lambda *a: _pf(*a, power=1),
    "no forward drift f": lambda *a: _pf(*a, with_f=False),
    "the denoiser as the score": lambda sde, dn, x, t: sde.drift(x, t) - 0.5 * sde.diffusion(t)[:, None] ** 2 * dn(x, t),
    "g instead of g^2": lambda sde, dn, x, t: sde.drift(x, t) - 0.5 * sde.diffusion(t)[:, None] * _tweedie_score(sde, dn, x, t),
}


@pytest.mark.parametrize("fn", [pf_right_by_hand, pf_right_with_marginal])
def test_pf_drift_accepts_right_answers(fn):
    assert check("pf_drift", fn)


@pytest.mark.parametrize("wrong", PF_WRONG.values(), ids=PF_WRONG.keys())
def test_pf_drift_rejects_wrong_answers(wrong):
    assert not check("pf_drift", wrong)


@pytest.mark.parametrize("wrong, words", [
    ("g^2 where 1/2 g^2 belongs", "where the probability flow has half of it"),
    ("flipped sign", "wrong sign"),
    ("Tweedie without a(t)", "without the mean coefficient a(t)"),
    ("Tweedie over b, not b^2", "divided by b(t), not b(t)^2"),
    ("no forward drift f", "forward drift f(x, t) is missing"),
    ("the denoiser as the score", "as if it were the score"),
    ("calls the companion (probability_flow_drift)", "write it yourself"),
    ("calls the companion (velocity_from_score)", "write it yourself"),
])
def test_pf_drift_names_the_mistake(wrong, words, capsys):
    assert words in message("pf_drift", PF_WRONG[wrong], capsys)


# ------------------------------------------------------------------------- divergence_plan


def _sym(jac):
    jac = np.asarray(jac, np.float64)
    return (jac + jac.T) / 2


def _off(jac):
    return ~np.eye(len(jac), dtype=bool)


def _plan(jac, tol, *, var=None, count=math.ceil, exact_cost=None, kinds=("rademacher", "gaussian"),
          tie_to_probes=False, at_least_one=True):
    jac = np.asarray(jac, np.float64)
    sym = _sym(jac)
    variances = {"rademacher": 2 * np.sum(sym[_off(jac)] ** 2), "gaussian": 2 * np.sum(sym**2)}
    if var is not None:
        variances["rademacher"] = var(jac)
    d = len(jac)
    plans = [(k, int(count(variances[k] / tol**2))) for k in kinds]
    if at_least_one:
        plans = [(k, max(1, p)) for k, p in plans]
    plans = sorted(plans, key=lambda p: p[1])
    exact = ("exact", d if exact_cost is None else exact_cost(d))
    best = plans[0]
    if best[1] < exact[1] or (tie_to_probes and best[1] == exact[1]):
        return best
    return exact


def plan_right(jac, tol):
    return _plan(jac, tol)


def plan_right_loops(jac, tol):  # the variance pair by pair, the count by a loop
    d = len(jac)
    var = sum((jac[i][j] + jac[j][i]) ** 2 / 2 for i in range(d) for j in range(d) if i != j)
    probes = 1
    while var / probes > tol**2:
        probes += 1
    return ("rademacher", probes) if probes < d else ("exact", d)


PLAN_WRONG = {
    "chapter 5's variance with J for A (not symmetrised)": lambda j, t: _plan(
        j, t, var=lambda jac: 2 * np.sum(np.asarray(jac)[_off(jac)] ** 2)),
    "standard error confused with variance (tol, not tol^2)": lambda j, t: _plan(
        j, math.sqrt(t)),  # var / sqrt(tol)^2 = var / tol
    "rounded, not rounded up": lambda j, t: _plan(j, t, count=round),
    "the variance without its factor 2": lambda j, t: _plan(
        j, t, var=lambda jac: np.sum(_sym(jac)[_off(jac)] ** 2)),
    "Gaussian probes only": lambda j, t: _plan(j, t, kinds=("gaussian",)),
    "the exact trace costs d^2 (every entry)": lambda j, t: _plan(j, t, exact_cost=lambda d: d * d),
    "a tie goes to the estimate": lambda j, t: _plan(j, t, tie_to_probes=True),
    "zero probes for zero variance": lambda j, t: _plan(j, t, at_least_one=False),
    "exact always (the chapter's d = 2 habit)": lambda j, t: ("exact", len(j)),
}


@pytest.mark.parametrize("fn", [plan_right, plan_right_loops])
def test_divergence_plan_accepts_right_answers(fn):
    assert check("divergence_plan", fn)


@pytest.mark.parametrize("wrong", PLAN_WRONG.values(), ids=PLAN_WRONG.keys())
def test_divergence_plan_rejects_wrong_answers(wrong):
    assert not check("divergence_plan", wrong)


@pytest.mark.parametrize("wrong, words", [
    ("chapter 5's variance with J for A (not symmetrised)", "symmetric part"),
    ("standard error confused with variance (tol, not tol^2)", "tol is a standard error"),
    ("rounded, not rounded up", "rounded up"),
    ("the variance without its factor 2", "factor 2"),
    ("Gaussian probes only", "fewer JVPs"),
    ("the exact trace costs d^2 (every entry)", "one JVP per coordinate"),
    ("a tie goes to the estimate", "on a tie"),
    ("zero probes for zero variance", "at least one probe"),
])
def test_divergence_plan_names_the_mistake(wrong, words, capsys):
    assert words in message("divergence_plan", PLAN_WRONG[wrong], capsys)


# ------------------------------------------------------------------------------ bits_per_dim


def bpd_right(log_p, n_dims, n_levels, data_range):
    lo, hi = data_range
    log_prob_bins = log_p + n_dims * np.log((hi - lo) / n_levels)
    return -log_prob_bins / n_dims / np.log(2.0)


def _bpd(log_p, D, K, r, *, jac_sign=1.0, base=math.log(2), per_dim=True):
    lo, hi = r
    out = -(log_p + jac_sign * D * math.log((hi - lo) / K)) / base
    return out / D if per_dim else out


def bpd_library(log_p, n_dims, n_levels, data_range):
    from companion import likelihood

    return likelihood.nats_to_bits_per_dim(log_p, n_dims, n_levels=n_levels, data_range=data_range)


BPD_WRONG = {
    "calls the companion (nats_to_bits_per_dim)": bpd_library,
    "nats, not bits": lambda lp, D, K, r: _bpd(lp, D, K, r, base=1.0),
    "no bin-width term": lambda lp, D, K, r: -lp / (D * math.log(2)),
    "bin-width term with the wrong sign": lambda lp, D, K, r: _bpd(lp, D, K, r, jac_sign=-1.0),
    "not divided by the dimension": lambda lp, D, K, r: _bpd(lp, D, K, r, per_dim=False),
    "log10": lambda lp, D, K, r: _bpd(lp, D, K, r, base=math.log(10)),
    "one bin width, not n_dims of them": lambda lp, D, K, r: -(lp + math.log((r[1] - r[0]) / K)) / (
        D * math.log(2)),
    "log p, not -log p": lambda lp, D, K, r: -_bpd(lp, D, K, r),
}


@pytest.mark.parametrize("wrong, words", [
    ("nats, not bits", "nats, not bits"),
    ("not divided by the dimension", "number of dimensions is missing"),
    ("no bin-width term", "volume is missing"),
    ("bin-width term with the wrong sign", "volume enters with the wrong sign"),
    ("one bin width, not n_dims of them", "one coordinate only"),
    ("log p, not -log p", "is a cost"),
    ("log10", "base 10"),
    ("calls the companion (nats_to_bits_per_dim)", "write it yourself"),
])
def test_bits_per_dim_names_the_mistake(wrong, words, capsys):
    assert words in message("bits_per_dim", BPD_WRONG[wrong], capsys)


def test_bits_per_dim_accepts_right_answers():
    assert check("bits_per_dim", bpd_right)


@pytest.mark.parametrize("wrong", BPD_WRONG.values(), ids=BPD_WRONG.keys())
def test_bits_per_dim_rejects_wrong_answers(wrong):
    assert not check("bits_per_dim", wrong)


# ------------------------------------------------------------------------ log_density_ode


def _per_sample_div(velocity, x, t):
    n, dims = x.shape[0], x.shape[1:]
    D = int(np.prod(dims))
    tb = jnp.broadcast_to(jnp.asarray(t), (n,))

    def one(xi, ti):
        f = lambda y: velocity(y.reshape((1,) + dims), ti[None]).reshape(D)  # noqa: E731
        return jnp.trace(jax.jacfwd(f)(xi.reshape(D)))

    return jax.vmap(one)(x, tb)


def aug_right(velocity, x, t):
    return velocity(x, t), -_per_sample_div(velocity, x, t)


def aug_right_jvp(velocity, x, t):  # one JVP per coordinate, on the flattened batch
    n, D = x.shape[0], int(np.prod(x.shape[1:]))
    flat = lambda y: velocity(y.reshape(x.shape), t).reshape(n, D)  # noqa: E731
    eye = jnp.eye(D, dtype=x.dtype)
    cols = [jax.jvp(flat, (x.reshape(n, D),), (jnp.broadcast_to(eye[j], (n, D)),))[1][:, j]
            for j in range(D)]
    return velocity(x, t), -sum(cols)


def aug_library(velocity, x, t):
    return velocity(x, t), -exact_divergence(lambda y: velocity(y, t), x)


def aug_whole_batch_trace(velocity, x, t):  # trace of the batch function's Jacobian
    flat = lambda y: velocity(y.reshape(x.shape), t).reshape(-1)  # noqa: E731
    return velocity(x, t), -jnp.trace(jax.jacfwd(flat)(x.reshape(-1)))


AUG_WRONG = {
    "calls the companion (divergence.exact_divergence)": aug_library,
    "plus the divergence (sign)": lambda v, x, t: (v(x, t), _per_sample_div(v, x, t)),
    "trace over the whole batch": aug_whole_batch_trace,
    "minus the sum of the velocity": lambda v, x, t: (
        v(x, t), -v(x, t).reshape(x.shape[0], -1).sum(1)),
    "first coordinate's derivative only (2-D thinking)": lambda v, x, t: (
        v(x, t), -_per_sample_div(v, x, t) * 0 - jax.vmap(
            lambda xi, ti: jax.grad(lambda y: v(y[None], ti[None]).reshape(-1)[0])(xi)
            .reshape(-1)[0])(x, jnp.broadcast_to(jnp.asarray(t), (x.shape[0],)))),
}


@pytest.mark.parametrize("fn", [aug_right, aug_right_jvp])
def test_log_density_ode_accepts_right_answers(fn):
    assert check("log_density_ode", fn)


@pytest.mark.parametrize("wrong", AUG_WRONG.values(), ids=AUG_WRONG.keys())
def test_log_density_ode_rejects_wrong_answers(wrong):
    assert not check("log_density_ode", wrong)


def test_log_density_ode_refuses_the_companions_divergences(capsys):
    for divergence in (exact_divergence, lambda f, x: hutchinson_divergence(f, x, jnp.ones_like(x))):
        def aug(velocity, x, t, divergence=divergence):
            flat = lambda y: velocity(y.reshape(x.shape), t).reshape(x.shape[0], -1)  # noqa: E731
            return velocity(x, t), -divergence(flat, x.reshape(x.shape[0], -1))

        assert "write it yourself" in message("log_density_ode", aug, capsys)


def test_log_density_ode_diagnoses(capsys):
    exercises.check("log_density_ode", AUG_WRONG["plus the divergence (sign)"])
    assert "wrong sign" in capsys.readouterr().out
    exercises.check("log_density_ode", aug_library)
    assert "write it yourself" in capsys.readouterr().out
