#!/usr/bin/env bash
# Benchmark buffered (page-cache) I/O through nbdfs and nbdfuse, and QD1
# latency through both and through fio's own NBD engine.
#
# Usage: contrib/bench-buffered.sh    (run from anywhere, as root: it mounts
#                                      FUSE and drops the page cache)
#
# Environment:
#   BENCH_ROUNDS=3        rounds; every value reported is the median of the rounds
#   BENCH_RUNTIME=5       seconds per fio latency job (plus a 1 s ramp)
#   BENCH_SIZE=4G         size of the export for the dd, mkfs and latency jobs (>= 1G)
#   BENCH_JOBS="..."      jobs to run, space-separated (default: all, in this order):
#                         dd-1M dd-4k read-1M read-1M-128k cp-on cp-off convert mkfs
#                         lat-randread lat-randwrite
#   BENCH_PATHS="..."     paths: nbdfs nbdfuse fio-nbd (default: all; fio-nbd only has latency jobs)
#   NBDFS_ARGS="..."      extra flags for nbdfs (word-split), e.g. "-C 2"
#   NBDFS_BIN=path        nbdfs binary (default: build/nbdfs, built with meson if missing)
#
# Every measurement gets a fresh `nbdkit memory` export on a Unix socket (so
# no path finds the data another one wrote, nor memory it allocated), filled
# with nbdcopy from a 1 GiB random file where the job reads, a fresh mount
# (nbdfs -f $NBDFS_ARGS, or nbdfuse -C 4: both default to 4 connections) and a
# dropped page cache (echo 3 > /proc/sys/vm/drop_caches). Round r runs the
# paths in the order given when r is odd, reversed when even. Jobs (FILE is
# the mounted file, SRC the random file, Q a qcow2 of SRC rotated by 512 MiB,
# 25% of it holes):
#   dd-1M     dd if=SRC of=FILE bs=1M count=1024 conv=fsync,notrunc    MB/s
#   dd-4k     dd if=SRC of=FILE bs=4k count=65536 conv=fsync,notrunc   MB/s
#   read-1M   dd if=FILE of=/dev/null bs=1M count=1024 (cold)          MB/s
#   read-1M-128k  the same with the mount's read_ahead_kb at 128, FUSE's
#             default and what an unprivileged mount keeps (as root,
#             nbdfs raises it to 1024 itself)                          MB/s
#   cp-on     cp SRC FILE; sync FILE (1 GiB export)                    seconds
#   cp-off    cp FILE OUT, OUT in the temporary directory (1 GiB)      seconds
#   convert   qemu-img convert -n -f qcow2 -O raw Q FILE (1 GiB)       seconds
#   mkfs      mkfs.ext4 -F -q FILE                                     seconds
#   lat-randread, lat-randwrite
#             fio psync direct=1 bs=4k iodepth=1 over the first 1 GiB  mean clat, us
# Checks (never timed): write jobs compare the server's data, read back with
# nbdcopy (qemu-img compare for convert) after unmounting, with what was
# written; read jobs compare what they read with SRC; mkfs runs e2fsck -fn
# through the mount after dropping the cache; fio must report no error.
# nbdfs's and nbdfuse's VmRSS is sampled every 0.2 s during dd-1M and read-1M,
# and VmHWM read before every unmount; the maxima are reported.
# The dd write jobs also report dd's own system CPU time (GNU time): the
# copying into the page cache that its write() calls do whichever daemon is
# below, so 1 GiB over it is what no daemon could beat.
#
# Prints every round's value and the median per job and path, then a table
# with the ratios (>1 means nbdfs is better, except where marked "lower is
# better"). Mounts, daemons, servers and the temporary directory are removed
# on exit, failure or Ctrl-C. Exit status 0 when everything ran and verified.

set -u -o pipefail

ROUNDS=${BENCH_ROUNDS:-3}
RUNTIME=${BENCH_RUNTIME:-5}
RAMP=1
SIZE=${BENCH_SIZE:-4G}
ALL_JOBS=(dd-1M dd-4k read-1M read-1M-128k cp-on cp-off convert mkfs lat-randread lat-randwrite)
ALL_PATHS=(nbdfs nbdfuse fio-nbd)
read -r -a JOBS <<<"${BENCH_JOBS:-${ALL_JOBS[*]}}"
read -r -a PATHS_SEL <<<"${BENCH_PATHS:-${ALL_PATHS[*]}}"
NBDFS_ARGS=${NBDFS_ARGS:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NBDFS=${NBDFS_BIN:-$ROOT/build/nbdfs}
GIB=$((1 << 30))

BENCH_NAME=bench-buffered
. "$ROOT/contrib/bench-lib.sh"

case "${1:-}" in
    -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    "") ;;
    *) die "unexpected argument '$1' (configuration is by environment variables; see --help)" ;;
