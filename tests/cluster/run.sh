#!/usr/bin/env bash
# The CI-sized DAG on a live one-node SLURM cluster, through workflow/profiles/slurm, with one
# fault: the first training job is killed with SIGKILL (what the kernel does to a job over its
# memory) once it has written a resumable last.pt. The run must retry that job with twice the
# memory, the retry must resume at a step > 0, and the tables must equal those of a local run.
#
#   tests/cluster/run.sh [--reference TABLES_DIR] [--target T] [--configfile FILE...]
#                        [--no-fault] [--keep]
#
#   --reference DIR   tables of a local run of the same config and target (default: run it
#                     here first)
#   --target T        the Snakemake target (default: tables)
#   --profile NAME    the config's profile: tables are compared in results/NAME/tables
#                     (default: ci, the profile of .test/config.yaml)
#   --configfile F..  the DAG's config files, relative to the repository or absolute
#                     (default: workflow/config/default.yaml .test/config.yaml)
#   --no-fault        no SIGKILL, only check the tables
#   --keep            keep the work directories (printed) instead of removing them
#
# Needs root (it installs munge + SLURM with apt if missing and starts the daemons, see
# tests/cluster/cluster.sh) and the project venv (.venv). Every daemon is stopped on exit,
# failure or Ctrl-C included. Runs in copies of the source tree under a temp directory, so
# results/ of the checkout is never touched. Passes again when run twice in a row.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="$ROOT/tests/cluster/cluster.sh"
VENV_BIN="$ROOT/.venv/bin"
CONFIGFILES=(workflow/config/default.yaml .test/config.yaml)
REFERENCE=""
FAULT=1
KEEP=0
TARGET=tables
PROFILE=ci
# Wall-clock limit (seconds) of one DAG run. `timeout --foreground -s INT`: Snakemake stays in
# our process group (Ctrl-C reaches it) and on timeout gets SIGINT, which cancels its jobs.
DAG_TIMEOUT="${SVITT_CLUSTER_DAG_TIMEOUT:-1500}"
INIT_WAIT="${SVITT_SLURM_INIT_WAIT:-5}" # plugin's first status check; MinJobAge is 300 s

die() {
    echo "run.sh: $*" >&2
    exit 1
}
say() { echo "run.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --reference) REFERENCE="$(cd "$2" && pwd)" && shift 2 ;;
        --configfile)
            CONFIGFILES=()
            shift
            while [[ $# -gt 0 && "$1" != --* ]]; do
                CONFIGFILES+=("$1")
                shift
            done
            ;;
        --target) TARGET="$2" && shift 2 ;;
        --profile) PROFILE="$2" && shift 2 ;;
        --no-fault) FAULT=0 && shift ;;
        --keep) KEEP=1 && shift ;;
        -h | --help) sed -n '2,23p' "$0" && exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

