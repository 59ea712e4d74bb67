"""Where the test suite's CPU time goes: a pytest plugin and its summary (Linux, reads /proc).

    PYTEST_CPU_DIR=/tmp/cpu PYTHONPATH=tools python3 -m pytest -p pytest_cpu    # record
    python3 tools/pytest_cpu.py /tmp/cpu                                        # summarise

For each test the plugin records the wall time and the CPU time of the test process's tree (its own time,
that of its live descendants and of every descendant they have waited for: Snakemake runs, training jobs,
CLI calls), one JSON line per test in ``$PYTEST_CPU_DIR/<worker>.jsonl``. Work outside that tree is not
counted: the jobs a SLURM cluster runs, orphaned processes, pytest-xdist's own start-up. The summary prints
the CPU and wall seconds per test file and the slowest tests by CPU.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _times(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks of the process and of the children it waited for), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), sum(int(f) for f in fields[11:15])  # ppid; utime, stime, cutime, cstime


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of process ``root`` and its live descendants, with what each has waited for."""
    procs = {int(p): t for p in os.listdir("/proc") if p.isdigit() and (t := _times(int(p))) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    ticks, todo = 0, [root]
    while todo:
        pid = todo.pop()
        ticks += procs[pid][1] if pid in procs else 0
        todo.extend(children.get(pid, []))
    return ticks / TICKS


_started: dict[str, tuple[float, float]] = {}
_recording: dict[str, str] = {}  # "folder" -> where to write, in the processes that run tests


def pytest_configure(config: object) -> None:
    """Record in the process that runs the tests: a pytest-xdist worker, or pytest itself without workers
    (the controller's tree holds the workers: it would count every test twice)."""
    is_worker = hasattr(config, "workerinput")
    workers = getattr(getattr(config, "option", None), "numprocesses", None) or 0
    folder = os.environ.get("PYTEST_CPU_DIR")
    if folder and (is_worker or not workers):
        _recording["folder"] = folder


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    if "folder" in _recording:
        _started[nodeid] = (time.time(), tree_cpu_seconds(os.getpid()))


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    folder = _recording.get("folder")
    if folder is None or nodeid not in _started:
        return
    wall0, cpu0 = _started.pop(nodeid)
    record = {"test": nodeid, "wall": time.time() - wall0, "cpu": tree_cpu_seconds(os.getpid()) - cpu0}
    Path(folder).mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(Path(folder) / f"{worker}.jsonl", "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


def summary(folder: Path, slowest: int = 20) -> str:
    """CPU and wall seconds per test file, then the ``slowest`` tests by CPU."""
    records = [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]
    cpu, wall = Counter(), Counter()
    for r in records:
        cpu[r["test"].split("::")[0]] += r["cpu"]
        wall[r["test"].split("::")[0]] += r["wall"]
    lines = [f"{len(records)} tests: {sum(cpu.values()):.0f} CPU s, {sum(wall.values()):.0f} wall s (all workers)"]
    lines += [f"{cpu[f]:8.1f} CPU s {wall[f]:8.1f} wall s  {f}" for f, _ in cpu.most_common()]
    lines.append(f"slowest {slowest} tests by CPU:")
    top = sorted(records, key=lambda r: -r["cpu"])[:slowest]
    lines += [f"{r['cpu']:8.1f} CPU s {r['wall']:8.1f} wall s  {r['test']}" for r in top]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 tools/pytest_cpu.py FOLDER   (the PYTEST_CPU_DIR of a recorded run)")
    print(summary(Path(sys.argv[1])))
