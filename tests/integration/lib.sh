# lib.sh: shared helpers for integration tests.  Source it from a test:
#   . "$(dirname "$0")/lib.sh"
# Every test runs in its own temp dir ($T); everything it starts (servers,
# mounts) is registered and torn down by the EXIT trap, also on failure.
# A test passes by exiting 0; fail "why" exits non-zero with a message.
set -euo pipefail

NBDFS=${NBDFS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build/nbdfs}
T=$(mktemp -d /tmp/nbdfs-test.XXXXXX)
_pids=()
_mounts=()
_nbdfs_run=()   # a prefix for starting nbdfs: (as_user) in mount_nbdfs_as_user

cleanup() {
  local m p
  for m in "${_mounts[@]}"; do
    if grep -q " $m fuse" /proc/mounts; then  # (no stat: a stuck daemon would hang it)
      fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
    fi
  done
  [ -f "$T/.pids" ] && mapfile -t -O "${#_pids[@]}" _pids <"$T/.pids"
  for p in "${_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.1
  for p in "${_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
note() { echo "  $*" >&2; }

# track_pid PID: kill it at exit.  Also recorded in a file, so that pids
# tracked in a subshell ($(start_nbdkit ...)) are still killed.
track_pid() { _pids+=("$1"); echo "$1" >>"$T/.pids"; }

# wait_for_file PATH [SECONDS]: wait until PATH exists.
# wait_for_pidfile PATH: until it has something in it (nbdkit creates it
# before it writes the pid).
wait_for_pidfile() {
  wait_for_file "$1"
  local i
  for ((i = 0; i < 200; i++)); do [ -s "$1" ] && return 0; sleep 0.05; done
  fail "pid file $1 stayed empty"
}

wait_for_file() {
  local i
  for ((i = 0; i < ${2:-10} * 20; i++)); do [ -e "$1" ] && return 0; sleep 0.05; done
  fail "timed out waiting for $1"
}

# start_nbdkit NAME ARGS...: nbdkit on a Unix socket $T/NAME.sock, in the
# background; prints the socket path's URI prefix in $URI_NAME... callers use
#   sock=$(start_nbdkit NAME plugin args)   -> socket path
start_nbdkit() {
  local name=$1; shift
  local sock=$T/$name.sock pidf=$T/$name.pid
  nbdkit -U "$sock" -P "$pidf" "$@" >"$T/$name.log" 2>&1 || fail "nbdkit $* did not start: $(cat "$T/$name.log")"
  wait_for_pidfile "$pidf"
  track_pid "$(cat "$pidf")"
  echo "$sock"
}

# free_port: an unused TCP port on localhost.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for_port PORT: until something listens on 127.0.0.1:PORT.
wait_for_port() {
  local i
  for ((i = 0; i < 200; i++)); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  fail "nothing listening on port $1"
}

# mount_nbdfs URI MOUNTPOINT [OPTIONS...]: mount in the foreground mode under
# our control (so a crash is visible), wait until ready.  Sets NBDFS_PID.
# The log is in $T/nbdfs.log (or $NBDFS_LOG).
mount_nbdfs() {
  local uri=$1 mp=$2; shift 2
  local dir=$mp
  [ -d "$mp" ] || [ -f "$mp" ] || dir=$(dirname "$mp")
  # NBDFS_EXTRA_ARGS (word-split) is appended: e.g. "--threads 2" for TSan runs.
  mount_nbdfs_argv "$dir" -f "$@" ${NBDFS_EXTRA_ARGS:-} "$uri" "$mp"
}

# mount_nbdfs_argv DIR ARGS...: run nbdfs with exactly ARGS (in any order,
# e.g. "URI MOUNTPOINT -f -o OPTS" as mount.fuse3 would; give -f yourself),
# in the background, and wait until DIR is mounted.  Sets NBDFS_PID; the
# log is in $T/nbdfs.log (or $NBDFS_LOG).
mount_nbdfs_argv() {
  local dir=$1; shift
  local log=${NBDFS_LOG:-$T/nbdfs.log}
  _mounts+=("$dir")
  "${_nbdfs_run[@]}" "$NBDFS" "$@" >>"$log" 2>&1 &
  NBDFS_PID=$!
  track_pid "$NBDFS_PID"
  local i
  for ((i = 0; i < 200; i++)); do
    grep -q " $dir fuse" /proc/mounts && return 0
    kill -0 "$NBDFS_PID" 2>/dev/null || fail "nbdfs exited before mounting: $(cat "$log")"
    sleep 0.05
  done
  fail "nbdfs did not mount $dir: $(cat "$log")"
}

# unmount_nbdfs DIR: unmount and wait for the daemon to exit; fails the test
# if it exits non-zero.
unmount_nbdfs() {
  "${_nbdfs_run[@]}" fusermount3 -u "$1" || fail "fusermount3 -u $1 failed"
  local i
  for ((i = 0; i < 200; i++)); do
    kill -0 "$NBDFS_PID" 2>/dev/null || break
    sleep 0.05
  done
  kill -0 "$NBDFS_PID" 2>/dev/null && fail "nbdfs did not exit after unmount"
  wait "$NBDFS_PID" || fail "nbdfs exited with status $? after unmount"
}

# sha FILE [BYTES]: sha256 of FILE (or of its first BYTES bytes).
sha() {
  if [ $# -gt 1 ]; then head -c "$2" "$1" | sha256sum | cut -d' ' -f1
  else sha256sum <"$1" | cut -d' ' -f1; fi
}

# server_sha URI BYTES: sha256 of the export read by an independent client.
server_sha() { nbdcopy "$1" - | head -c "$2" | sha256sum | cut -d' ' -f1; }

# ---- Helpers for the core integration tests (t-*.sh).  These run in the
# calling shell, so what they start is registered for cleanup (a function
# called inside $(...) runs in a subshell, where track_pid is lost). ----

# unix_uri SOCKET [EXPORT]: the URI of EXPORT (already percent-encoded) on a
# Unix socket.
unix_uri() { printf 'nbd+unix:///%s?socket=%s' "${2:-}" "$1"; }

# wait_until SECONDS CMD...: poll CMD until it succeeds; returns 1 if it
# still fails after SECONDS.
wait_until() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.05
  done
}

# is_mounted PATH: a FUSE file system is mounted on PATH.
is_mounted() { grep -q " $1 fuse" /proc/mounts; }

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# serve_nbdkit NAME ARGS...: nbdkit ARGS on the Unix socket $T/NAME.sock, in
# the background; log (stderr, including -v output) in $T/NAME.log.  Sets
# SOCK and SERVER_PID.
serve_nbdkit() {
  local name=$1; shift
  SOCK=$T/$name.sock
  local pidf=$T/$name.pid
  rm -f "$pidf"
  nbdkit -U "$SOCK" -P "$pidf" "$@" >"$T/$name.log" 2>&1 || fail "nbdkit $* did not start: $(cat "$T/$name.log")"
  wait_for_pidfile "$pidf"
  SERVER_PID=$(cat "$pidf")
  track_pid "$SERVER_PID"
}

# serve_nbdkit_tcp NAME ARGS...: the same on 127.0.0.1 and a free TCP port.
# Sets PORT and SERVER_PID.
serve_nbdkit_tcp() {
  local name=$1; shift
  local pidf=$T/$name.pid try
  for try in 1 2 3 4 5; do
    PORT=$(free_port)
    rm -f "$pidf"
    if nbdkit -i 127.0.0.1 -p "$PORT" -P "$pidf" "$@" >"$T/$name.log" 2>&1; then
      wait_for_pidfile "$pidf"
      SERVER_PID=$(cat "$pidf")
      track_pid "$SERVER_PID"
      return 0
    fi
    grep -qi 'in use' "$T/$name.log" || break   # retry only a lost port race
  done
  fail "nbdkit $* did not start: $(cat "$T/$name.log")"
}

# rand_file PATH BYTES: a file of random bytes.
rand_file() { head -c "$2" /dev/urandom >"$1"; }

# write_at FILE OFFSET SRC [DD-FLAGS...]: write all of SRC into FILE at byte
# OFFSET, in place.
write_at() {
  local f=$1 off=$2 src=$3; shift 3
  dd if="$src" of="$f" bs=1M seek="$off" oflag=seek_bytes conv=notrunc status=none "$@"
}

# range_sha FILE OFFSET LENGTH: sha256 of LENGTH bytes of FILE at OFFSET.
range_sha() {
  dd if="$1" bs=1M skip="$2" count="$3" iflag=skip_bytes,count_bytes status=none |
    sha256sum | cut -d' ' -f1
}

# server_copy URI FILE: the whole export, read by nbdcopy (an independent
# client), into FILE.
server_copy() { nbdcopy -- "$1" "$2" || fail "nbdcopy $1 failed"; }

# nbdfs_pids_for PATTERN: pids of live nbdfs processes whose command line
# contains PATTERN (e.g. "$T").
nbdfs_pids_for() {
  local p
  for p in $(pgrep -f -- "nbdfs .*$1" || true); do
    pid_alive "$p" && case $(basename "$(readlink "/proc/$p/exe" 2>/dev/null)") in nbdfs*) echo "$p" ;; esac
  done
  return 0
}

