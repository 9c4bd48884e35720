"""shmmap/_core.pyi, the type stub mypy checks the package against, says what
the compiled core holds: it is what tools/core_stub.py makes of the cdef,
and it names exactly the functions and constants of the built module."""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from shmmap._core import lib

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "shmmap" / "_core.pyi"


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("core_stub", ROOT / "tools" / "core_stub.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _stub_lib_names(text: str) -> set[str]:
    (lib_class,) = [n for n in ast.parse(text).body if isinstance(n, ast.ClassDef) and n.name == "_Lib"]
    names = set()
    for node in lib_class.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_the_stub_is_what_the_tool_makes_of_the_cdef() -> None:
    tool = _tool()
    assert STUB.read_text() == tool.stub_text(tool.load_builder()), \
        "shmmap/_core.pyi is out of date: run python tools/core_stub.py"


def test_the_stub_names_every_function_and_constant_of_the_built_core() -> None:
    stub = _stub_lib_names(STUB.read_text())
    built = {n for n in dir(lib) if not n.startswith("__")}
    assert stub, "the stub declares nothing"
    assert sorted(built - stub) == [], "in the core, not in the stub"
    assert sorted(stub - built) == [], "in the stub, not in the core"
