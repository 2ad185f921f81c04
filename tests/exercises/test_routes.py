"""The routes a learner finds in a minute, which the statements exclude, are refused
(issue 26, "rules of the exercise"): a third-party solver's own step, a companion helper
one level below the blocked one, forming the Jacobian or the inverse another way, a
blocked function held in a default argument. Each is a right answer but for the route, so
only the route can make the check fail; the message says which function and why."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises, likelihood, paths, sde
from companion.divergence import exact_divergence


def _ode_term(f):
    return diffrax.ODETerm(lambda t, y, args: f(y, t))


def euler_by_diffrax_step(f, y, t, h):
    y = jnp.asarray(y, jnp.result_type(float))
    term, solver = _ode_term(f), diffrax.Euler()
    state = solver.init(term, t, t + h, y, None)
    return solver.step(term, t, t + h, y, None, state, False)[0]


def euler_by_diffeqsolve(f, y, t, h):
    y = jnp.asarray(y, jnp.result_type(float))
    return diffrax.diffeqsolve(_ode_term(f), diffrax.Euler(), t, t + h, h, y).ys[-1]


def heun_by_diffrax_step(f, y, t, h):
    y = jnp.asarray(y, jnp.result_type(float))
    term, solver = _ode_term(f), diffrax.Heun()
    state = solver.init(term, t, t + h, y, None)
    return solver.step(term, t, t + h, y, None, state, False)[0]


def em_drift_by_diffrax_step(f, g, x, t, h, z):  # Euler's step for the drift, the noise by hand
    return euler_by_diffrax_step(f, x, t, h) + g(t) * jnp.sqrt(h) * z


def ve_by_sigma(t, sigma_min, sigma_max):  # one level below VE.diffusion
    ve = sde.VE(sigma_min=sigma_min, sigma_max=sigma_max)
    dsig2 = jax.vmap(jax.grad(lambda s: ve.sigma(s) ** 2))
    t = jnp.asarray(t, jnp.float32)
    return jnp.sqrt(dsig2(t.reshape(-1))).reshape(t.shape)


def vp_by_integrated_beta(x0, t, beta_min, beta_max):  # one level below VP.marginal
    big_b = sde.VP(beta_min=beta_min, beta_max=beta_max).integrated_beta(t)
    mean = jnp.exp(-0.5 * big_b)
    mean_x = (mean[:, None] if jnp.ndim(t) else mean) * x0
    return mean_x, jnp.sqrt(-jnp.expm1(-big_b))


def hutchinson_by_jacobian(fn, x, xi):  # forms the Jacobian (jax.jacfwd)
    jac = jax.vmap(jax.jacfwd(lambda y: fn(y[None])[0]))(x)  # (n, d, d)
    return jnp.einsum("pni,nij,pnj->n", xi, jac, xi) / xi.shape[0]


def log_density_with_a_default(velocity, x, t, div=exact_divergence):  # held in a default
    flat = lambda y: velocity(y.reshape(x.shape), t).reshape(x.shape[0], -1)  # noqa: E731
    return velocity(x, t), -div(flat, x.reshape(x.shape[0], -1))


def gaussian_denoiser_by_tensorinv(x_t, t, mean, cov, sde):  # an inverse by another name
    t = jnp.broadcast_to(jnp.asarray(t, x_t.dtype), x_t.shape[:1])
    a, b = (np.asarray(f(t), np.float64)[:, None] for f in (sde.mean_coefficient, sde.kernel_std))
    x, mean, cov = (np.asarray(v, np.float64) for v in (x_t, mean, cov))
    return np.array([mean + ai * cov @ np.linalg.tensorinv(ai**2 * cov + bi**2 * np.eye(len(mean)), ind=1)
                     @ (xi - ai * mean) for xi, ai, bi in zip(x, a[:, 0], b[:, 0])])


def histogram_by_the_conversion(train_levels, test_levels, n_levels, alpha):
    tr = np.asarray(train_levels).reshape(len(train_levels), -1)
    te = np.asarray(test_levels).reshape(len(test_levels), -1)
    counts = (tr[:, :, None] == np.arange(n_levels)).sum(0)
    probs = (counts + alpha) / (len(tr) + alpha * n_levels)
    log_p = np.log(probs[np.arange(te.shape[1]), te]).sum(1)  # nats; a bin of width 1
    return likelihood.nats_to_bits_per_dim(log_p, te.shape[1], n_levels=n_levels,
                                           data_range=(0.0, float(n_levels)))


class _Path(paths.GaussianPath):
    def __init__(self, a, b):
        self._a, self._b = a, b

    def a(self, t):
        return self._a(t)

    def b(self, t):
        return self._b(t)

    def da(self, t):
        return jax.vmap(jax.grad(self._a))(t)

    def db(self, t):
        return jax.vmap(jax.grad(self._b))(t)


def conditional_velocity_by_a_path(a, b, x0, z, t):  # a GaussianPath subclass does the rest
    return _Path(a, b).conditional_velocity(x0, z, t)


def euler_target_bias_by_diffeqsolve(xtilde, nu, nu_next, sigma_data):  # the exact flow, solved
    xtilde = jnp.asarray(xtilde)
    nu_b = jnp.broadcast_to(jnp.asarray(nu, xtilde.dtype), xtilde.shape[:1])[:, None]
    nu_n = jnp.broadcast_to(jnp.asarray(nu_next, xtilde.dtype), xtilde.shape[:1])[:, None]

    def slope(x, nu):
        return (x - sigma_data**2 / (sigma_data**2 + nu**2) * x) / nu

    euler = xtilde + (nu_n - nu_b) * slope(xtilde, nu_b)
    term = diffrax.ODETerm(lambda s, x, args: slope(x, nu_b + s * (nu_n - nu_b)) * (nu_n - nu_b))
    exact = diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, 1.0, 0.05, xtilde,
                                stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8)).ys[-1]
    return euler - exact


ROUTES = {
    "euler_step: diffrax's Euler().step": ("euler_step", euler_by_diffrax_step, "diffrax.Euler.step"),
    "euler_step: diffrax.diffeqsolve": ("euler_step", euler_by_diffeqsolve, "diffrax.diffeqsolve"),
    "heun_step: diffrax's Heun().step": ("heun_step", heun_by_diffrax_step, "diffrax.Heun.step"),
    "euler_maruyama_step: the drift by Euler().step": ("euler_maruyama_step", em_drift_by_diffrax_step,
                                                       "diffrax.Euler.step"),
    "ve_diffusion: VE.sigma, differentiated": ("ve_diffusion", ve_by_sigma, "companion.sde.VE.sigma"),
    "vp_kernel: VP.integrated_beta": ("vp_kernel", vp_by_integrated_beta, "companion.sde.VP.integrated_beta"),
    "hutchinson_trace: the Jacobian by jax.jacfwd": ("hutchinson_trace", hutchinson_by_jacobian,
                                                     "forms the whole Jacobian"),
    "log_density_ode: exact_divergence in a default argument": (
        "log_density_ode", log_density_with_a_default, "companion.divergence.exact_divergence"),
    "gaussian_denoiser: numpy.linalg.tensorinv": ("gaussian_denoiser", gaussian_denoiser_by_tensorinv,
                                                  "numpy.linalg.tensorinv"),
    "histogram_bits: likelihood.nats_to_bits_per_dim": ("histogram_bits", histogram_by_the_conversion,
                                                        "nats_to_bits_per_dim"),
    "conditional_velocity: a GaussianPath subclass": ("conditional_velocity", conditional_velocity_by_a_path,
                                                      "GaussianPath.conditional_velocity"),
    "euler_target_bias: the exact flow by diffeqsolve": ("euler_target_bias", euler_target_bias_by_diffeqsolve,
                                                         "diffrax.diffeqsolve"),
}


@pytest.mark.parametrize("name, route, words", ROUTES.values(), ids=ROUTES.keys())
def test_the_route_is_refused_and_named(name, route, words, capsys):
    capsys.readouterr()
    assert not exercises.check(name, route)
    out = capsys.readouterr().out
    assert words in out and "write it yourself" in out, out


def test_the_solver_routes_would_be_right_but_for_the_rule():
    # the routes are right answers (so only the rule makes the checks fail): spot checks
    f = lambda y, t: -y + jnp.sin(t)  # noqa: E731
    y, t, h = jnp.array([1.0, -2.0]), 0.3, 0.1
    assert np.allclose(euler_by_diffrax_step(f, y, t, h), y + h * f(y, t), atol=1e-6)
    k1 = f(y, t)
    heun = y + h / 2 * (k1 + f(y + h * k1, t + h))
    assert np.allclose(heun_by_diffrax_step(f, y, t, h), heun, atol=1e-6)
    ve = sde.VE(sigma_min=0.01, sigma_max=50.0)
    assert np.allclose(ve_by_sigma(jnp.array([0.2, 0.7]), 0.01, 50.0), ve.diffusion(jnp.array([0.2, 0.7])),
                       rtol=1e-4)
