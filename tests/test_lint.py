"""ruff's correctness rules (undefined names, unused imports, syntax) over the whole tree, in the suite."""
from __future__ import annotations

import subprocess
import sys

from support.gateway import REPO_ROOT


def test_ruff_correctness_rules_pass():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "fastgate", "tests", "bench"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
