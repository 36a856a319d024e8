#!/bin/bash
# The systemd readiness protocol (NOTIFY_SOCKET) and --log-file, with
# tests/notify-listener.py standing in for systemd (it notes, as each
# message arrives, its sender and, for READY=1, whether the file exists).
#  - foreground (-f), NOTIFY_SOCKET a path: READY=1 arrives exactly once,
#    when the file is already there, with MAINPID = nbdfs's pid (and sent
#    by nbdfs);
#  - nbdkit killed and restarted on the same socket: STATUS= lines report
#    the loss, then the connection back;
#  - unmount: STOPPING=1 arrives, once, after everything else, before
#    nbdfs exits (0);
#  - daemon mode (no -f) with -P, -v, a relative --log-file and an
#    abstract NOTIFY_SOCKET: READY=1 names the daemon (the pid file's pid)
#    and comes from it, the starting process exits (0) by then or soon
#    after; the log file is relative to the caller's directory, has the
#    "mounted" line, and every line is "YYYY-MM-DDTHH:MM:SS.mmmZ
#    nbdfs[PID]: ..."; nothing of it on stderr;
#  - a --log-file that cannot be opened: the start fails (non-zero), the
#    error names the file, nothing stays mounted.
. "$(dirname "$0")/lib.sh"

LISTENER=$(cd "$(dirname "$0")/.." && pwd)/notify-listener.py
# What the STATUS= lines say when the server is lost and when it is back.
LOST_MSG='STATUS=.*(lost|disconnected|reconnecting|unreachable)'
UP_MSG='STATUS=(.*[^a-z])?(re)?connected'
NOT_UP='not connected|lost|disconnected|reconnecting|unreachable'

# listen NAME ADDRESS WATCH: a listener on ADDRESS (a path or @name), its
# messages in $T/NAME.msgs (MSGS), READY=1 checked against WATCH.
listen() {
  local name=$1
  MSGS=$T/$name.msgs
  : >"$MSGS"
  python3 "$LISTENER" --socket "$2" --out "$MSGS" --watch "$3" --pidfile "$T/$name.lpid" \
    </dev/null >>"$T/$name.llog" 2>&1 &
  track_pid $!
  wait_until 10 test -s "$T/$name.lpid" || fail "listener $name did not start: $(cat "$T/$name.llog")"
}

# msg_lines REGEX: the numbered lines of $MSGS whose message matches REGEX.
msg_lines() { grep -nE -- "msg=.*($1)" "$MSGS" || true; }
msg_count() { msg_lines "$1" | wc -l; }
first_line() { msg_lines "$1" | head -n 1 | cut -d: -f1; }
msgs() { sed 's/^/    /' "$MSGS"; }

# check_ready PID WHAT: the one READY=1 so far names PID, came from it, and
# the file existed when it arrived.
check_ready() {
  local pid=$1 what=$2 r
  wait_until 30 eval '[ "$(msg_count "READY=1")" -ge 1 ]' || fail "$what: no READY=1 within 30 s: $(msgs)"
  r=$(msg_lines "READY=1")
  [ "$(msg_count "READY=1")" = 1 ] || fail "$what: READY=1 more than once: $(msgs)"
  grep -q "msg=.*MAINPID=$pid\(|\|$\)" <<<"$r" || fail "$what: READY=1 without MAINPID=$pid: $r"
  grep -q "^[0-9]*:sender=$pid " <<<"$r" || fail "$what: READY=1 not sent by $pid: $r"
  grep -q " file=yes " <<<"$r" || fail "$what: READY=1 arrived before the file existed: $r"
  note "$what: $r"
}

truncate -s 16M "$T/disk.img"
serve_nbdkit srv file "$T/disk.img"
URI=$(unix_uri "$SOCK")

# ---- foreground, a path, a server restart, unmount ----
mkdir "$T/mnt"
listen fg "$T/fg.sock" "$T/mnt/disk"
export NOTIFY_SOCKET=$T/fg.sock
mount_nbdfs "$URI" "$T/mnt" -v
unset NOTIFY_SOCKET
check_ready "$NBDFS_PID" foreground

kill -9 "$SERVER_PID"
wait_until 10 eval '! pid_alive "$SERVER_PID"' || fail "nbdkit survived kill -9"
wait_until 30 eval '[ "$(msg_count "$LOST_MSG")" -ge 1 ]' ||
  fail "no STATUS= line about the lost server within 30 s: $(msgs)"
lost_at=$(first_line "$LOST_MSG")
note "$(sed -n "${lost_at}p" "$MSGS")"
rm -f "$SOCK"
serve_nbdkit srv file "$T/disk.img"
# A read makes sure something wants the connection back.
timeout 60 dd if="$T/mnt/disk" of=/dev/null bs=64k count=1 iflag=direct status=none ||
  fail "a read after the server restart failed: $(tail -n 5 "$T/nbdfs.log")"
