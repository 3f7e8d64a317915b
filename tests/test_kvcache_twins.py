"""kvcache/twins.py, the one place kvcache picks its compiled modules or their pure twins.

Each case runs in a fresh interpreter, since the choice is made once, at import: INFRA_PURE=1
gives the pure twins; an extension that cannot be imported gives its twin and a
RuntimeWarning naming it; otherwise the compiled modules run (when they are built).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPILED = ("kvcache._mcproto", "kvcache._kvstore")
REPORT = (
    "import kvcache.protocol as p, kvcache.storage as s; "
    "print(p.IMPLEMENTATION, p.RequestParser.__module__, p.Lane.__module__, "
    "s.IMPLEMENTATION, s.Storage.__module__)"
)
# Makes every compiled kvcache module unimportable, as when `make native` never ran.
HIDE_COMPILED = (
    "import sys\n"
    "class Hide:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name in {COMPILED!r}:\n"
    "            raise ImportError(name)\n"
    "sys.meta_path.insert(0, Hide())\n"
)
PURE = ["pure", "kvcache.mcproto_pure", "kvcache.mcproto_pure", "pure", "kvcache.storage_pure"]


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                          text=True, check=True, timeout=60)


def test_forced_pure() -> None:
    result = _run(REPORT, INFRA_PURE="1")
    assert result.stdout.split() == PURE
    assert "RuntimeWarning" not in result.stderr


def test_a_missing_extension_falls_back_with_a_warning() -> None:
    result = _run(HIDE_COMPILED + REPORT)
    assert result.stdout.split() == PURE
    for name in COMPILED:
        assert f"{name} is not built" in result.stderr
    assert result.stderr.count("RuntimeWarning") == len(COMPILED)


@pytest.mark.skipif(any(importlib.util.find_spec(n) is None for n in COMPILED),
                    reason="kvcache's extensions are not built (make native)")
def test_the_compiled_modules_by_default() -> None:
    result = _run(REPORT)
    assert result.stdout.split() == [
        "native", "kvcache._mcproto", "kvcache._mcproto", "native", "kvcache._kvstore"]
    assert "RuntimeWarning" not in result.stderr
