"""Command line: ``python -m kdcore <command>``.

    prepare-data      build the prepared dataset file from a data spec (YAML) or flags
    train             train one run from a run config (YAML)
    fidelity          a student's fidelity to its teacher on the test set, from the runs' stored test logits
    import-reference  convert the paper's results zip into our per-run metrics files
    accept-edit       accept a metrics.json edited on purpose (recorded in the file, logged)
    status            runs done / running / pending of a study, ETAs, failures
    plan              a study's training jobs, model-epochs and estimated GPU-hours, before it runs

Bad input is reported as one line on stderr and exit status 2; a failing file system (full disk, read-only
folder, a folder where a file should be) as one line naming the path and the cause, and exit status 1.
No command overwrites an existing output that it did not make unless given ``--force``
(kdcore.atomic.claim_outputs); the importer writes only into an empty folder or one it filled.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kdcore.errors import KDCoreError


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from kdcore.atomic import claim_outputs
    from kdcore.config import load_config_file
    from kdcore.data import prepare_dataset

    claim_outputs([args.out], "prepare-data", args.force)
    spec = load_config_file(args.config) if args.config else {}
    for key in ("source", "path"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    summary = prepare_dataset(spec, args.out)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from kdcore.config import load_config_file
    from kdcore.engine import train_run
    from kdcore.runfolder import check_inputs_are_not_outputs

    config = load_config_file(args.config)
    teacher = config.get("teacher") if isinstance(config.get("teacher"), dict) else {}
    check_inputs_are_not_outputs(
        args.out, {"data": config.get("data"), "teacher.checkpoint": teacher.get("checkpoint")}
    )
    if args.device or args.threads:
        runtime = dict(config.get("runtime") or {})
        if args.device:
            runtime["device"] = args.device
        if args.threads:
            runtime["threads"] = args.threads
        config["runtime"] = runtime
    metrics = train_run(config, args.out, force=args.force)
    print(json.dumps(metrics["results"], indent=2))
    return 0


def cmd_fidelity(args: argparse.Namespace) -> int:
    from kdcore.atomic import claim_outputs
    from kdcore.fidelity import fidelity_record, write_fidelity

    claim_outputs([args.out], "fidelity", args.force)
    record = fidelity_record(args.student, args.teacher, which=args.at)
    write_fidelity(record, args.out)
    keys = ("student_test_acc", "teacher_test_acc", "top1_agreement", "kl_t1", "kl_t4")
    print(json.dumps({k: record[k] for k in keys}, indent=2))
    return 0


def cmd_import_reference(args: argparse.Namespace) -> int:
    import zipfile

    from kdcore.reference import expected_members, import_reference, missing_members

    count = import_reference(args.zip, args.outdir, allow_partial=args.allow_partial)
    with zipfile.ZipFile(args.zip) as zf:
        missing = missing_members(zf.namelist())
    print(f"imported {count} runs into {args.outdir} ({len(expected_members()) - len(missing)} of the paper's files)")
    if missing:
        print(f"missing ({len(missing)}), imported without them (--allow-partial):")
        print("\n".join(f"  {m}" for m in missing))
    return 0


def cmd_accept_edit(args: argparse.Namespace) -> int:
    from kdcore.runfolder import METRICS_FILE, accept_edit

    for given in args.metrics:
        path = given / METRICS_FILE if given.is_dir() else given
        override = accept_edit(path, args.reason)
        print(f"accepted the edit of {path} ({override['time']}, {override['user']}): {override['reason']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from kdcore.config import load_study_config
    from kdcore.status import render_text, study_status, to_json

    study = load_study_config(args.config) if args.config else None
    status = study_status(args.results, study, stale_after=args.stale_after)
    print(to_json(status) if args.json else render_text(status), end="" if not args.json else "\n")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from kdcore.config import load_study_config
    from kdcore.plan import load_bench, plan_study, render_text, to_json

    study = load_study_config(args.config)
    bench = load_bench(args.bench) if args.bench else None
    plan = plan_study(study, bench=bench, bench_source=str(args.bench), throughput_tflops=args.throughput)
    if args.power:
        from kdcore.powerplan import pilot_runs, power_json, power_plan, render_power

        power = power_plan(study, pilot_runs(args.power), plan)
        if args.json:
            print(json.dumps({"plan": json.loads(to_json(plan)), "power": power_json(power)}, indent=2))
        else:
            print(render_text(plan) + "\n" + render_power(power), end="")
        return 0
    print(to_json(plan) if args.json else render_text(plan), end="\n" if args.json else "")
    return 0


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: its own message if kdcore wrote one, else the cause and the path(s)."""
    if exc.strerror is None:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    cause = exc.strerror[:1].lower() + exc.strerror[1:]
    return f"{cause}: {paths}" if paths else cause


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kdcore", description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-data", help="build the prepared dataset file")
    p.add_argument("--config", type=Path, help="data spec YAML (see docs/design.md)")
    p.add_argument("--source", choices=["synthetic", "folder", "torchvision"], help="overrides the spec's source")
    p.add_argument("--path", help="folder/.tar.gz (folder) or root dir (torchvision); overrides the spec")
    p.add_argument("--out", type=Path, required=True, help="dataset file to write (e.g. results/data/dataset.pt)")
    p.add_argument("--force", action="store_true", help="overwrite --out even if it is not a dataset kdcore made")
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("train", help="train one run")
    p.add_argument("--config", type=Path, required=True, help="run config YAML (see docs/design.md)")
    p.add_argument("--out", type=Path, required=True, help="run directory (metrics.json, best.pt, final.pt)")
    p.add_argument("--device", help="overrides runtime.device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=int, help="overrides runtime.threads")
    p.add_argument("--force", action="store_true", help="remove the results of a finished run in --out and train again")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("fidelity", help="student-vs-teacher fidelity on the test set, from the runs' stored logits")
    p.add_argument("--student", type=Path, required=True, help="student run folder (or its test_logits.npz)")
    p.add_argument("--teacher", type=Path, required=True, help="teacher run folder (or its test_logits.npz)")
    p.add_argument("--out", type=Path, required=True, help="fidelity.json to write")
    p.add_argument(
        "--at",
        default="best",
        choices=["best", "final"],
        help="the student's logits at best-val or after the last epoch",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out even if it is not a fidelity.json")
    p.set_defaults(func=cmd_fidelity)

    p = sub.add_parser("import-reference", help="convert the paper's results zip into our run files")
    p.add_argument("zip", type=Path, help="the paper's raw_results_json.zip")
    p.add_argument(
        "outdir", type=Path, help="folder to write <run_id>/metrics.json into: empty, or holding an earlier import only"
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="import even when runs or fidelity files the paper's layout expects are missing (they are listed)",
    )
    p.set_defaults(func=cmd_import_reference)

    p = sub.add_parser("accept-edit", help="accept a metrics.json edited on purpose (recorded in the file, logged)")
    p.add_argument("metrics", type=Path, nargs="+", help="the edited metrics.json file(s), or their run folders")
    p.add_argument("--reason", required=True, help="why the file was edited (recorded with the time and user)")
    p.set_defaults(func=cmd_accept_edit)

    p = sub.add_parser("status", help="where a study stands: runs done / running / pending, ETAs, failures")
    p.add_argument("results", nargs="?", type=Path, default=Path("results"), help="results folder (default: results)")
    p.add_argument(
        "--config",
        type=Path,
        action="append",
        help="study config(s) as given to snakemake --configfile (merged in order over the defaults); "
        "adds the runs not started yet",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--stale-after", type=float, default=600.0, help="seconds without progress before a run counts as interrupted"
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("plan", help="a study's training jobs, model-epochs and estimated GPU-hours")
    p.add_argument(
        "config",
        type=Path,
        nargs="+",
        help="study config(s) as given to snakemake --configfile (merged in order over the defaults)",
    )
    p.add_argument("--bench", type=Path, help="JSON of python -m kdcore.bench: GPU-hours from its measured epoch times")
    p.add_argument(
        "--throughput",
        type=float,
        help="sustained TFLOP/s of the FLOPs-based estimate (default 100, bf16) and of the cases --bench lacks "
        "(default: the benchmark's median achieved TFLOP/s)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (every job)")
    p.add_argument(
        "--power",
        type=Path,
        metavar="PILOT",
        help="also plan the moderation test's power from a pilot (a finished study's runs.csv or results folder, "
        "or the paper's results zip): detectable effect at the config's seeds, seeds needed and their cost",
    )
    p.set_defaults(func=cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except OSError as exc:  # kdcore's WriteError included: the file system failed, not the input
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KDCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
