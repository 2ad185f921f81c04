"""companion.paths: coefficients against hand formulas and autodiff, the velocity integrator,
straightness, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import paths, sde

VP = sde.VP()
PATHS = [paths.Rectified(), paths.from_sde(VP), paths.from_sde(sde.VE()), paths.from_sde(sde.SubVP())]
IDS = ["rectified", "vp", "ve", "subvp"]


def test_rectified_coefficients():
    p = paths.Rectified()
    t = jnp.array([0.0, 0.25, 1.0])
    a, b, da, db = p.coefficients(t)
    np.testing.assert_allclose(a, [1.0, 0.75, 0.0])
    np.testing.assert_allclose(b, [0.0, 0.25, 1.0])
    np.testing.assert_allclose(da, [-1.0] * 3)
    np.testing.assert_allclose(db, [1.0] * 3)
    np.testing.assert_allclose(p.b_db(t), [0.0, 0.25, 1.0])


def test_vp_path_is_the_kernel_by_hand():
    t = np.array([0.1, 0.5, 0.9])
    B = 0.1 * t + 0.5 * t**2 * 19.9  # int_0^t beta, VP(0.1, 20)
    p = paths.from_sde(VP)
    np.testing.assert_allclose(p.a(jnp.asarray(t)), np.exp(-B / 2), rtol=1e-6)
    np.testing.assert_allclose(p.b(jnp.asarray(t)), np.sqrt(1 - np.exp(-B)), rtol=1e-6)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_derivatives_match_autodiff(path):
    t = jnp.array([0.05, 0.3, 0.6, 0.95])
    da = jax.vmap(jax.grad(lambda s: path.a(s)))(t)
    db = jax.vmap(jax.grad(lambda s: path.b(s)))(t)
    np.testing.assert_allclose(path.da(t), da, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(path.db(t), db, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(path.b_db(t), path.b(t) * db, rtol=2e-4, atol=1e-5)


def test_b_db_is_finite_at_zero_where_db_is_not():
    p = paths.from_sde(VP)
    assert np.isinf(p.db(0.0)) or p.db(0.0) > 1e6
    np.testing.assert_allclose(p.b_db(0.0), 0.1 / 2, rtol=1e-6)  # g(0)^2 / 2 = beta_min / 2


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_interpolate_and_conditional_velocity(path):
    x0 = jnp.array([[1.0, -2.0], [0.5, 0.0]])
    z = jnp.array([[0.3, 0.1], [-1.0, 2.0]])
    t = jnp.array([0.2, 0.7])
    xt = path.interpolate(x0, z, t)
    np.testing.assert_allclose(xt, path.a(t)[:, None] * x0 + path.b(t)[:, None] * z, rtol=1e-6)
    # d x_t / dt at fixed x0, z, by autodiff
    dx = jax.vmap(jax.jacfwd(lambda s, a, b: path.interpolate(a[None], b[None], s)[0]))(t, x0, z)
    np.testing.assert_allclose(path.conditional_velocity(x0, z, t), dx, rtol=2e-4, atol=1e-5)
    xs, zs = path.sample(jax.random.key(0), x0, t)
    np.testing.assert_allclose(xs, path.interpolate(x0, zs, t), rtol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), np.array([0.2, 2.0])])
def test_times_outside_the_unit_interval_raise(bad):
    with pytest.raises(ValueError, match="t"):
        paths.Rectified().coefficients(bad)


def test_from_sde_needs_an_sde():
    with pytest.raises(TypeError, match="sde"):
        paths.from_sde("VP")


# ------------------------------------------------------------------------------ integrate


def linear_field(c):
    return lambda x, t: c * x


@pytest.mark.parametrize("n", [1, 4, 10])
def test_euler_and_heun_take_their_textbook_steps(n):
    """dx/dt = c x from t = 1 to 0 with h = 1/n: Euler multiplies by (1 - c h) per step,
    Heun by 1 - c h + (c h)^2 / 2."""
    c, x = 0.7, jnp.array([[1.0, -2.0]])
    h = 1.0 / n
    got, nfe = paths.integrate(linear_field(c), x, method="euler", n_steps=n)
    np.testing.assert_allclose(got, x * (1 - c * h) ** n, rtol=1e-5)
    assert nfe == n
    got, nfe = paths.integrate(linear_field(c), x, method="heun", n_steps=n)
    np.testing.assert_allclose(got, x * (1 - c * h + (c * h) ** 2 / 2) ** n, rtol=1e-5)
    assert nfe == 2 * n


def test_tsit5_reaches_the_exact_solution_and_counts_evaluations():
    calls = []

    def field(x, t):
        calls.append(1)  # counted at trace time only; the NFE comes from diffrax
        return -0.7 * x * (1 + t[:, None])

    x = jnp.array([[1.0], [2.0]])
    got, nfe = paths.integrate(field, x, method="tsit5", rtol=1e-7, atol=1e-7)
    # x(0) = x(1) exp(0.7 * int_0^1 (1 + s) ds) = x(1) exp(1.05)
    np.testing.assert_allclose(got, x * np.exp(1.05), rtol=1e-5)
    assert nfe % 6 == 1 and nfe > 7


def test_saved_trajectory_and_straightness():
    x = jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
    const = lambda x, t: jnp.ones_like(x) * jnp.array([0.5, -1.0])
    xs, _ = paths.integrate(const, x, method="euler", n_steps=8, n_saved=5)
    assert xs.shape == (5, 3, 2)
    np.testing.assert_allclose(xs[0], x)
    np.testing.assert_allclose(xs[-1], x - jnp.array([0.5, -1.0]), rtol=1e-6)
    assert float(paths.straightness(const, xs)) < 1e-10  # straight lines at constant speed
    rot = lambda x, t: jnp.stack([-x[:, 1], x[:, 0]], axis=1)  # circular arcs
    xs, _ = paths.integrate(rot, x, method="tsit5", n_saved=65)
    # an arc of one radian: |v| = r, chord 2 r sin(1/2); S = 1 / (2 sin(1/2))^2 - 1
    np.testing.assert_allclose(paths.straightness(rot, xs), 1 / (2 * np.sin(0.5)) ** 2 - 1, rtol=1e-3)


def test_straightness_parts_split_direction_from_speed():
    x = jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
    rot = lambda x, t: jnp.stack([-x[:, 1], x[:, 0]], axis=1)  # circular arcs of one radian
    xs, _ = paths.integrate(rot, x, method="tsit5", n_saved=65)
    s_dir, s_speed = paths.straightness_parts(rot, xs)
    np.testing.assert_allclose(s_dir + s_speed, paths.straightness(rot, xs), rtol=1e-6)
    # the velocity turns from -1/2 to +1/2 radian about the chord c = 2 r sin(1/2):
    # S_dir = mean of r^2 sin^2 / c^2 = (1 - sin 1) / (8 sin^2(1/2))
    np.testing.assert_allclose(s_dir, (1 - np.sin(1.0)) / (8 * np.sin(0.5) ** 2), rtol=1e-3)
    # rays run at a varying speed, one of them turning back: no direction part at all
    ray = lambda x, t: (1.0 - 3.0 * t[:, None]) * x  # speed changes sign at t = 1/3
    xs, _ = paths.integrate(ray, x, method="tsit5", n_saved=65)
    s_dir, s_speed = paths.straightness_parts(ray, xs)
    assert float(s_dir) < 1e-10 and float(s_speed) > 0.1, (s_dir, s_speed)


def test_isotropic_gaussian_trajectories_are_rays_with_a_speed_part():
    """Data N(0, 4.25 I): every exact trajectory is a ray, S_dir = 0, and S is all speed
    (the numbers of chapter 8: 0.79 rectified, 0.84 VP, up to the 2000-draw MC error)."""
    from companion import toy

    iso = toy.GaussianMixture(means=[[0.0, 0.0]], covs=[4.25 * np.eye(2)], weights=[1.0])
    z = jax.random.normal(jax.random.key(0), (2000, 2))
    for path, want in [(paths.Rectified(), 0.79), (paths.from_sde(VP), 0.84)]:
        u = toy.exact_velocity(iso, path)
        xs, _ = paths.integrate(u, z, method="heun", n_steps=128, n_saved=65)
        s_dir, s_speed = paths.straightness_parts(u, xs)
        assert float(s_dir) < 1e-8, s_dir
        assert abs(float(s_speed) - want) < 0.03, (s_speed, want)


def test_to_rectified_maps_the_vp_flow_onto_the_rectified_flow():
    """The VP flow from z and the rectified flow from z / (a(1) + b(1)), started at
    tau(1), solved to matched times t and tau(t), give the same points x / (a + b)."""
    from companion import toy

    mix = toy.GaussianMixture(means=[[-1.5, 0.5], [1.0, -1.0]], covs=[[[0.3, 0.1], [0.1, 0.2]], 0.5 * np.eye(2)],
                              weights=[0.4, 0.6])
    vp_path, rect = paths.from_sde(VP), paths.Rectified()
    u_vp, u_rect = toy.exact_velocity(mix, vp_path), toy.exact_velocity(mix, rect)
    z = jax.random.normal(jax.random.key(1), (400, 2))
    y1, tau1 = paths.to_rectified(vp_path, z, 1.0)
    for t_end in (0.6, 0.2, 0.0):
        x_vp, _ = paths.integrate(u_vp, z, method="tsit5", rtol=1e-6, atol=1e-6, t1=t_end)
        y_vp, tau_end = paths.to_rectified(vp_path, x_vp, t_end)
        y_rect, _ = paths.integrate(u_rect, y1, method="tsit5", rtol=1e-6, atol=1e-6, t0=float(tau1),
                                    t1=float(tau_end))
        # float32 solutions of two ODEs to rtol 1e-6: agreement to a few 1e-4 in the worst point
        np.testing.assert_allclose(y_rect, y_vp, atol=2e-3)
        assert float(jnp.mean(jnp.abs(y_rect - y_vp))) < 1e-4
    # the scale a + b of the VP path lies in [1, sqrt 2] (a^2 + b^2 = 1), tau runs from 0 to ~1
    t = jnp.linspace(0.0, 1.0, 101)
    y, tau = paths.to_rectified(vp_path, jnp.ones((101, 2)), t)
    scale = 1.0 / y[:, 0]
    assert float(scale.min()) >= 1 - 1e-6 and float(scale.max()) <= np.sqrt(2) + 1e-6
    assert float(tau[0]) == 0.0 and np.all(np.diff(np.asarray(tau)) > 0) and 0.99 < float(tau[-1]) < 1
    # the rectified path is its own rectified coordinates
    y, tau = paths.to_rectified(rect, jnp.ones((101, 2)), t)
    np.testing.assert_allclose(tau, t, atol=1e-7)
    np.testing.assert_allclose(y, 1.0, rtol=1e-6)
    with pytest.raises(TypeError, match="path"):
        paths.to_rectified(VP, z, 0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="rk4"), "method"),
        (dict(n_steps=0), "n_steps"),
        (dict(rtol=-1.0), "rtol"),
        (dict(t0=1.5), "t0"),
        (dict(t0=0.5, t1=0.5), "t0"),
    ],
)
def test_integrate_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paths.integrate(linear_field(1.0), jnp.ones((2, 2)), **kwargs)
    with pytest.raises(TypeError, match="velocity"):
        paths.integrate("field", jnp.ones((2, 2)))


def test_one_compilation_serves_every_number_of_steps():
    traces = []

    def field(x, t):
        traces.append(1)  # runs once per trace, not per step
        return -x

    x = jnp.ones((3, 2))
    paths.integrate(field, x, method="euler", n_steps=3)
    first = len(traces)  # diffrax traces the field a few times while compiling
    assert first >= 1
    for n in (5, 17):
        paths.integrate(field, x, method="euler", n_steps=n)
    assert len(traces) == first  # no new trace: no new compilation


@pytest.mark.parametrize("name", ["x0", "z"])
def test_non_finite_data_raise_value_errors_naming_the_argument(name):
    good = jnp.ones((2, 2))
    bad = good.at[0, 1].set(jnp.nan)
    args = {"x0": good, "z": good, name: bad}
    with pytest.raises(ValueError, match=name):
        paths.Rectified().interpolate(args["x0"], args["z"], 0.5)
    with pytest.raises(ValueError, match="x"):
        paths.integrate(lambda x, t: x, bad)