esac
for v in ROUNDS RUNTIME; do [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"; done
for j in "${JOBS[@]}"; do [[ " ${ALL_JOBS[*]} " == *" $j "* ]] || die "BENCH_JOBS: unknown job '$j'"; done
for p in "${PATHS_SEL[@]}"; do [[ " ${ALL_PATHS[*]} " == *" $p "* ]] || die "BENCH_PATHS: unknown path '$p'"; done
((${#JOBS[@]} && ${#PATHS_SEL[@]})) || die "nothing selected"
((EUID == 0)) || die "run as root (FUSE mounts, drop_caches)"

pkgs=(nbdkit libnbd-bin fio qemu-utils e2fsprogs fuse3 coreutils time)
command -v python3 >/dev/null || pkgs+=(python3)
ensure_pkgs "${pkgs[@]}"
[[ " ${PATHS_SEL[*]} " == *" nbdfs "* ]] && ensure_nbdfs
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"
SIZE_BYTES=$(numfmt --from=iec "$SIZE" 2>/dev/null) || die "BENCH_SIZE: cannot parse '$SIZE'"
((SIZE_BYTES >= GIB)) || die "BENCH_SIZE must be at least 1G"

# ---------------------------------------------------------------- state and cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nbdfs-bench-buffered.XXXXXX") || die "mktemp failed"
RES=$TMP/results
mkdir -p "$RES"
SAMPLER_PID=""
bench_trap_cleanup
trap 'stop_pid "$SAMPLER_PID"; bench_cleanup' EXIT

# run_bg LIMIT CMD...: in the background (so Ctrl-C reaches the trap at once), at most LIMIT s.
run_bg() {
    local limit=$1 rc
    shift
    timeout -k 10 "$limit" "$@" &
    JOB_PID=$!
    wait "$JOB_PID"
    rc=$?
    JOB_PID=""
    return $rc
}

drop_caches() { echo 3 >/proc/sys/vm/drop_caches || die "cannot drop caches"; }

# ---------------------------------------------------------------- source data
SRC=$TMP/src.raw
QCOW=$TMP/src.qcow2
say "making a 1 GiB random file and a qcow2 of it (rotated by 512 MiB, 25% holes)"
head -c "$GIB" /dev/urandom >"$SRC" || die "making $SRC failed"
{ tail -c +$((GIB / 2 + 1)) "$SRC" && head -c $((GIB / 2)) "$SRC"; } >"$TMP/rot.raw" || die "rotating failed"
for ((off = 0; off < GIB; off += GIB / 4)); do
    fallocate -p -o "$off" -l $((GIB / 16)) "$TMP/rot.raw" || die "fallocate -p failed"
done
qemu-img convert -f raw -O qcow2 "$TMP/rot.raw" "$QCOW" || die "making $QCOW failed"
rm -f "$TMP/rot.raw"

# ---------------------------------------------------------------- servers and mounts
# start_server BYTES: a fresh nbdkit memory export; sets SERVER_PID, SOCK, URI.
start_server() {
    local n=100
    stop_server
    SOCK=$TMP/nbd.sock
    rm -f "$TMP/nbdkit.pid" "$SOCK"   # nbdkit leaves its socket behind
    nbdkit -f -U "$SOCK" -P "$TMP/nbdkit.pid" memory size="$1" >>"$RES/nbdkit.log" 2>&1 &
    SERVER_PID=$!
    while [[ ! -s $TMP/nbdkit.pid ]] && ((n-- > 0)); do
        pid_alive "$SERVER_PID" || die "nbdkit exited: $(tail -n 3 "$RES/nbdkit.log")"
        sleep 0.05
    done
    [[ -s $TMP/nbdkit.pid ]] || die "nbdkit did not become ready"
    URI="nbd+unix:///?socket=$SOCK"
}

fill_server() { run_bg 300 nbdcopy -- "$SRC" "$URI" || die "filling the export with nbdcopy failed"; }

# server_matches BYTES FILE: the export's first BYTES equal FILE's (read with nbdcopy).
server_matches() {
    nbdcopy -- "$URI" - 2>/dev/null | cmp -s -n "$1" - "$2"
    local rcs=("${PIPESTATUS[@]}")
    return "${rcs[1]}"
}

# mount_path PATH: mount the current export; sets MOUNT_DIR, DAEMON_PID, FILE.
mount_path() {
    local n=300
    MOUNT_DIR=$TMP/mnt-$1
    mkdir -p "$MOUNT_DIR"
    if [[ $1 == nbdfs ]]; then
        # shellcheck disable=SC2086  # NBDFS_ARGS is word-split on purpose
        "$NBDFS" -f $NBDFS_ARGS "$URI" "$MOUNT_DIR" >>"$RES/nbdfs.log" 2>&1 &
        DAEMON_PID=$!
        FILE=$MOUNT_DIR/disk     # the default export "" is named "disk"
    else
        nbdfuse -C 4 "$MOUNT_DIR/" "$URI" >>"$RES/nbdfuse.log" 2>&1 &   # stays in the foreground
        DAEMON_PID=$!
        FILE=$MOUNT_DIR/nbd
    fi
    while ((n-- > 0)); do
        pid_alive "$DAEMON_PID" || { say "$1 exited before mounting: $(tail -n 3 "$RES/$1.log")"; return 1; }
        grep -q " $MOUNT_DIR fuse" /proc/mounts && [[ -f $FILE ]] && return 0
        sleep 0.05
    done
    say "$1 did not mount within 15 s"
    return 1
}

# unprivileged_readahead: set the mounted file's read_ahead_kb to 128, as an
# unprivileged mount has it (nbdfs, as root, raises it once it serves
# requests: set it after that, and check that it stayed).
unprivileged_readahead() {
    local bdi
    bdi=/sys/class/bdi/$(mountpoint -d "$MOUNT_DIR")/read_ahead_kb || return 1
    sleep 0.3
    echo 128 >"$bdi" && sleep 0.1 && [[ $(cat "$bdi") == 128 ]] ||
        { say "cannot set $bdi to 128"; return 1; }
}

# unmount_path PATH: record the daemon's VmHWM (kB), then unmount and wait for it.
unmount_path() {
    [[ -n $DAEMON_PID ]] || return 0
    awk '/^VmHWM:/ {print $2}' "/proc/$DAEMON_PID/status" >>"$RES/hwm.$1" 2>/dev/null
    stop_daemon
}

# rss_sampler PID OUT: VmRSS (kB) of PID every 0.2 s, one line each, until stopped.
rss_start() {
    (while awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; do sleep 0.2; done >>"$2") &
    SAMPLER_PID=$!
}
rss_stop() { stop_pid "$SAMPLER_PID"; SAMPLER_PID=""; }

# fio_lat JSON DIR: mean completion latency in us, if fio ran cleanly and did I/O.
fio_lat() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])["jobs"][0]
s = j[sys.argv[2]]
if j.get("error") or s["total_ios"] <= 0:
    sys.exit(1)
print(f"{s['clat_ns']['mean'] / 1e3:.1f}")
EOF
}

# ---------------------------------------------------------------- one measurement
# measure JOB PATH ROUND: run JOB through PATH once; append the value (or ERR) to $RES/JOB.PATH.
measure() {
    local job=$1 path=$2 round=$3 t0 t1 val="" ok=1 bytes=$GIB json dir
    local err=$RES/$job.$path.$round.err sys=$RES/$job.$path.$round.sys
    case $job in cp-*|convert) start_server "$GIB" ;; *) start_server "$SIZE_BYTES" ;; esac
    case $job in read-1M*|cp-off|convert|lat-randread) fill_server ;; esac
    if [[ $path != fio-nbd ]] && ! mount_path "$path"; then
        stop_daemon
        echo ERR >>"$RES/$job.$path"
        return 1
    fi
    [[ $job == read-1M-128k ]] && ! unprivileged_readahead && { echo ERR >>"$RES/$job.$path"; stop_daemon; return 1; }
    drop_caches
    # Sources local to this machine are read back into the cache: only the mount is measured cold.
    case $job in dd-*|cp-on) cat "$SRC" >/dev/null ;; convert) cat "$QCOW" >/dev/null ;; esac
    [[ $path != fio-nbd && $job == @(dd-1M|read-1M*) ]] && rss_start "$DAEMON_PID" "$RES/rss.$path"
    t0=$EPOCHREALTIME
    case $job in
        dd-1M)   run_bg 600 /usr/bin/time -f %S -o "$sys" \
                     dd if="$SRC" of="$FILE" bs=1M count=1024 conv=fsync,notrunc status=none 2>"$err" || ok=0 ;;
        dd-4k)   bytes=$((GIB / 4))
                 run_bg 600 /usr/bin/time -f %S -o "$sys" \
                     dd if="$SRC" of="$FILE" bs=4k count=65536 conv=fsync,notrunc status=none 2>"$err" || ok=0 ;;
        read-1M*) run_bg 600 dd if="$FILE" of=/dev/null bs=1M count=1024 status=none 2>"$err" || ok=0 ;;
        cp-on)   { run_bg 600 cp "$SRC" "$FILE" && run_bg 600 sync "$FILE"; } 2>"$err" || ok=0 ;;
        cp-off)  run_bg 600 cp "$FILE" "$TMP/out.raw" 2>"$err" || ok=0 ;;
        convert) run_bg 600 qemu-img convert -n -f qcow2 -O raw "$QCOW" "$FILE" 2>"$err" || ok=0 ;;
        mkfs)    run_bg 600 mkfs.ext4 -F -q "$FILE" >"$err" 2>&1 || ok=0 ;;
        lat-*)
            dir=${job#lat-rand}
            json=$RES/$job.$path.$round.json
            local eng=(--ioengine=nbd --uri="$URI")
            [[ $path != fio-nbd ]] && eng=(--ioengine=psync --direct=1 --filename="$FILE")
            run_bg $((RUNTIME + RAMP + 60)) fio --name="$job" "${eng[@]}" --rw="rand$dir" --bs=4k \
                --iodepth=1 --size=1G --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
                --output-format=json --output="$json" >"$err" 2>&1 || ok=0
            ((ok)) && { val=$(fio_lat "$json" "$dir") || ok=0; } ;;
    esac
    t1=$EPOCHREALTIME
    rss_stop
    if ((ok)) && [[ $job != lat-* ]]; then
        case $job in
            dd-*|read-1M*) val=$(awk -v b="$bytes" -v a="$t0" -v c="$t1" 'BEGIN {printf "%.0f", b / (c - a) / 1e6}') ;;
            *)            val=$(awk -v a="$t0" -v c="$t1" 'BEGIN {printf "%.3f", c - a}') ;;
        esac
    fi
    # Checks that need the mount (hot for read-1M: they see what the job read).
    if ((ok)); then
        case $job in
            read-1M*) run_bg 600 cmp -s -n "$GIB" "$FILE" "$SRC" || { echo "data read differs from SRC" >>"$err"; ok=0; } ;;
            cp-off)  run_bg 600 cmp -s "$TMP/out.raw" "$SRC" || { echo "the copy differs from SRC" >>"$err"; ok=0; } ;;
            mkfs)    drop_caches
                     run_bg 600 e2fsck -fn "$FILE" >>"$err" 2>&1 || { echo "e2fsck -fn failed" >>"$err"; ok=0; } ;;
        esac
    fi
    rm -f "$TMP/out.raw"
    unmount_path "$path"
    # Checks on the server, after the daemon has flushed and gone.
    if ((ok)); then
        case $job in
            dd-*|cp-on) server_matches "$bytes" "$SRC" || { echo "the export's data differ from SRC" >>"$err"; ok=0; } ;;
            convert) run_bg 600 qemu-img compare -q -f qcow2 -F raw "$QCOW" "$URI" >>"$err" 2>&1 \
                         || { echo "qemu-img compare: the export differs from the qcow2" >>"$err"; ok=0; } ;;
        esac
    fi
    stop_server
    if ((ok)); then
        echo "$val" >>"$RES/$job.$path"
        local cpu=""
        [[ -s $sys ]] && { tail -n 1 "$sys" >>"$RES/$job-sys.$path"; cpu=" (dd's own CPU $(tail -n 1 "$sys") s)"; }
        say "round $round: $job $path $val$cpu"
        return 0
    fi
    echo ERR >>"$RES/$job.$path"
    say "round $round: $job $path FAILED: $(tail -n 3 "$err" | tr '\n' ' ')"
    return 1
}

