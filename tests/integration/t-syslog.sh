#!/bin/bash
# Detached without --log-file, nbdfs logs to syslog with the ident "nbdfs"
# (which the journal picks up): a listener on /dev/log receives the
# "mounted" line, tagged nbdfs[PID] with the daemon's pid, and a line the
# server nbdfs started wrote to its stderr.  In the foreground the same
# lines go to stderr and nothing to syslog.
# Needs /dev/log to be free (CI containers have no syslog daemon); skipped
# where a real one listens there.
. "$(dirname "$0")/lib.sh"

if [ -e /dev/log ]; then
  note "skipped: /dev/log exists (a syslog daemon runs here)"
  exit 0
fi
cat >"$T/syslog.py" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/dev/log")
open(sys.argv[1] + ".ready", "w").close()
with open(sys.argv[1], "a", buffering=1) as out:
    while True:
        out.write(s.recv(65536).decode(errors="replace").rstrip("\n") + "\n")
PY
python3 "$T/syslog.py" "$T/syslog.txt" &
track_pid $!
trap 'rm -f /dev/log; cleanup' EXIT
wait_for_file "$T/syslog.txt.ready"

serve_nbdkit mem memory 1048576
mkdir "$T/m"
_mounts+=("$T/m")
# The server's stderr: a shell that says something, then is nbdkit.
"$NBDFS" -v -P "$T/d.pid" [ sh -c 'echo hello-from-the-server >&2; exec nbdkit memory 1M' ] \
  "$T/m" >"$T/stderr.txt" 2>&1 || fail "daemon mount failed: $(cat "$T/stderr.txt")"
dpid=$(cat "$T/d.pid")
track_pid "$dpid"
cat /dev/null >"$T/m/disk"   # some I/O
fusermount3 -u "$T/m"
wait_until 20 eval '! pid_alive "$dpid"' || fail "daemon did not exit"
wait_until 10 grep -q "nbdfs\[$dpid\]: mounted" "$T/syslog.txt" ||
  fail "no 'mounted' line from nbdfs[$dpid] in syslog: $(cat "$T/syslog.txt")"
grep -q "nbdfs\[$dpid\]: .*exited with status 0" "$T/syslog.txt" ||
  fail "the server's exit at unmount is not in syslog: $(cat "$T/syslog.txt")"
# Before detaching, lines go to the caller's stderr (so start-up errors are seen).
grep -q 'hello-from-the-server' "$T/stderr.txt" "$T/syslog.txt" ||
  fail "the server's stderr line was logged nowhere"
grep -q 'mounted' "$T/stderr.txt" && fail "the 'mounted' line went to stderr, not syslog"
note "daemon: syslog"

: >"$T/syslog.txt"
mount_nbdfs "$(unix_uri "$SOCK")" "$T/m" -v
unmount_nbdfs "$T/m"
grep -q 'mounted' "$T/nbdfs.log" || fail "foreground: no 'mounted' line on stderr: $(cat "$T/nbdfs.log")"
[ -s "$T/syslog.txt" ] && fail "foreground: lines went to syslog: $(cat "$T/syslog.txt")"
note "foreground: stderr"
