"""Hidden tests of the exercises of chapter 9 (few-step generation).

* ``consistency_coefficients(nu, sigma_data)`` (derivation): c_skip and c_out that make
  the regression target of the network have the smallest variance, and that variance 1,
  for data of standard deviation sigma_data at the noise-to-signal ratio nu.
* ``euler_target_bias(xtilde, nu, nu_next, sigma_data)`` (derivation): by how much one Euler
  step of the teacher misses the exact flow, for Gaussian data.
* ``multistep_consistency(f, x_T, times, noises, a, b, eps)`` (the step the chapter's
  sampler hides): re-noise with the kernel from eps, not from 0.

The checks hand the reader's function plain arrays and plain functions (no SDE, no
model of the companion), in float32 and float64, with batches of one.
"""

from __future__ import annotations

import numpy as np

from companion.exercises._calling import call_compiled
from companion.exercises._core import Mismatch, as_pair, exercise, expect_close, is_close

__all__: list[str] = []  # importing the module registers its exercises; nothing to import


def _rng():
    return np.random.default_rng(20231009)


# ----------------------------------------------------------------------------- consistency_coefficients


def _coefficients(nu, sigma_data):
    """Reference: Karras et al. 2022's preconditioning (no shift)."""
    c_skip = sigma_data**2 / (sigma_data**2 + nu**2)
    return c_skip, nu * sigma_data / np.sqrt(sigma_data**2 + nu**2)


_COEFF_MISTAKES = [  # (name, c_skip, c_out) of known wrong answers, functions of (nu, sd)
    ("c_skip and 1 - c_skip swapped (the skip weight should fall as the noise grows)",
     lambda nu, sd: nu**2 / (sd**2 + nu**2), lambda nu, sd: nu * sd / np.sqrt(sd**2 + nu**2)),
    ("c_out is the variance of the target, not its square root",
     lambda nu, sd: sd**2 / (sd**2 + nu**2), lambda nu, sd: nu**2 * sd**2 / (sd**2 + nu**2)),
    ("the data's standard deviation is missing (you assumed sigma_data = 1)",
     lambda nu, sd: 1 / (1 + nu**2), lambda nu, sd: nu / np.sqrt(1 + nu**2)),
    ("c_skip = 1 leaves a target whose variance is not the smallest",
     lambda nu, sd: 1 + 0 * nu, lambda nu, sd: nu),
    ("c_out uses the noise scale alone (nu), not the spread of the whole target",
     lambda nu, sd: sd**2 / (sd**2 + nu**2), lambda nu, sd: nu + 0 * sd),
]


