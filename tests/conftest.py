"""Shared fixtures. `lab` gives a fresh namespace lab per test and always tears it down."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.lab import Lab, have_netns  # noqa: E402

_NETNS_REASON = have_netns()


@pytest.fixture
def lab():
    if _NETNS_REASON:
        pytest.skip(f"lab unavailable: {_NETNS_REASON}")
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def module_lab():
    if _NETNS_REASON:
        pytest.skip(f"lab unavailable: {_NETNS_REASON}")
    with Lab() as lab:
        yield lab
