"""C harnesses (tests/c/) built against the core's sources with the system
C compiler: what only C can show, such as a length that changes between
two loads of it."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CEXT = ROOT / "cext"
HARNESS = Path(__file__).resolve().parent / "c"
CC = shutil.which("cc") or shutil.which("gcc")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-g"]
# Rounds of the length race: each is one export of the whole map and a
# lookup of every key, while another thread flips the lengths. On the core
# before lengths were loaded once, 20,000 rounds overran the buffer in most
# runs; this is several times that.
ROUNDS = 60_000

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")


def _core_sources() -> list[str]:
    spec = importlib.util.spec_from_file_location("shmmap_cext_build", CEXT / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return [str(CEXT / s) for s in build.SOURCES]


def build(harness: str, out: Path, flags: list[str]) -> Path:
    exe = out / harness
    subprocess.run([str(CC), "-std=c11", "-O2", "-Wall", "-Wextra", "-pthread",
                    *flags, f"-I{CEXT}", str(HARNESS / f"{harness}.c"), *_core_sources(),
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    return exe


def _sanitizers_link(tmp_path: Path) -> bool:
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    return subprocess.run([str(CC), *SANITIZE, str(probe), "-o", str(tmp_path / "probe")],
                          capture_output=True).returncode == 0


def _run(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The harness is not Python: no interpreter's LD_PRELOAD of libasan.
    env = {"PATH": "/usr/bin:/bin", "ASAN_OPTIONS": "detect_leaks=1",
           "UBSAN_OPTIONS": "print_stacktrace=1"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_an_export_never_copies_past_its_buffer_while_lengths_change(tmp_path: Path) -> None:
    """One thread keeps flipping every record's len and every entry's
    key_len between their true values and 4000; another exports into
    64-byte buffers followed by guard bytes, and looks every key up.
    Each length is loaded once, checked, and used: no guard byte changes."""
    exe = build("race_lengths", tmp_path, [])
    done = _run(exe, str(ROUNDS))
    assert done.returncode == 0, done.stdout + done.stderr
    rounds, exported, found = (int(w) for w in done.stdout.split()[1:6:2])
    assert rounds == ROUNDS and exported > 0 and found > 0, done.stdout


def test_the_length_race_is_clean_under_address_and_ub_sanitizers(tmp_path: Path) -> None:
    """The same race, the harness and the core built with ASan and UBSan:
    no read outside the segment, no undefined behaviour, no leak."""
    if not _sanitizers_link(tmp_path):
        pytest.skip("the C compiler cannot link -fsanitize=address,undefined")
    exe = build("race_lengths", tmp_path, SANITIZE)
    done = _run(exe, str(ROUNDS // 10))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "runtime error" not in done.stderr and "Sanitizer" not in done.stderr, done.stderr
