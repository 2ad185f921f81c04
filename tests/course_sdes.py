"""The course's three forward SDEs, shared by the test files.

The settings are those of chapter 2 (Song et al. 2021): VE with sigma in [0.01, 50],
VP and sub-VP with beta in [0.1, 20]. A plain module rather than ``conftest.py``:
``tests/`` and ``tests/exercises/`` each have a ``conftest``, and which one the name
``conftest`` means depends on the order pytest imports them, so tests import this.
SDEs are frozen dataclasses, so sharing one instance between tests shares nothing
mutable.
"""

from companion import sde as sdes

SDES = {
    "VE": sdes.VE(sigma_min=0.01, sigma_max=50.0),
    "VP": sdes.VP(beta_min=0.1, beta_max=20.0),
    "SubVP": sdes.SubVP(beta_min=0.1, beta_max=20.0),
}