# ---------------------------------------------------------------- run
say "jobs: ${JOBS[*]}; paths: ${PATHS_SEL[*]}; $ROUNDS round(s); export $SIZE; $(nproc) CPUs"
[[ " ${PATHS_SEL[*]} " == *" nbdfs "* ]] && say "nbdfs: $NBDFS ${NBDFS_ARGS:+(args: $NBDFS_ARGS)}"
status=0
for ((round = 1; round <= ROUNDS; round++)); do
    order=("${PATHS_SEL[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#PATHS_SEL[@]} - 1; i >= 0; i--)); do order+=("${PATHS_SEL[i]}"); done
    fi
    for job in "${ALL_JOBS[@]}"; do
        [[ " ${JOBS[*]} " == *" $job "* ]] || continue
        for path in "${order[@]}"; do
            [[ $path == fio-nbd && $job != lat-* ]] && continue
            measure "$job" "$path" "$round" || status=1
        done
    done
done

python3 - "$RES" "${ALL_JOBS[*]}" "${PATHS_SEL[*]}" <<'EOF' || status=1
import os, statistics, sys

res, jobs, paths = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
# job -> (unit, how the ratio is formed): "hi": nbdfs/nbdfuse, "time": nbdfuse/nbdfs,
# "lo": nbdfs/nbdfuse with lower being better.
kinds = {"dd-1M": ("MB/s", "hi"), "dd-4k": ("MB/s", "hi"), "read-1M": ("MB/s", "hi"),
         "read-1M-128k": ("MB/s", "hi"),
         "cp-on": ("s", "time"), "cp-off": ("s", "time"), "convert": ("s", "time"),
         "mkfs": ("s", "time"), "lat-randread": ("us", "lo"), "lat-randwrite": ("us", "lo")}
bad = False

def values(name):
    try:
        return [l.strip() for l in open(os.path.join(res, name)) if l.strip()]
    except OSError:
        return None

def median(vals):
    if vals is None:
        return None
    if not vals or "ERR" in vals:
        return "ERR"
    return statistics.median(float(v) for v in vals)

def fmt(v):
    if v is None or isinstance(v, str):
        return v or "-"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.0f}"

