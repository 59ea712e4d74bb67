"""A Snakemake launcher for the tests: one process that has imported torch, torchvision and Snakemake once,
and forks a fresh child for every ``snakemake`` command of a test (no tests here).

Starting ``python -m snakemake`` costs about 6 s of imports on a 2-core machine before the workflow is
parsed (torch and torchvision through kdcore's registries, Snakemake and its plugins), and the suite runs
Snakemake well over a hundred times. Each command here runs in a child forked from this single-threaded
process: it starts with those modules imported and nothing else (kdcore is not imported here, so the child
imports the kdcore of the workflow copy it runs, as ``python -m snakemake`` would), in its own process
group, in the command's folder, with the command's environment, writing stdout and stderr to the files
named in the request.

Protocol (one JSON object per line): a request ``{"cwd", "args", "env", "stdout", "stderr"}`` on stdin; the
replies ``{"pid": ...}`` when the child started and ``{"rc": ...}`` when it ended (a negative rc: killed by
that signal). Used by tests/_workflow_tools.py.
"""

from __future__ import annotations

import json
import os
import sys

import snakemake.api
import snakemake.cli
import torch  # noqa: F401
import torchvision.models.resnet  # noqa: F401


def run_child(request: dict) -> None:
    """In the forked child: become the command ``python -m snakemake <args>`` and never return."""
    code = 1
    try:
        os.setsid()  # its own process group: a timeout kills the command and the jobs it started
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.dont_write_bytecode = os.environ.get("PYTHONDONTWRITEBYTECODE", "") != ""
        for fd, name in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.argv = [sys.executable, *request["args"]]
        try:
            snakemake.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


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


if __name__ == "__main__":
    serve()
