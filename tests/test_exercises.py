"""The exercise framework: registry, book order, argument errors, references pass."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from companion import exercises
from companion.exercises import _calling, _core, _progress
from companion.exercises._core import exercise


@pytest.fixture(autouse=True)
def progress_file(tmp_path, monkeypatch):
    """Every test gets its own progress file (never the reader's real one)."""
    path = tmp_path / "data" / "progress.json"
    monkeypatch.setenv(_progress.PROGRESS_ENV, str(path))
    return path


def test_names_are_in_book_order():
    names = exercises.names()
    chapters = [exercises.get(n).chapter for n in names]
    assert chapters == sorted(chapters)
    assert len(names) == len(set(names))
    chapter1 = [n for n in names if exercises.get(n).chapter == 1]
    assert chapter1 == ["euler_step", "heun_step", "convergence_order", "measure_order"]


def test_unknown_name_raises_value_error_naming_the_argument():
    with pytest.raises(ValueError, match="name"):
        exercises.check("no_such_exercise", lambda *a: None)


def test_name_that_is_not_a_string_raises_type_error():
    with pytest.raises(TypeError, match="name"):
        exercises.check(42, lambda *a: None)


@pytest.mark.parametrize("fn", [None, 3.0, "euler_step"])
def test_non_callable_fn_raises_type_error_naming_the_argument(fn):
    with pytest.raises(TypeError, match="fn"):
        exercises.check("euler_step", fn)


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="euler_step"):
        exercise("euler_step", chapter=1, hint="", reference=print)(lambda fn: None)


@pytest.mark.parametrize("name", exercises.names())
def test_every_reference_passes_its_own_check(name, capsys):
    ex = exercises.get(name)
    assert ex.hint and isinstance(ex.chapter, int) and ex.chapter >= 1
    assert exercises.check(name, ex.reference) is True
    assert capsys.readouterr().out.startswith(f"✓ {name}")


def test_hint_gives_the_second_hint_as_text():
    for name in exercises.names():
        text = exercises.hint(name)
        assert isinstance(text, str) and text.startswith(name)
        assert repr(text) == str(text)  # a notebook shows it without quotes
        ex = exercises.get(name)
        assert (ex.hint2 or ex.hint) in text


def test_hint_of_an_unknown_exercise_raises_value_error():
    with pytest.raises(ValueError, match="name"):
        exercises.hint("no_such_exercise")


def test_a_failure_points_to_the_second_hint(capsys):
    exercises.check("euler_step", lambda f, y, t, h: y)
    out = capsys.readouterr().out
    assert "Hint:" in out
    if exercises.get("euler_step").hint2:
        assert "exercises.hint('euler_step')" in out


def test_progress_starts_empty_and_records_passes(progress_file):
    p = exercises.progress()
    assert list(p) == exercises.names() and not any(p.values())
    ex = exercises.get("euler_step")
    assert exercises.check("euler_step", ex.reference, verbose=False)
    assert not exercises.check("heun_step", lambda f, y, t, h: y, verbose=False)
    p = exercises.progress()
    assert p.passed == ["euler_step"]
    assert "1 of" in repr(p) and "✓ euler_step" in repr(p) and "· heun_step" in repr(p)
    assert "euler_step" in json.loads(progress_file.read_text())["passed"]


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", '{"passed": 3}', "\x00\xff"])
def test_a_corrupt_progress_file_is_no_progress(progress_file, content):
    progress_file.parent.mkdir(parents=True)
    progress_file.write_text(content)
    assert not any(exercises.progress().values())
    # and the next pass repairs it
    assert exercises.check("euler_step", exercises.get("euler_step").reference, verbose=False)
    assert exercises.progress().passed == ["euler_step"]


