"""tools/pytest_cpu.py, the plugin that measures where the suite's CPU time goes: it counts the CPU time of
child processes a test waited for, and its summary adds it up per test file."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "pytest_cpu.py"
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def load_tool():
    spec = importlib.util.spec_from_file_location("pytest_cpu", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_waited_for_child_process_counts_in_the_tree() -> None:
    tool = load_tool()
    before = tool.tree_cpu_seconds(os.getpid())
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    subprocess.run([sys.executable, "-c", busy], check=True)
    assert tool.tree_cpu_seconds(os.getpid()) - before >= 0.5


def test_summary_adds_up_per_file(tmp_path: Path) -> None:
    records = [
        {"test": "tests/test_a.py::test_one", "wall": 2.0, "cpu": 3.0},
        {"test": "tests/test_a.py::test_two", "wall": 1.0, "cpu": 1.5},
        {"test": "tests/test_b.py::test_three", "wall": 4.0, "cpu": 0.5},
    ]
    (tmp_path / "gw0.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    text = load_tool().summary(tmp_path, slowest=1).splitlines()
    assert text[0] == "3 tests: 5 CPU s, 7 wall s (all workers)"
    assert text[1].split() == ["4.5", "CPU", "s", "3.0", "wall", "s", "tests/test_a.py"]
    assert text[-1].endswith("tests/test_a.py::test_one") and text[-2] == "slowest 1 tests by CPU:"