# mount_nbdfs_daemon URI MOUNTPOINT [OPTIONS...]: mount in daemon mode (no
# -f) with -P $T/nbdfs-daemon.pid; nbdfs returns once mounted.  Sets
# NBDFS_PID (not a child of ours: use unmount_nbdfs_daemon).
mount_nbdfs_daemon() {
  local uri=$1 mp=$2; shift 2
  local dir=$mp pidf=$T/nbdfs-daemon.pid
  [ -d "$mp" ] || [ -f "$mp" ] || dir=$(dirname "$mp")
  _mounts+=("$dir")
  rm -f "$pidf"
  "$NBDFS" -P "$pidf" "$@" "$uri" "$mp" >>"${NBDFS_LOG:-$T/nbdfs.log}" 2>&1 ||
    fail "nbdfs (daemon) failed with status $?: $(cat "${NBDFS_LOG:-$T/nbdfs.log}")"
  wait_for_pidfile "$pidf"
  wait_until 10 test -s "$pidf" || fail "empty pid file $pidf"
  NBDFS_PID=$(cat "$pidf")
  track_pid "$NBDFS_PID"
}

# unmount_nbdfs_daemon DIR: unmount and wait until the daemon has exited.
unmount_nbdfs_daemon() {
  fusermount3 -u "$1" || fail "fusermount3 -u $1 failed"
  wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "nbdfs $NBDFS_PID did not exit after unmount"
}

