"""tests/e2e/probe.py and exec_probe.py run as scripts: their directory comes
first on sys.path, so a module there named like the standard library's hides it
from them (tests/e2e/inspect.py once broke dnspython's `import inspect` in every
probe of the DNS tests)."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT_DIRS = [Path(__file__).resolve().parents[1] / "e2e", Path(__file__).resolve().parents[2] / "bench"]


def test_no_module_beside_a_script_is_named_like_the_standard_librarys():
    shadowing = [str(path) for directory in SCRIPT_DIRS for path in directory.glob("*.py")
                 if path.stem in sys.stdlib_module_names]
    assert shadowing == []
