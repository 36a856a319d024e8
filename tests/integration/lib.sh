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

cleanup() {
  local m p
  for m in "${_mounts[@]}"; do
    if mountpoint -q "$m" 2>/dev/null || grep -q " $m fuse" /proc/mounts; then
      fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
    fi
  done
  for p in "${_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.1
  for p in "${_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
note() { echo "  $*" >&2; }

# track_pid PID: kill it at exit.
track_pid() { _pids+=("$1"); }

# wait_for_file PATH [SECONDS]: wait until PATH exists.
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
  wait_for_file "$pidf"
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
  local log=${NBDFS_LOG:-$T/nbdfs.log}
  local dir=$mp
  [ -d "$mp" ] || [ -f "$mp" ] || dir=$(dirname "$mp")
  _mounts+=("$dir")
  "$NBDFS" -f "$@" "$uri" "$mp" >>"$log" 2>&1 &
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
  fusermount3 -u "$1" || fail "fusermount3 -u $1 failed"
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
