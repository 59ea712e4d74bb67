"""tests/_job_server.py, which runs the workflow tests' jobs as forks of one warm process: a job run through its
client sees what ``python script.py`` would see, and the client ends as the job ends (exit code, signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _job_server import SOCKET_ENV

TESTS = Path(__file__).resolve().parent
# a server that imports nothing more (the tests' own imports nothing of the job's)
SERVER = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(TESTS)!r})
import _job_server
pid, socket_path, shim = _job_server.start(Path(sys.argv[1]), warm=())
print(socket_path, shim, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """(environment for the client, the client's shim) of a job server that lives as long as the test."""
    folder = tmp_path / "server"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    socket_path, shim = proc.stdout.readline().split()
    yield {**os.environ, SOCKET_ENV: socket_path}, shim
    proc.stdin.close()
    proc.wait(timeout=30)


def write(path: Path, code: str) -> Path:
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def test_a_job_sees_its_argv_folder_environment_and_search_path_and_returns_its_exit_code(server, tmp_path):
    env, shim = server
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helper_of_the_job.py").write_text("VALUE = 'from PYTHONPATH'\n", encoding="utf-8")
    (tmp_path / "scripts").mkdir()
    script = write(
        tmp_path / "scripts" / "job.py",
        """
        import os, sys
        import helper_of_the_job
        print(sys.argv[1:], os.getcwd(), os.environ["JOB_VALUE"], sys.path[0], helper_of_the_job.VALUE, __name__)
        print("to stderr", file=sys.stderr)
        sys.exit(3)
        """,
    )
    work = tmp_path / "work"
    work.mkdir()
    job_env = {**env, "JOB_VALUE": "42", "PYTHONPATH": str(tmp_path / "lib")}
    proc = subprocess.run([shim, str(script), "a", "b"], cwd=work, env=job_env, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.split() == [
        "['a',",
        "'b']",
        str(work),
        "42",
        str(script.parent),
        "from",
        "PYTHONPATH",
        "__main__",
    ]
    assert proc.stderr == "to stderr\n"


def test_an_exception_prints_its_traceback_and_exits_1(server, tmp_path):
    env, shim = server
    script = write(tmp_path / "fails.py", "raise ValueError('bad value in the job')\n")
    proc = subprocess.run([shim, str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: bad value in the job" in proc.stderr


def wait_for(path: Path, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text(encoding="utf-8").strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text(encoding="utf-8").strip()


def is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_to_the_client_reaches_the_job_and_its_exit_code_comes_back(server, tmp_path):
    env, shim = server
    script = write(
        tmp_path / "handles.py",
        f"""
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
        open({str(tmp_path / "pid")!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    client = subprocess.Popen([shim, str(script)], env=env)
    wait_for(tmp_path / "pid")
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=30) == 7


def test_a_job_killed_by_a_signal_kills_its_client_with_it_and_a_killed_client_kills_its_job(server, tmp_path):
    env, shim = server
    script = write(
        tmp_path / "sleeps.py",
        """
        import os, sys, time
        open(sys.argv[1], "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    client = subprocess.Popen([shim, str(script), str(tmp_path / "first")], env=env)
    os.kill(int(wait_for(tmp_path / "first")), signal.SIGKILL)
    assert client.wait(timeout=30) == -signal.SIGKILL

    client = subprocess.Popen([shim, str(script), str(tmp_path / "second")], env=env)
    job = int(wait_for(tmp_path / "second"))
    client.kill()
    client.wait(timeout=30)
    deadline = time.monotonic() + 30
    while is_running(job):
        assert time.monotonic() < deadline, "the job outlived its killed client"
        time.sleep(0.05)
