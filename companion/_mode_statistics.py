"""Statistics with power for samples of a known Gaussian mixture (the mixture half of
:mod:`companion.metrics`, which re-exports every public name here; import them from there).

A distance between samples compares them with *other samples*, so it inherits their
noise; for a Gaussian mixture we know the answer exactly and can compare with it.
"""

from __future__ import annotations

import math
import numbers
from statistics import NormalDist
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from companion.toy import GaussianMixture

__all__ = ["MixtureReport", "ModeStatistics", "bonferroni_band", "matches_mixture", "mixture_report", "mode_statistics"]


class ModeStatistics(NamedTuple):
    """Per-component statistics of a sample, soft-assigned by the exact responsibilities.

    ``weight``/``weight_se`` (K,), ``mean``/``mean_se`` (K, d), ``cov``/``cov_se``
    (K, d, d), ``corr``/``corr_se`` (K, d, d) the correlations
    rho_ij = Sigma_ij / sqrt(Sigma_ii Sigma_jj) (1 on the diagonal, with SE 0),
    ``spread``/``spread_se`` (K,) with spread_k = sqrt(tr Sigma_k / d), the per-mode rms
    width; ``n`` rows given, ``n_finite`` of them finite (the statistics use those).
    Standard errors come from the sample itself (delta method).
    """

    n: int
    n_finite: int
    weight: np.ndarray
    weight_se: np.ndarray
    mean: np.ndarray
    mean_se: np.ndarray
    cov: np.ndarray
    cov_se: np.ndarray
    spread: np.ndarray
    spread_se: np.ndarray
    corr: np.ndarray
    corr_se: np.ndarray

    @property
    def n_tests(self) -> int:
        """How many statistics :func:`mixture_report` tests: K weights, K d means and the
        K d (d + 1) / 2 distinct covariance entries (6 for the 1-D mixture of two modes, 24
        for the 2-D one of four)."""
        K, d = self.mean.shape
        return K + K * d + K * d * (d + 1) // 2

    def band(self, level: float = 1e-3) -> float:
        """The Bonferroni band of :func:`mixture_report` at ``level``: every ``|z|`` must be
        below Phi^{-1}(1 - level / (2 m)), m = :attr:`n_tests` (3.76 for m = 6, 4.10 for
        m = 24 at level 1e-3)."""
        return bonferroni_band(self.n_tests, level)


def bonferroni_band(n_tests: int, level: float = 1e-3) -> float:
    """Phi^{-1}(1 - level / (2 n_tests)): the bound on ``n_tests`` two-sided ``|z|`` such
    that, for exactly standard normal z, any one exceeds it with probability at most
    ``level`` (Bonferroni: the union bound, conservative for correlated statistics)."""
    if isinstance(n_tests, bool) or not isinstance(n_tests, numbers.Integral) or n_tests < 1:
        raise ValueError(f"n_tests: expected a positive int, got {n_tests!r}")
    if not (isinstance(level, numbers.Real) and 0 < level < 1):
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    return -NormalDist().inv_cdf(level / (2 * int(n_tests)))


def _check_mixture_sample(x, mix):
    x = np.asarray(x)
    d = mix.dim
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x: expected shape (n, {d}) for a mixture in {d} dimensions, got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x: expected a floating-point array, got dtype {x.dtype}")
    # below 250 samples in the lightest component the delta-method standard errors are
    # too noisy for the band's tail (level measured at 1.65 x nominal at n = 1000 on the
    # 2-D mixture, 7 x before issue 23; mixture_report's docstring)
    n_min = math.ceil(250 / float(np.min(np.asarray(mix.weights))))
    if x.shape[0] < n_min:
        raise ValueError(f"x: at least {n_min} samples are needed for the standard errors, got {x.shape[0]}")
    return x


