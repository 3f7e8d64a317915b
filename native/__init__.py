"""Cython hot paths, each with a pure-Python twin that is the reference implementation.

`load(compiled, pure)` returns the compiled module, or the twin (with a warning) when the
extension was not built. Setting INFRA_PURE=1 forces the twins, so tests can run both.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

FORCE_PURE_ENV = "INFRA_PURE"


def load(compiled: str, pure: str) -> ModuleType:
    """Import `compiled` (e.g. "native._resp"), or `pure` if forced or the build is missing."""
    if os.environ.get(FORCE_PURE_ENV, "") not in ("", "0"):
        return importlib.import_module(pure)
    try:
        return importlib.import_module(compiled)
    except ImportError:
        warnings.warn(
            f"{compiled} is not built; using the pure-Python twin {pure} (run `make native`)",
            RuntimeWarning,
            stacklevel=2,
        )
        return importlib.import_module(pure)
