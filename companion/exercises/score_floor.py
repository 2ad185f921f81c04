"""Hidden test of the last exercise of chapter 4 (continuous-time score matching).

* ``dsm_minimum(sde, t, data_var, d)`` (derivation): the value the b(t)^2-weighted
  denoising loss at time t cannot go below, for Gaussian data N(0, data_var I_d): the
  constant of chapter 4's denoising loss at one time, as a number.

Registered from :mod:`companion.exercises.score_matching` (after the chapter's other
exercises). Messages say how an answer is wrong, never what the right value is; a factor
is reported in words, never to more digits than the tolerance allows.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from companion import sde as sdes
from companion.exercises._core import Mismatch, as_array, exercise, expect_close
from companion.exercises._words import factor_words

__all__: list[str] = []  # importing the module registers its exercise; nothing to import


class _KernelOnlySDE:
    """An SDE that offers only its perturbation kernel, ``marginal(x0, t) -> (mean, std)``,
    from two functions a(t) and b(t) (one of the course's SDEs, or one made up)."""

    __slots__ = ("__a", "__b")

    def __init__(self, a, b):
        self.__a, self.__b = a, b

    def marginal(self, x0, t):
        x0, t = jnp.asarray(x0), jnp.asarray(t)
        a, b = self.__a(t), self.__b(t)
        if t.ndim == 1 and x0.ndim >= 1:
            a = a.reshape((-1,) + (1,) * (x0.ndim - 1))
        return a * x0, b

    def __repr__(self):
        return "an SDE with only marginal(x0, t) -> (mean, std)"


def _from(sde):
    return _KernelOnlySDE(sde.mean_coefficient, sde.kernel_std)


def _dsm_minimum(sde, t, data_var, d):
    """Reference: d/2 a^2 c / (a^2 c + b^2), c = data_var (the optimum score is that of
    p_t = N(0, (a^2 c + b^2) I); what remains is the noise the score cannot predict)."""
    mean, std = sde.marginal(jnp.ones(()), t)
    a2c = np.float64(mean) ** 2 * np.float64(data_var)
    return 0.5 * d * a2c / (a2c + np.float64(std) ** 2)


def _minimum_cases():
    vp, ve = sdes.VP(beta_min=0.1, beta_max=20.0), sdes.VE(sigma_min=0.01, sigma_max=50.0)
    sub = sdes.SubVP(beta_min=0.1, beta_max=20.0)
    made_up = _KernelOnlySDE(lambda t: jnp.cos(t), lambda t: 0.3 + jnp.sin(t))
    return [
        ("VP, t = 0.3, d = 1, data N(0, 1)", _from(vp), 0.3, 1.0, 1),
        ("VE, t = 0.5, d = 2, data N(0, 0.25 I)", _from(ve), 0.5, 0.25, 2),
        ("sub-VP, t = 0.05, d = 64, data N(0, 2 I)", _from(sub), 0.05, 2.0, 64),
        ("a(t) = cos t, b(t) = 0.3 + sin t, t = 0.7, d = 3, data N(0, 0.5 I)",
         made_up, 0.7, 0.5, 3),
        ("VP, t = 1e-4 given as float32, d = 5, data N(0, 4 I)", _from(vp),
         jnp.float32(1e-4), 4.0, 5),
        ("VE, t = 1.0, d = 784, data N(0, I)", _from(ve), 1.0, 1.0, 784),
    ]


# A closed form evaluated in float32 or float64: rtol 1e-4 covers float32 round-off and
# rejects a Monte Carlo estimate (even 10^6 samples leave ~1e-3 relative error) and every
# wrong answer below (off by factors, or by a(t)^2 where a(t) != 1). A right answer may
# also be written as d/2 minus the explained part, which cancels in float32: an absolute
# error of a few float32 roundings of d/2, hence atol = 2e-6 d.
_MIN_RTOL = 1e-4


def _test_dsm_minimum_impl(fn):
    for label, sde, t, c, d in _minimum_cases():
        want = _dsm_minimum(sde, t, c, d)
        what = f"case '{label}'"
        arr = as_array(fn(sde, t, c, d), what)
        if arr.shape != ():
            raise Mismatch(f"{what}: expected a single number (shape ()), got shape {arr.shape}")
        atol = 2e-6 * d
        if np.isfinite(arr) and not np.isclose(arr, want, rtol=_MIN_RTOL, atol=atol):
            got = float(arr)
            if got == 0.0:
                raise Mismatch(f"{what}: zero, but the loss cannot reach zero even with the "
                               "exact score")
            if np.isclose(got, 0.5 * d, rtol=_MIN_RTOL):
                raise Mismatch(f"{what}: this is the loss of the zero score function, not the "
                               "minimum over all score functions")
            ratio = got / want
            if d > 1 and (np.isclose(ratio, d, rtol=1e-3) or np.isclose(ratio, 1 / d, rtol=1e-3)):
                raise Mismatch(f"{what}: off by a factor d (the dimension)")
            if np.isclose(got, 0.5 * d - want, rtol=_MIN_RTOL, atol=atol):
                raise Mismatch(f"{what}: this is the part of the loss that the best score removes, "
                               "not what remains")
            raise Mismatch(f"{what}: your value is {factor_words(ratio, factors=(2.0, 0.5, -1.0), within=0.02, near_one=0.1)}")
        expect_close(arr, want, what=what, rtol=_MIN_RTOL, atol=atol)


@exercise(
    "dsm_minimum",
    chapter=4,
    hint=(
        "Which score function minimises the denoising loss of chapter 4 at a fixed t? Put it "
        "in; what is left is the part of the target z / b(t) that no function of x_t can "
        "predict. For Gaussian data p_t is Gaussian (chapter 2)."
    ),
    hint2=(
        "sde.marginal gives a(t) and b(t), and with them the variance of p_t. Put that "
        "Gaussian's score into the loss and take the expectation over x_0 and z; careful: "
        "x_t contains z, so the cross term between z and the score does not vanish. The "
        "answer depends on d."
    ),
    blocked=(
        "companion.losses:denoising_score_matching",
        "companion.losses:fisher_divergence",
    ),
    reference=_dsm_minimum,
)
def _test_dsm_minimum(fn):
    _test_dsm_minimum_impl(fn)
