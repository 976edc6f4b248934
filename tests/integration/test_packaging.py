"""Release hygiene a packager checks: the sdist and wheel build from a clean copy of the
tree, `twine check --strict` passes on both, the metadata carries the SPDX license
expression, classifiers and project URLs, and the license text and package data ship."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("build", reason="build not installed (pip install build)")
pytest.importorskip("twine", reason="twine not installed (pip install twine)")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "agent", src / "agent",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel",
                        "--outdir", str(out), str(src)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "deprecated" not in (r.stdout + r.stderr).lower().replace(
        "pkg_resources is deprecated", ""), r.stderr[-3000:]
    return out


def test_twine_check_strict_passes(dist):
    files = sorted(str(p) for p in dist.iterdir())
    assert len(files) == 2
    r = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("PASSED") == 2


def test_wheel_metadata_and_contents(dist):
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(meta_name))
        lic = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        assert b"Apache License" in z.read(lic) and b"Version 2.0" in z.read(lic)
    assert meta["License-Expression"] == "Apache-2.0"
    assert not [c for c in meta.get_all("Classifier") if c.startswith("License ::")]
    assert "Topic :: System :: Networking :: Firewalls" in meta.get_all("Classifier")
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Issues", "Changelog"} <= set(urls)
    for data in ("nodeward/catalog.yaml", "nodeward/findings.yaml"):
        assert data in names


def test_sdist_carries_license_and_changelog(dist):
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml"} <= names


def test_license_is_the_verbatim_apache_text():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0")
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply" in text
    import hashlib

    # md5 of the canonical https://www.apache.org/licenses/LICENSE-2.0.txt
    assert hashlib.md5(text.encode()).hexdigest() == "3b83ef96387f14655fc854ddc3c6bd57"
