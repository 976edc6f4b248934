"""tests/deploy: when the first deploy test runs, start making the Debian trees the selected
tests need, side by side (a fresh machine downloads them at once, not one after another)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.deploy.harness import IMAGE_BASE, MACHINE, prefetch

NEEDS = {"test_image.py": IMAGE_BASE, "test_machine.py": MACHINE}


@pytest.fixture(scope="session", autouse=True)
def _prefetch_trees(request):
    if os.geteuid() == 0 and shutil.which("mmdebstrap"):
        selected = {item.path.name for item in request.session.items}
        prefetch(*(tree for module, tree in NEEDS.items() if module in selected))
    yield
