"""The hidden tests of chapter 8 accept right answers and reject plausible wrong ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from companion import exercises, losses, paths, sde


def check(name, fn):
    return exercises.check(name, fn, verbose=False)


def _d(f, t):
    return jax.vmap(jax.grad(lambda s: f(s[None])[0]))(jnp.asarray(t, jnp.float32))


# ------------------------------------------------------------------------------ conditional_velocity


def cv_right(a, b, x0, z, t):
    return exercises.get("conditional_velocity").reference(a, b, x0, z, t)


def cv_right_central_difference(a, b, x0, z, t):
    t = np.asarray(t, np.float64)
    h = 1e-3
    da = (np.asarray(a(jnp.asarray(t + h))) - np.asarray(a(jnp.asarray(t - h)))) / (2 * h)
    db = (np.asarray(b(jnp.asarray(t + h))) - np.asarray(b(jnp.asarray(t - h)))) / (2 * h)
    return da[:, None] * x0 + db[:, None] * z


def cv_companion(a, b, x0, z, t):
    return paths.Rectified().conditional_velocity(jnp.asarray(x0), jnp.asarray(z), jnp.asarray(t))


class _Wrapped(paths.GaussianPath):  # a reader who wraps a and b in a path of the companion
    def __init__(self, a, b):
        self._a, self._b = a, b

    def a(self, t):
        return self._a(t)

    def b(self, t):
        return self._b(t)

    def da(self, t):
        return _d(self._a, t)

    def db(self, t):
        return _d(self._b, t)


# each known wrong answer, and the words its message must contain
CV_WRONG = {
    "the rectified velocity z - x0 (companion)": (cv_companion, "companion.paths"),
    "the companion's method on a wrapped path": (lambda a, b, x0, z, t: _Wrapped(a, b).conditional_velocity(
        jnp.asarray(x0, jnp.float32), jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32)),
        "companion.paths"),
    "the point x_t, not its velocity": (lambda a, b, x0, z, t: (
        np.asarray(a(jnp.asarray(t)))[:, None] * x0 + np.asarray(b(jnp.asarray(t)))[:, None] * z),
        "the point x_t itself"),
    "a' x0 + b z (one derivative forgotten)": (lambda a, b, x0, z, t: (
        _d(a, t)[:, None] * x0 + np.asarray(b(jnp.asarray(t)))[:, None] * z), "b(t) multiplies z"),
    "a x0 + b' z (the other derivative forgotten)": (lambda a, b, x0, z, t: (
        np.asarray(a(jnp.asarray(t)))[:, None] * x0 + _d(b, t)[:, None] * z), "a(t) multiplies x0"),
    "sign flipped (time running backwards)": (lambda a, b, x0, z, t: -cv_right(a, b, x0, z, t), "sign is flipped"),
    "x0 and z swapped": (lambda a, b, x0, z, t: _d(a, t)[:, None] * z + _d(b, t)[:, None] * x0, "swapped"),
}


@pytest.mark.parametrize("fn", [cv_right, cv_right_central_difference])
def test_conditional_velocity_accepts_right_answers(fn):
    assert check("conditional_velocity", fn)


@pytest.mark.parametrize("name", CV_WRONG, ids=list(CV_WRONG))
def test_conditional_velocity_rejects_and_names_wrong_answers(name, capsys):
    wrong, words = CV_WRONG[name]
    assert not exercises.check("conditional_velocity", wrong)
    assert words in capsys.readouterr().out


# ------------------------------------------------------------------------------ velocity_from_score


def vs_right(a, b, da, db, x, score):
    return da / a * x + (da * b**2 / a - db * b) * score


def vs_right_via_noise(a, b, da, db, x, score):
    z_hat = -b * score  # Tweedie
    return da / a * x + (db - da * b / a) * z_hat


class _Frozen(paths.GaussianPath):
    def __init__(self, a, b, da, db):
        self.c = (a, b, da, db)

    def a(self, t):
        return self.c[0] + 0 * t

    def b(self, t):
        return self.c[1] + 0 * t

    def da(self, t):
        return self.c[2] + 0 * t

    def db(self, t):
        return self.c[3] + 0 * t

    def b_db(self, t):
        return self.c[1] * self.c[3] + 0 * t


VS_WRONG = {
    "the companion's conversion": (lambda a, b, da, db, x, score: losses.velocity_from_score(
        _Frozen(a, b, da, db), lambda x, t: score)(x, jnp.full(x.shape[:1], 0.5)), "companion.losses"),
    "the VP probability flow drift (companion)": (lambda a, b, da, db, x, score: sde.VP().probability_flow_drift(
        lambda x, t: score, jnp.asarray(x), jnp.full(x.shape[:1], 0.5)), "probability_flow_drift"),
    "score term with the wrong sign": (
        lambda a, b, da, db, x, score: da / a * x - (da * b**2 / a - db * b) * score, "wrong sign"),
    "a' b^2 / a term forgotten": (lambda a, b, da, db, x, score: da / a * x - db * b * score, "is missing"),
    "E[z | x] = +b score": (
        lambda a, b, da, db, x, score: da / a * x + (db - da * b / a) * b * score, "wrong sign"),
    "b' instead of b b'": (lambda a, b, da, db, x, score: da / a * x + (da * b**2 / a - db) * score,
                           "b' multiplies the score"),
    "the score used as the noise prediction": (
        lambda a, b, da, db, x, score: da / a * x + (db - da * b / a) * score, "used as the noise prediction"),
    "the x term dropped": (lambda a, b, da, db, x, score: (da * b**2 / a - db * b) * score,
                           "the term (a'/a) x is missing"),
    "a' x instead of (a'/a) x": (lambda a, b, da, db, x, score: da * x + (da * b**2 / a - db * b) * score,
                                 "divides it by a"),
}


@pytest.mark.parametrize("fn", [vs_right, vs_right_via_noise])
def test_velocity_from_score_accepts_right_answers(fn):
    assert check("velocity_from_score", fn)


@pytest.mark.parametrize("name", VS_WRONG, ids=list(VS_WRONG))
def test_velocity_from_score_rejects_and_names_wrong_answers(name, capsys):
    wrong, words = VS_WRONG[name]
    assert not exercises.check("velocity_from_score", wrong)
    assert words in capsys.readouterr().out


# ------------------------------------------------------------------------------ fm_fisher_weight


def fw_right(a, b, da, db):
    return (da * b**2 / a - db * b) ** 2


def fw_right_from_noise_weight(a, b, da, db):
    return b**2 * (db - da * b / a) ** 2  # lambda = s^2 times the noise-prediction weight


def fw_companion_vp(a, b, da, db):
    t = jnp.linspace(0.05, 0.95, np.shape(a)[0])  # the VP answer, g^4 / 4, ignoring the path given
    return losses.weighting_fn(sde.VP(), "likelihood")(t) ** 2 / 4


# each known wrong answer, and the words its message must contain (None: rejected, no diagnosis)
FW_WRONG = {
    "the VP weight g^4/4 (companion)": (fw_companion_vp, None),
    "the noise-prediction weight (no factor b^2)": (lambda a, b, da, db: (db - da * b / a) ** 2,
                                                    "noise-prediction error"),
    "not squared": (lambda a, b, da, db: np.abs(da * b**2 / a - db * b), "no square"),
    "not squared, signed": (lambda a, b, da, db: da * b**2 / a - db * b, "no square"),
    "b' instead of b b'": (lambda a, b, da, db: (da * b**2 / a - db) ** 2, "b' appears where"),
    "a' b / a instead of a' b^2 / a": (lambda a, b, da, db: (da * b / a - db * b) ** 2, "a factor b is missing"),
    "the inverse weight": (lambda a, b, da, db: 1 / (da * b**2 / a - db * b) ** 2, "the inverse"),
    "a stray 1/2": (lambda a, b, da, db: 0.5 * (da * b**2 / a - db * b) ** 2, "1/2"),
}


@pytest.mark.parametrize("fn", [fw_right, fw_right_from_noise_weight])
def test_fm_fisher_weight_accepts_right_answers(fn):
    assert check("fm_fisher_weight", fn)


@pytest.mark.parametrize("name", FW_WRONG, ids=list(FW_WRONG))
def test_fm_fisher_weight_rejects_and_names_wrong_answers(name, capsys):
    wrong, words = FW_WRONG[name]
    assert not exercises.check("fm_fisher_weight", wrong)
    if words:
        assert words in capsys.readouterr().out


def test_fm_fisher_weight_second_hint_does_not_state_the_answer():
    hint2 = exercises.get("fm_fisher_weight").hint2
    for leak in ("coefficient squared", "squared times", "the square of", "g^4"):
        assert leak not in hint2, leak


def test_chapter_8_exercises_are_registered_in_book_order():
    names = exercises.names()
    ours = ["conditional_velocity", "velocity_from_score", "fm_fisher_weight"]
    assert [n for n in names if n in ours] == ours
    assert all(exercises.get(n).chapter == 8 for n in ours)
    for n in ours:
        ex = exercises.get(n)
        assert ex.hint and ex.hint2
        for hint in (ex.hint, ex.hint2):  # no formula of the answer in a hint
            for code in ("da / a", "db * b", "b**2", "jax.grad(lambda"):
                assert code not in hint, (n, code)
