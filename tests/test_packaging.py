"""The source distribution and the wheel, built as a user or PyPI builds them
(`python -m build`: the sdist, then the wheel from the sdist, each in an
isolated environment that pip fills from the package index): the sdist holds
everything needed to build, test and run shmmap, and its tests pass against
the wheel built from it."""
from __future__ import annotations

import email
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Directories shipped whole in the sdist, and what is never shipped.
SHIPPED_DIRS = ("cext", "tests", "clients", "daemon", "docs", "tools")
SHIPPED_FILES = ("LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in",
                 ".ci/run", "shmmap/py.typed", "shmmap/_core.pyi")
NOT_SHIPPED_DIRS = {"__pycache__", ".hypothesis", ".pytest_cache"}
NOT_SHIPPED_SUFFIXES = (".pyc", ".pyo", ".so", ".o", ".a")
# Run from the sdist against the wheel: quick, and touching the C core, a
# real daemon and the command line.
SDIST_TESTS = ["test_client.py", "test_cli.py::test_help_explains_every_command",
               "test_cli.py::test_set_get_del_dump_stats_promote_ls"]


_SAFE: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _source_files(top: Path) -> set[str]:
    found = set()
    for path in top.rglob("*"):
        parts = set(path.relative_to(ROOT).parts)
        if path.is_file() and not parts & NOT_SHIPPED_DIRS \
                and not path.name.endswith(NOT_SHIPPED_SUFFIXES):
            found.add(path.relative_to(ROOT).as_posix())
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(sdist, wheel): the wheel is built from the sdist."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("shmmap-*.tar.gz")
    (wheel,) = out.glob("shmmap-*.whl")
    yield sdist, wheel


def test_sdist_holds_tests_clients_service_docs_and_the_core(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n[len(top) + 1:] for n in tar.getnames() if "/" in n}
    for shipped in SHIPPED_FILES:
        assert shipped in names, shipped
    for directory in SHIPPED_DIRS:
        expected = _source_files(ROOT / directory)
        assert expected, directory
        assert expected <= names, sorted(expected - names)
    assert "tests/conftest.py" in names
    assert not [n for n in names if n.endswith(NOT_SHIPPED_SUFFIXES)
                or set(n.split("/")) & NOT_SHIPPED_DIRS]
    readme_images = [line.split("](")[1].split(")")[0] for line in
                     (ROOT / "README.md").read_text().splitlines() if line.startswith("![")]
    assert readme_images and set(readme_images) <= names


def test_wheel_is_typed_licensed_and_described(built: tuple[Path, Path]) -> None:
    _, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(whl.read(meta_name))
    assert "shmmap/py.typed" in names and "shmmap/_core.pyi" in names
    assert any(n.startswith("shmmap/_core.") and n.endswith(".so") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["License-Expression"] == "MIT"
    assert "License" not in meta                       # the deprecated field is gone
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]   # the expression says it


def test_the_sdists_tests_pass_against_its_wheel(built: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    """The sdist unpacked, the wheel built from it 'installed' (unpacked on
    PYTHONPATH, ahead of this checkout's editable install), and some of
    the sdist's own tests run from its tests directory, so that neither
    this checkout nor the sdist's source tree is what gets imported."""
    sdist, wheel = built
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "src", **_SAFE)
    (src,) = (tmp_path / "src").iterdir()
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as whl:
        whl.extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    where = subprocess.run([sys.executable, "-c",
                            "import shmmap, shmmap._core; print(shmmap.__file__)"],
                           cwd=src / "tests", env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert where.stdout.strip() == str(site / "shmmap" / "__init__.py"), where.stderr
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *SDIST_TESTS], cwd=src / "tests", env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout
