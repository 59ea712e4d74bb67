"""Workflow jobs of the tests as forks of one warm process (no tests here).

A training or analysis job of the workflow is a ``script:`` that Snakemake starts as ``{sys.executable}
script.py``; before it does any work it imports torch, torchvision (which imports torch._dynamo, as every
optimizer step does), pandas, matplotlib and seaborn: about 4.5 s for a training job and 0.5-2 s for an analysis
job on a 2-core machine, against about 1 s of work in the tests' small studies. tests/_snakemake_server.py
starts one job server per pytest worker (:func:`start`): a process that has imported those libraries once and
forks a child for each job. In the Snakemake commands it forks, ``sys.executable`` is a shim that runs this
file as a client (:func:`client`): the client hands the job's command line, folder, environment and standard
streams to the server and exits with the job's exit status, so Snakemake sees the job as it would see the
script's own process. The child runs the script as ``python script.py`` would (``runpy``, ``sys.argv``,
``sys.path`` from the script's folder and the job's ``PYTHONPATH``), imports no code of this repository that
the server had imported (the server imports none), and dies with its client: a SIGTERM, SIGINT or SIGHUP sent
to the client is passed on, and a client that is killed outright kills the job (a pipe that closes).

The jobs of Snakemake commands the tests start as their own processes (the SLURM study, the interrupted run of
tests/test_workflow_resume.py, every command under ``KDCORE_TEST_FORK=0``) start as real processes.

Protocol, one JSON line each way on a Unix socket: the client sends ``{"argv", "cwd", "env"}`` with four file
descriptors (stdin, stdout, stderr, the read end of its lifeline pipe); the server answers ``{"pid": ...}`` when
the job started and ``{"rc": ...}`` when it ended (a negative rc: killed by that signal).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

#: The variable that tells a client where its server listens.
SOCKET_ENV = "KDCORE_TEST_JOB_SERVER"
#: Libraries a job imports that the server imports once (each skipped if it does not import on its own).
WARM_MODULES = (
    "snakemake.script",
    "snakemake.iocontainers",
    "snakemake.logging",
    "numpy",
    "torch",
    "torch._dynamo",
    "torch.utils.flop_counter",
    "torchvision.models.resnet",
    "yaml",
    "jsonschema",
    "pandas",
    "scipy.special",
    "scipy.stats",
    "statsmodels.api",
    "statsmodels.formula.api",
    "matplotlib",
    "matplotlib.pyplot",
    "seaborn",
    "jinja2",
)
_MAX_FDS = 4


# ----------------------------------------------------------------------------- server side
def start(folder: Path, warm: tuple[str, ...] = WARM_MODULES) -> tuple[int, Path, Path]:
    """Fork a job server that imports ``warm`` and listens in ``folder`` (call from a single-threaded process
    that is not to import kdcore). Returns its pid, its socket and the shim to use as ``sys.executable``."""
    socket_path = folder / "jobs.sock"
    shim = folder / "python"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -S -E {Path(__file__).resolve()} "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(64)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            serve(listener, parent, warm)
        finally:
            os._exit(0)
    listener.close()
    return pid, socket_path, shim


def serve(listener: socket.socket, parent: int, warm: tuple[str, ...]) -> None:
    """In the forked server: drop the parent's pipes, import the ``warm`` modules, then start a child per
    request and report its end, until the parent is gone."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    base_path = _base_search_path()
    _warm_up(warm)
    clients: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        ready, _, _ = select.select([listener], [], [], 0.05)
        if ready:
            connection, _ = listener.accept()
            _start_job(listener, connection, clients, base_path)
        _reap(clients)


def _base_search_path() -> list[str]:
    """This process's ``sys.path`` without its script folder and its ``PYTHONPATH`` entries: what a new
    ``python script.py`` adds after the script's folder and its own ``PYTHONPATH``."""
    own = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    return [p for p in sys.path[1:] if os.path.abspath(p or ".") not in own]


def _warm_up(modules: tuple[str, ...]) -> None:
    if "matplotlib" in modules:
        import matplotlib

        matplotlib.use("Agg")  # what kdcore.analysis.figures selects; no display here
    import_each(modules)


def import_each(names: Iterable[str]) -> None:
    """Import each of ``names``, skipping one that does not import on its own (it needs its importer's
    context: the commands or jobs import it themselves)."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            continue


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, _MAX_FDS)
    while not data.endswith(b"\n"):
        chunk = connection.recv(1 << 16)
        if not chunk:
            raise ConnectionError("job client closed before its request ended")
        data += chunk
    return json.loads(data), fds


def _start_job(
    listener: socket.socket, connection: socket.socket, clients: dict[int, socket.socket], base_path: list[str]
) -> None:
    try:
        request, fds = _receive(connection)
    except (OSError, ValueError):
        connection.close()
        return
    pid = os.fork()
    if pid == 0:
        listener.close()
        connection.close()
        for other in clients.values():
            other.close()
        run_job(request, fds, base_path)
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    clients[pid] = connection


def _reap(clients: dict[int, socket.socket]) -> None:
    while clients:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = clients.pop(pid, None)
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.sendall(json.dumps({"rc": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            connection.close()


def run_job(request: dict, fds: list[int], base_path: list[str]) -> None:
    """In the forked child: become ``python <argv>`` in the request's folder and environment, never return."""
    code = 1
    try:
        stdin, stdout, stderr, lifeline = fds
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.dont_write_bytecode = os.environ.get("PYTHONDONTWRITEBYTECODE", "") != ""
        _die_with_client(lifeline)
        argv = list(request["argv"])
        job_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [os.path.dirname(os.path.abspath(argv[0])), *job_path, *base_path]
        sys.argv = argv
        code = _run_script(argv[0])
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _die_with_client(lifeline: int) -> None:
    """A thread that kills this job when its client's end of the lifeline pipe closes (the client died)."""
    import threading

    def watch() -> None:
        while os.read(lifeline, 1):
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="job-lifeline", daemon=True).start()


def _run_script(path: str) -> int:
    """Run ``path`` as ``__main__`` with the interpreter's exit semantics; return the exit code."""
    import atexit
    import runpy

    try:
        runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    atexit._run_exitfuncs()
    return code


# ----------------------------------------------------------------------------- client side
def client() -> int:
    """Run ``sys.argv[1:]`` as a job of the server at ``$KDCORE_TEST_JOB_SERVER``; return its exit code."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(os.environ[SOCKET_ENV])
    lifeline_read, lifeline_write = os.pipe()  # the write end stays here: it closes when this process dies
    request = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
    socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], [0, 1, 2, lifeline_read])
    os.close(lifeline_read)
    replies = connection.makefile("rb")
    pid = json.loads(replies.readline())["pid"]
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, lambda received, _frame: os.kill(pid, received))
    line = replies.readline()
    rc = json.loads(line)["rc"] if line else 1
    if rc < 0:  # end as the job ended: by its signal
        if -rc not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    os.close(lifeline_write)
    return rc


if __name__ == "__main__":
    sys.exit(client())
