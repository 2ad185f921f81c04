"""Gaussian probability paths for flow matching (chapter 8).

A Gaussian path joins the data (t = 0) to the noise (t = 1) by

    x_t = a(t) x_0 + b(t) z,        x_0 ~ p_data,  z ~ N(0, I),       (a Gaussian path, chapter 8)

with a(0) = 1, b(0) = 0 and a(1) ~ 0, b(1) ~ 1 (the course's convention: data at
t = 0, noise at t = 1). Its *conditional velocity*, the time derivative of x_t with
x_0 and z held fixed, is a'(t) x_0 + b'(t) z (the conditional velocity, chapter 8). a and b
are the perturbation kernel's coefficients of chapter 2 when the path is an SDE's.

=====================  ====================  ==================  ==========================
path                   a(t)                  b(t)                remark
=====================  ====================  ==================  ==========================
:class:`Rectified`     1 - t                 t                   straight lines x_0 -> z
                                                                 (Liu et al. 2023; Lipman
                                                                 et al. 2023 with sigma_min
                                                                 = 0)
:func:`from_sde`       a(t) of the SDE       b(t) of the SDE     the paths of chapters 2-5
=====================  ====================  ==================  ==========================

Every path gives a, b, their derivatives ``da``, ``db`` and the product
``b_db`` = b b' = (b^2)'/2, which stays finite where b' does not (for the VP and VE
paths b(t) ~ sqrt(t) near t = 0, so b'(0) is infinite but b b' is not). Formulas that
must hold at both ends (:func:`companion.toy.exact_velocity`, the velocity-score
conversion of :mod:`companion.losses`) are written with ``b_db``.

Times are scalars or ``(n,)`` arrays in [0, 1]; values known when the function is called
outside ``jax.jit`` are checked (``ValueError`` naming ``t``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from companion._common import check_positive, check_x, sq_norms, static
from companion.sde import LinearSDE, batch_broadcast

__all__ = ["GaussianPath", "Rectified", "SDEPath", "from_sde", "check_times", "integrate", "straightness",
           "straightness_parts", "to_rectified"]


def check_times(t: ArrayLike, name: str = "t") -> jax.Array:
    """``t`` as an array; ``ValueError`` naming ``name`` if its values are known (not traced)
    and are not finite or lie outside [0, 1]."""
    if isinstance(t, jax.core.Tracer):
        return t
    tv = np.asarray(t)
    if not np.issubdtype(tv.dtype, np.number) or tv.ndim > 1:
        raise ValueError(f"{name}: expected a scalar or a 1-D array of times, got {tv!r}")
    if not np.all(np.isfinite(tv)):
        raise ValueError(f"{name}: contains NaN or inf")
    if np.any(tv < 0) or np.any(tv > 1 + 1e-6):
        raise ValueError(f"{name}: every time must lie in [0, 1], got values in [{tv.min()}, {tv.max()}]")
    return jnp.asarray(t) if isinstance(t, jax.Array) else jnp.asarray(tv)


def _check_data(x, name: str):
    """``x`` as a floating array ``(n, *dims)``; ``ValueError`` naming ``name`` if its values are
    known (not traced) and not all finite."""
    x = check_x(x, name)
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


class GaussianPath:
    """x_t = a(t) x_0 + b(t) z (a Gaussian path, chapter 8). Subclasses define the five functions
    ``a``, ``b``, ``da``, ``db``, ``b_db`` of a time ``t`` (scalar or ``(n,)``)."""

    T = 1.0

    def a(self, t: ArrayLike) -> jax.Array:
        """a(t), the coefficient of the data."""
        raise NotImplementedError

    def b(self, t: ArrayLike) -> jax.Array:
        """b(t), the coefficient of the noise."""
        raise NotImplementedError

    def da(self, t: ArrayLike) -> jax.Array:
        """a'(t)."""
        raise NotImplementedError

    def db(self, t: ArrayLike) -> jax.Array:
        """b'(t) (infinite at t = 0 for the paths of the VE and VP SDEs)."""
        raise NotImplementedError

    def b_db(self, t: ArrayLike) -> jax.Array:
        """b(t) b'(t) = (b^2)'(t) / 2, finite on all of [0, 1]."""
        raise NotImplementedError

    # -- what follows is the same for every path
    def coefficients(self, t: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """``(a, b, a', b')`` at ``t``, after checking ``t``."""
        t = check_times(t)
        return self.a(t), self.b(t), self.da(t), self.db(t)

    def sample(self, key: jax.Array, x0: ArrayLike, t: ArrayLike) -> tuple[jax.Array, jax.Array]:
        """x_t for data ``x0`` ``(n, *dims)`` at times ``t``: returns ``(x_t, z)``."""
        x0 = _check_data(x0, "x0")
        t = check_times(t)
        z = jax.random.normal(key, x0.shape, x0.dtype)
        return self.interpolate(x0, z, t), z

    def interpolate(self, x0: ArrayLike, z: ArrayLike, t: ArrayLike) -> jax.Array:
        """a(t) x0 + b(t) z (the Gaussian path) for given data and noise."""
        x0, z = _check_data(x0, "x0"), _check_data(z, "z")
        t = check_times(t)
        return batch_broadcast(self.a(t), x0) * x0 + batch_broadcast(self.b(t), x0) * z

    def conditional_velocity(self, x0: ArrayLike, z: ArrayLike, t: ArrayLike) -> jax.Array:
        """a'(t) x0 + b'(t) z: d x_t / dt with x0 and z fixed (the conditional velocity)."""
        x0, z = _check_data(x0, "x0"), _check_data(z, "z")
        t = check_times(t)
        return batch_broadcast(self.da(t), x0) * x0 + batch_broadcast(self.db(t), x0) * z


@dataclasses.dataclass(frozen=True)
class Rectified(GaussianPath):
    """The straight path x_t = (1 - t) x_0 + t z: a = 1 - t, b = t, a' = -1, b' = 1.

    Its conditional velocity z - x_0 does not depend on t (Liu et al. 2023; the
    optimal-transport path of Lipman et al. 2023 with sigma_min = 0).
    """

    def a(self, t: ArrayLike) -> jax.Array:
        return 1.0 - jnp.asarray(t)

    def b(self, t: ArrayLike) -> jax.Array:
        return jnp.asarray(t) * 1.0

    def da(self, t: ArrayLike) -> jax.Array:
        return -jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(t, float)))

    def db(self, t: ArrayLike) -> jax.Array:
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(t, float)))

    def b_db(self, t: ArrayLike) -> jax.Array:
        return jnp.asarray(t) * 1.0


