"""Hidden tests of the exercises of chapter 5 (the probability flow ODE).

* ``pf_drift(sde, score_fn, x, t)``: the drift of the probability flow ODE,
  Eq. (eq-pf-ode), chapter 5.
* ``divergence(fn, x)``: the exact divergence (Jacobian trace) of a batch function, per
  sample, Eq. (eq-inst-cov), chapter 5.
* ``bits_per_dim(log_p, n_dims, n_levels, data_range)``: bits per dimension of discrete
  data from the log density of its rescaled, dequantised version,
  Eq. (eq-dequantisation), chapter 5.
* ``log_density_ode(velocity, x, t)`` (conceptual): the right-hand side of the augmented
  ODE that carries a sample and its log density along a flow dx/dt = v(x, t),
  Eq. (eq-inst-cov), for any velocity field and any sample shape.

Inputs come from a fixed NumPy seed; messages say how an answer is wrong, never what
the right value is.
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
)

__all__: list[str] = []  # importing the module registers its exercises; nothing to import

# ----------------------------------------------------------------------------- references


def _pf_drift(sde, score_fn, x, t):
    """Reference: f(x, t) - g(t)^2 score(x, t) / 2."""
    g = sde.diffusion(t)[:, None]
    return sde.drift(x, t) - 0.5 * g**2 * score_fn(x, t)


def _divergence(fn, x):
    """Reference: the trace of the Jacobian of each sample's output w.r.t. its input."""
    jac = jax.vmap(jax.jacfwd(lambda xi: fn(xi[None])[0]))(x)  # (n, d, d)
    return jnp.trace(jac, axis1=1, axis2=2)


def _bits_per_dim(log_p, n_dims, n_levels, data_range):
    """Reference: -(log p + D log((hi - lo) / n_levels)) / (D log 2)."""
    lo, hi = data_range
    return -(log_p + n_dims * math.log((hi - lo) / n_levels)) / (n_dims * math.log(2))


def _rng():
    return np.random.default_rng(20210505)


def _f32(a):
    return jnp.asarray(a, dtype=jnp.float32)


# ----------------------------------------------------------------------------- pf_drift


@exercise(
    "pf_drift",
    chapter=5,
    hint="Eq. (eq-pf-ode): the same two ingredients as the reverse-time SDE of chapter 3, but the ODE "
    "carries only part of the score term, so that its marginals match without noise.",
    hint2="Forward drift minus a fraction of g(t)^2 times the score; t has shape (n,): reshape g(t) "
    "so that it multiplies each sample. Compare your factor with the one in the reverse SDE.",
    blocked=(
        "companion.sde:LinearSDE.probability_flow_drift",
        "companion.sde:LinearSDE.reverse_drift",
    ),
    reference=_pf_drift,
)
def _test_pf_drift(fn):
    rng = _rng()
    labels, cases = [], []
    for sde in (sdes.VP(), sdes.VE(), sdes.SubVP()):
        d, n = 2, 5
        mu = _f32(rng.normal(size=d))

        def score(x, t, mu=mu):
            return -(x - mu) * (1.0 + jnp.asarray(t)[:, None])

        x = _f32(rng.normal(size=(n, d)) * 2)
        t = _f32(rng.uniform(0.05, 1.0, size=n))
        labels.append(f"pf_drift ({type(sde).__name__} SDE)")
        cases.append((sde, score, x, t))
    wants = call_compiled_each(_pf_drift, cases)
    for label, got, want in zip(labels, call_compiled_each(fn, cases), wants):
        expect_close(got, want, what=label, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- divergence


@exercise(
    "divergence",
    chapter=5,
    hint="Eq. (eq-inst-cov): the divergence is the trace of each sample's own Jacobian, one number "
    "per sample; the batch function's full Jacobian mixes samples.",
    hint2="jax.jacfwd of a one-sample function (add and remove the batch axis), vmapped over the "
    "batch, then the trace; or one jax.jvp per coordinate direction, keeping the matching "
    "coordinate of each product.",
    blocked=(
        "companion.divergence:exact_divergence",
        "companion.divergence:hutchinson_divergence",
    ),
    reference=_divergence,
)
def _test_divergence(fn):
    rng = _rng()
    A = _f32(rng.normal(size=(3, 3)))
    B = _f32(rng.normal(size=(2, 2)))
    cases = [
        ("a linear map x A^T, d = 3", lambda x: x @ A.T, 3),
        ("a nonlinear map, d = 3", lambda x: jnp.tanh(x @ A.T) * x[:, :1] + x**3, 3),
        ("a nonlinear map, d = 2", lambda x: jnp.sin(x @ B) + 0.1 * jnp.sum(x**2, 1, keepdims=True) * x, 2),
    ]
    args = [(f, _f32(rng.normal(size=(6, d)))) for _, f, d in cases]
    wants = call_compiled_each(_divergence, args)
    for (label, _, _), got, want in zip(cases, call_compiled_each(fn, args), wants):
        arr = as_array(got, f"divergence ({label})")
        if arr.shape != want.shape:
            raise Mismatch(f"divergence ({label}): expected one value per sample, shape {want.shape}, got {arr.shape}")
        expect_close(got, want, what=f"divergence ({label})", rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- bits_per_dim


@exercise(
    "bits_per_dim",
    chapter=5,
    hint="Eq. (eq-dequantisation): a discrete value covers a bin in the rescaled space; its "
    "probability is about the density times the bin's volume. Bits, per dimension.",
    hint2="The bin's width is the data range divided by n_levels, in each of the n_dims coordinates, "
    "so the volume enters the log as n_dims times the log of the width. Negate, convert nats to "
    "bits, divide by n_dims.",
    blocked=(
        "companion.likelihood:nats_to_bits_per_dim",
        "companion.likelihood:bits_per_dim",
    ),
    reference=_bits_per_dim,
)
def _test_bits_per_dim(fn):
    rng = _rng()
    for n_dims, n_levels, data_range in ((2, 256, (-1.0, 1.0)), (64, 17, (0.0, 1.0)), (3, 32, (-4.0, 4.0))):
        log_p = rng.normal(size=5) * 3 + 2
        got = fn(jnp.asarray(log_p), n_dims, n_levels, data_range)
        expect_close(got, _bits_per_dim(log_p, n_dims, n_levels, data_range),
                     what=f"bits_per_dim (D={n_dims}, {n_levels} levels, range {data_range})",
                     rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ log_density_ode


def _log_density_ode(velocity, x, t):
    """Reference: (v(x, t), -div v(x, t)); the divergence per sample over all its
    coordinates, by one forward-mode Jacobian per sample, Eq. (eq-inst-cov)."""
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
        "change? The continuity equation (Eq. (eq-inst-cov)) answers it with the "
        "divergence of the velocity; get the sign from a flow that spreads mass out."
    ),
    hint2=(
        "Return the velocity itself and, per sample, the divergence of v with respect to "
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
