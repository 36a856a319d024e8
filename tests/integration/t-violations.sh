#!/bin/bash
# Hostile-server behaviours (reference section 9) against the real daemon,
# using tests/fake-nbd-server.py:
#  - handshake-phase violations: nbdfs exits non-zero with one line of error
#    starting "nbdfs:", within a bounded time, and nothing is mounted;
#  - transmission-phase violations: the READ that triggers them fails with EIO,
#    or, for violations that cost the connection, is sent again on a new one
#    and returns the right data (bounded by timeout: no hang); the daemon does
#    not crash, later I/O does not hang, and violations that only FAIL one
#    request leave the connection usable; the mount unmounts cleanly;
#  - hostile block status answers: SEEK_DATA/SEEK_HOLE and stat return in
#    bounded time with safe answers, and reads keep working.
. "$(dirname "$0")/lib.sh"

FAKE=$(cd "$(dirname "$0")/.." && pwd)/fake-nbd-server.py
IO_TIMEOUT=20     # bound on any single I/O through the mount
KiB=1024

# The daemon is alive, or exited without a crash (a signal).
check_not_crashed() {  # WHAT
  if pid_alive "$NBDFS_PID"; then return 0; fi
  local st=0
  wait "$NBDFS_PID" 2>/dev/null || st=$?
  [ "$st" -lt 128 ] || fail "$1: nbdfs died with signal $((st - 128)): $(tail -5 "$NBDFS_LOG")"
  note "$1: nbdfs exited with status $st (no crash)"
}

# Unmount and reap the daemon; a crash fails the test.
finish_mount() {  # DIR WHAT
  if is_mounted "$1"; then
    fusermount3 -u "$1" 2>/dev/null || fusermount3 -uz "$1" || fail "$2: cannot unmount $1"
  fi
  wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "$2: nbdfs did not exit after unmount"
  local st=0
  wait "$NBDFS_PID" 2>/dev/null || st=$?
  [ "$st" -lt 128 ] || fail "$2: nbdfs died with signal $((st - 128)): $(tail -5 "$NBDFS_LOG")"
  [ "$st" = 0 ] || note "$2: nbdfs exited with status $st after unmount"
  ! is_mounted "$1" || fail "$2: still mounted after the daemon exited"
}

# read_block FILE OFFSET-KiB OUT ERR: read 4 KiB through the mount; prints the
# exit status of dd (124: it hung).
read_block() {
  local rc=0
  timeout -k 5 "$IO_TIMEOUT" dd if="$1" of="$3" bs=4096 count=1 skip=$(($2 / 4)) status=none 2>"$4" || rc=$?
  echo "$rc"
}

