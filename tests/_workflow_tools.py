"""Helpers of the workflow tests: copy the workflow, run Snakemake, parse what a dry run schedules.

(No tests here.)
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "config.yaml", "config", "workflow", "src", "profiles")
# Compiled modules are copied with their sources (copy2 keeps the mtimes their validity is checked against),
# and the jobs may write more: each job process then imports kdcore without compiling it again.
IGNORE = shutil.ignore_patterns("*.egg-info")


def copy_workflow(dst: Path) -> Path:
    """Copy the workflow (Snakefile, configs, rules, scripts, src, profiles) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dst / part, ignore=IGNORE)
        else:
            shutil.copy2(src, dst / part)
    return dst


SERVER = Path(__file__).resolve().parent / "_snakemake_server.py"


class SnakemakeLauncher:
    """Runs ``python -m snakemake`` commands as children of one tests/_snakemake_server.py process (started on
    first use, one per pytest worker), which saves each command the seconds of importing torch, torchvision
    and Snakemake; their jobs run as forks of tests/_job_server.py. ``KDCORE_TEST_FORK=0`` in the environment
    runs every command, and every job, as its own process instead."""

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None

    def _started(self) -> subprocess.Popen:
        if self.server is None or self.server.poll() is not None:
            self.server = subprocess.Popen(
                [sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
            )
        return self.server

    def _reply(self, server: subprocess.Popen, timeout: float | None) -> dict:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"tests/_snakemake_server.py ended (exit code {server.poll()})")
        return json.loads(line)

    def run(self, cwd: Path, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "snakemake", *args]
        if os.environ.get("KDCORE_TEST_FORK", "1") == "0":
            return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        server = self._started()
        assert server.stdin is not None
        with tempfile.TemporaryDirectory(prefix="snakemake-output-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {
                "cwd": str(Path(cwd).resolve()),
                "args": list(args),
                "env": env,
                "stdout": str(out),
                "stderr": str(err),
            }
            server.stdin.write(json.dumps(request) + "\n")
            server.stdin.flush()
            pid = self._reply(server, 60)["pid"]
            try:
                rc = self._reply(server, timeout)["rc"]
            except TimeoutError:
                os.killpg(pid, signal.SIGKILL)
                self._reply(server, 60)
                raise subprocess.TimeoutExpired(command, timeout, out.read_text(), err.read_text()) from None
            return subprocess.CompletedProcess(command, rc, out.read_text(), err.read_text())


LAUNCHER = SnakemakeLauncher()


def snakemake(cwd: Path, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m snakemake *args`` in ``cwd``; with ``check`` a failure raises with its output."""
    env = {**os.environ, "KDCORE_LOCK_DIR": str(cwd / ".locks")}
    proc = LAUNCHER.run(cwd, list(args), env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@dataclass
class Plan:
    """What a dry run would execute: one (rule, wildcards) per job, and the output text."""

    jobs: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    text: str = ""

    @property
    def counts(self) -> Counter:
        return Counter(rule for rule, _ in self.jobs)

    def of(self, rule: str, **wildcards: str) -> list[dict[str, str]]:
        """Wildcards of the scheduled jobs of ``rule`` that match ``wildcards``."""
        return [w for r, w in self.jobs if r == rule and all(w.get(k) == v for k, v in wildcards.items())]


_RULE = re.compile(r"^(?:local)?rule (\w+):$")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")


def parse_dry_run(text: str) -> Plan:
    """Parse the job blocks of ``snakemake -n`` output: each starts at a ``rule X:`` line and may carry
    a ``wildcards:`` line before the next block or the job stats."""
    plan = Plan(text=text)
    current: str | None = None
    wildcards: dict[str, str] = {}
    for line in text.splitlines():
        match = _RULE.match(line)
        if match or line.strip() == "Job stats:":
            if current is not None:
                plan.jobs.append((current, wildcards))
            current, wildcards = (match.group(1) if match else None), {}
            continue
        wild = _WILDCARDS.match(line)
        if wild and current is not None:
            wildcards = dict(item.split("=", 1) for item in wild.group(1).split(", "))
    if current is not None:
        plan.jobs.append((current, wildcards))
    return plan


def dry_run(cwd: Path, *args: str) -> Plan:
    """The jobs ``snakemake -n`` would run in ``cwd`` (none: an empty plan)."""
    proc = snakemake(cwd, "-n", "--cores", "2", *args)
    text = proc.stdout + proc.stderr
    plan = parse_dry_run(text)
    stats = job_stats(text)
    assert stats == plan.counts, f"job blocks {dict(plan.counts)} disagree with job stats {dict(stats)}"
    return plan


def job_stats(text: str) -> Counter:
    """The 'Job stats' table of a dry run as rule -> count (empty when nothing is to be done)."""
    counts: Counter = Counter()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Job stats:":
            for row in lines[i + 3 :]:
                parts = row.split()
                if len(parts) != 2 or parts[0] == "total":
                    break
                counts[parts[0]] = int(parts[1])
            break
    return counts


def append_code(path: Path, code: str) -> None:
    """Append ``code`` to a source file (an AST change unless it is only comments/blank lines)."""
    text = path.read_text(encoding="utf-8")
    path.write_text(text.rstrip("\n") + "\n" + code + "\n", encoding="utf-8")