@dataclasses.dataclass(frozen=True)
class SDEPath(GaussianPath):
    """The path of a linear SDE (chapter 2): a(t) and b(t) are its perturbation kernel's
    mean coefficient and std, p_0t(x_t | x_0) = N(a x_0, b^2 I).

    With the SDE's drift coefficient A(t) (f = A x) and diffusion g(t), a' = A a and,
    from the moment equation (b^2)' = 2 A b^2 + g^2, b b' = A b^2 + g^2 / 2 and
    b' = A b + g^2 / (2 b); so b' - a' b / a = g^2 / (2 b) (chapter 8).

    For the VE SDE a = 1 and b(1) is large (the prior's std), so x_1 is not N(0, I): a
    path need not end at a unit Gaussian, only at a known prior.
    """

    sde: LinearSDE

    def __post_init__(self):
        if not isinstance(self.sde, LinearSDE):
            raise TypeError(f"sde: expected a companion.sde SDE, got {type(self.sde).__name__}")

    def a(self, t: ArrayLike) -> jax.Array:
        return self.sde.mean_coefficient(t)

    def b(self, t: ArrayLike) -> jax.Array:
        return self.sde.kernel_std(t)

    def da(self, t: ArrayLike) -> jax.Array:
        return self.sde.drift_coefficient(t) * self.sde.mean_coefficient(t)

    def b_db(self, t: ArrayLike) -> jax.Array:
        s = self.sde.kernel_std(t)
        return self.sde.drift_coefficient(t) * s**2 + 0.5 * self.sde.diffusion(t) ** 2

    def db(self, t: ArrayLike) -> jax.Array:
        return self.b_db(t) / self.sde.kernel_std(t)


def from_sde(sde: LinearSDE) -> SDEPath:
    """The Gaussian path of a linear SDE: its kernel's a(t) and b(t) (see :class:`SDEPath`)."""
    return SDEPath(sde)


