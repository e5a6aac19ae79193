"""Ray is an optional extra: only the archive tool (and its tests and benchmark) may import it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ALLOWED = {"tools/archive_colorize.py", "tests/test_archive_colorize.py", "benchmarks/bench_archive.py"}
IMPORT_RAY = re.compile(r"^\s*(import ray\b|from ray\b)", re.MULTILINE)


def test_only_the_archive_tool_imports_ray():
    offenders = []
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith((".venv/", "venv/", "build/")) or rel in ALLOWED:
            continue
        if IMPORT_RAY.search(path.read_text(encoding="utf-8", errors="replace")):
            offenders.append(rel)
    assert not offenders, f"these import ray, which is an optional extra (pip install .[archive]): {offenders}"


def test_the_pack_and_the_archive_module_import_without_loading_ray():
    code = ("import sys, ddcolor, tools.batch_jobs, tools.archive_colorize; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
