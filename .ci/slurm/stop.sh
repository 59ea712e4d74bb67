#!/usr/bin/env bash
# Stop the daemons that .ci/slurm/start.sh started (slurmd, slurmctld, munged), found by the pid
# files it keeps in /run/kd-slurm; nothing else is touched. Idempotent. Usage: .ci/slurm/stop.sh
set -euo pipefail
STATE=/run/kd-slurm

# stop NAME: TERM the process in $STATE/NAME.pid if it is alive and really is NAME, wait for it.
stop() {
    local name=$1 pidfile=$STATE/$1.pid pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if [[ -d /proc/$pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
        if [[ -d /proc/$pid ]]; then
            echo "stop.sh: $name ($pid) ignored TERM for 10 s, sending KILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "stop.sh: stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

stop slurmd
stop slurmctld
stop munged
