"""Self-study exercises with hidden tests.

Each chapter ends with exercises: the reader writes a function and calls
``check(name, fn)``, which runs tests the reader does not see (random inputs compared
with a reference, edge cases) and prints pass or fail with a hint, never the answer::

    from companion import exercises
    exercises.names()                      # every exercise, in book order
    exercises.check("euler_step", my_euler_step)
    exercises.hint("euler_step")           # a second, more concrete hint
    exercises.progress()                   # which exercises you have passed so far
"""

from companion.exercises._core import (
    Mismatch,
    check,
    get,
    hint,
    names,
    progress,
)
from companion.exercises._progress import progress_path

# Importing a chapter's module registers its exercises (book order is by chapter number).
from companion.exercises import odes, orders  # noqa: F401  chapter 1
from companion.exercises import sdes, reverse  # noqa: F401  chapters 2 and 3
from companion.exercises import score_matching, flow  # noqa: F401  chapters 4, 5
from companion.exercises import mixtures, guidance  # noqa: F401  chapter 6
from companion.exercises import denoisers, images  # noqa: F401  chapter 7
from companion.exercises import flow_matching  # noqa: F401  chapter 8
from companion.exercises import few_steps  # noqa: F401  chapter 9

__all__ = ["check", "names", "get", "hint", "progress", "progress_path", "Mismatch"]