# --------------------------------------------------------------------------- integrating a velocity field

_METHODS = ("euler", "heun", "tsit5")


def _solver(method):
    import diffrax

    return {"euler": diffrax.Euler(), "heun": diffrax.Heun(), "tsit5": diffrax.Tsit5()}[method]


def _nfe(method, n_steps):
    # evaluations per step: Euler 1, Heun 2, Tsit5 6 per attempted step + 1 (first same as last)
    return {"euler": n_steps, "heun": 2 * n_steps, "tsit5": 6 * n_steps + 1}[method]


@functools.partial(jax.jit, static_argnames=("velocity", "method", "n_saved", "max_steps"))
def _integrate(velocity, x, t0, t1, n_steps, rtol, atol, method, n_saved, max_steps):
    import diffrax

    def field(t, y, args):
        return velocity(y, jnp.full(y.shape[:1], t, y.dtype))

    if method == "tsit5":
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        dt0 = (t1 - t0) / 100
    else:
        controller = diffrax.ConstantStepSize()
        dt0 = (t1 - t0) / n_steps
    saveat = diffrax.SaveAt(t1=True) if n_saved == 0 else diffrax.SaveAt(ts=jnp.linspace(t0, t1, n_saved))
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), _solver(method), t0=t0, t1=t1, dt0=dt0, y0=x,
                              stepsize_controller=controller, saveat=saveat, max_steps=max_steps)
    ys = sol.ys[0] if n_saved == 0 else sol.ys
    return ys, sol.stats["num_steps"]


def integrate(velocity: Callable, x: ArrayLike, *, method: str = "tsit5", n_steps: int = 100, rtol: float = 1e-5,
              atol: float = 1e-5, t0: float = 1.0, t1: float = 0.0, n_saved: int = 0,
              max_steps: int = 4096) -> tuple[jax.Array, int]:
    """Solve dx/dt = ``velocity(x, t)`` from ``t0`` (noise, default 1) to ``t1`` (data, default 0)
    starting at ``x`` ``(n, *dims)``; returns ``(x_t1, nfe)``.

    The solvers are diffrax's, the same as :func:`companion.ode_sampling.probability_flow`:
    ``"euler"`` and ``"heun"`` with ``n_steps`` equal steps (NFE ``n_steps`` and
    ``2 n_steps``), ``"tsit5"`` adaptive with ``rtol``, ``atol`` (NFE counted: 6 per
    attempted step + 1). A velocity model of any path plugs in directly; a score model
    goes through :func:`companion.losses.velocity_from_score`, and for the path of an SDE
    the score-based samplers of :mod:`companion.sampling` and :mod:`companion.ode_sampling`
    apply to a velocity model via :func:`companion.losses.score_from_velocity`.

    ``n_saved > 0``: return the states at ``n_saved`` equally spaced times from ``t0`` to
    ``t1`` instead, shape ``(n_saved, n, *dims)`` (trajectories, for straightness).
    ``n_steps`` is traced: one compilation serves every number of steps.
    """
    if not callable(velocity):
        raise TypeError(f"velocity: expected a callable velocity(x, t), got {type(velocity).__name__}")
    x = _check_data(x, "x")
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or not 1 <= n_steps <= max_steps:
        raise ValueError(f"n_steps: expected an int in [1, max_steps = {max_steps}], got {n_steps!r}")
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    check_times(t0, "t0")
    check_times(t1, "t1")
    if t0 == t1:
        raise ValueError("t0, t1: the interval is empty")
    ys, steps = _integrate(static(velocity), x, float(t0), float(t1), int(n_steps), float(rtol), float(atol),
                           method, int(n_saved), int(max_steps))
    return ys, _nfe(method, int(steps))


