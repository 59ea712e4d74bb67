"""A Snakemake launcher for the tests: one process that has imported torch, torchvision and Snakemake once,
and forks a fresh child for every ``snakemake`` command of a test (no tests here).

Starting ``python -m snakemake`` costs about 6 s of imports on a 2-core machine before the workflow is
parsed (torch and torchvision through kdcore's registries, Snakemake and its plugins), and the suite runs
Snakemake well over a hundred times. Each command here runs in a child forked from this single-threaded
process: it starts with those modules imported, and the others that a dry run of the study imports
(:func:`warm_up`, about 1 s less per command), but no code of this repository (kdcore is not imported
here, so the child imports the kdcore of the workflow copy it runs, as ``python -m snakemake`` would), in its own process
group, in the command's folder, with the command's environment, writing stdout and stderr to the files
named in the request. The jobs of those commands run as forks of a second warm process (tests/_job_server.py):
``sys.executable`` of each command is that server's client.

Protocol (one JSON object per line): a request ``{"cwd", "args", "env", "stdout", "stderr"}`` on stdin; the
replies ``{"pid": ...}`` when the child started and ``{"rc": ...}`` when it ended (a negative rc: killed by
that signal). Used by tests/_workflow_tools.py.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import _job_server
import snakemake.api
import snakemake.cli
import torch  # noqa: F401
import torchvision.models.resnet  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
#: The job server's socket and the ``sys.executable`` shim of its clients, once started (:func:`main`).
JOB_SERVER: dict[str, str] = {}


def run_child(request: dict) -> None:
    """In the forked child: become the command ``python -m snakemake <args>`` and never return."""
    code = 1
    try:
        os.setsid()  # its own process group: a timeout kills the command and the jobs it started
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [sys.executable, *request["args"]]
        if JOB_SERVER:  # the command's jobs: forks of the job server
            os.environ[_job_server.SOCKET_ENV] = JOB_SERVER["socket"]
            sys.executable = JOB_SERVER["python"]
        sys.dont_write_bytecode = os.environ.get("PYTHONDONTWRITEBYTECODE", "") != ""
        for fd, name in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        try:
            snakemake.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        # what the interpreter does at exit, which os._exit skips: e.g. Snakemake's runtime source cache, a
        # TemporaryDirectory under ~/.cache/snakemake, is removed then
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def modules_of_a_dry_run(report_fd: int) -> None:
    """In a forked child: dry-run the study of config.yaml in an empty folder, write the names of the modules
    it imported that are not this repository's code (one JSON list) to ``report_fd``, and exit."""
    try:
        before = set(sys.modules)
        with tempfile.TemporaryDirectory(prefix="snakemake-warm-up-") as folder:
            os.chdir(folder)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            config = str(REPO / "config.yaml")
            sys.argv = [sys.executable, "--snakefile", str(REPO / "Snakefile"), "--configfile", config, "-n", "-q"]
            with contextlib.suppress(SystemExit):
                snakemake.cli.main()
        imported = [sys.modules[name] for name in list(sys.modules) if name not in before]
        with os.fdopen(report_fd, "w") as report:
            json.dump([module.__name__ for module in imported if not is_repository_code(module)], report)
    finally:
        atexit._run_exitfuncs()  # as in run_child
        os._exit(0)


def is_repository_code(module: ModuleType) -> bool:
    """Whether ``module`` is kdcore or lies in this repository (the commands import the copy they run)."""
    file = str(getattr(module, "__file__", "") or "")
    return module.__name__.split(".")[0] == "kdcore" or file.startswith(str(REPO))


def warm_up() -> None:
    """Import here what a dry run of the study imports beyond the modules above (Snakemake's plugins, its
    storage and report libraries, jsonschema, ...), except this repository's code (kdcore): every command
    then starts with them imported. The names come from one dry run in a forked child; a module that does
    not import on its own is left to the commands."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        modules_of_a_dry_run(write_fd)
    os.close(write_fd)
    with os.fdopen(read_fd) as report:
        text = report.read()
    os.waitpid(pid, 0)
    _job_server.import_each(json.loads(text or "[]"))


def serve() -> None:
    """Answer requests until stdin closes."""
    reply = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            sys.stdin.close()
            run_child(request)
        reply.write(json.dumps({"pid": pid}) + "\n")
        reply.flush()
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        reply.write(json.dumps({"rc": rc}) + "\n")
        reply.flush()


def main() -> None:
    """Warm up, start the job server, serve; stop the job server when stdin closes."""
    warm_up()
    folder = Path(tempfile.mkdtemp(prefix="kdcore-jobs-"))
    job_server, socket_path, shim = _job_server.start(folder)
    JOB_SERVER.update(socket=str(socket_path), python=str(shim))
    try:
        serve()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(job_server, signal.SIGTERM)
        os.waitpid(job_server, 0)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