def mode_statistics(x: ArrayLike, mix: GaussianMixture) -> ModeStatistics:
    """Weight, mean and covariance of each component of ``mix`` as seen in samples ``x``.

    ``x`` has shape ``(n, d)``; ``mix`` is a :class:`companion.toy.GaussianMixture`. Each
    sample is assigned softly by the mixture's exact responsibilities
    gamma_k(x) = pi_k N_k(x) / p(x). For exact samples E[gamma_k(x)] = pi_k,
    E[gamma_k(x) x] = pi_k mu_k and E[gamma_k(x) (x - mu_k)(x - mu_k)^T] = pi_k Sigma_k
    exactly (the gamma_k cancel the mixture density), so with g_ik = gamma_k(x_i)

        pi_k = (1/n) sum_i g_ik,    mu_k = sum_i g_ik x_i / sum_i g_ik,
        Sigma_k = sum_i g_ik (x_i - mu_k)(x_i - mu_k)^T / (V1 - V2 / V1),

    with V1 = sum_i g_ik, V2 = sum_i g_ik^2 (the reliability-weights correction for the
    estimated mean), the weight is unbiased and the mean and covariance, ratios of
    unbiased sums, are unbiased to O(1/n) (their bias is a factor sqrt(n) below their
    standard error). A sampler that blurs, shifts or re-weights the modes moves them.
    Standard errors: the sample standard deviation of each statistic's influence
    function (g_ik, g_ik (x_i - mu_k) / pi_k, psi_ik = g_ik ((x_i - mu_k)(x_i - mu_k)^T - Sigma_k) / pi_k,
    and for the correlation psi_ik,jl / sqrt(Sigma_jj Sigma_ll) - rho_jl (psi_ik,jj / Sigma_jj
    + psi_ik,ll / Sigma_ll) / 2) over sqrt(n) (the delta method). Rows that are not finite are left out and counted (``n - n_finite``).
    Computed in float64 with NumPy; the responsibilities in the mixture's dtype.
    """
    x = _check_mixture_sample(x, mix)
    finite = np.all(np.isfinite(x), axis=1)
    xf = x[finite].astype(np.float64)
    n, d, K = xf.shape[0], mix.dim, mix.n_components
    nan = lambda *shape: np.full(shape, np.nan)
    if n < 2:
        return ModeStatistics(x.shape[0], n, nan(K), nan(K), nan(K, d), nan(K, d),
                              nan(K, d, d), nan(K, d, d), nan(K), nan(K), nan(K, d, d), nan(K, d, d))
    r = np.asarray(mix.responsibilities(jnp.asarray(xf, mix.means.dtype)), np.float64)  # (n, K)
    sqrt_n = math.sqrt(n)
    weight = r.mean(0)
    weight_se = r.std(0, ddof=1) / sqrt_n
    v1 = r.sum(0)  # (K,)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (r.T @ xf) / v1[:, None]
        diff = xf[None] - mean[:, None]  # (K, n, d)
        outer = diff[..., :, None] * diff[..., None, :]  # (K, n, d, d)
        v2 = (r**2).sum(0)
        cov = np.einsum("nk,knij->kij", r, outer) / (v1 - v2 / v1)[:, None, None]
        rk = r.T[..., None]  # (K, n, 1)
        mean_se = (rk * diff / weight[:, None, None]).std(1, ddof=1) / sqrt_n
        infl_cov = rk[..., None] * (outer - cov[:, None]) / weight[:, None, None, None]
        cov_se = infl_cov.std(1, ddof=1) / sqrt_n
        spread = np.sqrt(np.trace(cov, axis1=1, axis2=2) / d)
        infl_spread = np.trace(infl_cov, axis1=2, axis2=3) / (2 * d * spread[:, None])
        spread_se = infl_spread.std(1, ddof=1) / sqrt_n
        var = np.diagonal(cov, axis1=1, axis2=2)  # (K, d)
        corr = cov / np.sqrt(var[:, :, None] * var[:, None, :])
        rel = np.diagonal(infl_cov, axis1=2, axis2=3) / var[:, None]  # influence of log Sigma_ii (K, n, d)
        infl_corr = (infl_cov / np.sqrt(var[:, :, None] * var[:, None, :])[:, None]
                     - 0.5 * corr[:, None] * (rel[..., :, None] + rel[..., None, :]))
        corr_se = infl_corr.std(1, ddof=1) / sqrt_n
    return ModeStatistics(x.shape[0], n, weight, weight_se, mean, mean_se, cov, cov_se, spread, spread_se,
                          corr, corr_se)


