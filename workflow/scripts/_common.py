"""Shared start-up of the workflow's scripts: use this workflow's own kdcore and log to the rule's log.

Each script calls :func:`setup` first. It puts ``src/`` of the workflow copy that runs the script at the
front of ``sys.path`` (so the code that runs is the code whose digest the rule's params carry), sends
logging records, stdout and stderr to the job's log file, registers the method catalog of an analysis job
(param ``methods``, kdcore.analysis.methods), and returns the log object.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[2] / "src"


def setup(snakemake: Any) -> logging.Logger:
    """Prepare a script run: import path, log file, stdout/stderr redirection; returns the script's logger."""
    # Snakemake appends the workflow's src/ to sys.path; it must come first, ahead of an installed kdcore
    while str(SRC) in sys.path:
        sys.path.remove(str(SRC))
    sys.path.insert(0, str(SRC))
    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the job
    sys.stdout = stream
    sys.stderr = stream
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=[logging.StreamHandler(stream)],
        force=True,
    )
    catalog = snakemake.params.get("methods")
    if catalog is not None:  # analysis jobs: the study's method labels and hyper-parameter columns
        from kdcore.analysis.methods import use_catalog

        use_catalog(catalog)
    return logging.getLogger(f"kdcore.workflow.{snakemake.rule}")
