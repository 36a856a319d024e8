#!/bin/bash
# Acknowledged but unflushed writes survive a server that restarts empty:
# nbdfs sends them again on the new connection (or, failing that, reports
# the loss through fsync).  Never both "data lost" and "fsync succeeded".
#   nbdkit memory 64M (non-persistent: a restart loses everything), with
#   the log filter; nbdfs -C 1.
#   A writer writes 4 MiB of random data at 1 MiB with one O_DIRECT
#   pwrite and keeps the file open, without fsync: a close would send a
#   FLUSH (close() flushes, like fsync), after which the server may forget
#   nothing.  The server must have seen no FLUSH by then (else the
#   scenario tests nothing).
#   nbdkit is killed (kill -9) and restarted empty on the same socket.
# Asserts, once nbdfs has logged 'reconnected' (within 15 s):
#   - reading the 4 MiB back through the mount (O_DIRECT) gives the
#     written data, and then fsync succeeds and the server (nbdcopy) holds
#     the data; the writer's close succeeds; unmount exits 0;
#   - or, if the data read back differs, an fsync of the file fails.
# Run twice: by default the data must come back (replayed); with
# --replay-limit 0 (nothing kept) the fsync must fail instead.
if [ -z "${REPLAY_MODE:-}" ]; then
  REPLAY_MODE=replay bash "$0" || exit 1
  REPLAY_MODE=off bash "$0" || exit 1
  exit 0
fi
. "$(dirname "$0")/lib.sh"
EXTRA=()
[ "$REPLAY_MODE" = off ] && EXTRA=(--replay-limit 0)
note "mode: $REPLAY_MODE"

MiB=1048576
SIZE=$((64 * MiB))
OFF=$((1 * MiB))
LEN=$((4 * MiB))
serve_nbdkit mem --filter=log memory "$SIZE" logfile="$T/requests1.log"
URI=$(unix_uri "$SOCK")
mkdir "$T/mnt"
F=$T/mnt/disk
mount_nbdfs "$URI" "$T/mnt" -v -C 1 "${EXTRA[@]}"
rand_file "$T/data" "$LEN"

# The writer: one O_DIRECT pwrite (from a page-aligned buffer), then it
# waits, file open, until $T/writer.close exists; it reports in $T/writer
# ("written N", then "closed ok" or "closed ERRNO-NAME").
python3 - "$F" "$T/data" "$T/writer" "$OFF" <<'PYEOF' &
import errno, mmap, os, sys, time
path, src, st, off = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
out = open(st, "a", buffering=1)
data = open(src, "rb").read()
buf = mmap.mmap(-1, len(data))
buf.write(data)
fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
try:
    n = os.pwrite(fd, buf, off)
    out.write("written %d\n" % n)
except OSError as e:
    out.write("write-error %s\n" % errno.errorcode.get(e.errno, e.errno))
while not os.path.exists(st + ".close"):
    time.sleep(0.05)
try:
    os.close(fd)
    out.write("closed ok\n")
except OSError as e:
    out.write("closed %s\n" % errno.errorcode.get(e.errno, e.errno))
PYEOF
wpid=$!
track_pid "$wpid"
wait_until 30 grep -qs '^writ' "$T/writer" || fail "the writer did not finish its write within 30 s"
grep -qx "written $LEN" "$T/writer" || fail "the write failed: $(cat "$T/writer")"
flushes=$(log_requests Flush <"$T/requests1.log" | wc -l)
[ "$flushes" = 0 ] ||
  fail "nbdfs sent $flushes FLUSH(es) before the kill although nobody asked: the written data is durable by the protocol, so this test cannot check replay"
[ "$(log_requests Write <"$T/requests1.log" | wc -l)" -gt 0 ] || fail "the server saw no write"

kill -9 "$SERVER_PID"
wait_until 10 eval '! pid_alive "$SERVER_PID"' || fail "nbdkit survived kill -9"
rm -f "$SOCK"
m=$(log_mark "$T/nbdfs.log")
serve_nbdkit mem --filter=log memory "$SIZE" logfile="$T/requests2.log"
note "nbdkit restarted empty"
wait_until 15 eval '[ "$(log_since "$T/nbdfs.log" "$m" | grep -ci reconnected)" -gt 0 ]' ||
  fail "nbdfs did not reconnect within 15 s: $(cat "$T/nbdfs.log")"
note "$(grep -i -m1 'reconnected' "$T/nbdfs.log")"

rc=0
timeout 30 dd if="$F" of="$T/back" bs=1M skip=1 count=4 iflag=direct status=none 2>"$T/back.err" || rc=$?
[ "$rc" != 124 ] || fail "reading back hung (timeout 30)"
fsync_file() {
  timeout 60 python3 -c 'import os,sys; fd=os.open(sys.argv[1],os.O_WRONLY); os.fsync(fd)' "$F" >"$T/fsync.err" 2>&1
}
if [ "$rc" = 0 ] && cmp -s "$T/data" "$T/back"; then
  [ "$REPLAY_MODE" = replay ] || fail "--replay-limit 0 keeps nothing, yet the data came back"
  note "the data read back after the restart is the data written (replayed)"
  [ "$(log_requests Write <"$T/requests2.log" | wc -l)" -gt 0 ] || fail "the restarted server saw no write, yet the data reads back"
  fsync_file || fail "the data was replayed, but fsync then failed: $(tail -n 1 "$T/fsync.err")"
  rm -f "$T/server.img"
  server_copy "$URI" "$T/server.img"
  [ "$(range_sha "$T/server.img" "$OFF" "$LEN")" = "$(sha "$T/data")" ] ||
    fail "fsync succeeded but the server does not hold the data (the mount served it from elsewhere)"
  touch "$T/writer.close"
  wait_until 30 grep -qs '^closed' "$T/writer" || fail "the writer's close did not finish within 30 s"
  grep -qx 'closed ok' "$T/writer" || fail "the writer's close failed: $(cat "$T/writer")"
  wait "$wpid" || fail "the writer failed"
  unmount_nbdfs "$T/mnt"
else
  [ "$REPLAY_MODE" = off ] || fail "the data was not replayed after the restart (read: status $rc)"
  note "the data is not there after the restart (read: status $rc $(head -c 200 "$T/back.err"))"
  if fsync_file; then
    fail "data lost: the 4 MiB written before the restart do not read back, and fsync succeeded"
  fi
  note "fsync failed, as it must then: $(tail -n 1 "$T/fsync.err")"
  touch "$T/writer.close"
  wait_until 30 grep -qs '^closed' "$T/writer" || fail "the writer's close did not finish within 30 s"
  fusermount3 -u "$T/mnt" || fail "fusermount3 -u failed"
  wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "nbdfs did not exit within 30 s of unmount"
  rc=0
  wait "$NBDFS_PID" || rc=$?
  [ "$rc" -lt 128 ] || fail "nbdfs died from signal $((rc - 128))"
fi
echo ok