class MixtureReport(NamedTuple):
    """The verdict of :func:`mixture_report`; ``str(report)`` is a readable table."""

    passed: bool
    max_z: float
    threshold: float
    worst: str
    n_tests: int
    level: float
    stats: ModeStatistics
    z: dict

    def __str__(self):
        s = self.stats
        lines = []
        if s.n_finite < s.n:
            lines.append(f"{s.n - s.n_finite} of {s.n} samples are not finite: the sample fails")
        lines.append(f"{'mode':>4} {'weight':>15} {'spread':>15} {'max |z| mean':>12} {'max |z| cov':>11}")
        for k in range(len(s.weight)):
            lines.append(
                f"{k:>4} {s.weight[k]:7.3f}+-{s.weight_se[k]:.3f} {s.spread[k]:7.3f}+-{s.spread_se[k]:.3f}"
                f" {np.max(np.abs(self.z['mean'][k])):12.1f} {np.max(np.abs(self.z['cov'][k])):11.1f}"
            )
        verdict = "matches" if self.passed else "does NOT match"
        lines.append(
            f"{verdict} the mixture: max |z| = {self.max_z:.2f} ({self.worst}) against "
            f"{self.threshold:.2f} (Bonferroni over {self.n_tests} statistics, level {self.level:g})"
        )
        return "\n".join(lines)


def _z(estimate, truth, se):
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (estimate - truth) / se
    # a zero standard error with a nonzero deviation is infinitely far; NaN (no samples) fails
    return np.where((se == 0) & (estimate == truth), 0.0, np.where(np.isnan(z), np.inf, z))