def ratio(a, b):
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) and b > 0 else "-"

rows = []
for job in jobs:
    unit, how = kinds[job]
    med = {}
    for p in paths:
        vals = values(f"{job}.{p}")
        med[p] = median(vals)
        if vals is not None:
            bad |= med[p] == "ERR"
            print(f"{job:<14} {p:<8} {unit:<5} rounds: {' '.join(vals):<30} median {fmt(med[p])}")
    if all(m is None for m in med.values()):
        continue
    n, f, x = med.get("nbdfs"), med.get("nbdfuse"), med.get("fio-nbd")
    r = ratio(f, n) if how == "time" else ratio(n, f)
    rows.append((f"{job} ({unit})", fmt(n), fmt(f), r) + ((fmt(x), ratio(n, x)) if x is not None else ("", "")))
    # dd's own CPU in its write() calls: the job's bytes over it bound any daemon.
    cpu = {p: median(values(f"{job}-sys.{p}")) for p in paths}
    if any(isinstance(c, float) for c in cpu.values()):
        for p, c in cpu.items():
            if c is not None:
                print(f"{job:<14} {p:<8} dd's own CPU (s) rounds: {' '.join(values(f'{job}-sys.{p}'))}"
                      f"  median {fmt(c)}" + (f"  (bound: {(1 << 30) / (4 if job == 'dd-4k' else 1) / c / 1e6:.0f} MB/s)"
                                               if isinstance(c, float) and c > 0 else ""))
        rows.append(("  dd's own CPU (s)", fmt(cpu.get("nbdfs")), fmt(cpu.get("nbdfuse")),
                     ratio(cpu.get("nbdfs"), cpu.get("nbdfuse")), "", ""))

