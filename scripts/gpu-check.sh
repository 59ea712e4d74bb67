#!/usr/bin/env bash
# The GPU check: bench, full-scale ResNet-18, smoke study through Snakemake, concurrent jobs (docs/performance.md).
#
#   bash scripts/gpu-check.sh OUTDIR [--data ARCHIVE] [--cpu] [--total-s SECONDS]
#
# OUTDIR receives results.json, results.md, bench.json and check.log (rewritten as each step ends).
# ARCHIVE: the CIFAR-10 JPEG archive (default: data/cifar10-jpeg.tar.gz inside this working tree, a git-ignored
# folder, so that it travels with the tree to the GPU machine).
# --cpu: the same steps CPU-sized (about a minute on 2 cores). Exit status 1 if any step failed, 2 on bad input
# or a failed pre-flight (imports, data). The whole check ends within --total-s (default 480 s: 8 minutes; 1200
# with --cpu): the check itself fits its steps into that less 25 s (cutting a step short, skipping what no longer
# fits), and `timeout` here is the backstop: SIGTERM 10 s before the limit (the check writes what it measured),
# SIGKILL at the limit.
# Runs tools/gpucheck.py with `python3` and kdcore from this repository's src/ (prepended to PYTHONPATH);
# installs nothing.
set -euo pipefail

usage() {
    echo "usage: bash scripts/gpu-check.sh OUTDIR [--data ARCHIVE] [--cpu] [--total-s SECONDS]" >&2
    exit 2
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR=""
DATA="$REPO/data/cifar10-jpeg.tar.gz"
CPU=()
TOTAL=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data)
            [[ $# -ge 2 ]] || usage
            DATA="$2"
            shift 2
            ;;
        --cpu)
            CPU=(--cpu)
            shift
            ;;
        --total-s)
            [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || usage
            TOTAL="$2"
            shift 2
            ;;
        -h | --help) usage ;;
        -*)
            echo "gpu-check: unknown option $1" >&2
            usage
            ;;
        *)
            [[ -z "$OUTDIR" ]] || usage
            OUTDIR="$1"
            shift
            ;;
    esac
done
[[ -n "$OUTDIR" ]] || usage

export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
if [[ -z "$TOTAL" ]]; then
    if [[ ${#CPU[@]} -gt 0 ]]; then TOTAL=1200; else TOTAL=480; fi
fi
[[ "$TOTAL" -ge 60 ]] || {
    echo "gpu-check: --total-s must be at least 60" >&2
    exit 2
}
exec timeout --signal=TERM --kill-after=10 "$((TOTAL - 10))" \
    python3 "$REPO/tools/gpucheck.py" run "$OUTDIR" --data "$DATA" --total-s "$((TOTAL - 25))" "${CPU[@]}"
