"""The package's layout names the process a module runs in, and its imports
keep to it: nothing under shmmap/client/ or shmmap/shared/, nor the
launcher, imports shmmap/server/; the command line's read commands (get,
dump, ls, stats) run without loading a single module of the daemon."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import shmmap

PACKAGE = Path(shmmap.__file__).resolve().parent
SERVER = "shmmap.server"
# What must run without the daemon's code: in a client, in both, and the
# launcher (which starts the daemon as another process).
SERVERLESS = ("shmmap.client", "shmmap.shared", "shmmap.launcher")


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its
    own name, for its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(module: str, source: str, is_package: bool) -> set[str]:
    """The absolute names module's source imports, wherever they are in it
    (a function's lazy import included). ``from X import y`` counts as X
    and X.y, since y may be a submodule."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{module}: relative import beyond the top of the package")
                base = ".".join(parts[:len(parts) - (node.level - 1)]
                                + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}
    return out


def server_imports(module: str, source: str, is_package: bool = False) -> set[str]:
    return {name for name in imported(module, source, is_package)
            if name == SERVER or name.startswith(SERVER + ".")}


def test_the_tree_has_a_package_per_process() -> None:
    found = modules()
    for package in ("shmmap.shared", "shmmap.client", "shmmap.server", "shmmap.cli",
                    "shmmap.bench"):
        assert package in found, f"no package {package}"
        assert any(m.startswith(package + ".") for m in found), f"{package} is empty"
    assert "shmmap.launcher" in found and "shmmap.bench.corebench" in found


def test_no_client_or_shared_module_imports_the_server() -> None:
    offenders = {}
    checked = 0
    for module, path in modules().items():
        if not any(module == p or module.startswith(p + ".") for p in SERVERLESS):
            continue
        checked += 1
        got = server_imports(module, path.read_text(encoding="utf-8"),
                             path.name == "__init__.py")
        if got:
            offenders[module] = sorted(got)
    assert checked >= 10, f"only {checked} modules checked: the walk missed the package"
    assert offenders == {}, f"modules that must run without the daemon import it: {offenders}"


@pytest.mark.parametrize("source", [
    "from ..server.writer import MapWriter",
    "from ..server import writer",
    "from .. import server",
    "import shmmap.server.writer",
    "from shmmap.server.slots import ReaderSlots",
    "def lazy() -> None:\n    from ..server.stats import Timings\n",
])
def test_the_walk_sees_every_way_a_client_module_could_import_the_server(source: str) -> None:
    assert server_imports("shmmap.client.example", source)


@pytest.mark.parametrize("source", [
    "from ..shared.protocol import Op",
    "from .reader import MapReader",
    "from . import slot",
    "from .. import __version__",
    "import shmmap.serverless",
])
def test_the_walk_does_not_mistake_other_imports_for_the_server(source: str) -> None:
    assert not server_imports("shmmap.client.example", source)


def test_a_relative_import_is_resolved_from_its_package() -> None:
    assert imported("shmmap.client", "from .map import connect", is_package=True) == \
        {"shmmap.client.map", "shmmap.client.map.connect"}
    assert "shmmap.server.writer" in imported("shmmap.server.handlers", "from . import writer",
                                              is_package=False)


READ_COMMANDS = """
import json, sys
from shmmap.cli.main import main
name, key, out = sys.argv[1:4]
codes = [main(["ls"]), main(["get", name, key]), main(["dump", name]), main(["stats", name])]
loaded = sorted(m for m in sys.modules if m == "shmmap" or m.startswith("shmmap."))
with open(out, "w") as f:
    json.dump({"codes": codes, "loaded": loaded}, f)
"""


def test_the_read_commands_do_not_load_the_daemon(map_name: str, tmp_path: Path) -> None:
    """ls, get, dump and stats, run in a fresh process against a served
    map, import no module of shmmap/server/."""
    out = tmp_path / "loaded.json"
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m["user:1"] = {"name": "Ada"}
        done = subprocess.run([sys.executable, "-c", READ_COMMANDS, map_name, "user:1", str(out)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(out.read_text())
    assert got["codes"] == [0, 0, 0, 0], (done.stdout, done.stderr)
    assert map_name in done.stdout and '{"name": "Ada"}' in done.stdout
    loaded = got["loaded"]
    # What the commands ran is in the list, so what is absent was not run.
    assert {"shmmap.cli.main", "shmmap.client.reader", "shmmap.client.map"} <= set(loaded)
    assert [m for m in loaded if m == SERVER or m.startswith(SERVER + ".")] == []
