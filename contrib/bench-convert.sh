#!/usr/bin/env bash
# Benchmark: qemu-img convert -O raw of a sparse export, read (1) through an
# nbdfs mount, (2) through an nbdfuse mount and (3) from the NBD URI directly.
#
# Usage: contrib/bench-convert.sh        (run from anywhere; needs root for apt-get and FUSE)
#
# Environment:
#   BENCH_SIZE_GIB=4     export size in GiB (nbdkit memory)
#   BENCH_DATA_PCT=5     percentage of it holding random data
#   BENCH_CHUNKS=20      number of scattered data chunks
#   BENCH_RUNS=3         timed runs per path (interleaved); the best is reported
#   NBDFS_BIN=path       nbdfs binary (default: build/nbdfs, built with meson if missing)
#   NBDFS_ARGS="..."     extra flags for nbdfs (word-split), e.g. "-C 2"
#
# One nbdkit memory server on a Unix socket is filled once (qemu-io writing
# BENCH_CHUNKS chunks of random data at scattered offsets) and then only
# read.  For every run and path, the mount (read-only: nbdfs -r, nbdfuse -r
# -C 4) is made fresh, so no page cache is carried over, and
#   qemu-img convert -f raw -O raw SOURCE OUT
# writes a raw file OUT in a temporary directory.  qemu-img finds the holes
# with SEEK_DATA/SEEK_HOLE on the mounted files and with NBD block status on
# the URI.  Every output must be identical: the first run's three outputs
# by sha256, later ones by cmp against the first of their path.  Outputs
# are removed as soon as they are checked; mounts, daemons, the server and
# the temporary directory are removed on exit, failure or Ctrl-C.
#
# Prints the times of every run, the best per path, and the ratios
# nbdfuse/nbdfs and nbdfs/direct.  Exit status 0 when everything ran and
# matched.

set -u -o pipefail

SIZE_GIB=${BENCH_SIZE_GIB:-4}
DATA_PCT=${BENCH_DATA_PCT:-5}
CHUNKS=${BENCH_CHUNKS:-20}
RUNS=${BENCH_RUNS:-3}
NBDFS_ARGS=${NBDFS_ARGS:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NBDFS=${NBDFS_BIN:-$ROOT/build/nbdfs}
PATHS=(nbdfs nbdfuse direct)

BENCH_NAME=bench-convert
. "$ROOT/contrib/bench-lib.sh"

case "${1:-}" in
    -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    "") ;;
    *) die "unexpected argument '$1' (configuration is by environment variables; see --help)" ;;
esac
for v in SIZE_GIB DATA_PCT CHUNKS RUNS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
((DATA_PCT < 100)) || die "BENCH_DATA_PCT must be below 100"

ensure_pkgs nbdkit qemu-utils libnbd-bin fuse3 coreutils
ensure_nbdfs
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"

# ---------------------------------------------------------------- state and cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nbdfs-bench-convert.XXXXXX") || die "mktemp failed"

bench_trap_cleanup

# run_bg CMD...: run in the background and wait, so that Ctrl-C reaches the trap at once.
run_bg() {
    "$@" &
    JOB_PID=$!
    wait "$JOB_PID"
    local rc=$?
    JOB_PID=""
    return $rc
}

# ---------------------------------------------------------------- the server
SOCK=$TMP/nbd.sock
URI="nbd+unix:///?socket=$SOCK"
EXPORT_BYTES=$((SIZE_GIB * 1024 * 1024 * 1024))
nbdkit -f -U "$SOCK" -P "$TMP/nbdkit.pid" memory size="$EXPORT_BYTES" >"$TMP/nbdkit.log" 2>&1 &
SERVER_PID=$!
for ((i = 0; i < 100; i++)); do
    [[ -s $TMP/nbdkit.pid ]] && break
    pid_alive "$SERVER_PID" || die "nbdkit exited: $(tail -n 3 "$TMP/nbdkit.log")"
    sleep 0.1
done
[[ -s $TMP/nbdkit.pid ]] || die "nbdkit did not become ready"

# Fill: CHUNKS chunks of random data, one in each of CHUNKS equal slices of
# the export, at an odd-looking (but 4 KiB aligned) place in the slice.
DATA_BYTES=$((EXPORT_BYTES / 100 * DATA_PCT))
CHUNK=$((DATA_BYTES / CHUNKS / 4096 * 4096))
SLICE=$((EXPORT_BYTES / CHUNKS))
((CHUNK > 0 && CHUNK < SLICE)) || die "bad chunk size $CHUNK for slice $SLICE"
say "filling a $SIZE_GIB GiB nbdkit memory export with $CHUNKS chunks of $((CHUNK / 1024)) KiB of random data" \
    "($(((CHUNK * CHUNKS) >> 20)) MiB, ${DATA_PCT}%)"
qio_args=()
for ((i = 0; i < CHUNKS; i++)); do
    head -c "$CHUNK" /dev/urandom >"$TMP/chunk$i" || die "making random data failed"
    off=$((i * SLICE + ((i * 7919 * 4096) % (SLICE - CHUNK)) / 4096 * 4096))
    qio_args+=(-c "write -s $TMP/chunk$i $off $CHUNK")
