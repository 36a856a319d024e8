#!/bin/bash
# Directory mode (--exports) rides out a server restart like a single
# export: an open file keeps working across kill -9 + restart of nbdkit
# (exportname filter over the file plugin, so the data persists), no
# remount, no error seen by the reader or the writer; what was written
# through the mount is in the server's file afterwards.
. "$(dirname "$0")/lib.sh"

MiB=1048576
truncate -s $((16 * MiB)) "$T/disk.img"
start() {
  rm -f "$T/srv.sock"
  serve_nbdkit srv --filter=exportname file "$T/disk.img" exportname=one exportname=two \
    exportname-list=explicit
}
start
mkdir "$T/mnt"
mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" --exports -v --reconnect-delay 20
ls "$T/mnt" | grep -qx one || fail "export 'one' is not listed: $(ls "$T/mnt")"
rand_file "$T/a" $((4 * MiB))
rand_file "$T/b" $((4 * MiB))

# One process keeps the file open across the restart: writes a, then (told
# to) writes b, fsyncs and closes.
python3 - "$T/mnt/one" "$T/a" "$T/b" "$T/w" <<'PYEOF' &
import os, sys, time
path, a, b, st = sys.argv[1:5]
out = open(st, "a", buffering=1)
fd = os.open(path, os.O_RDWR)
try:
    os.pwrite(fd, open(a, "rb").read(), 0)
    out.write("wrote a\n")
    while not os.path.exists(st + ".go"):
        time.sleep(0.05)
    os.pwrite(fd, open(b, "rb").read(), 4 << 20)
    os.fsync(fd)
    os.close(fd)
    out.write("done\n")
except OSError as e:
    out.write("error %s\n" % e)
PYEOF
wpid=$!
track_pid "$wpid"
wait_until 20 grep -qs 'wrote a' "$T/w" || fail "first write: $(cat "$T/w" 2>&1)"
kill -9 "$SERVER_PID"
sleep 1
start
touch "$T/w.go"
wait_until 30 grep -qs 'done\|error' "$T/w" || fail "the writer hangs: $(cat "$T/w")"
grep -q done "$T/w" || fail "the writer saw an error across the restart: $(cat "$T/w")"
wait "$wpid" || true
grep -qi 'reconnected' "$T/nbdfs.log" || fail "no 'reconnected' line: $(cat "$T/nbdfs.log")"
[ "$(range_sha "$T/mnt/one" 0 $((4 * MiB)))" = "$(sha "$T/a")" ] || fail "a does not read back"
[ "$(range_sha "$T/disk.img" $((4 * MiB)) $((4 * MiB)))" = "$(sha "$T/b")" ] ||
  fail "b is not in the server's file after fsync"
[ "$(range_sha "$T/disk.img" 0 $((4 * MiB)))" = "$(sha "$T/a")" ] || fail "a is not in the server's file"
unmount_nbdfs "$T/mnt"
echo ok
