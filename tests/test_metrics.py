"""companion.metrics: sliced Wasserstein and MMD behave like distances; the documented
two-sample floors are what a measurement gives; kid's standard error is calibrated; the
mixture statistics have the power and the level their docstrings state."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion import metrics, sde, toy

MIX = toy.four_gaussians_2d()
KEY = jax.random.key(0)


def gaussian(seed, n, d=2, shift=0.0, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, d)) * scale + shift, jnp.float32)


def test_identical_samples_are_at_distance_zero():
    a = gaussian(0, 300)
    assert metrics.sliced_wasserstein(KEY, a, a) == 0.0
    assert metrics.sliced_wasserstein(KEY, a, a[::-1]) == pytest.approx(0.0, abs=1e-12)  # order is irrelevant


@pytest.mark.parametrize("p, factor", [(1, 2 / math.pi), (2, 1 / math.sqrt(2))])
def test_a_translation_by_c(p, factor):
    """Shifting a sample by c moves every projection by theta . c: SW_1 = |c| E|cos| = 2|c|/pi
    and SW_2 = |c| sqrt(E cos^2) = |c|/sqrt(2) in 2-D, up to the Monte-Carlo error of 4096
    random directions (~1/sqrt(4096) = 1.6% relative; 5% allowed)."""
    a = gaussian(1, 200)
    c = jnp.array([3.0, -4.0])
    d = metrics.sliced_wasserstein(KEY, a, a + c, n_projections=4096, p=p)
    assert d == pytest.approx(5.0 * factor, rel=0.05)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 60), p=st.sampled_from([1, 2]))
def test_symmetric_non_negative_and_triangle_inequality(seed, n, p):
    """Each 1-D W_p is a metric and the average over fixed directions is an L^p norm, so the
    sliced distance is one too (same directions: same key)."""
    a, b, c = gaussian(seed, n), gaussian(seed + 1, n, shift=1.0), gaussian(seed + 2, n, scale=2.0)
    ab, ba = metrics.sliced_wasserstein(KEY, a, b, p=p), metrics.sliced_wasserstein(KEY, b, a, p=p)
    bc, ac = metrics.sliced_wasserstein(KEY, b, c, p=p), metrics.sliced_wasserstein(KEY, a, c, p=p)
    assert ab >= 0 and ab == pytest.approx(ba, rel=1e-12)
    assert ac <= ab + bc + 1e-9


def test_unequal_sizes_by_quantile_interpolation():
    a = gaussian(2, 400)
    doubled = jnp.concatenate([a, a])  # the same empirical distribution, twice the size
    assert metrics.sliced_wasserstein(KEY, a, doubled) < 0.02
    b = gaussian(3, 1000, shift=2.0)
    # 1-D check: quantile matching of a shifted copy gives the shift
    d = metrics.sliced_wasserstein(KEY, a[:, :1], a[:200, :1] + 1.0)
    assert d == pytest.approx(1.0, abs=0.15)
    assert metrics.sliced_wasserstein(KEY, a, b) > metrics.sliced_wasserstein(KEY, a, gaussian(4, 1000))


def test_documented_sliced_wasserstein_floor():
    """The module docstring's floor at n = 1000, 0.098 +- 0.031 (50 pairs), re-measured with
    20 pairs: the mean of 20 agrees within 3 standard errors (3 * 0.031 / sqrt(20) = 0.021)."""
    floor = metrics.two_sample_floor(jax.random.key(5), MIX.sample, 1000, n_repeats=20)
    assert abs(floor.mean - 0.098) < 0.021, floor
    assert 0.015 < floor.std < 0.05, floor


def test_mmd_is_unbiased_and_detects_a_difference():
    """Same distribution: 0 on average (documented spread 0.0006 at n = 1000, 5 standard
    errors of a mean of 6 allowed). A shifted copy: far above that spread."""
    floor = metrics.two_sample_floor(jax.random.key(6), MIX.sample, 1000, metric="mmd", n_repeats=6)
    assert abs(floor.mean) < 5 * 0.0006 / math.sqrt(6), floor
    assert floor.std < 0.0015
    a, b = MIX.sample(jax.random.key(1), 1000), MIX.sample(jax.random.key(2), 1000) + 0.5
    assert float(metrics.mmd(a, b)) > 20 * 0.0006


def test_mmd_matches_a_direct_computation():
    a, b = gaussian(7, 30, d=3), gaussian(8, 20, d=3, shift=0.3)
    h = 1.3
    k = lambda x, y: np.exp(-np.sum((np.asarray(x, np.float64)[:, None] - np.asarray(y, np.float64)[None]) ** 2, -1)
                            / (2 * h**2))
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    want = ((kaa.sum() - 30) / (30 * 29) + (kbb.sum() - 20) / (20 * 19) - 2 * kab.mean())
    assert float(metrics.mmd(a, b, bandwidth=h)) == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert float(metrics.mmd(a, b)) == pytest.approx(float(metrics.mmd(b, a)), rel=1e-5)


def test_median_bandwidth():
    a = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    b = jnp.array([[0.0, 2.0], [0.0, 3.0]])
    # distances between the 4 pooled points: 1, 2, 3, sqrt(5), sqrt(10), 1 -> median (2 + sqrt 5)/2
    assert float(metrics.median_bandwidth(a, b)) == pytest.approx((2 + math.sqrt(5)) / 2, rel=1e-5)


def test_image_shaped_samples_are_flattened():
    a = jax.random.normal(jax.random.key(1), (50, 1, 3, 3))
    b = jax.random.normal(jax.random.key(2), (40, 1, 3, 3))
    assert metrics.sliced_wasserstein(KEY, a, b) == pytest.approx(
        metrics.sliced_wasserstein(KEY, a.reshape(50, -1), b.reshape(40, -1)), rel=1e-9)
    assert np.isfinite(float(metrics.mmd(a, b)))


def test_float64_inputs():
    with jax.enable_x64(True):
        a = jnp.asarray(np.random.default_rng(0).normal(size=(100, 2)))
        assert a.dtype == jnp.float64
        assert np.isfinite(metrics.sliced_wasserstein(KEY, a, a + 1.0))
        assert float(metrics.mmd(a, a + 1.0)) > 0


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda: metrics.sliced_wasserstein(KEY, jnp.ones(5), jnp.ones((5, 1))), "a"),
        (lambda: metrics.sliced_wasserstein(KEY, jnp.ones((5, 2)), jnp.ones((5, 3))), "b"),
        (lambda: metrics.sliced_wasserstein(KEY, jnp.ones((1, 2)), jnp.ones((5, 2))), "a"),
        (lambda: metrics.sliced_wasserstein(KEY, jnp.ones((5, 2)), jnp.full((5, 2), jnp.nan)), "b"),
        (lambda: metrics.sliced_wasserstein(KEY, jnp.ones((5, 2)), jnp.ones((5, 2)), n_projections=0), "n_projections"),
        (lambda: metrics.sliced_wasserstein(KEY, jnp.ones((5, 2)), jnp.ones((5, 2)), p=3), "p"),
        (lambda: metrics.mmd(jnp.ones((5, 2)), jnp.ones((5, 2)), bandwidth=0.0), "bandwidth"),
        (lambda: metrics.two_sample_floor(KEY, MIX.sample, 1), "n"),
        (lambda: metrics.two_sample_floor(KEY, MIX.sample, 10, metric="kl"), "metric"),
        (lambda: metrics.two_sample_floor(KEY, MIX.sample, 10, n_repeats=1), "n_repeats"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def test_integer_samples_raise_a_type_error():
    with pytest.raises(TypeError, match="a"):
        metrics.sliced_wasserstein(KEY, np.ones((5, 2), np.int32), np.ones((5, 2)))


# ------------------------------------------------------------- mode statistics with power

MIXTURES = {
    "1d": toy.two_gaussians_1d(),
    "2d": MIX,
    # unequal weights, full and anisotropic covariances, overlapping modes
    "3d": toy.GaussianMixture(
        [[0.0, 0.0, 0.0], [3.0, 0.0, 1.0], [0.0, -3.0, 2.0]],
        [np.eye(3), [[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 0.5]], np.diag([0.3, 2.0, 1.0])],
        [0.5, 0.3, 0.2],
    ),
}


def z_of_tested(report, d):
    iu = np.triu_indices(d)
    z = report.z
    return np.concatenate([z["weight"].ravel(), z["mean"].ravel(), z["cov"][:, iu[0], iu[1]].ravel()])


@pytest.mark.parametrize("name", sorted(MIXTURES))
def test_exact_samples_give_calibrated_z_and_pass_at_the_stated_rate(name):
    """Over 100 seeds of exact samples (n = 2000), each statistic's z is close to N(0, 1):
    its mean within 4 / sqrt(100) = 0.4 of 0 (4 standard errors of a mean of 100 unit
    normals; a wrong mean or a biased estimator shifts it), the pooled std within 10 % of 1
    (a standard error off by 10 % moves it by that much; the pooled std of ~2000 values has
    a sampling error of ~2 %, more with correlated statistics). At level 0.1 the rejection
    rate is at most 0.1 + 3 sqrt(0.1 * 0.9 / 100) = 0.19 (Bonferroni is conservative)."""
    mix = MIXTURES[name]
    zs, rejected = [], 0
    for seed in range(100):
        report = metrics.mixture_report(mix.sample(jax.random.key(seed), 2000), mix, level=0.1)
        zs.append(z_of_tested(report, mix.dim))
        rejected += not report.passed
    zs = np.asarray(zs)
    assert np.all(np.abs(zs.mean(0)) < 0.4), zs.mean(0)
    assert 0.9 < zs.std() < 1.1
    assert rejected / 100 <= 0.19


def test_the_statistics_recover_the_parameters():
    """n = 10 000 exact samples: each estimate within 5 of its own standard errors."""
    mix = MIXTURES["3d"]
    s = metrics.mode_statistics(mix.sample(jax.random.key(7), 10_000), mix)
    assert s.n == s.n_finite == 10_000
    assert np.all(np.abs(s.weight - np.asarray(mix.weights)) < 5 * s.weight_se)
    assert np.all(np.abs(s.mean - np.asarray(mix.means)) < 5 * s.mean_se)
    assert np.all(np.abs(s.cov - np.asarray(mix.covs)) < 5 * s.cov_se)
    var = np.diagonal(np.asarray(mix.covs), axis1=1, axis2=2)
    corr = np.asarray(mix.covs) / np.sqrt(var[:, :, None] * var[:, None, :])
    assert np.all(np.abs(s.corr - corr) <= 5 * s.corr_se)  # = on the diagonal: 1, SE 0
    want_spread = np.sqrt(np.trace(np.asarray(mix.covs), axis1=1, axis2=2) / 3)
    assert np.all(np.abs(s.spread - want_spread) < 5 * s.spread_se)


VP_SDE = sde.VP()
SLIGHTLY_WRONG = {
    "components 10 % too wide": toy.GaussianMixture(MIX.means, 1.21 * MIX.covs, MIX.weights),
    "means scaled by 1.03": toy.GaussianMixture(1.03 * MIX.means, MIX.covs, MIX.weights),
    "weights off by 0.03": toy.GaussianMixture(MIX.means, MIX.covs, [0.28, 0.22, 0.25, 0.25]),
    "blurred marginal p_0.1 (VP)": MIX.perturbed(VP_SDE, 0.1),
}


@pytest.mark.parametrize("name", sorted(SLIGHTLY_WRONG))
def test_slightly_wrong_samples_are_rejected(name):
    """The power the docstring states: at n = 10 000 and level 1e-3 each slightly wrong
    mixture is rejected in at least 19 of 20 seeds (95 %); measured: all 20, max |z| >= 6."""
    wrong = SLIGHTLY_WRONG[name]
    rejected = sum(
        not metrics.matches_mixture(wrong.sample(jax.random.key(seed), 10_000), MIX) for seed in range(20)
    )
    assert rejected >= 19


def test_report_names_the_worst_statistic_and_reads():
    wrong = SLIGHTLY_WRONG["components 10 % too wide"]
    report = metrics.mixture_report(wrong.sample(jax.random.key(3), 10_000), MIX)
    assert not report.passed and report.worst.startswith("cov of mode")
    assert report.n_tests == 4 + 8 + 12
    assert report.threshold == pytest.approx(4.10, abs=0.01)  # Phi^-1(1 - 1e-3 / 48)
    assert "does NOT match" in str(report)


def test_non_finite_samples_never_pass():
    x = np.array(MIX.sample(jax.random.key(0), 10_000))
    x[:3, 0] = np.nan
    x[3, 1] = np.inf
    report = metrics.mixture_report(x, MIX)
    assert not report.passed and not metrics.matches_mixture(x, MIX)
    assert report.stats.n_finite == 10_000 - 4
    assert "4 of 10000 samples are not finite" in str(report)


def test_a_missing_mode_fails_without_nan_warnings():
    x = MIX.sample(jax.random.key(0), 4000)
    x = x[x[:, 0] < 0]  # two of the four modes only
    assert not metrics.matches_mixture(x, MIX)


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((1000, 3)), "x: expected shape"),
        (np.zeros(1000), "x: expected shape"),
        (np.zeros((10, 2)), "x: at least"),
    ],
)
def test_bad_samples_raise(x, match):
    with pytest.raises(ValueError, match=match):
        metrics.mode_statistics(x, MIX)


@pytest.mark.parametrize("level", [0, 1, -0.1, "0.1"])
def test_bad_level_raises(level):
    with pytest.raises(ValueError, match="level"):
        metrics.mixture_report(MIX.sample(KEY, 1000), MIX, level=level)


# ------------------------------------------------------------------------------ kid


def test_kid_matches_a_direct_computation():
    a, b = gaussian(20, 30, d=5), gaussian(21, 20, d=5, shift=0.3)
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    k = lambda u, v: (u @ v.T / 5 + 1) ** 3
    kaa, kbb, kab = k(x, x), k(y, y), k(x, y)
    want = ((kaa.sum() - np.trace(kaa)) / (30 * 29) + (kbb.sum() - np.trace(kbb)) / (20 * 19)
            - 2 * kab.mean())
    estimate, se = metrics.kid(a, b)
    assert estimate == pytest.approx(want, rel=1e-10)
    assert se > 0
    assert metrics.kid(b, a).estimate == pytest.approx(estimate, rel=1e-10)


@pytest.mark.parametrize("shift, n, m", [(0.0, 100, 100), (0.0, 60, 150), (0.3, 100, 80)])
def test_kid_standard_error_is_calibrated(shift, n, m):
    """300 independent draws of two Gaussian samples in 8 dimensions (the first equal in
    law, zero in expectation; the second shifted by 0.3 in every coordinate). The spread of
    the 300 estimates agrees with the reported standard error (root mean square over the
    draws) within 20 %: the sample std of 300 draws is uncertain by about 4 % for a
    Gaussian and more for the skewed null distribution of an MMD (a mistake in the
    variance formula, e.g. only its first-order part or the jackknife, is off by 40 % or
    more under the null). Measured over 1000 draws: 0.0376 vs 0.0388, 0.0467 vs 0.0450,
    0.132 vs 0.133. The mean of the null estimates is 0 within 4 standard errors."""
    rng = np.random.default_rng(int(shift * 10) + n + m)
    res = np.array([metrics.kid(rng.normal(size=(n, 8)), rng.normal(size=(m, 8)) + shift)
                    for _ in range(300)])
    spread, se = res[:, 0].std(ddof=1), np.sqrt(np.mean(res[:, 1] ** 2))
    assert 0.8 < spread / se < 1.2, (spread, se)
    if shift == 0.0:
        assert abs(res[:, 0].mean()) < 4 * spread / np.sqrt(300)


def test_kid_detects_a_mean_shift_and_accepts_the_same_law():
    """n = 1000 in 8 dimensions: a shift of 0.2 in every coordinate (expected estimate
    about 0.15, standard error about 0.025) is more than 5 standard errors above 0; a second
    sample of the same law is within 4 of them."""
    a, b, c = gaussian(30, 1000, d=8), gaussian(31, 1000, d=8), gaussian(32, 1000, d=8, shift=0.2)
    same, shifted = metrics.kid(a, b), metrics.kid(a, c)
    assert abs(same.estimate) < 4 * same.standard_error
    assert shifted.estimate > 5 * shifted.standard_error, shifted


@pytest.mark.parametrize(
    "a, b, arg",
    [
        (np.ones((10, 3)), np.ones((10, 4)), "features_b"),
        (np.ones((3, 3)), np.ones((10, 3)), "features_a"),
        (np.ones((10, 3)), np.ones((1, 3)), "features_b"),
        (np.ones(10), np.ones((10, 1)), "features_a"),
        (np.ones((10, 3)), np.full((10, 3), np.nan), "features_b"),
    ],
)
def test_kid_bad_input_raises_naming_the_argument(a, b, arg):
    with pytest.raises(ValueError, match=arg):
        metrics.kid(a, b)


def test_the_band_is_computed_from_the_number_of_statistics():
    """3.76 for the 1-D mixture's 6 statistics and 4.10 for the 2-D mixture's 24, at level
    1e-3; the band a report uses is the one its statistics expose."""
    for mix, m, band in ((toy.two_gaussians_1d(), 6, 3.76), (MIX, 24, 4.10)):
        x = mix.sample(jax.random.key(0), 1000)
        s, report = metrics.mode_statistics(x, mix), metrics.mixture_report(x, mix)
        assert s.n_tests == report.n_tests == m
        assert s.band() == report.threshold == pytest.approx(band, abs=0.005)
        assert metrics.bonferroni_band(m, 1e-3) == s.band()
    assert metrics.bonferroni_band(1, 0.05) == pytest.approx(1.95996, abs=1e-5)
    assert metrics.bonferroni_band(1) == pytest.approx(3.29, abs=0.005)  # "How we measure"
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="n_tests"):
            metrics.bonferroni_band(bad)


# ------------------------------------------- the level of matches_mixture where the book works


def _tested_z(x, mix):
    """The zeta that mixture_report tests, for one sample, in JAX (so that many seeds can be
    vmapped): the formulas of mode_statistics, float32. Also the variances' zeta as they
    were before issue 23 (studentised on the variance scale, (Sigma_hat - Sigma) / SE), to
    compare the two on the same samples."""
    n, d = x.shape
    r = mix.responsibilities(x)
    w, w_se = r.mean(0), r.std(0, ddof=1) / math.sqrt(n)
    v1, v2 = r.sum(0), (r**2).sum(0)
    mean = (r.T @ x) / v1[:, None]
    diff = x[None] - mean[:, None]
    outer = diff[..., :, None] * diff[..., None, :]
    cov = jnp.einsum("nk,knij->kij", r, outer) / (v1 - v2 / v1)[:, None, None]
    rk = r.T[..., None]
    mean_se = (rk * diff / w[:, None, None]).std(1, ddof=1) / math.sqrt(n)
    infl = rk[..., None] * (outer - cov[:, None]) / w[:, None, None, None]  # (K, n, d, d)
    cov_se = infl.std(1, ddof=1) / math.sqrt(n)
    var, var_se = jnp.diagonal(cov, axis1=1, axis2=2), jnp.diagonal(cov_se, axis1=1, axis2=2)
    true_var = jnp.diagonal(mix.covs, axis1=1, axis2=2)
    z_var = (jnp.sqrt(var / true_var) - 1) / (0.5 * var_se / var)  # the standard deviation's zeta
    i, j = np.triu_indices(d, 1)
    rho = cov[:, i, j] / jnp.sqrt(var[:, i] * var[:, j])
    infl_rho = (infl[..., i, j] / jnp.sqrt(var[:, i] * var[:, j])[:, None]
                - 0.5 * rho[:, None] * (infl[..., i, i] / var[:, None, i] + infl[..., j, j] / var[:, None, j]))
    rho_se = infl_rho.std(1, ddof=1) / math.sqrt(n)
    true_rho = mix.covs[:, i, j] / jnp.sqrt(true_var[:, i] * true_var[:, j])
    z_corr = (jnp.arctanh(rho) - jnp.arctanh(true_rho)) / (rho_se / (1 - rho**2))  # Fisher's
    z_cov = jnp.zeros((len(var), d, d)).at[:, i, j].set(z_corr).at[:, np.arange(d), np.arange(d)].set(z_var)
    iu = np.triu_indices(d)
    tested = jnp.concatenate([(w - mix.weights) / w_se, ((mean - mix.means) / mean_se).ravel(),
                              z_cov[:, iu[0], iu[1]].ravel()])
    return tested, ((var - true_var) / var_se).ravel()


def exact_sample_z(mix, n, seeds, key, batch=100):
    """(seeds, m) zeta of exact samples of size n, the variance statistics' columns, and
    (seeds, K d) the variances' zeta before issue 23."""
    z_of = jax.jit(jax.vmap(lambda k: _tested_z(mix.sample(k, n), mix)))
    keys = jax.random.split(key, seeds)
    z, z_old = (np.concatenate(part) for part in zip(*(
        jax.tree.map(np.asarray, z_of(keys[i:i + batch])) for i in range(0, seeds, batch))))
    K, d = mix.n_components, mix.dim
    iu = np.triu_indices(d)
    variance = K + K * d + np.flatnonzero(np.tile(iu[0] == iu[1], K))
    return z, variance, z_old