# serve_fake NAME ARGS...: tests/fake-nbd-server.py ARGS (e.g. --scenario
# stall) on the Unix socket $T/NAME.sock, in the background; its log is
# $T/NAME.log.  Sets SOCK and SERVER_PID.
serve_fake() {
  local name=$1; shift
  SOCK=$T/$name.sock
  rm -f "$SOCK"
  python3 "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/fake-nbd-server.py" \
    --socket "$SOCK" --log "$T/$name.log" "$@" </dev/null >>"$T/$name.log" 2>&1 &
  SERVER_PID=$!
  track_pid "$SERVER_PID"
  wait_until 20 test -S "$SOCK" || fail "fake server $name did not start: $(cat "$T/$name.log")"
}

# ---- Helpers for the sparse-file, zeroing, durability and block-size tests
# (t-seek.sh, t-fallocate.sh, t-durability.sh, t-blocksize.sh, ...). ----

# seek_map FILE [START]: the data ranges of FILE from START (default 0) as
# found by walking lseek SEEK_DATA / SEEK_HOLE, one "START END" line each
# (END exclusive).  Fails if lseek fails other than with ENXIO at the end.
seek_map() {
  python3 - "$1" "${2:-0}" <<'PYEOF'
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
off = int(sys.argv[2])
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            break
        raise
    h = os.lseek(fd, d, os.SEEK_HOLE)
    if not (off <= d < h <= size):
        sys.exit("seek_map: SEEK_DATA(%d)=%d SEEK_HOLE(%d)=%d out of order (size %d)" % (off, d, d, h, size))
    print(d, h)
    off = h
PYEOF
}

