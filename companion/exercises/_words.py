"""How a checker states the size of a mistake without giving the answer away (internal).

With the reader's own value, a ratio or an error printed to three digits recovers the
reference; :func:`error_size` says it to an order of magnitude only, :func:`factor_words`
names a factor in words ("about twice the right value") and only one that says something
(issue 26).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["error_size", "factor_words"]

# The factors a diagnosis may name, in words.
_NAMES = {2.0: "about twice", 0.5: "about half", math.sqrt(2): "about sqrt(2) times",
          1 / math.sqrt(2): "about 1/sqrt(2) times"}


def error_size(err: float) -> str:
    """An error, in multiples of the tolerance, to its order of magnitude only: with the
    reader's own value, three digits of it would give the reference away (issue 26)."""
    if err < 10:
        return "less than 10 times the tolerance"
    decade = int(np.floor(np.log10(err)))
    return f"between 10^{decade} and 10^{decade + 1} times the tolerance"


def factor_words(ratio: float, right: str = "the right value", *,
                 factors: tuple[float, ...] = (2.0, 0.5), within: float = 0.05,
                 near_one: float = 0.2) -> str:
    """``ratio`` (the reader's value over the reference) in words, about ``right`` (what
    the sentence calls the reference: "the right one", "the right value").

    A factor of ``factors`` (2, 1/2, sqrt(2), 1/sqrt(2) or -1) is named when the ratio is
    within ``within`` (relative) of it; otherwise only "close to 1" (within ``near_one``),
    "larger than" or "smaller than". Never finer than that: every band is wider than any
    exercise's tolerance (at most 1e-3 relative), so dividing the reader's value by the
    named factor does not land on the answer unless the mistake is exactly that factor.
    """
    for value in factors:
        if abs(ratio / value - 1) < within:
            if value == -1:
                return "the right size with the wrong sign"
            return next(f"{n} {right}" for v, n in _NAMES.items() if math.isclose(v, value))
    if abs(ratio - 1) < near_one:
        return f"off by a factor close to 1 from {right} (a small term missing or extra?)"
    if ratio < 0:
        return f"of the opposite sign to {right}"
    return f"{'larger' if ratio > 1 else 'smaller'} than {right}"
