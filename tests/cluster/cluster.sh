#!/usr/bin/env bash
# A live one-node SLURM cluster on this machine (real munged, slurmctld and slurmd), for tests.
#
#   tests/cluster/cluster.sh install        install munge + SLURM from apt if they are missing
#   tests/cluster/cluster.sh up STATE_DIR   write STATE_DIR/slurm.conf, start the daemons, wait
#                                            until the node is idle; prints `export SLURM_CONF=...`
#   tests/cluster/cluster.sh down STATE_DIR cancel jobs, stop the daemons by their pid files
#
# Everything (config, spool, state, logs, pid files) lives in STATE_DIR, with two exceptions.
# munged (user munge) keeps its key, socket and log in a /tmp/svitt-munge.* directory named in
# STATE_DIR/munge-dir, since STATE_DIR's parents may be closed to other users. And /etc/slurm/slurm.conf becomes a symlink to STATE_DIR/slurm.conf while the
# cluster is up, because the Snakemake job step (snakemake-executor-plugin-slurm-jobstep) calls
# `srun` with every SLURM_* variable removed, SLURM_CONF included, so srun only finds the
# compiled-in path. `up` refuses to replace an /etc/slurm/slurm.conf it did not create; `down`
# removes the link. A system munge keeps running untouched (ours has its own socket). Daemons listen on localhost ports SVITT_SLURMCTLD_PORT / SVITT_SLURMD_PORT
# (default 16817 / 16818). Needs root (daemons, apt). Debian 12 ships SLURM 22.05.
set -euo pipefail

SYSTEM_CONF=/etc/slurm/slurm.conf
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CTLD_PORT="${SVITT_SLURMCTLD_PORT:-16817}"
SLURMD_PORT="${SVITT_SLURMD_PORT:-16818}"
PARTITION="${SVITT_SLURM_TEST_PARTITION:-debug}"
# squeue sees a finished job for MinJobAge seconds; the Snakemake plugin needs at least 3x its
# first status wait (--slurm-init-seconds-before-status-checks), or it falls back to sacct.
MIN_JOB_AGE="${SVITT_SLURM_MIN_JOB_AGE:-300}"
WAIT_S="${SVITT_SLURM_WAIT_S:-60}"

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

need_root() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (it starts munged/slurmctld/slurmd)"
}

cmd_install() {
    need_root
    local missing=()
    for exe in munged slurmctld slurmd sbatch; do
        command -v "$exe" >/dev/null 2>&1 || missing+=("$exe")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    echo "cluster.sh: installing munge and SLURM (missing: ${missing[*]})" >&2
    local pkgs=(slurmctld slurmd slurm-client munge)
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
}

