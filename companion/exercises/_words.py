"""How a checker states the size of a mistake without giving the answer away (internal).

With the reader's own value, a ratio or an error printed to three digits recovers the
reference; these say it in words, or to an order of magnitude (issue 26).
"""

from __future__ import annotations

import numpy as np

__all__ = ["error_size", "factor_words"]


def error_size(err: float) -> str:
    """An error, in multiples of the tolerance, to its order of magnitude only: with the
    reader's own value, three digits of it would give the reference away (issue 26)."""
    if err < 10:
        return "less than 10 times the tolerance"
    decade = int(np.floor(np.log10(err)))
    return f"between 10^{decade} and 10^{decade + 1} times the tolerance"


def factor_words(ratio: float) -> str:
    """How a reader's value compares with the right one, in words that do not give the
    right value away: "about twice", "about half", "about 3 times", "off by a factor
    close to 1", "of the wrong sign". Diagnoses use it instead of printing the ratio to
    three digits, which with the reader's own value would recover the reference."""
    r = float(ratio)
    if not np.isfinite(r) or r == 0:
        return "not a multiple of the right value"
    if r < 0:
        return "of the wrong sign" + ("" if abs(abs(r) - 1) > 0.1 else " (and about the right size)")
    big = max(r, 1 / r)
    if big < 1.5:
        return "off by a factor close to 1"
    words = {2: "twice", 3: "3 times", 4: "4 times"}
    n = round(big)
    if abs(big - n) > 0.25 * n or n > 4:
        size = f"about {10 ** round(np.log10(big)):g} times" if big >= 5 else "a few times"
        return f"{size} {'too large' if r > 1 else 'too small'}"
    if r > 1:
        return f"about {words[n]} the right value" if n in words else "a few times too large"
    return {2: "about half the right value", 3: "about a third of the right value",
            4: "about a quarter of the right value"}[n]
