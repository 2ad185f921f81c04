"""companion.sde: kernels against closed forms, the moment ODE and simulation; bad input named."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion import sde

TIMES = jnp.array([1e-3, 0.01, 0.1, 0.3, 0.5, 0.8, 1.0])


def closed_form(s, t):
    """(mean coefficient, kernel std) from the formulas of chapter 2, in float64 NumPy."""
    t = np.asarray(t, dtype=np.float64)
    if isinstance(s, sde.VE):
        sigma = s.sigma_min * (s.sigma_max / s.sigma_min) ** t
        return np.ones_like(t), np.sqrt(sigma**2 - s.sigma_min**2)
    big_b = s.beta_min * t + 0.5 * t**2 * (s.beta_max - s.beta_min)
    std = 1 - np.exp(-big_b) if isinstance(s, sde.SubVP) else np.sqrt(1 - np.exp(-big_b))
    return np.exp(-0.5 * big_b), std


def test_marginal_matches_the_closed_forms(any_sde):
    s = any_sde
    x0 = jnp.arange(14.0).reshape(7, 2) - 5.0
    mean, std = s.marginal(x0, TIMES)
    coef, want_std = closed_form(s, TIMES)
    # float32: ~1e-6 relative, plus cancellation in 1 - exp(-B) at t = 1e-3 (B = 1e-4): 1e-3 relative
    np.testing.assert_allclose(mean, coef[:, None] * np.asarray(x0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, want_std, rtol=1e-3)
    assert mean.shape == x0.shape and std.shape == TIMES.shape


def test_closed_forms_in_float64(any_sde):
    s = any_sde
    with jax.enable_x64(True):
        t = jnp.asarray(np.asarray(TIMES, np.float64))
        mean, std = s.marginal(jnp.ones((7, 3), jnp.float64), t)
        assert mean.dtype == jnp.float64 and std.dtype == jnp.float64
        coef, want_std = closed_form(s, t)
        np.testing.assert_allclose(std, want_std, rtol=1e-12)
        np.testing.assert_allclose(mean[:, 0], coef, rtol=1e-12)


def moment_ode_residual(s, t):
    """d v/dt - (2 a v + g^2) and d log m/dt - a at t, by autodiff (v = kernel_std^2)."""
    v = lambda u: s.kernel_std(u) ** 2
    log_m = lambda u: jnp.log(s.mean_coefficient(u))
    a, g = s.drift_coefficient(t), s.diffusion(t)
    return jax.grad(v)(t) - (2 * a * v(t) + g**2), jax.grad(log_m)(t) - a


@settings(max_examples=15, deadline=None)
@given(
    kind=st.sampled_from(["VE", "VP", "SubVP"]),
    lo=st.floats(0.01, 1.0),
    ratio=st.floats(1.5, 500.0),
    t=st.floats(0.05, 1.0),
)
def test_kernel_solves_the_moment_odes(kind, lo, ratio, t):
    """Eq. (eq-moment-ode): the kernel of every SDE, for random parameters, solves
    v' = 2 a v + g^2 and m' = a m, i.e. drift, diffusion and marginal are one process."""
    with jax.enable_x64(True):
        if kind == "VE":
            s = sde.VE(sigma_min=lo, sigma_max=lo * ratio)
        else:
            s = getattr(sde, kind)(beta_min=lo, beta_max=lo * min(ratio, 40.0))
        rv, rm = moment_ode_residual(s, jnp.float64(t))
        scale = float(s.diffusion(t) ** 2) + abs(float(2 * s.drift_coefficient(t) * s.kernel_std(t) ** 2))
        assert abs(float(rv)) <= 1e-9 * scale
        assert abs(float(rm)) <= 1e-9 * (1 + abs(float(s.drift_coefficient(t))))


def test_kernel_matches_a_simulation_of_drift_and_diffusion(any_sde):
    """Euler-Maruyama of the SDE's own drift and diffusion from x0 = 1.5 (20 000 paths,
    2000 steps) reproduces the kernel at t = 0.25, 0.5, 1. Tolerance: 5 standard errors
    (std/sqrt(n) for the mean, std/sqrt(2n) for the std) plus Euler-Maruyama's O(h) bias,
    at most ~0.5% of the std for h = 5e-4 (VE: log(5000) h; VP: beta h / 8)."""
    s = any_sde
    n, steps = 20_000, 2000
    ts = jnp.linspace(0.0, 1.0, steps + 1)

    def step(x, inputs):
        t, k = inputs
        h = 1.0 / steps
        x = x + s.drift(x, t) * h + s.diffusion(t) * jnp.sqrt(h) * jax.random.normal(k, x.shape)
        return x, x

    keys = jax.random.split(jax.random.key(0), steps)
    _, xs = jax.jit(lambda x: jax.lax.scan(step, x, (ts[:-1], keys)))(jnp.full((n,), 1.5))
    for i in (500, 1000, 2000):
        mean, std = s.marginal(jnp.array([1.5]), ts[i])
        x = xs[i - 1]
        assert abs(float(x.mean() - mean[0])) < 5 * float(std) / math.sqrt(n) + 1e-3
        assert abs(float(x.std() - std)) < 5 * float(std) / math.sqrt(2 * n) + 0.005 * float(std)


def test_transition_composes_and_starts_the_kernel(any_sde):
    s = any_sde
    r, q = s.transition(0.0, 0.6)
    coef, std = closed_form(s, 0.6)
    np.testing.assert_allclose([float(r), float(q)], [coef, std], rtol=2e-5)
    # x_u = r_tu (r_st x_s + q_st z) + q_tu z': r_su = r_st r_tu, q_su^2 = r_tu^2 q_st^2 + q_tu^2
    (r1, q1), (r2, q2), (r3, q3) = s.transition(0.2, 0.5), s.transition(0.5, 0.9), s.transition(0.2, 0.9)
    np.testing.assert_allclose(float(r3), float(r1 * r2), rtol=1e-5)
    np.testing.assert_allclose(float(q3**2), float(r2**2 * q1**2 + q2**2), rtol=1e-4)
    r0, q0 = s.transition(0.4, 0.4)  # a step of length zero: identity, no NaN
    assert float(r0) == pytest.approx(1.0) and float(q0) == pytest.approx(0.0, abs=1e-3)
    assert np.isfinite(float(q0))


def test_ve_transition_is_song_et_al_sigma_difference(ve):
    s = ve
    _, q = s.transition(0.3, 0.31)
    np.testing.assert_allclose(float(q**2), float(s.sigma(0.31) ** 2 - s.sigma(0.3) ** 2), rtol=1e-4)


def test_prior_sample_and_log_prob(any_sde):
    s = any_sde
    x = s.prior_sample(jax.random.key(1), (4000, 3))
    assert x.shape == (4000, 3) and x.dtype == jnp.float32
    prior_std = float(s.prior_std())
    assert abs(float(x.std()) / prior_std - 1) < 5 / math.sqrt(2 * x.size)
    lp = s.prior_log_prob(x[:5])
    want = jax.scipy.stats.norm.logpdf(x[:5], scale=prior_std).sum(axis=1)
    np.testing.assert_allclose(lp, want, rtol=1e-5)
    assert lp.shape == (5,)
    # image-shaped samples: per-sample quantities reduce over every non-batch axis
    xi = s.prior_sample(jax.random.key(2), (2, 3, 4, 4))
    np.testing.assert_allclose(s.prior_log_prob(xi), s.prior_log_prob(xi.reshape(2, -1)), rtol=1e-6)


def test_prior_is_what_song_et_al_use(ve, vp, subvp):
    assert float(ve.prior_std()) == pytest.approx(50.0, rel=1e-6)
    assert float(vp.prior_std()) == pytest.approx(1.0, abs=1e-4)
    assert float(subvp.prior_std()) == pytest.approx(1.0, abs=1e-4)
    assert ve.T == 1.0


def test_drift_diffusion_and_the_reverse_drifts(any_sde):
    s = any_sde
    x = jnp.ones((3, 2)) * jnp.array([[1.0], [2.0], [-1.0]])
    t = jnp.array([0.2, 0.5, 0.9])
    a = s.drift_coefficient(t)
    np.testing.assert_allclose(s.drift(x, t), a[:, None] * x, rtol=1e-6)
    score = lambda x, t: -2.0 * x
    g2 = s.diffusion(t)[:, None] ** 2
    np.testing.assert_allclose(s.reverse_drift(score, x, t), a[:, None] * x + 2 * g2 * x, rtol=1e-5)
    np.testing.assert_allclose(s.probability_flow_drift(score, x, t), a[:, None] * x + g2 * x, rtol=1e-5)
    assert s.drift(x, 0.0).shape == x.shape  # t = 0 is allowed for the drift


def test_sub_vp_std_never_exceeds_vp_std(vp, subvp):
    t = jnp.linspace(1e-4, 1.0, 5001)
    assert jnp.all(subvp.kernel_std(t) <= vp.kernel_std(t) + 1e-7)


def test_no_nan_near_t_zero_in_float32(any_sde):
    s = any_sde
    t = jnp.array([1e-7, 1e-5, 1e-3], jnp.float32)
    std = s.kernel_std(t)
    assert jnp.all(jnp.isfinite(std)) and jnp.all(std > 0)
    assert jnp.all(jnp.isfinite(s.diffusion(t)))


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: sde.VE(sigma_min=0.0, sigma_max=1.0), "sigma_min"),
        (lambda: sde.VE(sigma_min=-1.0, sigma_max=1.0), "sigma_min"),
        (lambda: sde.VE(sigma_min=2.0, sigma_max=1.0), "sigma_min"),
        (lambda: sde.VE(sigma_min=0.01, sigma_max=float("inf")), "sigma_max"),
        (lambda: sde.VP(beta_min=-0.1, beta_max=20.0), "beta_min"),
        (lambda: sde.VP(beta_min=0.1, beta_max=0.0), "beta_max"),
        (lambda: sde.SubVP(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: sde.VP(beta_min=float("nan"), beta_max=1.0), "beta_min"),
    ],
)
def test_bad_parameters_raise_value_errors_naming_them(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_parameters_of_the_wrong_type_raise_type_errors():
    with pytest.raises(TypeError, match="sigma_max"):
        sde.VE(sigma_min=0.01, sigma_max="50")
    with pytest.raises(TypeError, match="beta_min"):
        sde.VP(beta_min=None, beta_max=20.0)


@pytest.mark.parametrize("t", [0.0, -0.1, 1.5, [0.5, 2.0]])
def test_marginal_outside_the_time_interval_raises(t, vp):
    with pytest.raises(ValueError, match="t"):
        vp.marginal(jnp.ones((2, 2)), jnp.asarray(t))


def test_bad_x_and_t_shapes_raise(ve):
    s = ve
    with pytest.raises(ValueError, match="x"):
        s.drift(jnp.float32(1.0), 0.5)
    with pytest.raises(TypeError, match="x"):
        s.marginal(jnp.ones((3, 2), jnp.int32), 0.5)
    with pytest.raises(ValueError, match="t"):
        s.marginal(jnp.ones((3, 2)), jnp.array([0.1, 0.2]))


def test_sdes_are_hashable_values():
    """Samplers take the SDE as a static jit argument: equal parameters, equal hash."""
    assert hash(sde.VP()) == hash(sde.VP(beta_min=0.1, beta_max=20.0))
    assert sde.VE() != sde.VE(sigma_max=10.0)
    assert sde.VP() != sde.SubVP()
