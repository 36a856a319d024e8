#!/usr/bin/env bash
# Benchmark nbdfs against nbdfuse and fio's own NBD engine, side by side, with fio.
#
# Usage: contrib/bench.sh            (run from anywhere; needs root for apt-get and FUSE mounts)
#
# Environment:
#   BENCH_RUNTIME=5       seconds per fio job (time_based, plus a 1 s ramp)
#   BENCH_SIZE=1G         size of each nbdkit memory export (nbdkit/fio size syntax)
#   BENCH_ONLY=a,b        run only these paths: nbdfs, nbdfuse, fio-nbd (default: all three)
#   NBDFS_ARGS="..."      extra flags for nbdfs (word-split), e.g. "-C 2 --direct-io"
#   NBDFS_BIN=path        nbdfs binary (default: build/nbdfs, built with meson if missing)
#   BENCH_OUTDIR=dir      keep fio's JSON and the daemons' logs there
#
# Exit status: 0 when every selected job ran cleanly, 1 otherwise (the table marks failures ERR).
#
# Each path gets its own fresh `nbdkit memory` server on a Unix socket in a temporary
# directory, pre-filled once (sequential 1M writes through fio's nbd engine) so reads read
# real data. Then four fio jobs run against it:
#   randread-4k / randwrite-4k   bs=4k,  iodepth=32, numjobs=2, group_reporting
#   seqread-1M  / seqwrite-1M    bs=1M,  iodepth=8,  numjobs=1
# through (a) nbdfs and (b) nbdfuse -C 4 with direct=1 ioengine=libaio on the mounted file,
# and (c) ioengine=nbd (same iodepth/numjobs; direct does not apply).
# Mounts, daemons and servers are torn down on exit, failure or Ctrl-C.

set -u -o pipefail

RUNTIME=${BENCH_RUNTIME:-5}
RAMP=1
SIZE=${BENCH_SIZE:-1G}
ONLY=${BENCH_ONLY:-nbdfs,nbdfuse,fio-nbd}
NBDFS_ARGS=${NBDFS_ARGS:-}
OUTDIR=${BENCH_OUTDIR:-}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NBDFS=${NBDFS_BIN:-$ROOT/build/nbdfs}

ALL_PATHS=(nbdfs nbdfuse fio-nbd)
JOBS=(randread-4k randwrite-4k seqread-1M seqwrite-1M)

BENCH_NAME=bench
. "$ROOT/contrib/bench-lib.sh"

# ---------------------------------------------------------------- arguments and selection
case "${1:-}" in
    -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    "") ;;
    *) die "unexpected argument '$1' (configuration is by environment variables; see --help)" ;;
esac

[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNTIME must be a positive integer (seconds)"

SELECTED=()
IFS=',' read -r -a _only <<<"$ONLY"
for p in "${_only[@]}"; do
    p=${p// /}
    [[ -z $p ]] && continue
    case " ${ALL_PATHS[*]} " in
        *" $p "*) case " ${SELECTED[*]:-} " in *" $p "*) ;; *) SELECTED+=("$p") ;; esac ;;
        *) die "BENCH_ONLY: unknown path '$p' (known: ${ALL_PATHS[*]})" ;;
    esac