def mixture_report(x: ArrayLike, mix: GaussianMixture, *, level: float = 1e-3) -> MixtureReport:
    """Test samples ``x`` (n, d) against the Gaussian mixture ``mix`` they should follow.

    Every statistic of :func:`mode_statistics` (K weights, K d mean entries and
    K d (d + 1) / 2 covariance entries) is turned into a z-score (the book's zeta), and
    the sample passes when every ``|z|`` is below the Bonferroni band
    Phi^{-1}(1 - level / (2 m)) for m statistics (:meth:`ModeStatistics.band`; 3.76 for
    the 1-D two-mode mixture, 4.10 for the 2-D four-mode one at level 1e-3). Samples with
    any non-finite row never pass. Weights and mean entries: z = (estimate - truth) / SE.
    A variance Sigma_k,ii is tested as a standard deviation, its relative error over its
    relative standard error (the delta method, SE(sigma_hat) / sigma_hat =
    SE(Sigma_hat) / (2 Sigma_hat)):

        z = (sigma_hat / sigma - 1) / (SE(Sigma_hat_k,ii) / (2 Sigma_hat_k,ii)),

    and an off-diagonal entry as a correlation on Fisher's scale,
    z = (artanh rho_hat - artanh rho) / (SE(rho_hat) / (1 - rho_hat^2)). Why not
    (Sigma_hat - Sigma) / SE: a sample variance that comes out small has a small estimated
    SE too, so that z is skewed to the left (skewness -0.11 on the 2-D mixture at
    n = 10 000) and its lower tail, where the band sits, is heavier than the normal's. On
    the standard deviation's scale the two effects nearly cancel (skewness +0.014; the
    cube root of the variance, +0.000, and the log, -0.028, are the neighbours we
    measured, with the same level). ``z["cov"]`` holds these z, variances on the diagonal.

    Level: exact samples fail with probability about ``level``. Measured on fresh exact
    samples at n = 10 000 (``tests/test_metrics.py::test_level_where_the_book_works``),
    rejection rate over ``level`` at 0.1, 1e-2 and 1e-3: ``toy.four_gaussians_2d()``
    (120 000 seeds) 0.95 +- 0.01, 0.99 +- 0.03 and 1.02 +- 0.09 (the variances on their own
    scale, as before issue 23: 0.97 +- 0.01, 1.10 +- 0.03 and 1.23 +- 0.10 on the same
    seeds; their z beyond the band at 1e-3 were 60 below and 7 above, now 17 and 23);
    ``toy.two_gaussians_1d()`` (60 000 seeds) 0.79 +- 0.01, 0.81 +- 0.04 and
    0.72 +- 0.13 (conservative: its two weights sum to 1 and fail together; before
    0.80, 0.83 and 0.80). Smaller samples of the 2-D mixture (20 000 seeds each) are
    rejected more often, from the random standard errors' heavier tails: at n = 4000
    0.97 +- 0.02, 1.11 +- 0.07 and 0.90 +- 0.22 (before: 1.06, 1.35, 1.95), at n = 2000
    1.07 +- 0.02, 1.23 +- 0.08 and 1.45 +- 0.27 (before: 1.21, 1.75, 3.85), at n = 1000
    1.12 +- 0.02, 1.41 +- 0.08 and 1.65 +- 0.29 (before: 1.37, 2.65, 7.05). Hence the
    minimum: 250 samples in the lightest component, n >= 250 / min_k pi_k.

    Power, measured in ``tests/test_metrics.py`` on ``toy.four_gaussians_2d()`` at
    n = 10 000 and ``level = 1e-3`` (threshold 4.1): rejected in every one of 20 seeds are
    components 10 % too wide (std 0.55 for 0.5), means scaled by 1.03, weights moved by
    0.03, and the blurred marginal ``mix.perturbed(VP(), 0.1)`` (smallest max ``|z|``
    over the seeds 7.2, 6.3, 6.1 and 11.0; components 10 % too narrow, 7.9). The sliced Wasserstein criterion "below the floor's mean + 3 std" (0.060 at
    n = 10 000 against a fresh data sample) accepts the too-wide components in about 9
    seeds of 10 and the scaled means in about half: it cannot see a width error.
    """
    if not (isinstance(level, numbers.Real) and 0 < level < 1):
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    s = mode_statistics(x, mix)
    K, d = mix.n_components, mix.dim
    means, covs, weights = (np.asarray(a, np.float64) for a in (mix.means, mix.covs, mix.weights))
    iu = np.triu_indices(d)
    var, true_var = np.diagonal(s.cov, axis1=1, axis2=2), np.diagonal(covs, axis1=1, axis2=2)
    true_corr = covs / np.sqrt(true_var[:, :, None] * true_var[:, None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        # each variance as a standard deviation (relative error over relative SE), each
        # correlation on Fisher's scale: the nearly symmetric zeta (see the docstring)
        z_var = _z(np.sqrt(var / true_var), 1.0, 0.5 * np.diagonal(s.cov_se, axis1=1, axis2=2) / var)
        z_cov = _z(np.arctanh(s.corr), np.arctanh(true_corr), s.corr_se / (1 - s.corr**2))
    z_cov[:, np.arange(d), np.arange(d)] = z_var
    z = {
        "weight": _z(s.weight, weights, s.weight_se),
        "mean": _z(s.mean, means, s.mean_se),
        "cov": z_cov,
    }
    tested = {"weight": z["weight"], "mean": z["mean"], "cov": z["cov"][:, iu[0], iu[1]]}
    m = s.n_tests
    threshold = s.band(level)  # Phi^{-1}(1 - level / 2m)
    worst_name, worst_z, worst_at = "", -1.0, ()
    for name, v in tested.items():
        a = np.abs(v)
        idx = np.unravel_index(np.argmax(a), a.shape)
        if a[idx] > worst_z:
            worst_name, worst_z, worst_at = name, float(a[idx]), idx
    if worst_name == "cov":
        worst_at = (worst_at[0], int(iu[0][worst_at[1]]), int(iu[1][worst_at[1]]))
    worst = f"{worst_name} of mode {worst_at[0]}" + (f" at {tuple(int(i) for i in worst_at[1:])}" if len(worst_at) > 1 else "")
    passed = bool(s.n_finite == s.n and worst_z <= threshold)
    return MixtureReport(passed, worst_z, threshold, worst, m, float(level), s, z)


def matches_mixture(x: ArrayLike, mix: GaussianMixture, *, level: float = 1e-3) -> bool:
    """True when samples ``x`` (n, d) pass :func:`mixture_report` against ``mix``: every
    per-component weight, mean and covariance entry within its Bonferroni-corrected band,
    and every sample finite. Exact samples fail with probability about ``level``; at
    n = 10 000 and level 1e-3 on the 2-D four-mode mixture, 1.02 +- 0.09 times that
    (measured over 120 000 seeds; at n = 2000, 1.45 +- 0.27: :func:`mixture_report`)."""
    return mixture_report(x, mix, level=level).passed
