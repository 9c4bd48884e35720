"""Builds shmmap's C core as the cffi module ``shmmap._core`` (API mode).

The cdef is the sections between the CFFI markers of ``HEADERS``, joined in
that order (each may use what an earlier one defines), so the headers stay
the single source of truth: integer literals are kept (array sizes need
them), other ``#define``s become ``#define NAME ...`` (the compiler supplies
the value), string ``#define``s become constant ``char`` arrays, and structs
and prototypes are used as written.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# The format, the tuning, the API: what Python uses of each.
HEADERS = ["shmmap.h", "tuning.h", "core.h"]
SOURCES = ["status.c", "hash.c", "mpack.c", "maphdr.c", "view.c", "read.c", "delta.c", "write.c",
           "validate.c", "serve.c", "wait.c", "frame.c", "chan.c"]
# SHMMAP_SANITIZE=1 builds the core with AddressSanitizer and
# UndefinedBehaviorSanitizer (tools/sanitize.sh runs the suite against it).
# -fno-wrapv undoes Python's -fwrapv, which would hide signed overflow.
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fno-wrapv", "-fno-omit-frame-pointer", "-g"]
_SANITIZE = os.environ.get("SHMMAP_SANITIZE", "") not in ("", "0")
_LITERAL = re.compile(r"-?(0x[0-9a-fA-F]+|[0-9]+)")
_DEFINE = re.compile(r"^#define\s+(\w+)\s+(\S.*?)\s*(/\*.*)?$", re.M)


def _public_section(header: str) -> str:
    start = header.index("/* CFFI-BEGIN */")
    end = header.index("/* CFFI-END */")
    return header[start:end]


def _string_defines(section: str) -> list[str]:
    return [m.group(1) for m in _DEFINE.finditer(section) if m.group(2).startswith('"')]


def cdef_from_header(header: str) -> str:
    """The cdef of one header's CFFI section."""
    section = re.sub(r"/\*.*?\*/", "", _public_section(header), flags=re.S)

    def constant(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        if value.startswith('"'):
            return f"static const char {name.lower()}[];"
        if _LITERAL.fullmatch(value):
            return f"#define {name} {value}"
        return f"#define {name} ..."

    return _DEFINE.sub(constant, section)


def _string_constants(header: str) -> str:
    names = _string_defines(_public_section(header))
    return "\n".join(f"static const char {n.lower()}[] = {n};" for n in names)


_headers = [(HERE / h).read_text() for h in HEADERS]
ffibuilder = FFI()
ffibuilder.cdef("\n".join(cdef_from_header(h) for h in _headers))
ffibuilder.set_source(
    "shmmap._core",
    "".join(f'#include "{h}"\n' for h in HEADERS) + "\n".join(_string_constants(h) for h in _headers),
    sources=[str(Path("cext") / s) for s in SOURCES],
    include_dirs=["cext"],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    + (SANITIZE_FLAGS if _SANITIZE else []),
    extra_link_args=SANITIZE_FLAGS if _SANITIZE else [],
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
