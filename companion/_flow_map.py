"""The probability flow's solution map, one adaptive solve per sample (chapters 5 and 9).

Internal: :mod:`companion.ode_sampling` re-exports :func:`flow_map` (documented there) and
builds its encoder and decoder on :func:`solve_each`. Kept apart so that each module stays
small (tests/test_layout.py).
"""

from __future__ import annotations

import functools
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from companion._common import check_int, check_positive, check_score_fn, traceable
from companion.sde import LinearSDE, ScoreFn

__all__ = ["FORWARD_ONLY", "solve_each", "flow_map"]

# The solves here are never differentiated in reverse mode; diffrax's default adjoint
# (RecursiveCheckpointAdjoint) wraps the loop for that, ForwardMode leaves a plain loop:
# the same solution, ~25 % less compile time (measured on the exact mixture flow).
FORWARD_ONLY = diffrax.ForwardMode()


@functools.partial(jax.jit, static_argnames=("sde", "solver", "max_steps"))
def _solve_each(sde, score_fn, x, t0, t1, rtol, atol, solver, max_steps):
    def velocity(t, y, args):
        return sde.probability_flow_drift(score_fn, y, t)

    def solve(xi, t0, t1):  # one sample, its own times and adaptive steps
        return diffrax.diffeqsolve(diffrax.ODETerm(velocity), solver, t0, t1, None, xi[None],
                                   saveat=diffrax.SaveAt(t1=True), max_steps=max_steps,
                                   stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                                   adjoint=FORWARD_ONLY).ys[0, 0]

    return jax.vmap(solve)(x, t0, t1)


def solve_each(sde: LinearSDE, score_fn: ScoreFn, x: jax.Array, t0: Any, t1: Any, rtol: float, atol: float,
               solver: diffrax.AbstractRungeKutta, max_steps: int) -> jax.Array:
    """Each sample of ``x`` ``(n, *dims)`` carried by the probability flow ODE from its
    time in ``t0`` to its ``t1`` (scalars or ``(n,)``), with its own adaptive steps
    (``PIDController(rtol, atol)``); the arguments checked, shape ``(n, *dims)``."""
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde: expected a companion.sde SDE (VE, VP, SubVP), got {type(sde).__name__}")
    check_score_fn(score_fn)
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x: expected shape (n, *dims), got {x.shape}")
    if not isinstance(solver, diffrax.AbstractRungeKutta):
        raise ValueError(f"solver: expected an explicit Runge-Kutta diffrax solver, got {type(solver).__name__}")
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    max_steps = check_int("max_steps", max_steps, 1)
    t0, t1 = (jnp.broadcast_to(jnp.asarray(v, x.dtype), x.shape[:1]) for v in (t0, t1))
    return _solve_each(sde, traceable(score_fn), x, t0, t1, rtol, atol, solver, max_steps)


def flow_map(sde: LinearSDE, score_fn: ScoreFn, x: jax.Array, t: Any, t_to: Any, *, rtol: float = 1e-5,
             atol: float = 1e-5, solver: diffrax.AbstractRungeKutta = diffrax.Tsit5(),
             max_steps: int = 8192) -> jax.Array:
    """The probability flow's solution map Phi_{t -> t_to}(x) (chapter 9): each point of
    ``x`` ``(n, *dims)``, at its time ``t``, carried by the probability flow ODE
    (chapter 5) to ``t_to``, backwards or forwards in time; shape ``(n, *dims)``.

    ``t`` and ``t_to`` are scalars or ``(n,)``, in ``(0, T]`` (``ValueError`` naming the
    argument otherwise, when known at trace time; ``t == t_to`` gives ``x``). Each sample
    is solved on its own by ``solver`` (Tsit5) with adaptive steps,
    ``PIDController(rtol, atol)``: about ``rtol`` relative accuracy, as
    :func:`companion.ode_sampling.encode`. Works under ``jax.jit``. With a mixture's exact
    score (:func:`companion.toy.exact_score`) and ``t_to = eps`` it is the exact
    consistency function f(x, t) = Phi_{t -> eps}(x), to the solver's tolerance.
    """
    n = jnp.shape(x)[0] if jnp.ndim(x) else 0
    for name, v in (("t", t), ("t_to", t_to)):
        if jnp.ndim(v) > 1 or (jnp.ndim(v) == 1 and jnp.shape(v)[0] != n):
            raise ValueError(f"{name}: expected a scalar or shape (n,) = ({n},), got shape {jnp.shape(v)}")
        if not isinstance(v, jax.core.Tracer) and not np.all((np.asarray(v) > 0) & (np.asarray(v) <= sde.T)):
            raise ValueError(f"{name}: every time must lie in (0, {sde.T}], got {v}")
    return solve_each(sde, score_fn, x, t, t_to, rtol, atol, solver, max_steps)