def straightness(velocity: Callable, xs: ArrayLike, t0: float = 1.0, t1: float = 0.0) -> jax.Array:
    """Straightness of trajectories ``xs`` ``(k, n, *dims)`` saved at k equal times from ``t0``
    to ``t1`` (from :func:`integrate` with ``n_saved=k``), relative to their chord. With
    phi_t(z) the trajectory that starts from z and c = (phi_t0 - phi_t1) / (t0 - t1),

        S = E_z int ||u(phi_t(z), t) - c||^2 dt / E_z ||c||^2

    (the straightness of Liu et al. 2023 on the ODE's trajectories, chapter 8, made
    dimensionless). S = 0 exactly when every trajectory is a straight line run at
    constant speed. The time integral is the trapezoidal rule on the saved times (the
    velocity is evaluated there). :func:`straightness_parts` splits S into a direction
    part and a speed part.
    """
    s_dir, s_speed = straightness_parts(velocity, xs, t0, t1)
    return s_dir + s_speed


def straightness_parts(velocity: Callable, xs: ArrayLike, t0: float = 1.0,
                       t1: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """``(S_dir, S_speed)``, the two parts of :func:`straightness` (their sum is S).

    Write the velocity along a trajectory as its component along the chord's unit vector
    e = c / ||c|| and the rest: u = (u . e) e + u_perp. Then
    ||u - c||^2 = ||u_perp||^2 + (u . e - ||c||)^2 exactly, and

        S_dir   = E int ||u_perp||^2 dt / E ||c||^2     (direction: zero for a trajectory
                                                          that stays on its chord's line),
        S_speed = E int (u . e - ||c||)^2 dt / E ||c||^2 (speed: changes of speed along
                                                          the chord, and going backwards).

    A trajectory that runs along a straight line at a varying speed (or turns back on it)
    has S_dir = 0 and S_speed > 0; a bent one has S_dir > 0. Same arguments as
    :func:`straightness`.
    """
    return _straightness_parts(static(velocity), jnp.asarray(xs), float(t0), float(t1))


@functools.partial(jax.jit, static_argnames=("velocity",))
def _straightness_parts(velocity, xs, t0, t1):
    k = xs.shape[0]
    ts = jnp.linspace(t0, t1, k).astype(xs.dtype)
    chord = (xs[0] - xs[-1]) / (t0 - t1)
    n = chord.shape[0]
    c = chord.reshape(n, -1)
    c_norm = jnp.sqrt(jnp.sum(c**2, axis=1))
    e = c / jnp.maximum(c_norm, jnp.finfo(xs.dtype).tiny)[:, None]

    def parts(args):
        x, t = args
        u = velocity(x, jnp.full(x.shape[:1], t, xs.dtype)).reshape(n, -1)
        along = jnp.sum(u * e, axis=1)
        perp = u - along[:, None] * e
        return jnp.sum(perp**2, axis=1), (along - c_norm) ** 2

    dev_dir, dev_speed = jax.lax.map(parts, (xs, ts))  # (k, n) each
    w = jnp.full((k,), 1.0 / (k - 1)).at[0].set(0.5 / (k - 1)).at[-1].set(0.5 / (k - 1)).astype(xs.dtype)
    norm = jnp.mean(c_norm**2)
    return (jnp.mean(jnp.tensordot(w, dev_dir, axes=1)) / norm,
            jnp.mean(jnp.tensordot(w, dev_speed, axes=1)) / norm)


def to_rectified(path: GaussianPath, x: ArrayLike, t: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """The rectified path's coordinates of a point ``x`` at time ``t`` of ``path``:
    ``(x / (a(t) + b(t)), tau)`` with tau = b(t) / (a(t) + b(t)).

    Dividing x_t = a x_0 + b z by a + b gives (1 - tau) x_0 + tau z, the rectified path at
    time tau: the marginals match, and so do the flows of the two marginal velocities.
    The VP probability flow's trajectory from z, divided by a + b, is the rectified
    flow's trajectory from z / (a(1) + b(1)) at the times tau(t) (Kingma and Gao 2023;
    Lipman et al. 2024; chapter 8). For the VP path a^2 + b^2 = 1, so the scale a + b
    lies in [1, sqrt 2]. ``x`` is ``(n, *dims)`` and ``t`` a scalar or ``(n,)``; tau has
    the shape of ``t``.
    """
    if not isinstance(path, GaussianPath):
        raise TypeError(f"path: expected a companion.paths path, got {type(path).__name__}")
    x = _check_data(x, "x")
    t = check_times(t)
    a, b = path.a(t), path.b(t)
    return x / batch_broadcast(a + b, x), b / (a + b)
