"""The exercise framework: registry, book order, argument errors, references pass."""

import pytest

from companion import exercises
from companion.exercises._core import exercise


def test_names_are_in_book_order():
    names = exercises.names()
    chapters = [exercises.get(n).chapter for n in names]
    assert chapters == sorted(chapters)
    assert len(names) == len(set(names))
    chapter1 = [n for n in names if exercises.get(n).chapter == 1]
    assert chapter1 == ["euler_step", "heun_step", "convergence_order"]


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