def test_the_vectorised_z_are_mixture_reports():
    for mix in (MIX, toy.two_gaussians_1d(), MIXTURES["3d"]):
        z, _, _ = exact_sample_z(mix, 2000, 2, jax.random.key(11), batch=2)
        for i, k in enumerate(jax.random.split(jax.random.key(11), 2)):
            report = metrics.mixture_report(mix.sample(k, 2000), mix)
            np.testing.assert_allclose(z[i], z_of_tested(report, mix.dim), atol=0.02)


def skewness(v):
    """The sample skewness of each column of v, averaged over the columns."""
    v = v - v.mean(0)
    return float(np.mean(np.mean(v**3, 0) / np.mean(v**2, 0) ** 1.5))


def test_level_where_the_book_works_quick():
    """n = 10 000 exact samples of the 2-D mixture, 1500 seeds (about 10 s of CPU). At level
    0.1 the rejection rate over nominal is within 0.75 and 1.25 (measured over 120 000
    seeds: 0.95 +- 0.01; here 0.93 +- 0.08). And the cause of the old excess at small
    levels, and its cure, are visible already here. Studentised on the variance scale,
    (Sigma_hat - Sigma) / SE is skewed to the left (a small sample variance has a small
    estimated SE too): skewness -0.11 over 120 000 seeds (here -0.13), and beyond this
    band 33 values below against 11 above. On the standard deviation's scale, the zeta
    mixture_report tests, the skewness is +0.014 (here -0.004) and the tails balance
    (20 against 21). The skewness averaged over 8 columns of 1500 seeds has a sampling
    error of about sqrt(6 / 1500 / 8) = 0.022, so |skewness| < 0.07 is 3 of them; the
    paired difference of the two (same samples) is more precise than either."""
    z, variance, z_old = exact_sample_z(MIX, 10_000, 1500, jax.random.key(12))
    band = metrics.bonferroni_band(24, 0.1)
    rate = np.mean(np.max(np.abs(z), 1) > band)
    assert 0.75 < rate / 0.1 < 1.25, rate
    v = z[:, variance]
    assert abs(skewness(v)) < 0.07, skewness(v)
    assert skewness(z_old) < skewness(v) - 0.07, (skewness(z_old), skewness(v))
    below, above = np.sum(v < -band), np.sum(v > band)
    assert abs(below - above) < 3 * math.sqrt(below + above), (below, above)
    assert np.sum(z_old < -band) > np.sum(z_old > band) + 3 * math.sqrt(np.sum(np.abs(z_old) > band))


