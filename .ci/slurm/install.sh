#!/usr/bin/env bash
# Install a single-node SLURM (slurmctld, slurmd, slurm-client) and munge from Debian's packages,
# without starting any service. Idempotent: does nothing when the binaries are already there.
# Must run as root. Usage: .ci/slurm/install.sh
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
   && command -v sinfo >/dev/null && command -v munged >/dev/null; then
    echo "install.sh: SLURM and munge already installed ($(slurmctld -V))"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install.sh: must run as root (installs Debian packages)" >&2
    exit 1
fi

# Keep package post-install scripts from starting services: a policy-rc.d that answers 101
# ("action forbidden"). Only add one when none exists, and remove only the one we added.
POLICY=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    added_policy=1
fi
cleanup() { if [[ $added_policy -eq 1 ]]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "${PACKAGES[@]}"; then
    apt-get update
    apt-get install -y --no-install-recommends "${PACKAGES[@]}"
fi
echo "install.sh: installed $(slurmctld -V), $(munged --version 2>&1 | head -1)"
