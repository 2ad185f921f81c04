"""Fixtures shared by the test files: the course's three forward SDEs.

The settings are those of chapter 2 (Song et al. 2021): VE with sigma in [0.01, 50],
VP and sub-VP with beta in [0.1, 20]. ``any_sde`` runs a test once per SDE (ids ``VE``,
``VP``, ``SubVP``); ``ve``, ``vp`` and ``subvp`` give one of them. SDEs are frozen
dataclasses, so sharing one instance between tests shares nothing mutable.
"""

from __future__ import annotations

import pytest

from companion import sde as sdes

SDES = {
    "VE": sdes.VE(sigma_min=0.01, sigma_max=50.0),
    "VP": sdes.VP(beta_min=0.1, beta_max=20.0),
    "SubVP": sdes.SubVP(beta_min=0.1, beta_max=20.0),
}


@pytest.fixture(params=list(SDES))
def any_sde(request) -> sdes.LinearSDE:
    """Each of the three SDEs in turn."""
    return SDES[request.param]


@pytest.fixture
def ve() -> sdes.VE:
    return SDES["VE"]


@pytest.fixture
def vp() -> sdes.VP:
    return SDES["VP"]


@pytest.fixture
def subvp() -> sdes.SubVP:
    return SDES["SubVP"]