@exercise(
    "consistency_coefficients",
    chapter=9,
    hint="Write the network's regression target (x_0 - c_skip x_tilde) / c_out with x_tilde = x_0 + nu z and "
    "compute its variance (x_0 and z independent). Choose c_skip to make it smallest, then c_out to make it 1.",
    hint2="The variance is [(1 - c_skip)^2 sigma_data^2 + c_skip^2 nu^2] / c_out^2. Set the derivative of "
    "the bracket in c_skip to zero; c_out is then the square root of the bracket at that c_skip.",
    reference=_coefficients,
    blocked=("companion.consistency:*",),
)
def _test_consistency_coefficients(fn):
    rng = _rng()
    cases = [(np.array([0.05, 0.5, 2.0, 80.0]), 0.5, np.float32), (np.array([1.3]), 2.06, np.float64),
             (rng.uniform(0.01, 10.0, size=(3, 2)), 0.8, np.float64), (np.float64(0.7), 3.0, np.float64)]
    for i, (nu, sd, dtype) in enumerate(cases):
        nu = np.asarray(nu, dtype)
        what = f"consistency_coefficients (case {i + 1}: nu of shape {nu.shape}, sigma_data = {sd}, {nu.dtype.name})"
        got = as_pair(call_compiled(fn, nu, dtype(sd)), what, "c_skip", "c_out")
        want = _coefficients(nu.astype(np.float64), sd)
        for mistake, skip, out in _COEFF_MISTAKES:
            if is_close(got[0], skip(nu.astype(np.float64), sd), 1e-4, 1e-6) and is_close(
                    got[1], out(nu.astype(np.float64), sd), 1e-4, 1e-6):
                raise Mismatch(f"{what}: {mistake}")
        expect_close(got[0], want[0], what=f"{what}, c_skip", rtol=1e-4, atol=1e-6)
        expect_close(got[1], want[1], what=f"{what}, c_out", rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- euler_target_bias


def _euler_target_bias(xhat, nu, nu_next, sigma_data):
    """Reference: Euler's point minus the exact flow's for N(0, sigma_data^2 I) data."""
    nu, nu_next = (np.asarray(v, np.float64).reshape(-1, *([1] * (np.ndim(xhat) - 1))) for v in (nu, nu_next))
    v = sigma_data**2 + nu**2
    return xhat * (1 + (nu_next - nu) * nu / v - np.sqrt((sigma_data**2 + nu_next**2) / v))


def _bias_mistakes(xhat, nu, nu_next, sd):
    nu_, nn_ = (np.asarray(v, np.float64).reshape(-1, *([1] * (np.ndim(xhat) - 1))) for v in (nu, nu_next))
    v, h = sd**2 + nu_**2, nn_ - nu_
    exact = xhat * np.sqrt((sd**2 + nn_**2) / v)
    euler = xhat * (1 + h * nu_ / v)
    return {
        "the sign: this is the exact point minus Euler's": exact - euler,
        "the ratio of the variances, not of the standard deviations, in the exact map":
            euler - xhat * (sd**2 + nn_**2) / v,
        "the slope taken at the end of the step (nu_next), not at its start": (
            xhat * (1 + h * nn_ / (sd**2 + nn_**2)) - exact),
        "the slope without the factor nu (d x_tilde / d nu = (x_tilde - denoiser) / nu)": (
            xhat * (1 + h / v) - exact),
        "Euler's point itself, not its error": euler,
        "a step from nu_next to nu (the step runs the wrong way)": xhat * (1 - h * nu_ / v) - exact,
    }


@exercise(
    "euler_target_bias",
    chapter=9,
    hint="For Gaussian data the denoiser is a multiple of x_tilde, so the flow in nu is a linear ODE you can "
    "solve exactly (the marginal at every nu is Gaussian). Euler takes the slope at the start of the step.",
    hint2="The variance of x_tilde at nu is sigma_data^2 + nu^2, and the flow keeps each point at the same "
    "number of standard deviations. Subtract that exact point from Euler's.",
    reference=_euler_target_bias,
    blocked=("companion.consistency:*", "companion.ode_sampling:*", "diffrax:diffeqsolve"),
)
def _test_euler_target_bias(fn):
    rng = _rng()
    cases = [((6, 2), 2.0, 1.2, 1.5, np.float32), ((1, 3), 0.5, 0.3, 0.5, np.float64),
             ((4, 1), None, None, 2.06, np.float64), ((5, 2), 10.0, 4.0, 1.0, np.float64)]
    for i, ((n, d), nu, nu_next, sd, dtype) in enumerate(cases):
        xhat = rng.normal(size=(n, d)).astype(dtype) * 2.0
        if nu is None:  # one noise level per sample
            nu = rng.uniform(0.5, 5.0, size=n).astype(dtype)
            nu_next = (nu * rng.uniform(0.3, 0.8, size=n)).astype(dtype)
        else:
            nu, nu_next = dtype(nu), dtype(nu_next)
        what = f"euler_target_bias (case {i + 1}: n = {n}, d = {d}, nu of shape {np.shape(nu)}, {np.dtype(dtype).name})"
        got = call_compiled(fn, xhat, nu, nu_next, dtype(sd))
        want = _euler_target_bias(xhat.astype(np.float64), nu, nu_next, sd)
        mistakes = _bias_mistakes(xhat.astype(np.float64), nu, nu_next, sd)

        def diagnose(arr):
            return next((m for m, w in mistakes.items() if is_close(arr, w, 1e-3, 1e-5)), None)

        expect_close(got, want, what=what, rtol=1e-3, atol=1e-5, diagnose=diagnose)


# ----------------------------------------------------------------------------- multistep_consistency


def _multistep(f, x_T, times, noises, a, b, eps):
    """Reference: denoise, then re-noise from eps to each later time with the transition."""
    x = f(x_T, times[0])
    for k in range(1, len(times)):
        r = a(times[k]) / a(eps)
        q = np.sqrt(b(times[k]) ** 2 - r**2 * b(eps) ** 2)
        x = f(r * x + q * noises[k - 1], times[k])
    return x


def _stand_ins(dtype):
    """A made-up consistency function and kernel, with a(eps) far from 1 and b(eps) far from 0."""
    def f(x, t):
        return np.tanh(x) * 2.0 + 0.1 * t * x

    def a(t):
        return np.exp(-1.5 * np.asarray(t, dtype))

    def b(t):
        return np.sqrt(1 - np.exp(-3.0 * np.asarray(t, dtype)))

    return f, a, b


def _multistep_mistakes(f, x_T, times, noises, a, b, eps):
    def run(renoise, denoise_last=True, same_noise=False):
        x = f(x_T, times[0])
        for k in range(1, len(times)):
            y = renoise(x, times[k], noises[0] if same_noise else noises[k - 1])
            x = f(y, times[k]) if (denoise_last or k < len(times) - 1) else y
        return x

    right = lambda x, t, z: a(t) / a(eps) * x + np.sqrt(b(t) ** 2 - (a(t) / a(eps) * b(eps)) ** 2) * z  # noqa: E731
    return {
        "re-noised with the kernel from 0 (a(t) x + b(t) z): the denoised point lives at eps":
            run(lambda x, t, z: a(t) * x + b(t) * z),
        "no re-noising between the steps": run(lambda x, t, z: x),
        "one noise draw reused at every step": run(right, same_noise=True),
        "the last noisy point returned, not its denoised value": run(right, denoise_last=False),
        "the right mean coefficient but the noise b(t) z (the noise already at eps counted twice)":
            run(lambda x, t, z: a(t) / a(eps) * x + b(t) * z),
        "the noise scaled by the noise-to-signal ratio b(t) / a(t)":
            run(lambda x, t, z: a(t) / a(eps) * x + b(t) / a(t) * z),
    }


@exercise(
    "multistep_consistency",
    chapter=9,
    hint="After each evaluation of f the point is (approximately) a sample at time eps, not at time 0. "
    "To go back up to the next time, use the forward process started at eps.",
    hint2="Chapter 2's transition from time s to t: x_t = r x_s + q z with r = a(t) / a(s) and q^2 the "
    "variance that the kernel from 0 to t has beyond r^2 times the kernel's variance at s.",
    reference=_multistep,
    blocked=("companion.consistency:*", "companion.sde:LinearSDE.transition"),
)
def _test_multistep_consistency(fn):
    rng = _rng()
    for i, ((n, d), times, eps, dtype) in enumerate([
            ((6, 2), [1.0, 0.6, 0.3], 0.2, np.float64), ((1, 3), [1.0, 0.5], 0.25, np.float32),
            ((4, 1), [1.0, 0.8, 0.6, 0.4], 0.3, np.float64), ((3, 2), [1.0], 0.2, np.float64)]):
        f, a, b = _stand_ins(dtype)
        x_T = rng.normal(size=(n, d)).astype(dtype)
        noises = rng.normal(size=(max(len(times) - 1, 1), n, d)).astype(dtype)[: len(times) - 1]
        times = np.asarray(times, dtype)
        what = f"multistep_consistency (case {i + 1}: {len(times)} steps, n = {n}, d = {d}, {np.dtype(dtype).name})"
        got = fn(f, x_T, times, noises, a, b, dtype(eps))
        args = (f, x_T.astype(np.float64), times.astype(np.float64), noises.astype(np.float64), a, b, float(eps))
        mistakes = _multistep_mistakes(*args)

        def diagnose(arr):
            return next((m for m, w in mistakes.items() if is_close(arr, w, 1e-4, 1e-5)), None)

        expect_close(got, _multistep(*args), what=what, rtol=1e-4, atol=1e-5, diagnose=diagnose)