# up_lines: the STATUS= lines saying connected after the first loss.
up_lines() { msg_lines "$UP_MSG" | grep -viE "$NOT_UP" | awk -F: -v l="$lost_at" '$1 > l'; }
wait_until 30 eval '[ -n "$(up_lines)" ]' || fail "no STATUS= line saying connected after the loss: $(msgs)"
note "$(up_lines | tail -n 1)"

n_before=$(wc -l <"$MSGS")
unmount_nbdfs "$T/mnt"
# A datagram sent before the exit is queued by now: give the listener a moment to log it.
wait_until 5 eval '[ "$(msg_count "STOPPING=1")" -ge 1 ]' || fail "no STOPPING=1: $(msgs)"
[ "$(msg_count "STOPPING=1")" = 1 ] || fail "STOPPING=1 more than once: $(msgs)"
stop_at=$(first_line "STOPPING=1")
[ "$stop_at" -gt "$n_before" ] || fail "STOPPING=1 before the unmount: $(msgs)"
[ "$stop_at" = "$(wc -l <"$MSGS")" ] || fail "messages after STOPPING=1: $(msgs)"
[ "$(msg_count "READY=1")" = 1 ] || fail "READY=1 more than once: $(msgs)"
grep -q "^sender=$NBDFS_PID alive=1 .*msg=STOPPING=1" "$MSGS" ||
  note "STOPPING=1 was read only after nbdfs had exited (a slow listener?): $(sed -n "${stop_at}p" "$MSGS")"

# ---- daemon mode, an abstract socket, a relative --log-file ----
mkdir "$T/mnt2" "$T/cwd"
listen d "@nbdfs-t-notify-$$" "$T/mnt2/disk"
_mounts+=("$T/mnt2")
(cd "$T/cwd" && NOTIFY_SOCKET="@nbdfs-t-notify-$$" exec "$NBDFS" -P "$T/d.pid" -v --log-file nbdfs.log \
  "$URI" "$T/mnt2" >"$T/d.out" 2>&1) &
starter=$!
track_pid "$starter"
wait_until 30 test -s "$T/d.pid" || fail "no pid file: $(cat "$T/d.out")"
NBDFS_PID=$(cat "$T/d.pid")
track_pid "$NBDFS_PID"
[ "$NBDFS_PID" != "$starter" ] || fail "the pid file names the starting process: not daemonized"
check_ready "$NBDFS_PID" daemon
wait_until 5 eval '! pid_alive "$starter"' || fail "the starting process $starter still runs 5 s after READY=1"
rc=0
wait "$starter" || rc=$?
[ "$rc" = 0 ] || fail "the starting process exited with status $rc: $(cat "$T/d.out")"

LOG=$T/cwd/nbdfs.log
[ -f "$LOG" ] || fail "no log file in the caller's directory: $(ls -la "$T/cwd"; cat "$T/d.out")"
[ ! -e /nbdfs.log ] || note "a /nbdfs.log exists (left by an older run?)"
wait_until 5 grep -q 'mounted' "$LOG" || fail "no 'mounted' line in the log file: $(cat "$LOG")"
TS='[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z nbdfs\[[0-9]+\]: '
bad=$(grep -vE "^$TS" "$LOG" || true)
[ -z "$bad" ] || fail "log lines not in the timestamp format: $bad"
grep -qE "^${TS%%nbdfs*}nbdfs\[$NBDFS_PID\]: .*mounted" "$LOG" ||
  fail "the 'mounted' line does not carry the daemon's pid $NBDFS_PID: $(cat "$LOG")"
note "$(grep -m1 mounted "$LOG")"
! grep -q 'mounted' "$T/d.out" || fail "log lines on stderr too: $(cat "$T/d.out")"

unmount_nbdfs_daemon "$T/mnt2"
wait_until 5 eval '[ "$(msg_count "STOPPING=1")" -ge 1 ]' || fail "daemon: no STOPPING=1: $(msgs)"
[ "$(msg_count "READY=1")" = 1 ] || fail "daemon: READY=1 more than once: $(msgs)"

# ---- a log file that cannot be opened: the caller hears why ----
_mounts+=("$T/mnt2")
rc=0
"$NBDFS" -P "$T/d2.pid" --log-file "$T/no/such/dir/nbdfs.log" "$URI" "$T/mnt2" >"$T/d2.out" 2>&1 || rc=$?
[ -f "$T/d2.pid" ] && track_pid "$(cat "$T/d2.pid")"
[ "$rc" != 0 ] || fail "nbdfs started with a log file it cannot open"
grep -q "no/such/dir/nbdfs.log" "$T/d2.out" || fail "the error does not name the log file: $(cat "$T/d2.out")"
! is_mounted "$T/mnt2" || fail "mounted although the log file cannot be opened"
note "$(head -n 1 "$T/d2.out")"
echo ok