# Memory: the maxima over every sample / every mount, in MiB.
for what, label in (("rss", "VmRSS max (MiB)"), ("hwm", "VmHWM max (MiB)")):
    m = {}
    for p in ("nbdfs", "nbdfuse"):
        vals = values(f"{what}.{p}")
        m[p] = max(int(v) for v in vals) / 1024 if vals else None
    if any(v is not None for v in m.values()):
        print(f"{label}: " + ", ".join(f"{p} {fmt(v)}" for p, v in m.items()))
        rows.append((label, fmt(m["nbdfs"]), fmt(m["nbdfuse"]), ratio(m["nbdfs"], m["nbdfuse"]), "", ""))

print()
print(f"{'job':<24} {'nbdfs':>9} {'nbdfuse':>9} {'ratio':>7}   {'fio-nbd':>9} {'ratio':>7}")
for r in rows:
    print(f"{r[0]:<24} {r[1]:>9} {r[2]:>9} {r[3]:>7}   {r[4]:>9} {r[5]:>7}")
print("medians; MB/s = 10^6 bytes/s. ratio: MB/s nbdfs/nbdfuse, seconds nbdfuse/nbdfs (>1: nbdfs")
print("better); latency (us), memory and dd's own CPU nbdfs/nbdfuse and nbdfs/fio-nbd (lower is")
print("better). dd's own CPU is the system time its write() calls took: bytes over it bound any daemon")
sys.exit(1 if bad else 0)
EOF

for path in nbdfs nbdfuse; do
    f=$RES/$path.log
    if [[ -s $f ]]; then
        say "$path said ($(wc -l <"$f") lines, last 5):"
        tail -n 5 "$f" | sed 's/^/    /' >&2
    fi
done
exit $status
