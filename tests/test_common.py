"""companion._common: the argument checks name the argument; the jit helpers make every
callable a valid jit argument (static by identity when unhashable, a model's weights
traced)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import _common, sde


def test_every_name_in_all_exists():
    assert all(hasattr(_common, name) for name in _common.__all__)


def test_check_sde_lives_next_to_linear_sde():
    sde.check_sde(sde.VP())
    with pytest.raises(TypeError, match="sde"):
        sde.check_sde("VP")
    assert not hasattr(_common, "check_sde")  # _common imports nothing of the companion


def test_uniform_time_runs_from_T_to_eps():
    ve = sde.VE()
    assert float(_common.uniform_time(ve, 0, 4, 0.2)) == pytest.approx(ve.T)
    assert float(_common.uniform_time(ve, 4, 4, 0.2)) == pytest.approx(0.2)


@pytest.mark.parametrize("shape", [(3,), (3, 2), [4, 1, 8, 8], (np.int64(2), 2)])
def test_check_shape_accepts_positive_ints(shape):
    assert _common.check_shape(shape) == tuple(int(n) for n in shape)


@pytest.mark.parametrize("shape", [(), 5, (0, 2), (2.0, 2), (True, 2), "12", None])
def test_check_shape_rejects(shape):
    with pytest.raises(ValueError, match="shape"):
        _common.check_shape(shape)


def test_check_int():
    assert _common.check_int("n", 3, 1) == 3 and _common.check_int("n", np.int32(0), 0) == 0
    for bad in (0, 2.5, True, "3", None):
        with pytest.raises(ValueError, match="n_steps"):
            _common.check_int("n_steps", bad, 1)


def test_check_positive():
    assert _common.check_positive("snr", 0.16) == 0.16 and _common.check_positive("snr", 2) == 2.0
    for bad in (0.0, -1.0, float("inf"), float("nan"), True, "1", None):
        with pytest.raises(ValueError, match="snr"):
            _common.check_positive("snr", bad)


def test_check_score_fn():
    _common.check_score_fn(lambda x, t: x)
    with pytest.raises(TypeError, match="score_fn"):
        _common.check_score_fn(None)


class Unhashable:
    __hash__ = None

    def __call__(self, x):
        return 2 * x


def test_static_wraps_only_unhashable_callables_by_identity():
    f = lambda x: x  # noqa: E731
    assert _common.static(f) is f
    u = Unhashable()
    a, b = _common.static(u), _common.static(u)
    assert hash(a) == hash(b) and a == b and a != _common.static(Unhashable())
    assert a(3) == 6


def test_traceable_traces_arrays_and_keeps_the_rest_static():
    @jax.jit
    def apply(fn, x):
        return fn(x)

    w1, w2 = jnp.float32(2.0), jnp.float32(3.0)
    f1 = jax.tree_util.Partial(lambda w, x: w * x, w1)
    f2 = jax.tree_util.Partial(lambda w, x: w * x, w2)  # another function object, same code
    t1 = _common.traceable(f1)
    assert len(jax.tree.leaves(t1)) == 1  # the weight is the only traced leaf
    np.testing.assert_allclose(apply(t1, 1.5), 3.0)
    assert float(apply(_common.traceable(Unhashable()), 1.5)) == 3.0  # unhashable: static by identity
    assert float(apply(_common.traceable(f2), 1.0)) == 3.0


def test_shared_time_and_norms():
    x = jnp.ones((3, 2, 2), jnp.float32)
    np.testing.assert_allclose(_common.norms(x), np.full(3, 2.0))
    shared = _common.shared_time(x, 0.5)  # what samplers pass: one time, a 0-d array
    assert shared.shape == () and shared.dtype == jnp.float32 and float(shared) == 0.5


def test_sq_norms_reduce_every_non_batch_axis():
    v = jnp.arange(12.0).reshape(3, 2, 2)
    expected = np.array([(np.arange(4.0) + 4 * i) @ (np.arange(4.0) + 4 * i) for i in range(3)])
    np.testing.assert_allclose(_common.sq_norms(v), expected)
    np.testing.assert_allclose(_common.norms(v), np.sqrt(expected), rtol=1e-6)


def test_check_x_names_the_argument():
    x = _common.check_x([[1.0, 2.0]], "x0")
    assert x.shape == (1, 2)
    with pytest.raises(ValueError, match="x0"):
        _common.check_x(1.0, "x0")
    with pytest.raises(TypeError, match="x0"):
        _common.check_x(jnp.ones((2, 2), jnp.int32), "x0")


def test_check_positive_int_separates_type_from_value():
    assert _common.check_positive_int("steps", 3) == 3
    for bad in (True, 2.0, "3"):
        with pytest.raises(TypeError, match="steps"):
            _common.check_positive_int("steps", bad)
    with pytest.raises(ValueError, match="steps"):
        _common.check_positive_int("steps", 0)