# io_scenario NAME KIND SERVER-ARGS...: KIND is "kill" (the connection cannot
# be trusted afterwards), "fail" (only that request fails) or "ok".
io_scenario() {
  local name=$1 kind=$2; shift 2
  serve_fake "$name" "$@"
  local mp=$T/mnt-$name
  mkdir "$mp"
  NBDFS_LOG=$T/nbdfs-$name.log
  export NBDFS_LOG
  mount_nbdfs "$(unix_uri "$SOCK")" "$mp" --timeout 2 --reconnect-delay 5
  local f=$mp/disk rc t0=$SECONDS
  [ -f "$f" ] || fail "$name: no file $f"

  # The first READ covering byte 0 triggers the scenario.
  rc=$(read_block "$f" 0 "$T/$name.out0" "$T/$name.err0")
  [ "$rc" != 124 ] && [ "$rc" != 137 ] || fail "$name: the read hung (no answer after ${IO_TIMEOUT}s)"
  if [ "$kind" = ok ]; then
    [ "$rc" = 0 ] || fail "$name: read failed: $(cat "$T/$name.err0")"
    python3 "$FAKE" --print-pattern 0 4096 | cmp -s - "$T/$name.out0" || fail "$name: wrong data read"
  elif [ "$kind" = kill ] && [ "$rc" = 0 ]; then
    # The connection was dropped, and the READ sent again on a new one (the
    # fake server misbehaves once): the data must then be right.
    python3 "$FAKE" --print-pattern 0 4096 | cmp -s - "$T/$name.out0" ||
      fail "$name: the read sent again after the violation returned wrong data"
    grep -qi 'lost' "$NBDFS_LOG" || fail "$name: the read succeeded but no connection was dropped: $(cat "$NBDFS_LOG")"
  else
    [ "$rc" != 0 ] || fail "$name: the read succeeded (the server sent garbage)"
    grep -q 'Input/output error' "$T/$name.err0" ||
      fail "$name: read failed, but not with EIO: $(cat "$T/$name.err0")"
  fi
  check_not_crashed "$name"
  note "$name: first read -> $([ "$rc" = 0 ] && echo ok || echo EIO) after $((SECONDS - t0))s"

  # Later I/O does not hang.  After a FAIL the connection is still good, so a
  # read elsewhere returns the right bytes; after a KILL it fails with EIO
  # (or succeeds with the right bytes, should the daemon reconnect).
  rc=$(read_block "$f" 512 "$T/$name.out1" "$T/$name.err1")
  [ "$rc" != 124 ] && [ "$rc" != 137 ] || fail "$name: a later read hung"
  if [ "$rc" = 0 ]; then
    python3 "$FAKE" --print-pattern $((512 * KiB)) 4096 | cmp -s - "$T/$name.out1" ||
      fail "$name: a later read returned wrong data"
  else
    [ "$kind" = kill ] || fail "$name: a later read failed: $(cat "$T/$name.err1")"
    grep -q 'Input/output error' "$T/$name.err1" || fail "$name: a later read failed, not with EIO: $(cat "$T/$name.err1")"
  fi
  # Writes too (bounded), whatever their result.
  rc=0
  timeout -k 5 "$IO_TIMEOUT" dd if=/dev/zero of="$f" bs=4096 count=1 seek=200 conv=notrunc,fsync status=none \
    2>/dev/null || rc=$?
  [ "$rc" != 124 ] && [ "$rc" != 137 ] || fail "$name: a write hung"
  [ "$kind" = kill ] || [ "$rc" = 0 ] || fail "$name: a write failed after a FAIL-only violation"
  check_not_crashed "$name"
  finish_mount "$mp" "$name"
  kill "$SERVER_PID" 2>/dev/null || true
  unset NBDFS_LOG
}

# hs_scenario NAME SERVER-ARGS...: the mount must fail cleanly.
hs_scenario() {
  local name=$1; shift
  serve_fake "$name" "$@"
  local mp=$T/mnt-$name rc=0 t0=$SECONDS
  mkdir "$mp"
  _mounts+=("$mp")
  timeout -k 5 60 "$NBDFS" -f --connect-timeout 3 "$(unix_uri "$SOCK")" "$mp" \
    >"$T/$name.stdout" 2>"$T/$name.stderr" </dev/null || rc=$?
  [ "$rc" != 124 ] && [ "$rc" != 137 ] || fail "$name: nbdfs hung in the handshake"
  [ "$rc" -lt 128 ] || fail "$name: nbdfs died with signal $((rc - 128)): $(cat "$T/$name.stderr")"
  [ "$rc" != 0 ] || fail "$name: nbdfs exited 0"
  ! is_mounted "$mp" || fail "$name: something is mounted on $mp"
  local lines
  lines=$(grep -c . "$T/$name.stderr" || true)
  [ "$lines" = 1 ] || fail "$name: expected one line of error, got $lines: $(cat "$T/$name.stderr")"
  grep -q '^nbdfs: ' "$T/$name.stderr" || fail "$name: error does not start with 'nbdfs:': $(cat "$T/$name.stderr")"
  [ ! -s "$T/$name.stdout" ] || fail "$name: unexpected output on stdout: $(cat "$T/$name.stdout")"
  note "$name: exit $rc after $((SECONDS - t0))s: $(cat "$T/$name.stderr")"
  kill "$SERVER_PID" 2>/dev/null || true
}

# bs_scenario NAME EXPECT MODE [SERVER-ARGS...]: block status answers of MODE (see
# fake-nbd-server.py --block-status).  SEEK_DATA/SEEK_HOLE and stat must
# return within bounds.  EXPECT "data": the answers are unusable or say data,
# so the whole file is data (the safe answer); "hole": the file is one hole.
# Reads keep working.
bs_scenario() {
  local name=$1 expect=$2 mode=$3 size=$((4 * 1024 * 1024))
  shift 3
  serve_fake "$name" --block-status "$mode" --size "$size" "$@"
  local mp=$T/mnt-$name rc=0
  mkdir "$mp"
  NBDFS_LOG=$T/nbdfs-$name.log
  export NBDFS_LOG
  mount_nbdfs "$(unix_uri "$SOCK")" "$mp" --timeout 5
  timeout -k 5 60 python3 - "$mp/disk" "$expect" "$size" >"$T/$name.seek" 2>&1 <<'PY' || rc=$?
import errno, os, sys
path, expect, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_RDONLY)
def seek(off, whence):
    try:
        return os.lseek(fd, off, whence)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return "ENXIO"
        raise
