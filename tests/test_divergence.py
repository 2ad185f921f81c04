"""companion.divergence: the exact divergence and the Skilling-Hutchinson estimate."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import divergence

A = jnp.array([[1.0, 2.0, 0.0], [-1.0, 0.5, 0.3], [0.2, 0.0, -2.0]])


def test_exact_divergence_of_a_linear_map_is_the_trace():
    x = jax.random.normal(jax.random.key(0), (5, 3))
    np.testing.assert_allclose(divergence.exact_divergence(lambda y: y @ A.T, x), np.full(5, float(jnp.trace(A))),
                               rtol=1e-6)


def test_exact_divergence_per_sample_and_for_image_shapes():
    f = lambda y: jnp.sin(y) * y  # elementwise: div = sum of d/dy (y sin y)
    x = jax.random.normal(jax.random.key(1), (4, 2, 3))
    want = jnp.sum(jnp.sin(x) + x * jnp.cos(x), axis=(1, 2))
    np.testing.assert_allclose(divergence.exact_divergence(f, x), want, rtol=1e-5, atol=1e-6)


def test_hutchinson_is_unbiased_and_exact_for_diagonal_jacobians_with_rademacher_probes():
    x = jnp.ones((2, 3))
    v = divergence.probes(jax.random.key(2), (20_000, 2, 3), kind="gaussian")
    est = divergence.hutchinson_divergence(lambda y: y @ A.T, x, v)
    # variance of v^T A v for Gaussian v: ||A||_F^2 + tr(A^2) = 2 ||sym A||_F^2
    sym = (A + A.T) / 2
    se = math.sqrt(2 * float(jnp.sum(sym**2)) / 20_000)
    assert np.all(np.abs(np.asarray(est) - float(jnp.trace(A))) < 4 * se)
    diag = jnp.diag(jnp.array([1.0, -3.0, 0.5]))
    r = divergence.probes(jax.random.key(3), (1, 2, 3))
    np.testing.assert_allclose(divergence.hutchinson_divergence(lambda y: y @ diag, x, r), [-1.5, -1.5], rtol=1e-6)


def test_probe_kind_and_shape_are_checked():
    with pytest.raises(ValueError, match="probe"):
        divergence.probes(jax.random.key(0), (2, 3), kind="uniform")
    with pytest.raises(ValueError, match="v"):
        divergence.hutchinson_divergence(lambda y: y, jnp.ones((2, 3)), jnp.ones((2, 2)))