# nbd_data_map URI: the data ranges of the export by its server's
# base:allocation (nbdinfo --map), in the same form as seek_map: an extent
# of type 3 (hole,zero) is a hole, anything else data; neighbours of the
# same kind are merged.
nbd_data_map() {
  nbdinfo --map --json "$1" | python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    if e["type"] == 3:
        continue
    s, n = e["offset"], e["length"]
    if out and out[-1][1] == s:
        out[-1][1] = s + n
    else:
        out.append([s, s + n])
for s, e in out:
    print(s, e)'
}

# map_bytes: total length of the "START END" ranges on stdin.
map_bytes() { awk '{n += $2 - $1} END {printf "%d\n", n}'; }

# log_mark FILE: the number of lines FILE has now (for log_since).
log_mark() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# log_since FILE MARK: the lines of FILE after the first MARK.
log_since() { tail -n +$(($2 + 1)) "$1"; }

# log_requests ACTION: from an nbdkit log filter log on stdin, the requests
# of ACTION (Read, Write, Zero, Trim, Flush, Extents...) as they were called
# (not their "...ACTION id=N return=" lines).
log_requests() { grep -E "connection=[0-9]+ $1 id=" || true; }

# log_count_bytes: sum of the count=0x... fields of the log lines on stdin.
log_count_bytes() {
  python3 -c '
import re, sys
print(sum(int(m.group(1), 16) for m in re.finditer(r"\bcount=0x([0-9a-fA-F]+)", sys.stdin.read())))'
}

# soft_fail "why": report a failed check but go on, so that the checks after
# it still run; finish_test then fails the test.  For checks whose failure
# does not make the rest meaningless.
_soft_fails=()
soft_fail() { echo "FAIL: $*" >&2; _soft_fails+=("$*"); }

# finish_test: the end of a test using soft_fail: fails if any check did,
# prints "ok" otherwise.
finish_test() {
  [ ${#_soft_fails[@]} -eq 0 ] || fail "${#_soft_fails[@]} check(s) failed (see above)"
  echo ok
}

# falloc FILE MODE OFFSET LENGTH: fallocate(2) on FILE opened read-write,
# MODE a number or FALLOC_FL_ names without the prefix joined by '|'
# (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE, COLLAPSE_RANGE, INSERT_RANGE); prints
# "ok" or the errno's name (ENOSPC, EOPNOTSUPP...).
falloc() {
  python3 - "$@" <<'PYEOF'
import ctypes, ctypes.util, errno, os, sys
FL = {"KEEP_SIZE": 1, "PUNCH_HOLE": 2, "COLLAPSE_RANGE": 8, "ZERO_RANGE": 16, "INSERT_RANGE": 32}
path, mode, off, length = sys.argv[1:5]
m = 0
for part in mode.split("|"):
    m |= FL[part] if part in FL else int(part, 0)
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
fd = os.open(path, os.O_RDWR)
r = libc.fallocate(fd, m, int(off, 0), int(length, 0))
e = ctypes.get_errno()
os.close(fd)
print("ok" if r == 0 else errno.errorcode.get(e, str(e)))
PYEOF
}

# zero_sha LENGTH: sha256 of LENGTH zero bytes.
zero_sha() { head -c "$1" /dev/zero | sha256sum | cut -d' ' -f1; }

# qemu_map ARGS...: qemu-img map --output=json ARGS as "START LENGTH DATA"
# lines (DATA True/False), neighbours with the same DATA merged.
qemu_map() {
  qemu-img map --output=json "$@" | python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    if out and out[-1][2] == e["data"] and out[-1][0] + out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["length"], e["data"]])
for s, n, d in out:
    print(s, n, d)'
}

