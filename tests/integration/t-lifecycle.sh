#!/bin/bash
# Daemon life cycle:
#  - daemon mode (no -f) with -P: nbdfs returns once mounted (the mount is
#    there when it returns), the pid file names a live nbdfs process, the
#    file is usable;
#  - SIGTERM: unmounts, the process exits, the pid file is removed; data
#    written just before (through a descriptor that is still open, so no
#    close-time FLUSH happened) is on the server, and nbdkit's log shows a
#    FLUSH after the last write and NBD_CMD_DISC on every connection;
#  - fusermount3 -u after writes: FLUSH and NBD_CMD_DISC as well, exit 0;
#  - SIGINT in the foreground: unmounts, exit status 0.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((32 * MiB))
serve_nbdkit mem -v --filter=log memory "$SIZE" logfile="$T/requests.log"
URI=$(unix_uri "$SOCK")
mkdir "$T/mnt"
F=$T/mnt/disk

# count_disc: NBD_CMD_DISC messages so far in nbdkit's -v log.
count_disc() { grep -c 'client sent NBD_CMD_DISC' "$T/mem.log" || true; }
nconn() { grep -c ' Connect export=' "$T/requests.log" || true; }

# check_flush_after_writes FROM-LINE WHAT: in requests.log after line
# FROM-LINE there are writes, and a successful Flush after the last one.
check_flush_after_writes() {
  local from=$1 what=$2
  tail -n +"$((from + 1))" "$T/requests.log" >"$T/req.part"
  local lw lf
  lw=$(grep -n ' Write id=' "$T/req.part" | tail -1 | cut -d: -f1)
  [ -n "$lw" ] || fail "$what: no writes logged"
  lf=$(grep -n ' \.\.\.Flush id=.* return=0' "$T/req.part" | tail -1 | cut -d: -f1)
  [ -n "$lf" ] && [ "$lf" -gt "$lw" ] || fail "$what: no successful FLUSH after the last write: $(cat "$T/req.part")"
}

# wait_disc N0 WANT WHAT: nbdkit saw WANT more NBD_CMD_DISC than N0.
wait_disc() {
  local n0=$1 want=$2 what=$3 got=0
  for _ in $(seq 100); do
    got=$(( $(count_disc) - n0 ))
    [ "$got" -ge "$want" ] && break
    sleep 0.1
  done
  [ "$got" = "$want" ] || fail "$what: $got of $want connections sent NBD_CMD_DISC"
}

# ---- daemon mode, SIGTERM ----
before=$(wc -l <"$T/requests.log")
n0=$(nconn)
mount_nbdfs_daemon "$URI" "$T/mnt"
is_mounted "$T/mnt" || fail "nbdfs returned before the mount was there"
pid_alive "$NBDFS_PID" || fail "pid file names $NBDFS_PID, which is not running"
case $(readlink "/proc/$NBDFS_PID/exe") in */nbdfs*) ;; *) fail "pid $NBDFS_PID is $(readlink "/proc/$NBDFS_PID/exe")" ;; esac
# Extra connections open in the background: count them once all are up.
wait_until 20 eval '[ $(( $(nconn) - n0 )) -ge 4 ]' || note "fewer than 4 connections: $(( $(nconn) - n0 ))"
conns=$(( $(nconn) - n0 ))
[ "$conns" -ge 1 ] || fail "no connection logged"

rand_file "$T/a" $((3 * MiB))
write_at "$F" $((5 * MiB)) "$T/a" || fail "write failed"
[ "$(range_sha "$F" $((5 * MiB)) $((3 * MiB)))" = "$(sha "$T/a")" ] || fail "read back differs"
# The last write comes from a process that keeps its descriptor open over
# SIGTERM: no close(), so no close-time FLUSH; only nbdfs's own final FLUSH
# can follow it.
rand_file "$T/b" 12345
mkfifo "$T/hold"
python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
data = open(sys.argv[3], "rb").read()
if os.pwrite(fd, data, int(sys.argv[2])) != len(data):
    sys.exit("short write")
open(sys.argv[4] + ".tmp", "w").close()
os.rename(sys.argv[4] + ".tmp", sys.argv[4])
sys.stdin.read()     # hold the descriptor until the FIFO is closed
' "$F" $((20 * MiB + 7)) "$T/b" "$T/written" <"$T/hold" &
holder=$!
exec 8>"$T/hold"
wait_until 30 test -e "$T/written" || fail "the holding writer did not write"
d0=$(count_disc)
kill -TERM "$NBDFS_PID"
wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "nbdfs did not exit after SIGTERM"
exec 8>&-
wait "$holder" || fail "the holding writer failed"
wait_until 10 eval '! is_mounted "$T/mnt"' || fail "still mounted after SIGTERM"
[ ! -e "$T/nbdfs-daemon.pid" ] || fail "pid file left after a clean exit"
check_flush_after_writes "$before" "SIGTERM"
wait_disc "$d0" "$conns" "SIGTERM"
server_copy "$URI" "$T/server.img"
[ "$(range_sha "$T/server.img" $((5 * MiB)) $((3 * MiB)))" = "$(sha "$T/a")" ] || fail "SIGTERM: written data not on the server"
[ "$(range_sha "$T/server.img" $((20 * MiB + 7)) 12345)" = "$(sha "$T/b")" ] || fail "SIGTERM: last write not on the server"

# ---- fusermount3 -u after writes (foreground) ----
before=$(wc -l <"$T/requests.log")
n0=$(nconn)
mount_nbdfs "$URI" "$T/mnt"
wait_until 20 eval '[ $(( $(nconn) - n0 )) -ge 4 ]' || note "fewer than 4 connections: $(( $(nconn) - n0 ))"
conns=$(( $(nconn) - n0 ))
rand_file "$T/c" $((MiB + 1))
exec 7<>"$F"
dd if="$T/c" bs=1M seek=$((9 * MiB + 1)) oflag=seek_bytes conv=notrunc status=none >&7 || fail "write failed"
exec 7>&-
[ "$(range_sha "$F" $((9 * MiB + 1)) $((MiB + 1)))" = "$(sha "$T/c")" ] || fail "read back differs"
d0=$(count_disc)
unmount_nbdfs "$T/mnt"
check_flush_after_writes "$before" "unmount"
wait_disc "$d0" "$conns" "unmount"
server_copy "$URI" "$T/server2.img"
[ "$(range_sha "$T/server2.img" $((9 * MiB + 1)) $((MiB + 1)))" = "$(sha "$T/c")" ] || fail "unmount: data not on the server"

# ---- SIGINT in the foreground ----
mount_nbdfs "$URI" "$T/mnt"
[ "$(range_sha "$F" $((20 * MiB + 7)) 12345)" = "$(sha "$T/b")" ] || fail "remount: data differs"
d0=$(count_disc)
kill -INT "$NBDFS_PID"
wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "nbdfs did not exit after SIGINT"
rc=0
wait "$NBDFS_PID" || rc=$?
[ "$rc" = 0 ] || fail "exit status $rc after SIGINT, expected 0: $(cat "$T/nbdfs.log")"
wait_until 10 eval '! is_mounted "$T/mnt"' || fail "still mounted after SIGINT"
wait_disc "$d0" "$conns" "SIGINT"
echo ok