d0, h0 = seek(0, os.SEEK_DATA), seek(0, os.SEEK_HOLE)
dm = seek(size // 2 + 123, os.SEEK_DATA)
blocks = os.stat(path).st_blocks
print("SEEK_DATA(0)=%s SEEK_HOLE(0)=%s SEEK_DATA(mid)=%s st_blocks=%d" % (d0, h0, dm, blocks))
if expect == "data":
    ok = d0 == 0 and h0 == size and dm == size // 2 + 123 and blocks == size // 512
else:
    ok = h0 == 0 and (d0 == "ENXIO" or (isinstance(d0, int) and 0 < d0 < size)) and blocks <= size // 512
sys.exit(0 if ok else 3)
PY
  [ "$rc" != 124 ] && [ "$rc" != 137 ] || fail "$name: SEEK_DATA/SEEK_HOLE/stat hung"
  [ "$rc" = 0 ] || fail "$name: unexpected answers ($expect expected): $(cat "$T/$name.seek")"
  check_not_crashed "$name"
  pid_alive "$NBDFS_PID" || fail "$name: nbdfs exited"
  rc=$(read_block "$mp/disk" 64 "$T/$name.out" "$T/$name.err")
  [ "$rc" = 0 ] || fail "$name: a read after the block status answers failed: $(cat "$T/$name.err")"
  python3 "$FAKE" --print-pattern $((64 * KiB)) 4096 | cmp -s - "$T/$name.out" || fail "$name: wrong data read"
  note "$name: $(cat "$T/$name.seek")"
  finish_mount "$mp" "$name"
  kill "$SERVER_PID" 2>/dev/null || true
  unset NBDFS_LOG
}


# hostile_list: --exports over a server that lists names no real server
# would: every file name is one path component, maps back to its export
# (user.nbd.export), and reads the export's data; the listing itself works.
hostile_list() {
  local name=hostile-list rc=0
  serve_fake "$name" --list hostile
  local mp=$T/mnt-$name
  mkdir "$mp"
  NBDFS_LOG=$T/nbdfs-$name.log
  export NBDFS_LOG
  mount_nbdfs "$(unix_uri "$SOCK")" "$mp" --exports
  timeout -k 5 60 python3 - "$mp" "$FAKE" >"$T/$name.out" 2>&1 <<'PY' || rc=$?
import importlib.util, os, sys
mp, fake = os.fsencode(sys.argv[1]), sys.argv[2]
spec = importlib.util.spec_from_file_location("fake", fake)
m = importlib.util.module_from_spec(spec)
sys.dont_write_bytecode = True
spec.loader.exec_module(m)
names = [n for n in m.HOSTILE_NAMES if b"\0" not in n]
try:
    files = os.listdir(mp)
except OSError as e:
    print("listing the directory failed: %s" % e)
    sys.exit(4)
seen = {}
for f in files:
    if b"/" in f or f in (b".", b".."):
        print("bad file name %r" % f)
        sys.exit(3)
    if len(f) > 255:
        print("file name of %d bytes (over NAME_MAX) cannot be opened" % len(f))
        sys.exit(5)
    exp = os.getxattr(os.path.join(mp, f), "user.nbd.export")
    if exp in seen:
        print("export %r listed twice (%r, %r)" % (exp, seen[exp], f))
        sys.exit(3)
    seen[exp] = f
    with open(os.path.join(mp, f), "rb") as fh:
        if fh.read(4096) != m.pattern(0, 4096):
            print("wrong data through %r" % f)
            sys.exit(3)
# Every export is reachable, however long its name (long ones are shortened).
missing = [n for n in names if n not in seen]
if missing:
    print("exports missing: %r" % missing)
    sys.exit(3)
print("%d files, %d exports" % (len(files), len(seen)))
PY
  case $rc in
    0) note "$name: $(cat "$T/$name.out")" ;;
    4 | 5) fail "$name: export names longer than a file name can be break the directory: $(cat "$T/$name.out")" ;;
    124 | 137) fail "$name: listing hung" ;;
    *) fail "$name: $(cat "$T/$name.out")" ;;
  esac
  check_not_crashed "$name"
  finish_mount "$mp" "$name"
  kill "$SERVER_PID" 2>/dev/null || true
  unset NBDFS_LOG
}

