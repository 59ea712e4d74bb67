#!/usr/bin/env bash
# The GPU check: bench, full-scale ResNet-18, smoke study through Snakemake, concurrent jobs (docs/performance.md).
#
#   bash scripts/gpu-check.sh OUTDIR [--data ARCHIVE] [--cpu]
#
# OUTDIR receives results.json, results.md, bench.json and check.log (rewritten as each step ends).
# ARCHIVE: the CIFAR-10 JPEG archive (default: ../shared/data/cifar10-jpeg.tar.gz next to the repository).
# --cpu: the same steps CPU-sized (about 1.5 minutes on 2 cores). Exit status 1 if any step failed, 2 on bad input.
# Uses `python3` with kdcore from this repository's src/ (prepended to PYTHONPATH); installs nothing.
set -euo pipefail

usage() {
    echo "usage: bash scripts/gpu-check.sh OUTDIR [--data ARCHIVE] [--cpu]" >&2
    exit 2
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR=""
DATA="$REPO/../shared/data/cifar10-jpeg.tar.gz"
CPU=()
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
exec python3 -m kdcore.gpucheck run "$OUTDIR" --data "$DATA" "${CPU[@]}"