done
((${#SELECTED[@]})) || die "BENCH_ONLY selects nothing"
selected() { case " ${SELECTED[*]} " in *" $1 "*) return 0 ;; esac; return 1; }

pkgs=(fio nbdkit)    # Debian's nbdkit ships the memory plugin; Debian's fio has the nbd engine
selected nbdfuse && pkgs+=(libnbd-bin)
{ selected nbdfs || selected nbdfuse; } && pkgs+=(fuse3)
command -v python3 >/dev/null || pkgs+=(python3)
ensure_pkgs "${pkgs[@]}"

selected nbdfs && ensure_nbdfs
[[ -e /dev/fuse ]] || ! { selected nbdfs || selected nbdfuse; } || die "/dev/fuse is missing"

# ---------------------------------------------------------------- state and cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nbdfs-bench.XXXXXX") || die "mktemp failed"
RES=$TMP/results
mkdir -p "$RES"

save_results() {
    if [[ -n $OUTDIR ]]; then
        mkdir -p "$OUTDIR" && cp -r "$RES"/. "$OUTDIR"/ 2>/dev/null
    fi
}
bench_trap_cleanup

# ---------------------------------------------------------------- servers and mounts
# start_server NAME: fresh nbdkit memory export on $TMP/NAME/nbd.sock; sets SERVER_PID, URI.
start_server() {
    local d=$TMP/$1 n=100
    mkdir -p "$d"
    rm -f "$d/nbdkit.pid"
    nbdkit -f -U "$d/nbd.sock" -P "$d/nbdkit.pid" memory size="$SIZE" >"$RES/$1-nbdkit.log" 2>&1 &
    SERVER_PID=$!
    while [[ ! -s $d/nbdkit.pid ]] && ((n-- > 0)); do
        pid_alive "$SERVER_PID" || die "nbdkit exited: $(tail -n 3 "$RES/$1-nbdkit.log")"
        sleep 0.1
    done
    [[ -s $d/nbdkit.pid ]] || die "nbdkit did not become ready"
    URI="nbd+unix:///?socket=$d/nbd.sock"
}

# run_fio LOG TIMEOUT ARGS...: fio in the background so Ctrl-C reaches the trap at once.
run_fio() {
    local log=$1 limit=$2 rc
    shift 2
    timeout --foreground -k 10 "$limit" fio "$@" >"$log" 2>&1 &
    JOB_PID=$!
    wait "$JOB_PID"
    rc=$?
    JOB_PID=""
    return $rc
}

prefill() {
    say "$1: pre-filling the $SIZE export"
    run_fio "$RES/$1-prefill.log" 600 --name=prefill --ioengine=nbd --uri="$URI" --rw=write \
        --bs=1M --iodepth=8 --size="$SIZE" --output-format=json --output="$RES/$1-prefill.json" \
        || die "$1: pre-fill failed: $(tail -n 5 "$RES/$1-prefill.log")"
}

wait_mounted() {   # wait_mounted NAME FILE
    local n=300
    while ((n-- > 0)); do
        pid_alive "$DAEMON_PID" || die "$1 exited before mounting: $(tail -n 5 "$RES/$1-daemon.log")"
        mountpoint -q "$MOUNT_DIR" && [[ -e $2 ]] && return 0
        sleep 0.1
    done
    die "$1 did not mount within 30 s"
}

mount_nbdfs() {
    MOUNT_DIR=$TMP/nbdfs/mnt
    mkdir -p "$MOUNT_DIR"
    # -f keeps it our child, so its pid and stderr are ours to watch; NBDFS_ARGS is word-split.
    # shellcheck disable=SC2086
    "$NBDFS" -f $NBDFS_ARGS "$URI" "$MOUNT_DIR" >"$RES/nbdfs-daemon.log" 2>&1 &
    DAEMON_PID=$!
    TARGET=$MOUNT_DIR/disk
    wait_mounted nbdfs "$TARGET"
}

mount_nbdfuse() {
    MOUNT_DIR=$TMP/nbdfuse/mnt
    mkdir -p "$MOUNT_DIR"
    # nbdfuse stays in the foreground; the file is MOUNTDIR/nbd.
    nbdfuse -C 4 -P "$TMP/nbdfuse/nbdfuse.pid" "$MOUNT_DIR/" "$URI" >"$RES/nbdfuse-daemon.log" 2>&1 &
    DAEMON_PID=$!
    TARGET=$MOUNT_DIR/nbd
    wait_mounted nbdfuse "$TARGET"
}

# job_args JOB: fio options of one job, engine-independent.
job_args() {
    case $1 in
        randread-4k)  echo "--rw=randread  --bs=4k --iodepth=32 --numjobs=2" ;;
        randwrite-4k) echo "--rw=randwrite --bs=4k --iodepth=32 --numjobs=2" ;;
        seqread-1M)   echo "--rw=read      --bs=1M --iodepth=8  --numjobs=1" ;;
        seqwrite-1M)  echo "--rw=write     --bs=1M --iodepth=8  --numjobs=1" ;;
    esac
}

