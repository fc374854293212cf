"""Compiled hot paths, each with a pure-Python reference of the same behaviour.

`load(name)` returns the compiled module `fastgate._core.<name>` unless it is missing or
FASTGATE_NO_EXTENSIONS is set, in which case it returns `fastgate._core.<name>_py`.
`IMPLEMENTATIONS` records what was chosen, so `fastgate status` and the tests can tell.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

NO_EXTENSIONS = bool(os.environ.get("FASTGATE_NO_EXTENSIONS"))
IMPLEMENTATIONS: dict[str, str] = {}
CORES = ("http1", "pathnorm", "policy", "redact")  # what setup.py builds


def load(name: str) -> ModuleType:
    if not NO_EXTENSIONS:
        try:
            module = importlib.import_module(f"fastgate._core.{name}")
        except ImportError:
            pass
        else:
            IMPLEMENTATIONS[name] = "compiled"
            return module
    IMPLEMENTATIONS[name] = "python"
    return importlib.import_module(f"fastgate._core.{name}_py")


def reference(name: str) -> ModuleType:
    """The pure-Python twin, for parity tests."""
    return importlib.import_module(f"fastgate._core.{name}_py")


def compiled(name: str) -> ModuleType:
    """The compiled module; ImportError when it was not built."""
    return importlib.import_module(f"fastgate._core.{name}")


def compiled_or_none(name: str) -> ModuleType | None:
    """The compiled module, or None when it is off (FASTGATE_NO_EXTENSIONS) or not built: parity
    tests run the compiled side only where it exists, and `test_compiled_*_loaded` says if not."""
    if NO_EXTENSIONS:
        return None
    try:
        return compiled(name)
    except ImportError:
        return None
