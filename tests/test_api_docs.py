"""Every name shmmap exports, and every public method of its classes, says
what it does: `help(shmmap.SharedMap)` is the reference users read."""
from __future__ import annotations

import inspect

import shmmap


def _undocumented() -> list[str]:
    missing = []
    for name in shmmap.__all__:
        obj = getattr(shmmap, name)
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member) and not isinstance(member, property):
                    continue
                if not inspect.getdoc(getattr(obj, attr)):
                    missing.append(f"{name}.{attr}")
    return missing


def test_the_public_api_is_documented() -> None:
    assert _undocumented() == []