# serve_nbd_server [GENERIC_OPTION...] <<EOF ... EOF: nbd-server (forking,
# so nbdfs may connect several times) on a free port of 127.0.0.1.  The
# export sections of its config come on stdin; arguments are extra
# [generic] lines ("allowlist = true").  Sets PORT and SERVER_PID; a lost
# race for the port is retried.
serve_nbd_server() {
  local sections try opt
  sections=$(cat)
  for try in 1 2 3 4 5; do
    PORT=$(free_port)
    {
      printf '[generic]\n    port = %s\n    listenaddr = 127.0.0.1\n' "$PORT"
      for opt in "$@"; do printf '    %s\n' "$opt"; done
      printf '%s\n' "$sections"
    } >"$T/nbd-server.conf"
    rm -f "$T/nbd-server.pid"
    nbd-server -C "$T/nbd-server.conf" -p "$T/nbd-server.pid" >"$T/nbd-server.log" 2>&1 ||
      fail "nbd-server did not start: $(cat "$T/nbd-server.log")"
    if wait_until 10 test -s "$T/nbd-server.pid"; then
      SERVER_PID=$(cat "$T/nbd-server.pid")
      track_pid "$SERVER_PID"
      wait_until 10 eval '(exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null' && return 0
    fi
  done
  fail "nbd-server did not come up: $(cat "$T/nbd-server.log")"
}

# ---- Helpers for the fault-injecting proxy (tests/nbd-fault-proxy.py) and
# the connection-loss tests (t-fault-proxy.sh, t-reconnect-*.sh). ----

# start_proxy NAME TARGET_SOCK [PROXY-OPTIONS...]: tests/nbd-fault-proxy.py
# in the background, forwarding the Unix socket $T/NAME.sock to TARGET_SOCK,
# with its control socket $T/NAME.ctl and its log $T/NAME.log; options such
# as --rate 20M are passed on.  Waits until it listens.  Sets PROXY_SOCK,
# PROXY_CTL and PROXY_PID (killed at exit).
start_proxy() {
  local name=$1 target=$2
  shift 2
  PROXY_SOCK=$T/$name.sock
  PROXY_CTL=$T/$name.ctl
  rm -f "$PROXY_SOCK" "$PROXY_CTL" "$T/$name.pid"
  python3 "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/nbd-fault-proxy.py" \
    --listen "$PROXY_SOCK" --target "$target" --control "$PROXY_CTL" \
    --log "$T/$name.log" --pidfile "$T/$name.pid" "$@" </dev/null >>"$T/$name.log" 2>&1 &
  PROXY_PID=$!
  track_pid "$PROXY_PID"
  wait_until 20 test -s "$T/$name.pid" ||
    fail "proxy $name did not start: $(cat "$T/$name.log")"
  test -S "$PROXY_SOCK" && test -S "$PROXY_CTL" || fail "proxy $name has no sockets: $(cat "$T/$name.log")"
}

# proxy CMD...: send one command to the proxy on $PROXY_CTL, print its reply;
# the status is 1 if the reply is an error.
proxy() {
  python3 "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/nbd-fault-proxy.py" \
    --control "$PROXY_CTL" --send "$*"
}

# proxy_live: the number of live connections of the proxy (from "count").
proxy_live() { proxy count | sed -n 's/^live=\([0-9]*\) .*/\1/p'; }

# proxy_total: the number of connections the proxy has accepted.
proxy_total() { proxy count | sed -n 's/.* total=\([0-9]*\)$/\1/p'; }