def test_an_unwritable_progress_file_never_breaks_check(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(_progress.PROGRESS_ENV, str(blocker / "sub" / "progress.json"))
    assert exercises.check("euler_step", exercises.get("euler_step").reference, verbose=False)
    assert not any(exercises.progress().values())


def test_progress_is_kept_across_kernels(progress_file):
    # A pass in one Python process is seen by a fresh one.
    code = (
        "from companion import exercises as e; import sys; "
        "ok = e.check('euler_step', e.get('euler_step').reference, verbose=False); "
        "sys.exit(0 if ok else 1)"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    code = "from companion import exercises as e; print(e.progress().passed)"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "['euler_step']"


@pytest.mark.parametrize(
    "platform, env, expected",
    [
        ("linux", {"XDG_DATA_HOME": "/xdg"}, "/xdg/score-sde-course/progress.json"),
        ("linux", {}, "HOME/.local/share/score-sde-course/progress.json"),
        ("darwin", {}, "HOME/Library/Application Support/score-sde-course/progress.json"),
        ("win32", {"APPDATA": "/appdata"}, "/appdata/score-sde-course/progress.json"),
    ],
)
def test_progress_path_follows_the_platform(monkeypatch, platform, env, expected):
    monkeypatch.delenv(_progress.PROGRESS_ENV)
    for var in ("XDG_DATA_HOME", "APPDATA"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(_progress.sys, "platform", platform)
    home = str(_progress.Path.home())
    assert str(exercises.progress_path()) == expected.replace("HOME", home)


def _code_lines(fn):
    """The reference's code: each statement line without comments and blanks, spaces removed."""
    import inspect
    import textwrap

    src = textwrap.dedent(inspect.getsource(fn))
    body = src.split('"""')[-1] if '"""' in src else src  # drop the docstring
    lines = []
    for line in body.splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("return "):
            line = line[len("return "):]
        if line.startswith(("def ", "@", "import ", "from ")):
            continue
        code = "".join(line.split())
        if "=" in code and "==" not in code and not code.startswith("("):
            code = code.split("=", 1)[1]  # the right-hand side is the formula
        if len(code) >= 8:
            lines.append(code)
    return lines


@pytest.mark.parametrize("name", exercises.names())
def test_no_hint_contains_the_reference_code(name):
    ex = exercises.get(name)
    assert ex.hint2, f"{name} has no second hint"
    for text in (ex.hint, ex.hint2):
        flat = "".join(text.split())
        for code in _code_lines(ex.reference):
            assert code not in flat, (name, code)


def test_the_code_line_extraction_has_power():
    # A hint that pastes a line of the reference is caught.
    def reference(y, h, k):
        """doc"""
        new = y + h * k(y, h)  # a comment
        return new

    pasted = "Just compute y + h * k(y, h) and return it."
    assert any(code in "".join(pasted.split()) for code in _code_lines(reference))


@pytest.mark.parametrize("name", exercises.names())
def test_the_library_equivalents_are_refused(name):
    """Every blocked library function, called inside the reader's function, fails kindly."""
    ex = exercises.get(name)
    for path in ex.blocked:
        owner, attr, original = _core._resolve(path)

        def calls_it(*args, **kwargs):
            return original(*args, **kwargs)

        with _core.blocking(ex.blocked, calls_it):
            replaced = getattr(owner, attr)
            with pytest.raises(_core.WriteItYourself, match="write it yourself"):
                replaced()
        assert owner.__dict__.get(attr, getattr(owner, attr)) is not None
        restored = getattr(owner, attr)
        assert restored is original or getattr(restored, "__func__", None) is getattr(
            original, "__func__", original)


# ------------------------------------------------------------------ a second check is free


@pytest.fixture
def counted(monkeypatch):
    """A throwaway exercise 'twice' (chapter 1) whose hidden test counts its runs and
    passes for a function returning 2; the result cache starts empty."""
    runs = []

    def test(fn):
        runs.append(fn)
        if fn() != 2:
            raise _core.Mismatch("twice: not 2")

    ex = _core.Exercise("twice", 1, "think of 1 + 1", test, lambda: 2, "really, 1 + 1")
    monkeypatch.setitem(_core._REGISTRY, "twice", ex)
    monkeypatch.setattr(_core, "_LAST", {})
    return runs


def test_a_second_check_of_the_same_function_reuses_the_first(counted, capsys):
    def answer():
        return 2

    assert exercises.check("twice", answer) is True
    first = capsys.readouterr().out
    assert exercises.check("twice", answer, verbose=False) is True  # the hidden assert
    assert exercises.check("twice", answer) is True
    again = capsys.readouterr().out
    # the same verdict, and the report says it is the last check's, not a fresh one
    assert again.startswith(first.rstrip("\n")) and "this is that check's result" in again
    assert "this is that check's result" not in first
    assert len(counted) == 1


def test_a_second_check_of_a_wrong_answer_reuses_the_failure(counted, capsys):
    def answer():
        return 3

    assert exercises.check("twice", answer) is False
    first = capsys.readouterr().out
    assert "Hint:" in first
    assert exercises.check("twice", answer) is False
    assert capsys.readouterr().out == first.rstrip("\n") + _core.REPEATED + "\n"
    assert len(counted) == 1


def test_a_redefined_or_different_function_is_checked_afresh(counted):
    namespace = {}
    source = "def answer():\n    return {}\n"
    exec(source.format(3), namespace)
    assert not exercises.check("twice", namespace["answer"], verbose=False)
    exec(source.format(2), namespace)  # the reader fixes the cell and runs it again
    assert exercises.check("twice", namespace["answer"], verbose=False)
    exec(source.format(2), namespace)  # the same code, a new function object
    assert exercises.check("twice", namespace["answer"], verbose=False)
    assert exercises.check("twice", lambda: 2, verbose=False)
    assert len(counted) == 4


def test_a_rebound_global_or_changed_default_is_checked_afresh(counted):
    namespace = {"helper": lambda: 2}
    exec("def answer(k=1):\n    return helper() * k\n", namespace)
    answer = namespace["answer"]
    assert exercises.check("twice", answer, verbose=False)
    namespace["helper"] = lambda: 3  # a helper cell edited and run again
    assert not exercises.check("twice", answer, verbose=False)
    namespace["helper"] = lambda: 1
    answer.__defaults__ = (2,)
    assert exercises.check("twice", answer, verbose=False)
    assert len(counted) == 3

    def outer(value):
        def closure():
            return value

        return closure

    assert exercises.check("twice", outer(2), verbose=False)
    assert not exercises.check("twice", outer(5), verbose=False)
    assert len(counted) == 5


def test_a_cached_pass_is_still_recorded_in_the_progress_file(
    counted, monkeypatch, tmp_path
):
    def answer():
        return 2

    assert exercises.check("twice", answer, verbose=False)
    elsewhere = tmp_path / "elsewhere.json"
    monkeypatch.setenv(_progress.PROGRESS_ENV, str(elsewhere))
    assert exercises.check("twice", answer, verbose=False)
    assert len(counted) == 1
    assert "twice" in json.loads(elsewhere.read_text())["passed"]


def test_callables_that_are_not_functions_are_always_checked(counted):
    class Answer:
        def __call__(self):
            return 2

    answer = Answer()
    assert exercises.check("twice", answer, verbose=False)
    assert exercises.check("twice", answer, verbose=False)
    assert len(counted) == 2


def test_a_real_exercise_runs_its_hidden_tests_once_per_function(monkeypatch):
    ex = exercises.get("euler_step")
    runs = []

    def counting(fn):
        runs.append(fn)
        ex.test(fn)

    monkeypatch.setitem(
        _core._REGISTRY, "euler_step", dataclasses.replace(ex, test=counting)
    )
    monkeypatch.setattr(_core, "_LAST", {})

    def euler_step(f, y, t, h):
        return y + h * f(y, t)

    assert exercises.check("euler_step", euler_step, verbose=False)
    assert exercises.check("euler_step", euler_step, verbose=False)
    assert not exercises.check("euler_step", lambda f, y, t, h: y, verbose=False)
    assert len(runs) == 2


# ------------------------------------------------------------ calling the reader's function


def test_call_compiled_gives_what_the_function_gives():
    import jax.numpy as jnp
    import numpy as np

    def f(x, c):
        return x * c + 1

    x = jnp.arange(3.0)
    np.testing.assert_allclose(_calling.call_compiled(f, x, 2.0), f(x, 2.0))
    cases = [(jnp.arange(3.0), 2.0), (jnp.ones((2, 2)), -1.0)]
    for got, args in zip(_calling.call_compiled_each(f, cases), cases):
        np.testing.assert_allclose(got, f(*args))


def test_call_compiled_each_traces_every_case_into_one_program():
    import jax
    import jax.numpy as jnp

    seen = []

    def f(x):
        seen.append(isinstance(x, jax.core.Tracer))
        return x + 1

    out = list(_calling.call_compiled_each(f, [(jnp.zeros(2),), (jnp.zeros(3),)]))
    assert [o.shape for o in out] == [(2,), (3,)]
    assert seen == [True, True]  # each case traced once, none run op by op


def test_a_function_that_cannot_be_traced_is_called_as_it_is_case_by_case():
    import jax.numpy as jnp
    import numpy as np

    def f(x):
        if float(x[0]) > 0:  # Python control flow on a value: not traceable
            raise ValueError("a positive first entry")
        return x * 2

    assert float(_calling.call_compiled(f, jnp.full(2, -1.0))[0]) == -2.0
    results = _calling.call_compiled_each(f, [(jnp.zeros(2),), (jnp.ones(2),)])
    np.testing.assert_allclose(next(results), 0.0)  # the first case, before the failure
    with pytest.raises(ValueError, match="positive"):
        next(results)


# ------------------------------------------- stale verdicts (issue 27): contents, not names

MUTABLE_ANSWER = {"value": 5}
ANSWER_ROWS = np.array([5.0])


def test_a_global_fixed_in_place_gets_a_fresh_check(counted):
    def answer():
        return MUTABLE_ANSWER["value"]

    assert not exercises.check("twice", answer, verbose=False)
    MUTABLE_ANSWER["value"] = 2  # the learner fixes the dict entry, not the function
    try:
        assert exercises.check("twice", answer, verbose=False)
    finally:
        MUTABLE_ANSWER["value"] = 5
    assert len(counted) == 2


def test_an_array_element_fixed_in_place_gets_a_fresh_check(counted):
    def helper():  # read through a helper function: its globals count too
        return float(ANSWER_ROWS[0])

    def answer():
        return helper()

    assert not exercises.check("twice", answer, verbose=False)
    ANSWER_ROWS[0] = 2.0
    try:
        assert exercises.check("twice", answer, verbose=False)
    finally:
        ANSWER_ROWS[0] = 5.0
    assert not exercises.check("twice", answer, verbose=False)
    assert len(counted) == 3


def test_an_unchanged_mutable_global_still_reuses_the_verdict(counted):
    def answer():
        return MUTABLE_ANSWER["value"] - 3

    assert exercises.check("twice", answer, verbose=False)
    assert exercises.check("twice", answer, verbose=False)
    assert len(counted) == 1


def test_a_global_whose_contents_cannot_be_read_is_never_cached(counted):
    import threading

    lock = threading.Lock()  # pickle refuses it

    def answer():
        with lock:
            return 2

    assert exercises.check("twice", answer, verbose=False)
    assert exercises.check("twice", answer, verbose=False)
    assert len(counted) == 2


# ---------------------- the checker's own calls are never attributed to the reader (issue 27)


@pytest.fixture
def inverse_exercise(monkeypatch):
    """A throwaway exercise that refuses numpy.linalg.inv in the reader's code and whose
    own near-miss diagnosis calls numpy.linalg.inv, as gaussian_log_prob's did."""
    a = np.array([[2.0, 0.0], [0.0, 4.0]])

    def test(fn):
        got = fn(a)
        ret = got() if callable(got) else got
        if not np.allclose(ret, 0.5 * np.log(8.0)):
            if np.allclose(ret, np.log(8.0)):
                np.linalg.inv(a)  # the checker's own computation
                raise _core.Mismatch("the factor 1/2 is missing")
            raise _core.Mismatch("wrong value")

    ex = _core.Exercise("halflogdet", 1, "half of a log-determinant", test,
                        lambda a: 0.5 * np.linalg.slogdet(a)[1], "a second hint",
                        blocked=("numpy.linalg:inv",))
    monkeypatch.setitem(_core._REGISTRY, "halflogdet", ex)
    monkeypatch.setattr(_core, "_LAST", {})


def test_a_near_miss_gets_its_diagnosis_and_hint_not_an_accusation(inverse_exercise, capsys):
    def near_miss(a):
        return np.linalg.slogdet(a)[1]

    assert not exercises.check("halflogdet", near_miss)
    out = capsys.readouterr().out
    assert "the factor 1/2 is missing" in out and "Hint: half of a log-determinant" in out
    assert "Stuck?" in out and "your function calls" not in out


def test_the_readers_own_blocked_call_is_still_refused(inverse_exercise, capsys):
    def uses_inv(a):
        return -0.5 * np.log(np.linalg.det(np.linalg.inv(a)))

    assert not exercises.check("halflogdet", uses_inv)
    assert "numpy.linalg.inv, which forms an inverse" in capsys.readouterr().out

    def returns_a_function_that_uses_inv(a):
        return lambda: -0.5 * np.log(np.linalg.det(np.linalg.inv(a)))

    assert not exercises.check("halflogdet", returns_a_function_that_uses_inv)
    assert "forms an inverse" in capsys.readouterr().out
    assert np.linalg.inv(np.eye(2)).shape == (2, 2)  # put back after the check


def test_the_right_answer_passes_under_the_watch(inverse_exercise):
    assert exercises.check("halflogdet", lambda a: 0.5 * np.linalg.slogdet(a)[1], verbose=False)


# ------------------------------------ errors to an order of magnitude, never finer than a tolerance


def test_the_generic_mismatch_gives_the_error_to_its_order_of_magnitude_only():
    want = np.array([1.0, 2.0, 3.0])
    with pytest.raises(_core.Mismatch) as e:
        _core.expect_close(want * 1.0123, want, what="x", rtol=1e-6, atol=0.0)
    said = str(e.value)
    assert "3 of 3 values differ" in said and "between 10^4 and 10^5 times the tolerance" in said
    assert "1.23" not in said and "12300" not in said  # no digits that give the ratio away
    assert _core.error_size(3.7) == "less than 10 times the tolerance"


def test_a_factor_is_named_in_words_and_never_finer_than_any_tolerance():
    """factor_words names 2, 1/2, sqrt(2), 1/sqrt(2), -1 or 'close to 1', never a number:
    its narrowest band (2 % around a named factor) is 20 times the loosest exercise
    tolerance (rtol 1e-3), so a reader's value over the named factor is not the answer
    unless the mistake is exactly that factor."""
    import re

    from companion.exercises._words import factor_words

    every = (2.0, 0.5, 2**0.5, 2**-0.5, -1.0)
    for ratio in (2.0004, 0.4991, 1.37, 0.93, 1.004, 2**0.5 * 1.01, -1.01, -3.0, 40.0, 1e-3):
        said = factor_words(ratio, "the right one", factors=every)
        assert not re.search(r"\d\.\d|\d{2}", said), said
    assert factor_words(2.01) == "about twice the right value"
    assert factor_words(0.49, "the right one") == "about half the right one"
    assert factor_words(-1.0, factors=every) == "the right size with the wrong sign"
    assert factor_words(2.3) == "larger than the right value"  # not "about twice"
    assert "close to 1" in factor_words(1.05) and "close to 1" not in factor_words(1.3)


@pytest.fixture
def blocked_exercise(monkeypatch):
    """A throwaway exercise whose answer np.linalg.det already computes (blocked)."""
    def test(fn):
        if not np.isclose(fn(np.diag([2.0, 3.0])), 6.0):
            raise _core.Mismatch("not the determinant")

    ex = _core.Exercise("det2", 1, "multiply", test, lambda a: np.prod(np.diag(a)), "diagonal",
                        ("numpy.linalg:det",))
    monkeypatch.setitem(_core._REGISTRY, "det2", ex)


def test_a_blocked_function_is_refused_when_held_in_a_default_or_a_closure(blocked_exercise, capsys):
    def held_in_a_default(a, det=np.linalg.det):
        return det(a)

    def make(det):
        return lambda a: det(a)

    for answer in (held_in_a_default, make(np.linalg.det)):
        assert not exercises.check("det2", answer)
        assert "already computes the answer" in capsys.readouterr().out
    assert np.linalg.det(np.eye(2)) == 1.0 and held_in_a_default.__defaults__[0] is np.linalg.det
    assert exercises.check("det2", lambda a: np.prod(np.diag(a)), verbose=False)