run_path() {
    local path=$1 job engine_args rc
    say "== $path"
    start_server "$path"
    prefill "$path"
    case $path in
        nbdfs)   mount_nbdfs;   engine_args=(--ioengine=libaio --direct=1 --filename="$TARGET") ;;
        nbdfuse) mount_nbdfuse; engine_args=(--ioengine=libaio --direct=1 --filename="$TARGET") ;;
        fio-nbd) engine_args=(--ioengine=nbd --uri="$URI") ;;
    esac
    for job in "${JOBS[@]}"; do
        say "$path: $job (${RUNTIME}s)"
        # shellcheck disable=SC2046
        run_fio "$RES/$path-$job.log" $((RUNTIME + RAMP + 60)) --name="$job" "${engine_args[@]}" \
            $(job_args "$job") --size="$SIZE" --group_reporting --time_based \
            --runtime="$RUNTIME" --ramp_time="$RAMP" \
            --output-format=json --output="$RES/$path-$job.json"
        rc=$?
        echo "$rc" >"$RES/$path-$job.rc"
        if ((rc)); then
            say "$path: $job failed (exit $rc): $(tail -n 3 "$RES/$path-$job.log" | tr '\n' ' ')"
            if [[ -n $DAEMON_PID ]] && ! pid_alive "$DAEMON_PID"; then
                say "$path: the FUSE daemon died; skipping its remaining jobs"
                break
            fi
            if ! pid_alive "$SERVER_PID"; then
                say "$path: nbdkit died; skipping its remaining jobs"
                break
            fi
        fi
    done
    stop_daemon
    stop_server
}

# ---------------------------------------------------------------- run
say "paths: ${SELECTED[*]}; runtime ${RUNTIME}s (+${RAMP}s ramp) per job; export $SIZE; $(nproc) CPUs"
selected nbdfs && say "nbdfs: $NBDFS ${NBDFS_ARGS:+(args: $NBDFS_ARGS)}"
for path in "${SELECTED[@]}"; do
    run_path "$path"
done

status=0
python3 - "$RES" "${SELECTED[@]}" <<'EOF' || status=1
import json, os, sys

res, paths = sys.argv[1], sys.argv[2:]
jobs = [("randread-4k", "read", "iops"), ("randwrite-4k", "write", "iops"),
        ("seqread-1M", "read", "mbs"), ("seqwrite-1M", "write", "mbs")]
problems = []

def load(path, job, ddir, kind):
    base = os.path.join(res, f"{path}-{job}")
    try:
        rc = int(open(base + ".rc").read().strip())
    except OSError:
        return None                                   # not run (earlier failure)
    try:
        text = open(base + ".json").read()
        d = json.loads(text[text.index("{"):])        # skip any non-JSON preamble
        j = d["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        problems.append(f"{path} {job}: no fio result (exit {rc})")
        return "ERR"
    if rc or j.get("error"):
        problems.append(f"{path} {job}: fio exit {rc}, error {j.get('error')}")
        return "ERR"
    s = j[ddir]
    return s["iops"] if kind == "iops" else s["bw_bytes"] / 1e6

def fmt(v, kind):
    if v is None or isinstance(v, str):
        return v or "-"
    if kind == "mbs":
        return f"{v:.0f} MB/s"
    if v >= 100e3: return f"{v/1e3:.0f}k"
    if v >= 10e3:  return f"{v/1e3:.1f}k"
    if v >= 1e3:   return f"{v/1e3:.2f}k"
    return f"{v:.0f}"

def ratio(a, b):
    if not isinstance(a, float) or not isinstance(b, float) or b <= 0:
        return "-"
    return f"{a/b:.2f}x"

cols = ["nbdfs", "nbdfuse", "fio-nbd"]
hdr = f"{'job':<14} " + " ".join(f"{c:<10}" for c in cols) + f" {'nbdfs/nbdfuse':<14} nbdfs/fio-nbd"
print()
print(hdr)
for job, ddir, kind in jobs:
    v = {c: (load(c, job, ddir, kind) if c in paths else None) for c in cols}
    v = {c: (float(x) if isinstance(x, (int, float)) else x) for c, x in v.items()}
    print(f"{job:<14} " + " ".join(f"{fmt(v[c], kind):<10}" for c in cols)
          + f" {ratio(v['nbdfs'], v['nbdfuse']):<14} {ratio(v['nbdfs'], v['fio-nbd'])}")
print("(4k jobs: IOPS; 1M jobs: MB/s = 10^6 bytes/s)")
for p in problems:
    print("problem:", p)
sys.exit(1 if problems else 0)
EOF

# Daemon messages are worth seeing: errors here usually explain an ERR or a low number.
for path in nbdfs nbdfuse; do
    f=$RES/$path-daemon.log
    if [[ -s $f ]]; then
        say "$path said ($(wc -l <"$f") lines, last 10):"
        tail -n 10 "$f" | sed 's/^/    /' >&2
    fi
done
exit $status
