"""Workflow script: one training run (teacher, baseline, selection, final or ablation) via kdcore.engine.

Inputs: ``data`` (prepared dataset), optionally ``teacher`` (checkpoint), ``teacher_cache`` (its output
cache, set as runtime.teacher_cache) and ``winner`` (selection result whose hyper-parameters are merged into
the method). Params: ``run_config`` (canonical JSON of the run config without device/threads),
``code`` (digest; unused here).
Outputs: ``metrics``, ``best``, ``final`` in one run folder.
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
import json
from pathlib import Path
from typing import Any

from _common import setup


def apply_winner(config: dict[str, Any], winner_path: str) -> dict[str, Any]:
    """``config`` with the winner's hyper-parameters merged into its method section and labels."""
    from kdcore.errors import ConfigError

    winner = json.loads(Path(winner_path).read_text(encoding="utf-8"))
    if winner.get("method") != config["method"]["name"]:
        raise ConfigError(
            f"{winner_path}: selection is for method {winner.get('method')!r}, run is {config['method']['name']!r}"
        )
    config = dict(config)
    config["method"] = {**config["method"], **winner["winner"]["params"]}
    config["labels"] = {**config["labels"], "hp": winner["winner"]["hp"]}
    return config


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.devices import lease_device
    from kdcore.engine import train_run

    config = json.loads(snakemake.params.run_config)
    winner = list(getattr(snakemake.input, "winner", []) or [])
    if winner:
        config = apply_winner(config, winner[0])
    cache = list(getattr(snakemake.input, "teacher_cache", []) or [])
    if cache:  # a job input, kept out of the run_config params: it changes how, not what, the run computes
        config["runtime"]["teacher_cache"] = cache[0]
    out_dir = Path(snakemake.output.metrics).parent
    lease = snakemake.config["compute"]
    config["runtime"]["threads"] = int(snakemake.threads)
    # the protocol audit records test accuracy per epoch apart from everything the run selects or reports
    audit = snakemake.config.get("audit") or {}
    config["runtime"]["audit_test_every_epoch"] = bool(audit.get("test_every_epoch", False))
    log.info("run %s (%s), method %s", config["labels"]["run_id"], config["labels"]["stage"], config["method"])
    with lease_device(lease["device"], lease["slots_per_gpu"], lease["lock_dir"]) as device:
        config["runtime"]["device"] = device
        metrics = train_run(config, out_dir)
    results = metrics["results"]
    log.info(
        "finished %s: best val %.4f, test@best %.4f",
        config["labels"]["run_id"],
        results["best_val_acc"],
        results["test_acc_best"],
    )


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