# proxy_bytes ID up|down: bytes forwarded on the proxy's live connection ID
# towards the target (up) or the client (down); empty if ID is not live.
proxy_bytes() { proxy list | awk -v id="$1" -v f="$2=" '$1 == id {for (i = 2; i <= NF; i++) if (index($i, f) == 1) print substr($i, length(f) + 1)}'; }

# proxy_sum up|down: those bytes summed over all live connections.
proxy_sum() { proxy list | awk -v f="$1=" '{for (i = 2; i <= NF; i++) if (index($i, f) == 1) n += substr($i, length(f) + 1)} END {printf "%d\n", n}'; }

# _fio_ended PID WHEN: fio (PID) has ended too early: fail, saying how.
_fio_ended() {
  local rc=0
  wait "$1" || rc=$?
  fail "fio ended $2 with status $rc: $(grep -Ei 'error|err=|verify' "$T/fio.out" | head -n 5)"
}

# check_reconnected_after_drops: after fio_drop_reset through a proxy of 4
# connections, nbdfs logged the loss and the reconnection, and the proxy
# sees 4 live connections again (at least 2 of them replacements).
check_reconnected_after_drops() {
  grep -qi 'lost' "$T/nbdfs.log" || fail "no 'lost' line in the log: $(cat "$T/nbdfs.log")"
  note "$(grep -i -m1 'lost' "$T/nbdfs.log")"
  grep -qi 'reconnected' "$T/nbdfs.log" || fail "no 'reconnected' line in the log: $(cat "$T/nbdfs.log")"
  note "$(grep -i -m1 'reconnected' "$T/nbdfs.log")"
  wait_until 15 eval '[ "$(proxy_live)" = 4 ]' || fail "not 4 live connections again: $(proxy count): $(proxy list)"
  [ "$(proxy_total)" -ge 6 ] || fail "the proxy accepted $(proxy_total) connections, expected at least 6 (4 + 2 replacements)"
}

# fio_drop_reset FILE BYTES: under the proxy of start_proxy, with the nbdfs
# mount of FILE connected through it (4 connections, proxy ids 1-4), run
#   fio --rw=randwrite --bs=64k --iodepth=16 --direct=1 --verify=crc32c
# on the first BYTES of FILE (it writes every block, then reads them all
# back and verifies them) and meanwhile drop connection 2 (FIN) while fio
# writes and reset connection 3 while it verifies.  Fails the test unless
# fio exits 0 without errors; its output is in $T/fio.out.  The path to
# the server should be slow enough for fio to take seconds: start_proxy
# --rate, not nbdkit's rate or delay filter.  And nbdkit should run with
# -t 1: nbdkit 1.32 can abort (assertion `sock >= 0') when a connection is
# cut while several of its threads send replies on it, and, with those
# filters, whenever a cut connection has requests sleeping in them.
fio_drop_reset() {
  local f=$1 len=$2 fpid rc=0
  local q=$((len / 4))
  wait_until 20 eval '[ "$(proxy_live)" = 4 ]' || fail "expected 4 connections through the proxy: $(proxy list)"
  local l
  l=$(proxy list)
  grep -q '^2 ' <<<"$l" && grep -q '^3 ' <<<"$l" ||
    fail "proxy connections 2 and 3 are not both live: $(proxy list)"
  fio --name=v --filename="$f" --direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite --bs=64k \
    --size="$len" --verify=crc32c --do_verify=1 --verify_fatal=1 >"$T/fio.out" 2>&1 &
  fpid=$!
  track_pid "$fpid"
  wait_until 30 eval '[ "$(proxy_sum up)" -ge '"$q"' ] || ! pid_alive '"$fpid" ||
    fail "fio wrote less than $q bytes in 30 s: $(proxy list)"
  pid_alive "$fpid" || _fio_ended "$fpid" "before the drop (too fast?)"
  [ "$(proxy drop 2)" = ok ] || fail "proxy drop 2 failed"
  note "dropped connection 2 while fio writes"
  wait_until 60 eval '[ "$(proxy_sum down)" -ge '"$q"' ] || ! pid_alive '"$fpid" ||
    fail "fio did not get to read back $q bytes in 60 s: $(proxy list)"
  pid_alive "$fpid" || _fio_ended "$fpid" "after connection 2 was dropped, before the reset"
  [ "$(proxy reset 3)" = ok ] || fail "proxy reset 3 failed"
  note "reset connection 3 while fio verifies"
  wait_until 60 eval '! pid_alive '"$fpid" || fail "fio still runs 60 s after the reset (hangs?)"
  wait "$fpid" || rc=$?
  [ "$rc" = 0 ] || fail "fio failed (exit $rc) across a dropped and a reset connection: $(tail -n 30 "$T/fio.out")"
  grep -q 'err= 0' "$T/fio.out" || fail "fio reports errors: $(tail -n 30 "$T/fio.out")"
  if grep -Eqi 'verify.*(fail|bad)|crc32c.*(fail|bad)|error' "$T/fio.out"; then
    fail "fio reports trouble: $(grep -Ei 'verify|crc32c|error' "$T/fio.out" | head -n 5)"
  fi
}

