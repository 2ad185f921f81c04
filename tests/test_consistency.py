"""companion.consistency: the parametrisation and its boundary condition, the teacher
step against the exact flow of Gaussian data, the two losses (each with a known-wrong
variant that these tests catch), the target loop and the multistep sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from companion import consistency, ode_sampling, training
from companion import sde as sdes

from course_sdes import SDES

VP = SDES["VP"]
EPS = 1e-3
S = 1.5  # the std of the Gaussian data N(0, S^2 I) of the exact tests


def gaussian_map(sde, x, t, t_to):
    """Phi_{t -> t_to} for data N(0, S^2 I): x times sqrt((a'^2 S^2 + b'^2) / (a^2 S^2 + b^2))."""
    a, b, a2, b2 = sde.mean_coefficient(t), sde.kernel_std(t), sde.mean_coefficient(t_to), sde.kernel_std(t_to)
    ratio = jnp.sqrt((a2**2 * S**2 + b2**2) / (a**2 * S**2 + b**2))
    return sdes.batch_broadcast(ratio, x) * x


def gaussian_score(x, t):
    a, b = VP.mean_coefficient(t), VP.kernel_std(t)
    return -x / sdes.batch_broadcast(a**2 * S**2 + b**2, x)


class Exact(nnx.Module):
    """The exact consistency function of N(0, S^2 I) data, as a 'model'."""

    eps = EPS

    def __call__(self, x, t):
        return gaussian_map(VP, x, t, EPS)


def small_model(seed=0, sde=VP):
    return consistency.ConsistencyModel(2, sde, sigma_data=S, hidden=16, depth=2, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("name", ["VP", "VE", "SubVP"])
def test_the_boundary_condition_holds_for_any_weights(name):
    m = small_model(1, SDES[name])
    x = 3.0 * jax.random.normal(jax.random.key(0), (5, 2))
    np.testing.assert_allclose(m(x, EPS), x, rtol=1e-6, atol=1e-6)
    t = jnp.array([EPS, 0.5, EPS, 1.0, EPS])
    y = m(x, t)
    np.testing.assert_allclose(y[::2], x[::2], rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(y[1::2] - x[1::2])).max() > 1e-3  # elsewhere the network acts


def test_coefficients_give_unit_variance_targets_without_the_shift():
    """With nu_eps = 0 these are Karras et al.'s c_skip, c_out: the target of F,
    (x_0 - c_skip xhat) / c_out with xhat = x_0 + nu z, has variance 1 for data of std sigma_d."""
    nu = jnp.array([0.05, 0.5, 2.0, 40.0])
    sd = 1.7
    c_skip, c_out, c_in = consistency.coefficients(nu, 0.0, sd)
    var_target = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * nu**2) / c_out**2
    np.testing.assert_allclose(var_target, 1.0, rtol=1e-5)
    np.testing.assert_allclose(c_in**2 * (sd**2 + nu**2), 1.0, rtol=1e-6)  # unit-variance input
    c_skip, c_out, _ = consistency.coefficients(jnp.asarray(0.3), 0.3, sd)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0


def wrong_sign_step(sde, score_fn, x, t, t_next, method="heun"):
    """A known-wrong teacher: the right increment added with the wrong sign."""
    return 2 * x - consistency.teacher_step(sde, score_fn, x, t, t_next, method)


def teacher_error(step, method, t, t_next):
    x = S * jax.random.normal(jax.random.key(3), (64, 1)) * VP.mean_coefficient(t)
    got = step(VP, gaussian_score, x, t, t_next, method)
    return float(jnp.abs(got - gaussian_map(VP, x, t, t_next)).max())


def test_the_teacher_step_has_its_order_and_a_wrong_sign_is_caught():
    t = 0.5
    errs = {m: [teacher_error(consistency.teacher_step, m, t, t - h) for h in (0.1, 0.05)] for m in ("euler", "heun")}
    assert 3.0 < errs["euler"][0] / errs["euler"][1] < 5.5, errs  # local error O(h^2)
    assert 6.0 < errs["heun"][0] / errs["heun"][1] < 10.5, errs  # O(h^3)
    assert errs["heun"][1] < 5e-3  # measured 1.8e-3 at h = 0.05
    assert teacher_error(wrong_sign_step, "heun", t, t - 0.05) > 20 * errs["heun"][1]  # measured 40x
    # per-sample times and both directions
    x = jnp.ones((2, 1))
    got = consistency.teacher_step(VP, gaussian_score, x, jnp.array([0.3, 0.6]), jnp.array([0.31, 0.59]))
    np.testing.assert_allclose(got, gaussian_map(VP, x, jnp.array([0.3, 0.6]), jnp.array([0.31, 0.59])), atol=1e-5)


def test_distillation_of_the_exact_map_is_nearly_zero_and_a_wrong_teacher_is_not():
    x0 = S * jax.random.normal(jax.random.key(4), (4096, 1))
    key = jax.random.key(5)
    right = consistency.distillation(VP, gaussian_score, n_steps=18)(Exact(), x0, key)
    euler = consistency.distillation(VP, gaussian_score, n_steps=18, teacher="euler")(Exact(), x0, key)
    # the wrong sign: a distillation loss built on wrong_sign_step
    grid = consistency.time_grid(VP, 18)
    n = jax.random.randint(jax.random.split(key)[0], (4096,), 0, 18)
    z = jax.random.normal(jax.random.split(key)[1], x0.shape)
    t_hi, t_lo = grid[n + 1], grid[n]
    x_hi = VP.mean_coefficient(t_hi)[:, None] * x0 + VP.kernel_std(t_hi)[:, None] * z
    wrong = jnp.mean(jnp.sum((Exact()(x_hi, t_hi) - Exact()(wrong_sign_step(VP, gaussian_score, x_hi, t_hi, t_lo),
                                                            t_lo)) ** 2, axis=1))
    # Heun on 18 Karras intervals: loss ~4e-5; Euler about ten times more; the wrong sign ~30 times more again
    assert float(right) < 1e-4 and 5 * float(right) < float(euler) < float(wrong) / 10, (right, euler, wrong)


class PointMass(nnx.Module):
    """The exact consistency function of data at one point c: the flow keeps z fixed, so
    Phi(x) = a(eps) [c + (nu_eps / nu(t)) (x / a(t) - c)]."""

    eps = EPS
    c = 0.7

    def __call__(self, x, t):
        nu, nu_eps = ode_sampling.noise_level(VP, t), ode_sampling.noise_level(VP, EPS)
        a = sdes.batch_broadcast(VP.mean_coefficient(t), x)
        return VP.mean_coefficient(EPS) * (self.c + sdes.batch_broadcast(nu_eps / nu, x) * (x / a - self.c))


def test_consistency_training_pairs_share_the_noise():
    x0 = jnp.full((512, 2), PointMass.c)
    loss = consistency.consistency_training(VP, n_steps=10)(PointMass(), x0, jax.random.key(6))
    assert float(loss) < 1e-8
    # known-wrong: the two points of a pair with independent noises
    k = jax.random.split(jax.random.key(7), 3)
    grid = consistency.time_grid(VP, 10)
    n = jax.random.randint(k[0], (512,), 0, 10)
    t_hi, t_lo = grid[n + 1], grid[n]
    pert = [VP.perturb(kk, x0, tt)[0] for kk, tt in ((k[1], t_hi), (k[2], t_lo))]
    wrong = jnp.mean(jnp.sum((PointMass()(pert[0], t_hi) - PointMass()(pert[1], t_lo)) ** 2, axis=1))
    assert float(wrong) > 1e-4


def test_the_target_is_under_a_stop_gradient():
    m = small_model(2)
    x0 = S * jax.random.normal(jax.random.key(8), (256, 2))
    key = jax.random.key(9)
    loss = consistency.distillation(VP, gaussian_score, n_steps=10)
    g = nnx.grad(lambda m: loss(m, x0, key))(m)
    frozen = nnx.clone(m)
    g_frozen = nnx.grad(lambda m: loss(m, x0, key, frozen))(m)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_frozen)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    # known-wrong: the target differentiated too (no stop-gradient) changes the gradient
    def no_stop(m):
        grid = consistency.time_grid(VP, 10)
        k_n, k_z = jax.random.split(key)
        n = jax.random.randint(k_n, (256,), 0, 10)
        t_hi, t_lo = grid[n + 1], grid[n]
        z = jax.random.normal(k_z, x0.shape)
        x_hi = VP.mean_coefficient(t_hi)[:, None] * x0 + VP.kernel_std(t_hi)[:, None] * z
        x_lo = consistency.teacher_step(VP, gaussian_score, x_hi, t_hi, t_lo)
        return jnp.mean(jnp.sum((m(x_hi, t_hi) - m(x_lo, t_lo)) ** 2, axis=1))

    np.testing.assert_allclose(no_stop(m), loss(m, x0, key), rtol=1e-5)  # the same value ...
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(nnx.grad(no_stop)(m))))
    assert diff > 1e-4  # ... another gradient


def test_fit_with_target_decay_zero_is_training_fit():
    data = lambda key, n: S * jax.random.normal(key, (n, 2))  # noqa: E731
    loss = consistency.consistency_training(VP, n_steps=10)
    kw = dict(steps=30, batch_size=64, key=jax.random.key(10), learning_rate=1e-3, warmup_steps=5)
    a, ha = consistency.fit_with_target(small_model(3), loss, data, target_decay=0.0, **kw)
    b, hb = training.fit(small_model(3), loss, data, progress=False, steps_per_call=30, **kw)
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=2e-4, atol=1e-6)
    tx = training.make_optimizer(1e-3, warmup_steps=5)  # the default, passed explicitly
    _, hd = consistency.fit_with_target(small_model(3), loss, data, target_decay=0.0, optimizer=tx, **kw)
    np.testing.assert_allclose(hd["loss"], ha["loss"], rtol=1e-6)
    _, hc = consistency.fit_with_target(small_model(3), loss, data, target_decay=0.9, **kw)
    assert np.abs(hc["loss"][1:] - ha["loss"][1:]).max() > 1e-6  # the EMA target is another target
    with pytest.raises(ValueError, match="target_decay"):
        consistency.fit_with_target(small_model(3), loss, data, target_decay=1.0, **kw)


def test_the_multistep_sampler_with_the_exact_map_samples_the_data():
    for times in ((1.0,), (1.0, 0.3), (1.0, 0.5, 0.2, 0.05)):
        x, nfe = consistency.sample(Exact(), VP, jax.random.key(11), (20_000, 1), times)
        assert nfe == len(times) and x.shape == (20_000, 1)
        want = float(VP.mean_coefficient(EPS) ** 2 * S**2 + VP.kernel_std(EPS) ** 2)
        # sample variance of 2e4 normal draws: relative SE sqrt(2 / 2e4) = 1 %
        assert abs(float(jnp.var(x)) / want - 1) < 0.05


def test_errors_by_band():
    err = np.array([1.0, 3.0, 2.0, 2.0, 10.0])
    t = np.array([0.1, 0.2, 0.6, 0.7, 0.95])
    mean, se = consistency.errors_by_band(err[:4], t[:4], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(se, [np.sqrt(2) / np.sqrt(2), 0.0])
    with pytest.raises(ValueError, match="edges"):
        consistency.errors_by_band(err, t, [0.0, 0.9, 1.0])


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="sigma_data"):
        consistency.ConsistencyModel(2, VP, sigma_data=0.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="eps"):
        consistency.ConsistencyModel(2, VP, sigma_data=1.0, eps=0.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="teacher"):
        consistency.distillation(VP, gaussian_score, teacher="rk4")
    with pytest.raises(ValueError, match="method"):
        consistency.teacher_step(VP, gaussian_score, jnp.ones((2, 1)), 0.5, 0.4, "rk4")
    with pytest.raises(TypeError, match="n_steps"):
        consistency.consistency_training(VP, n_steps=2.5)
    with pytest.raises(ValueError, match="^t:"):
        small_model()(jnp.ones((3, 2)), jnp.ones(4))
    with pytest.raises(ValueError, match="times"):
        consistency.sample(Exact(), VP, jax.random.key(0), (4, 1), (0.5, 0.2))
    with pytest.raises(ValueError, match="times"):
        consistency.sample(Exact(), VP, jax.random.key(0), (4, 1), (1.0, 0.3, 0.5))