[[ -x "$VENV_BIN/snakemake" ]] || die "$VENV_BIN/snakemake not found: run 'make venv' first"
[[ ${#CONFIGFILES[@]} -gt 0 ]] || die "--configfile needs at least one file"
for i in "${!CONFIGFILES[@]}"; do
    f="${CONFIGFILES[$i]}"
    [[ "$f" == /* ]] || f="$ROOT/$f"
    [[ -f "$f" ]] || die "config file $f not found"
    CONFIGFILES[i]="$f"
done
export PATH="$VENV_BIN:$PATH" # the jobs inherit it (sbatch --export=ALL)

TMP="$(mktemp -d /tmp/svitt-cluster.XXXXXX)"
STATE="$TMP/slurm"
WATCHER_PID=""

cleanup() {
    local status=$?
    if [[ -n "$WATCHER_PID" ]] && kill -0 "$WATCHER_PID" 2>/dev/null; then
        kill "$WATCHER_PID" 2>/dev/null || true
        wait "$WATCHER_PID" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -d "$STATE" ]]; then
        "$CLUSTER" logs "$STATE" || true
    fi
    "$CLUSTER" down "$STATE" || true
    if [[ $KEEP -eq 1 || $status -ne 0 && -n "${SVITT_KEEP_FAILED:-}" ]]; then
        say "work directories kept in $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A copy of the source tree (tracked and untracked-but-not-ignored files: no results, no venv).
copy_tree() {
    mkdir -p "$1"
    git -C "$ROOT" ls-files -z -co --exclude-standard |
        tar -C "$ROOT" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$1" -xf -
}

tables_dir() { # the profile's tables of a work dir (which also holds the committed ones)
    [[ -d "$1/results/$PROFILE/tables" ]] || die "no results/$PROFILE/tables in $1"
    echo "$1/results/$PROFILE/tables"
}

# ---- the local reference -------------------------------------------------------------------
if [[ -z "$REFERENCE" ]]; then
    say "local reference run of ${CONFIGFILES[*]}"
    copy_tree "$TMP/local"
    start=$SECONDS
    (cd "$TMP/local" && timeout --foreground -s INT "$DAG_TIMEOUT" snakemake --cores all \
        --configfile "${CONFIGFILES[@]}" -- "$TARGET" >"$TMP/local.log" 2>&1) ||
        {
            tail -n 40 "$TMP/local.log" >&2
            die "local run failed (log above)"
        }
    REFERENCE="$(tables_dir "$TMP/local")"
    say "local run: $((SECONDS - start)) s"
fi
ls "$REFERENCE"/*.csv >/dev/null 2>&1 || die "no tables (*.csv) in $REFERENCE"

# ---- the cluster -----------------------------------------------------------------------------
"$CLUSTER" install
start=$SECONDS
eval "$("$CLUSTER" up "$STATE")" # exports SLURM_CONF
say "cluster up in $((SECONDS - start)) s"

WORK="$TMP/work"
copy_tree "$WORK"

# ---- the fault -------------------------------------------------------------------------------
# Waits for a pretraining job with a last.pt and no checkpoint.pt yet, records its SLURM job
# (id, memory, comment), SIGKILLs its `svitt` process, then records the retry's job.
inject_fault() {
    local out="$TMP/fault"
    local deadline=$((SECONDS + DAG_TIMEOUT))
    while ((SECONDS < deadline)); do
        local last
        for last in "$WORK"/results/*/runs/pretrain/*/T*/last.pt; do
            [[ -f "$last" ]] || continue
            local dir="${last%/last.pt}"
            [[ -f "$dir/checkpoint.pt" ]] && continue
            local rel="${dir#"$WORK"/}" pid=""
            for proc in /proc/[0-9]*; do
                [[ "$(readlink "$proc/cwd" 2>/dev/null)" == "$WORK" ]] || continue
                local cmd
                cmd="$(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null)" || continue
                if [[ "$cmd" == *"/svitt pretrain "*"--out $rel "* ||
                    "$cmd" == *"/svitt pretrain "*"--out $rel" ]]; then
                    pid="${proc#/proc/}"
                    break
                fi
            done
            [[ -n "$pid" ]] || continue
            local jobid info
            jobid="$(tr '\0' '\n' <"/proc/$pid/environ" | sed -n 's/^SLURM_JOB_ID=//p')" ||
                continue
            [[ -n "$jobid" ]] || continue
            info="$(squeue -h -j "$jobid" -o '%m|%k')" || continue
            kill -KILL "$pid" || continue
            echo "killed=$jobid|$info|$rel" >"$out"
            say "fault: SIGKILL to pid $pid (SLURM job $jobid, $rel)"
            # the retry: a new job with the same comment (rule + wildcards)
            local comment="${info#*|}"
            while ((SECONDS < deadline)); do
                local retry
                retry="$(squeue -h -t all -o '%i|%m|%k' | awk -F'|' -v c="$comment" \
                    -v j="$jobid" '$3 == c && $1 != j {print; exit}')"
                if [[ -n "$retry" ]]; then
                    echo "retry=$retry" >>"$out"
                    say "fault: retried as SLURM job ${retry%%|*}"
                    return 0
                fi
                sleep 1
            done
            return 1
        done
        sleep 0.2
    done
}

if [[ $FAULT -eq 1 ]]; then
    inject_fault &
    WATCHER_PID=$!
fi

# ---- the DAG through the SLURM profile -------------------------------------------------------
# A CPU-only cluster (SVITT_SLURM_GPUS=0); squeue for job status and no account, since this
# cluster has no slurmdbd (sacct cannot answer). `timeout -s INT`: Snakemake cancels its jobs.
say "DAG through workflow/profiles/slurm"
start=$SECONDS
(cd "$WORK" && SVITT_SLURM_GPUS=0 timeout --foreground -s INT "$DAG_TIMEOUT" snakemake \
    --profile workflow/profiles/slurm --configfile "${CONFIGFILES[@]}" \
    --slurm-status-command squeue --slurm-no-account \
    --slurm-init-seconds-before-status-checks "$INIT_WAIT" \
    --slurm-keep-successful-logs -- "$TARGET" >"$TMP/cluster.log" 2>&1) ||
    {
        tail -n 60 "$TMP/cluster.log" >&2
        die "SLURM run failed (log above)"
    }
say "SLURM run: $((SECONDS - start)) s, $(grep -c 'submitted with SLURM jobid' "$TMP/cluster.log") jobs"

# ---- checks ----------------------------------------------------------------------------------
if [[ $FAULT -eq 1 ]]; then
    wait "$WATCHER_PID" || die "fault injection did not complete"
    WATCHER_PID=""
    [[ -f "$TMP/fault" ]] || die "no training job was killed: none had a last.pt before it" \
        "finished (lower optim.checkpoint_every in the config)"
    IFS='|' read -r killed mem1 _ rel < <(sed -n 's/^killed=//p' "$TMP/fault")
    IFS='|' read -r retried mem2 _ < <(sed -n 's/^retry=//p' "$TMP/fault")
    [[ -n "$retried" ]] || die "job $killed was not retried"
    mb() { # squeue's %m ("4000M", "8G") in MB
        local v="$1"
        case "$v" in
            *G) echo $((${v%G} * 1024)) ;;
            *M) echo "${v%M}" ;;
            *) echo "$v" ;;
        esac
    }
    ((2 * $(mb "$mem1") == $(mb "$mem2"))) ||
        die "retry $retried asked for $mem2, expected twice the $mem1 of job $killed"
    say "ok: job $killed (mem $mem1) killed, retried as $retried with mem $mem2"
    step="$(sed -n 's/.*resuming at step \([0-9]*\).*/\1/p' "$WORK/$rel/log.txt" | tail -n 1)"
    [[ -n "$step" && "$step" -gt 0 ]] ||
        die "the retry of $rel did not resume from last.pt (no 'resuming at step N>0' in log.txt)"
    say "ok: the retry resumed at step $step"
fi

CLUSTER_TABLES="$(tables_dir "$WORK")"
diff -r "$REFERENCE" "$CLUSTER_TABLES" >"$TMP/tables.diff" ||
    {
        head -n 40 "$TMP/tables.diff" >&2
        die "tables of the SLURM run differ from $REFERENCE"
    }
say "ok: $(find "$CLUSTER_TABLES" -type f | wc -l) table files identical to the local run"
