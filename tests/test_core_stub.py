"""shmmap/_core.pyi, the type stub mypy checks the package against, says what
the compiled core holds: it is what tools/core_stub.py makes of the cdef,
and it names exactly the functions and constants of the built module."""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from shmmap._core import ffi, lib

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "shmmap" / "_core.pyi"


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("core_stub", ROOT / "tools" / "core_stub.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _stub_classes(text: str) -> dict[str, list[str]]:
    """Each class of the stub: the names it declares, in order."""
    classes: dict[str, list[str]] = {}
    for cls in ast.parse(text).body:
        if isinstance(cls, ast.ClassDef):
            names = classes[cls.name] = []
            for node in cls.body:
                if isinstance(node, ast.FunctionDef):
                    names.append(node.name)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    names.append(node.target.id)
    return classes


def test_the_stub_is_what_the_tool_makes_of_the_cdef() -> None:
    tool = _tool()
    assert STUB.read_text() == tool.stub_text(tool.load_builder()), \
        "shmmap/_core.pyi is out of date: run python tools/core_stub.py"


def test_the_stub_names_every_function_and_constant_of_the_built_core() -> None:
    stub = set(_stub_classes(STUB.read_text())["_Lib"])
    built = {n for n in dir(lib) if not n.startswith("__")}
    assert stub, "the stub declares nothing"
    assert sorted(built - stub) == [], "in the core, not in the stub"
    assert sorted(stub - built) == [], "in the stub, not in the core"


def test_the_stub_has_every_struct_of_the_built_core_with_its_fields() -> None:
    stub = {name[len("struct_"):]: fields for name, fields in _stub_classes(STUB.read_text()).items()
            if name.startswith("struct_")}
    structs = ffi.list_types()[1]
    assert structs and sorted(stub) == sorted(structs)
    for name in structs:
        assert stub[name] == [f for f, _ in ffi.typeof(f"struct {name}").fields], name