# A well-behaved fake server first: the harness itself works.
io_scenario normal ok --scenario normal
io_scenario normal-nosr ok --scenario normal --no-sr

# Transmission-phase violations, structured replies on.
io_scenario bad-reply-magic kill --scenario bad-reply-magic
io_scenario wrong-cookie kill --scenario wrong-cookie
io_scenario chunk-out-of-range fail --scenario chunk-out-of-range
io_scenario error-chunk fail --scenario error-chunk
io_scenario huge-chunk kill --scenario huge-chunk
io_scenario unknown-chunk-type kill --scenario unknown-chunk-type
io_scenario close-mid-reply kill --scenario close-mid-reply
io_scenario stall kill --scenario stall
io_scenario garbage-after-ack kill --scenario garbage-after-ack
io_scenario stray-chunk ok --scenario stray-chunk
io_scenario duplicate-reply ok --scenario duplicate-reply
# ... and with simple replies only.
io_scenario bad-reply-magic-nosr kill --scenario bad-reply-magic --no-sr
io_scenario wrong-cookie-nosr kill --scenario wrong-cookie --no-sr
io_scenario close-mid-reply-nosr kill --scenario close-mid-reply --no-sr
io_scenario stall-nosr kill --scenario stall --no-sr
io_scenario error-nosr fail --scenario error-chunk --no-sr

# Block status answers (lseek SEEK_DATA/SEEK_HOLE and st_blocks use them).
bs_scenario bs-data data data
bs_scenario bs-past-end hole past-end
bs_scenario bs-tiny-holes hole tiny-holes
bs_scenario bs-zero-length data zero-length
bs_scenario bs-wrong-context data wrong-context
bs_scenario bs-error data error
bs_scenario bs-none data none
bs_scenario bs-two-chunks data two-chunks

# Directory mode over a hostile export list.
# Extended headers: a header of the wrong kind, or one whose offset or length
# cannot be right, costs the connection; bad BLOCK_STATUS_EXT answers fail
# only their request.
io_scenario ext-normal ok --scenario normal --extended on
io_scenario ext-required ok --scenario normal --extended required
io_scenario ext-simple-reply kill --scenario ext-simple-reply --extended on
io_scenario ext-structured-chunk kill --scenario ext-structured-chunk --extended on
io_scenario ext-wrong-offset kill --scenario ext-wrong-offset --extended on
io_scenario ext-huge-length kill --scenario ext-huge-length --extended on
io_scenario ext-error-chunk fail --scenario error-chunk --extended on
io_scenario ext-unknown-chunk-type kill --scenario unknown-chunk-type --extended on
bs_scenario ext-bs-data data data --extended on
bs_scenario ext-bs-past-end hole past-end --extended on
bs_scenario ext-bs-huge hole ext-huge --extended on
bs_scenario ext-bs-zero-length data zero-length --extended on
bs_scenario ext-bs-count-mismatch data ext-count-mismatch --extended on
bs_scenario ext-bs-zero-count data ext-zero-count --extended on
bs_scenario ext-bs-compact data ext-compact --extended on
bs_scenario ext-bs-two-chunks data two-chunks --extended on

hostile_list

# Handshake-phase violations.
hs_scenario unknown-export --scenario unknown-export
hs_scenario oversized-option-reply --scenario oversized-option-reply
hs_scenario bad-greeting --scenario bad-greeting
hs_scenario ack-without-export --scenario ack-without-export
hs_scenario handshake-eof --scenario handshake-eof
hs_scenario handshake-stall --scenario handshake-stall
hs_scenario oversized-reply-to-sr --scenario oversized-option-reply --oversized-opt 8
hs_scenario oversized-reply-to-meta --scenario oversized-option-reply --oversized-opt 10

echo "t-violations: all scenarios passed"
