"""Fixtures shared by the test files: the course's three forward SDEs (course_sdes.py).

``any_sde`` runs a test once per SDE (ids ``VE``,
``VP``, ``SubVP``); ``ve``, ``vp`` and ``subvp`` give one of them.
"""

from __future__ import annotations

import pytest

from course_sdes import SDES

from companion import sde as sdes


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