# server_prefix_sha URI BYTES: sha256 of the first BYTES of the export, read
# by nbdcopy (server_sha without pipefail: nbdcopy is cut short by a
# SIGPIPE when BYTES is less than the export; if it fails early the sum is
# of fewer bytes, so it is wrong anyway).
server_prefix_sha() { (set +o pipefail; nbdcopy -- "$1" - 2>/dev/null | head -c "$2" | sha256sum | cut -d' ' -f1); }

# ---- Helpers for tests run as an unprivileged user (t-ownership.sh).
# contrib/run-tests.sh creates the user and makes /dev/fuse usable by it;
# fusermount3 must be setuid root.  What the user mounts is registered and
# unmounted at exit like the rest (root may unmount any FUSE mount). ----

TEST_USER=${NBDFS_TEST_USER:-nbdfs-test}

# as_user CMD ARGS...: run CMD as $TEST_USER with its primary and
# supplementary groups, in this environment (NBDFS_TEST_RUN_ID included,
# so run-tests.sh still finds what it leaves running).
as_user() {
  setpriv --reuid="$TEST_USER" --regid="$(id -g "$TEST_USER")" --init-groups -- "$@"
}

# user_dir: check that the test user can mount, and make $UT, a directory
# under $T that the user owns ($T itself becomes traversable, not
# readable, for others).  Sets UT.
user_dir() {
  id "$TEST_USER" >/dev/null 2>&1 ||
    fail "no user $TEST_USER (contrib/run-tests.sh creates it: useradd -r -M -s /usr/sbin/nologin $TEST_USER)"
  as_user test -r /dev/fuse -a -w /dev/fuse ||
    fail "$TEST_USER cannot open /dev/fuse (mode $(stat -c %a /dev/fuse); contrib/run-tests.sh makes it 0666)"
  [ -u "$(command -v fusermount3)" ] || fail "fusermount3 is not setuid root: users cannot mount"
  chmod 0711 "$T"
  UT=$T/user
  mkdir -p "$UT"
  chown "$TEST_USER:$(id -g "$TEST_USER")" "$UT"
}

# mount_nbdfs_as_user URI MOUNTPOINT [OPTIONS...]: mount_nbdfs, with nbdfs
# run by the test user (the mountpoint must be the user's, the server's
# socket writable by it).
mount_nbdfs_as_user() { _nbdfs_run=(as_user); mount_nbdfs "$@"; _nbdfs_run=(); }

# unmount_nbdfs_as_user DIR: unmount_nbdfs, fusermount3 -u run by the test user.
unmount_nbdfs_as_user() { _nbdfs_run=(as_user); unmount_nbdfs "$@"; _nbdfs_run=(); }
