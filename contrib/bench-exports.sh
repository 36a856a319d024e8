#!/usr/bin/env bash
# Benchmark: `ls -l` of a directory-mode mount (--exports) of a server with
# many exports.  The README's target: under 2 s for 10,000 exports.
#
# Usage: contrib/bench-exports.sh     (run from anywhere; needs FUSE)
#
# Environment:
#   BENCH_EXPORTS=10000  number of exports
#   BENCH_RUNS=2         `ls -l` runs after the mount
#   BENCH_GAP=1.1        seconds between runs: past the listing's rate limit
#                        (1 s), so every run lists the server again, as a
#                        user's `ls -l` a while later would
#   NBDFS_BIN=path       nbdfs binary (default: build/nbdfs, built with meson if missing)
#   NBDFS_ARGS="..."     extra flags for nbdfs (word-split)
#
# The server is nbdkit's memory plugin (1 MiB, shared by every export)
# behind the exportname filter, which lists BENCH_EXPORTS explicit names
# (e0000001 ...): NBD_OPT_LIST gives them all and NBD_OPT_INFO answers
# each, as a real server with many exports does.  nbdfs mounts the
# directory (which lists the exports once); then each run times
#   ls -l MOUNT >/dev/null
# (a readdir, which lists the server again, and a lookup of every file)
# and checks that it saw every export.
#
# Prints the mount time and every run's seconds.  Exit status 0 when every
# run listed every export (the timings are for reading, not a pass/fail).

set -u -o pipefail

NEXP=${BENCH_EXPORTS:-10000}
RUNS=${BENCH_RUNS:-2}
GAP=${BENCH_GAP:-1.1}
NBDFS_ARGS=${NBDFS_ARGS:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NBDFS=${NBDFS_BIN:-$ROOT/build/nbdfs}

BENCH_NAME=bench-exports
. "$ROOT/contrib/bench-lib.sh"

case "${1:-}" in
    -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    "") ;;
    *) die "unexpected argument '$1' (configuration is by environment variables; see --help)" ;;
esac
for v in NEXP RUNS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done

ensure_pkgs nbdkit fuse3 coreutils
ensure_nbdfs
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/nbdfs-bench-exports.XXXXXX") || die "mktemp failed"
bench_trap_cleanup

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# One exportname= per export: built as an array, since the names are many.
args=()
for ((i = 1; i <= NEXP; i++)); do args+=("exportname=$(printf 'e%07d' "$i")"); done
SOCK=$TMP/nbdkit.sock
nbdkit -f -U "$SOCK" --filter=exportname memory 1M exportname-list=explicit \
    "${args[@]}" >"$TMP/nbdkit.log" 2>&1 &
SERVER_PID=$!
for ((i = 0; i < 100; i++)); do [[ -S $SOCK ]] && break; sleep 0.1; done
[[ -S $SOCK ]] || die "nbdkit did not start: $(cat "$TMP/nbdkit.log")"

MOUNT_DIR=$TMP/mnt
mkdir -p "$MOUNT_DIR"
say "$NEXP exports; mounting"
t0=$(now)
# shellcheck disable=SC2086
"$NBDFS" -f --exports $NBDFS_ARGS "nbd+unix:///?socket=$SOCK" "$MOUNT_DIR" >"$TMP/nbdfs.log" 2>&1 &
DAEMON_PID=$!
until grep -q " $MOUNT_DIR fuse" /proc/mounts; do
    pid_alive "$DAEMON_PID" || die "nbdfs exited: $(tail -5 "$TMP/nbdfs.log")"
    sleep 0.02
done
echo "mount: $(secs "$t0" "$(now)") s"

status=0
for ((r = 1; r <= RUNS; r++)); do
    sleep "$GAP"
    t0=$(now)
    n=$(ls -l "$MOUNT_DIR" | grep -c '^-')
    t1=$(now)
    echo "ls -l run $r: $(secs "$t0" "$t1") s ($n files)"
    if ((n != NEXP)); then say "run $r saw $n files, not $NEXP"; status=1; fi
done
exit $status
