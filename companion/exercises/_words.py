"""How a checker states the size of a mistake without giving the answer away (internal).

With the reader's own value, a ratio or an error printed to three digits recovers the
reference; :func:`error_size` says it to an order of magnitude only (issue 26). The
exercise modules that name a factor say it in words of their own context ("about twice
the right value").
"""

from __future__ import annotations

import numpy as np

__all__ = ["error_size"]


def error_size(err: float) -> str:
    """An error, in multiples of the tolerance, to its order of magnitude only: with the
    reader's own value, three digits of it would give the reference away (issue 26)."""
    if err < 10:
        return "less than 10 times the tolerance"
    decade = int(np.floor(np.log10(err)))
    return f"between 10^{decade} and 10^{decade + 1} times the tolerance"