done
run_bg qemu-io -f raw "${qio_args[@]}" "$URI" >"$TMP/fill.log" 2>&1 || die "filling failed: $(tail -n 3 "$TMP/fill.log")"
grep -qi 'fail\|error' "$TMP/fill.log" && die "filling failed: $(grep -i 'fail\|error' "$TMP/fill.log" | head -3)"
rm -f "$TMP"/chunk*
allocated=$(nbdinfo --map --totals "$URI" 2>/dev/null | awk '$3 == 0 {print $1}')
say "server reports ${allocated:-?} bytes of data"

# ---------------------------------------------------------------- the runs
wait_file() {   # NAME FILE
    local n=300
    while ((n-- > 0)); do
        pid_alive "$DAEMON_PID" || die "$1 exited before mounting: $(tail -n 5 "$TMP/$1.log")"
        grep -q " $MOUNT_DIR fuse" /proc/mounts && [[ -e $2 ]] && return 0
        sleep 0.1
    done
    die "$1 did not mount within 30 s"
}

# source_for PATH: mount if needed; sets SRC.
source_for() {
    case $1 in
        nbdfs)
            MOUNT_DIR=$TMP/mnt-nbdfs
            mkdir -p "$MOUNT_DIR"
            # shellcheck disable=SC2086
            "$NBDFS" -f -r $NBDFS_ARGS "$URI" "$MOUNT_DIR" >>"$TMP/nbdfs.log" 2>&1 &
            DAEMON_PID=$!
            SRC=$MOUNT_DIR/disk
            wait_file nbdfs "$SRC" ;;
        nbdfuse)
            MOUNT_DIR=$TMP/mnt-nbdfuse
            mkdir -p "$MOUNT_DIR"
            nbdfuse -r -C 4 "$MOUNT_DIR/" "$URI" >>"$TMP/nbdfuse.log" 2>&1 &
            DAEMON_PID=$!
            SRC=$MOUNT_DIR/nbd
            wait_file nbdfuse "$SRC" ;;
        direct)
            SRC=$URI ;;
    esac
}

declare -A best times sums
status=0
for ((run = 1; run <= RUNS; run++)); do
    for p in "${PATHS[@]}"; do
        source_for "$p"
        out=$TMP/out-$p-$run.raw
        t0=$EPOCHREALTIME
        run_bg qemu-img convert -f raw -O raw "$SRC" "$out" 2>"$TMP/convert.err" ||
            die "$p: qemu-img convert failed: $(cat "$TMP/convert.err")"
        t1=$EPOCHREALTIME
        stop_daemon
        t=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
        times[$p]="${times[$p]:-}${times[$p]:+ }$t"
        if [[ -z ${best[$p]:-} ]] || awk -v a="$t" -v b="${best[$p]}" 'BEGIN {exit !(a < b)}'; then
            best[$p]=$t
        fi
        [[ $(stat -c %s "$out") == "$EXPORT_BYTES" ]] || die "$p: output has $(stat -c %s "$out") bytes, expected $EXPORT_BYTES"
        if ((run == 1)); then
            sums[$p]=$(run_bg sha256sum "$out" | cut -d' ' -f1)
            [[ -n ${sums[$p]} ]] || die "$p: sha256sum of the output failed"
            say "run $run: $p ${t}s, sha256 ${sums[$p]}"
            mv "$out" "$TMP/first-$p.raw"
        else
            run_bg cmp -s "$TMP/first-$p.raw" "$out" || { say "$p: run $run's output differs from run 1's"; status=1; }
            say "run $run: $p ${t}s"
            rm -f "$out"
        fi
    done
    if ((run == 1)); then
        [[ ${sums[nbdfs]} == "${sums[direct]}" && ${sums[nbdfuse]} == "${sums[direct]}" ]] || {
            say "outputs differ: nbdfs ${sums[nbdfs]} nbdfuse ${sums[nbdfuse]} direct ${sums[direct]}"
            status=1
        }
        if ((RUNS == 1)); then rm -f "$TMP"/first-*.raw; fi
    fi
done
rm -f "$TMP"/first-*.raw

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2fx", a / b; else print "-"}'; }
echo
printf 'qemu-img convert -O raw of a %d GiB export with %d%% data (%d chunks), best of %d run(s)\n' \
    "$SIZE_GIB" "$DATA_PCT" "$CHUNKS" "$RUNS"
printf '%-10s %10s   %s\n' source "best (s)" "all runs (s)"
for p in "${PATHS[@]}"; do
    printf '%-10s %10s   %s\n' "$p" "${best[$p]}" "${times[$p]}"
done
printf 'nbdfuse/nbdfs: %s   nbdfs/direct: %s\n' "$(ratio "${best[nbdfuse]}" "${best[nbdfs]}")" "$(ratio "${best[nbdfs]}" "${best[direct]}")"
if ((status == 0)); then
    echo "outputs: identical (sha256 ${sums[direct]})"
else
    echo "outputs: MISMATCH (see above)"
fi
exit $status