# Print the last lines of each daemon log (on failure).
show_logs() {
    local state="$1"
    local munge=""
    [[ -f "$state/munge-dir" ]] && munge="$(cat "$state/munge-dir")"
    for log in "$state"/log/*.log ${munge:+"$munge"/*.log}; do
        [[ -f "$log" ]] || continue
        echo "----- $log (last 20 lines) -----" >&2
        tail -n 20 "$log" >&2
    done
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.5
    done
    echo "cluster.sh: $what" >&2
}

node_idle() {
    [[ "$(sinfo -h -N -o %t 2>/dev/null)" == "idle" ]]
}

cmd_up() {
    need_root
    local state="$1"
    for exe in munged slurmctld slurmd sbatch; do
        command -v "$exe" >/dev/null 2>&1 || die "$exe not found: run '$0 install' first"
    done
    [[ -e "$state/slurmctld.pid" ]] && die "$state already holds a cluster: '$0 down $state'"
    mkdir -p "$state"/{ctld,slurmd,log}
    state="$(cd "$state" && pwd)"
    # munged runs as the munge user and refuses group/world-writable directories on its paths.
    local munge
    munge="$(mktemp -d /tmp/svitt-munge.XXXXXX)"
    echo "$munge" >"$state/munge-dir"
    chown munge:munge "$munge"
    chmod 0755 "$munge"

    local host cpus mem_kb mem_mb
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    mem_mb=$((mem_kb * 9 / 10 / 1024))
    sed -e "s|@STATE@|$state|g" -e "s|@MUNGE@|$munge|g" -e "s|@HOST@|$host|g" -e "s|@CPUS@|$cpus|g" \
        -e "s|@MEM_MB@|$mem_mb|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@PARTITION@|$PARTITION|g" \
        -e "s|@MIN_JOB_AGE@|$MIN_JOB_AGE|g" \
        "$HERE/slurm.conf.in" >"$state/slurm.conf"
    export SLURM_CONF="$state/slurm.conf"
    if [[ -L "$SYSTEM_CONF" && ! -e "$SYSTEM_CONF" ]]; then
        rm -f "$SYSTEM_CONF" # left behind by a test cluster whose state dir is gone
    fi
    if [[ -e "$SYSTEM_CONF" || -L "$SYSTEM_CONF" ]]; then
        die "$SYSTEM_CONF exists (a real SLURM installation?); not replacing it." \
            "Stop that cluster and remove the file, or run this test on another machine."
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -s "$SLURM_CONF" "$SYSTEM_CONF"

    # A private munge key and daemon (its socket is named in slurm.conf's AuthInfo).
    head -c 1024 /dev/urandom >"$munge/munge.key"
    chown munge:munge "$munge/munge.key"
    chmod 0600 "$munge/munge.key"
    runuser -u munge -- munged \
        --socket="$munge/munge.socket" \
        --key-file="$munge/munge.key" \
        --pid-file="$munge/munged.pid" \
        --log-file="$munge/munged.log" \
        --seed-file="$munge/munged.seed" ||
        {
            show_logs "$state"
            die "munged did not start"
        }
    wait_for 10 "munged is up" test -S "$munge/munge.socket" ||
        {
            show_logs "$state"
            die "munged socket did not appear"
        }

    slurmctld -c -f "$SLURM_CONF" ||
        {
            show_logs "$state"
            die "slurmctld did not start"
        }
    wait_for "$WAIT_S" "slurmctld answers" scontrol ping ||
        {
            show_logs "$state"
            die "slurmctld did not answer within ${WAIT_S}s"
        }
    slurmd -f "$SLURM_CONF" ||
        {
            show_logs "$state"
            die "slurmd did not start"
        }
    wait_for "$WAIT_S" "node $host is idle ($cpus CPUs, $mem_mb MB)" node_idle ||
        {
            sinfo -N -l >&2 || true
            show_logs "$state"
            die "node $host not idle within ${WAIT_S}s"
        }
    echo "export SLURM_CONF=$SLURM_CONF"
}

# stop_pidfile FILE NAME: SIGTERM the daemon named in FILE, wait, then SIGKILL if still there.
stop_pidfile() {
    local file="$1" name="$2" pid
    [[ -f "$file" ]] || return 0
    pid="$(tr -dc 0-9 <"$file")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "cluster.sh: $name ($pid) ignored SIGTERM, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

cmd_down() {
    local state="$1"
    [[ -d "$state" ]] || return 0
    state="$(cd "$state" && pwd)"
    export SLURM_CONF="$state/slurm.conf"
    if [[ -f "$state/slurmctld.pid" && -f "$SLURM_CONF" ]]; then
        # Cancel what is still queued or running, so that no job step outlives slurmd.
        scancel --full --quiet --partition "$PARTITION" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while [[ -n "$(squeue -h -t PD,R,CG -o %i 2>/dev/null)" ]] && ((SECONDS < deadline)); do
            sleep 0.5
        done
    fi
    stop_pidfile "$state/slurmd.pid" slurmd
    stop_pidfile "$state/slurmctld.pid" slurmctld
    if [[ -f "$state/munge-dir" ]]; then
        local munge
        munge="$(cat "$state/munge-dir")"
        if [[ "$munge" == /tmp/svitt-munge.* && -d "$munge" ]]; then
            stop_pidfile "$munge/munged.pid" munged
            rm -rf "$munge"
        fi
        rm -f "$state/munge-dir"
    fi
    if [[ -L "$SYSTEM_CONF" && "$(readlink "$SYSTEM_CONF")" == "$state/slurm.conf" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
    echo "cluster.sh: cluster in $state stopped" >&2
}

case "${1:-}" in
    install) cmd_install ;;
    up | down | logs)
        [[ $# -eq 2 ]] || die "usage: $0 $1 STATE_DIR"
        case "$1" in
            up) cmd_up "$2" ;;
            down) cmd_down "$2" ;;
            logs) show_logs "$2" ;;
        esac
        ;;
    *) die "usage: $0 {install | up STATE_DIR | down STATE_DIR | logs STATE_DIR}" ;;
esac
