#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, as root and without systemd, for tests:
# munged (as user munge), slurmctld and slurmd, with N fake GPUs declared as gres so that
# `sbatch --gpus=1` jobs schedule (jobs get CUDA_VISIBLE_DEVICES; there is no real device).
# Idempotent: if the daemons this script started are still alive it only waits for the node.
# Needs .ci/slurm/install.sh first. Stop with .ci/slurm/stop.sh (kills only what this started).
#
# Environment (all optional):
#   KD_SLURM_GPUS=2         number of fake GPUs on the node (gres gpu:N)
#   KD_SLURM_PARTITION=ci   name of the single (default) partition
#   KD_SLURM_MEM_FRACTION=80  percent of the machine's memory given to SLURM (RealMemory)
#   KD_SLURM_TIMEOUT=60     seconds to wait for the node to become idle
set -euo pipefail

GPUS=${KD_SLURM_GPUS:-2}
PARTITION=${KD_SLURM_PARTITION:-ci}
MEM_FRACTION=${KD_SLURM_MEM_FRACTION:-80}
TIMEOUT=${KD_SLURM_TIMEOUT:-60}

STATE=/run/kd-slurm                # pid files, fake device nodes, marker of what we started
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
SPOOL=/var/lib/slurm
MARK="# written by kd-capacity .ci/slurm/start.sh"

die() { echo "start.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"
for bin in munged slurmctld slurmd sinfo scontrol; do
    command -v "$bin" >/dev/null || die "$bin not found; run .ci/slurm/install.sh first"
done
[[ $GPUS =~ ^[0-9]+$ ]] || die "KD_SLURM_GPUS must be a non-negative integer, got '$GPUS'"

# alive NAME PIDFILE: true when PIDFILE names a live process whose command is NAME.
alive() {
    local pid
    [[ -s $2 ]] || return 1
    pid=$(<"$2")
    [[ -d /proc/$pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]]
}

wait_idle() {
    local node=$1 deadline=$((SECONDS + TIMEOUT)) state
    while ((SECONDS < deadline)); do
        alive slurmctld "$STATE/slurmctld.pid" || break
        state=$(sinfo -h -N -n "$node" -o '%T' 2>/dev/null || true)
        case $state in
            idle|mixed|allocated) echo "start.sh: node $node is $state"; return 0 ;;
            drain*|down*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    sinfo -N -l >&2 || true
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    alive slurmctld "$STATE/slurmctld.pid" || die "slurmctld exited (log above)"
    die "node $node not idle after ${TIMEOUT}s (state '${state:-?}')"
}

HOST=$(hostname -s)
mkdir -p "$STATE" "$LOG_DIR" "$SPOOL/slurmctld" "$SPOOL/slurmd"

if alive munged "$STATE/munged.pid" && alive slurmctld "$STATE/slurmctld.pid" \
   && alive slurmd "$STATE/slurmd.pid"; then
    echo "start.sh: cluster already running"
    wait_idle "$HOST"
    exit 0
fi

# ---- munge ---------------------------------------------------------------------------------
if ! alive munged "$STATE/munged.pid"; then
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$STATE/munged.pid"
    alive munged "$STATE/munged.pid" || die "munged did not start (see /var/log/munge/munged.log)"
fi

# ---- configuration -------------------------------------------------------------------------
# Node line from the hardware (slurmd -C), with RealMemory capped below the machine's.
read -r CPUS BOARDS SOCKETS CORES THREADS REALMEM < <(slurmd -C | head -1 | tr ' ' '\n' \
    | awk -F= '/^CPUs=/{c=$2} /^Boards=/{b=$2} /^SocketsPerBoard=/{s=$2} /^CoresPerSocket=/{k=$2}
               /^ThreadsPerCore=/{t=$2} /^RealMemory=/{m=$2} END{print c, b, s, k, t, m}')
MEM=$((REALMEM * MEM_FRACTION / 100))

GRES_NODE=""
if ((GPUS > 0)); then
    GRES_NODE="Gres=gpu:$GPUS"
    # gres.conf needs File= pointing at character devices (plain files are rejected and a
    # gpu without File= drains the node); (1,3) is /dev/null's device number.
    for ((i = 0; i < GPUS; i++)); do
        dev="$STATE/fakegpu$i"
        [[ -c $dev ]] || { rm -f "$dev"; mknod "$dev" c 1 3; }
    done
fi

if [[ -e $CONF_DIR/slurm.conf ]] && ! grep -qF "$MARK" "$CONF_DIR/slurm.conf"; then
    die "$CONF_DIR/slurm.conf exists and was not written by this script; not touching it"
fi
mkdir -p "$CONF_DIR"
cat >"$CONF_DIR/slurm.conf.tmp" <<CONF
$MARK
ClusterName=kdci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
MinJobAge=600
KillWait=5
ReturnToService=2
SchedulerType=sched/backfill
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
mv "$CONF_DIR/slurm.conf.tmp" "$CONF_DIR/slurm.conf"
{
    echo "$MARK"
    echo "AutoDetect=off"
    if ((GPUS > 0)); then
        echo "NodeName=$HOST Name=gpu File=$STATE/fakegpu[0-$((GPUS - 1))]"
    fi
} >"$CONF_DIR/gres.conf"

# ---- daemons -------------------------------------------------------------------------------
if ! alive slurmctld "$STATE/slurmctld.pid"; then
    slurmctld
    for _ in $(seq 50); do alive slurmctld "$STATE/slurmctld.pid" && break; sleep 0.1; done
    alive slurmctld "$STATE/slurmctld.pid" || { tail -n 20 "$LOG_DIR/slurmctld.log" >&2; die "slurmctld did not start"; }
fi
if ! alive slurmd "$STATE/slurmd.pid"; then
    slurmd
    for _ in $(seq 50); do alive slurmd "$STATE/slurmd.pid" && break; sleep 0.1; done
    alive slurmd "$STATE/slurmd.pid" || { tail -n 20 "$LOG_DIR/slurmd.log" >&2; die "slurmd did not start"; }
fi
wait_idle "$HOST"
echo "start.sh: partition '$PARTITION', node $HOST: CPUs=$CPUS RealMemory=${MEM}MB gpus=$GPUS"