LEVEL_SEEDS = int(__import__("os").environ.get("COMPANION_CALIBRATE_SEEDS", "0"))
# rejection rate over level of exact samples at n = 10 000, as documented (mixture_report)
DOCUMENTED_LEVEL = {"1d": {1e-1: 0.79, 1e-2: 0.81, 1e-3: 0.72}, "2d": {1e-1: 0.95, 1e-2: 0.99, 1e-3: 1.02}}


@pytest.mark.skipif(not LEVEL_SEEDS, reason="set COMPANION_CALIBRATE_SEEDS (e.g. 40000: minutes of CPU)")
@pytest.mark.parametrize("name", ["1d", "2d"])
def test_level_where_the_book_works(name):
    """The level that matches_mixture's docstring and "How we measure" state, re-measured:
    exact samples, n = 10 000, COMPANION_CALIBRATE_SEEDS seeds; prints rejection rate over
    nominal at levels 0.1, 0.01 and 1e-3 with its standard error, and checks that each is
    within 3 standard errors of the documented value."""
    mix = MIXTURES[name]
    documented = DOCUMENTED_LEVEL[name]
    z, variance, z_old = exact_sample_z(mix, 10_000, LEVEL_SEEDS, jax.random.key(13))
    max_z = np.max(np.abs(z), 1)
    band, v = metrics.bonferroni_band(z.shape[1], 1e-3), z[:, variance]
    below, above = int(np.sum(v < -band)), int(np.sum(v > band))
    print(f"{name}: variance zeta beyond the 1e-3 band: {below} below, {above} above "
          f"(before issue 23: {int(np.sum(z_old < -band))} below, {int(np.sum(z_old > band))} above)")
    assert abs(below - above) <= 3 * math.sqrt(max(below + above, 1)) + 1
    for level, want in documented.items():
        rate = np.mean(max_z > metrics.bonferroni_band(z.shape[1], level))
        se = math.sqrt(rate * (1 - rate) / LEVEL_SEEDS)
        print(f"{name} level {level:g}: rejected {rate / level:.3f} +- {se / level:.3f} x nominal")
        assert abs(rate / level - want) < 3 * max(se, math.sqrt(level * (1 - level) / LEVEL_SEEDS)) / level


def test_kid_standard_error_never_collapses_to_zero_for_small_samples():
    """64 against 296 rows in 256 dimensions (chapter 7's sizes): a first-order part of the
    variance can be estimated below 0; the SE must stay positive (it is divided by)."""
    rng = np.random.default_rng(0)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        est, se = metrics.kid(rng.normal(size=(64, 256)), rng.normal(size=(296, 256)))
        assert se > 0 and abs(est) < 5 * se
