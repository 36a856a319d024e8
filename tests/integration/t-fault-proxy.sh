#!/bin/bash
# The fault-injecting proxy (tests/nbd-fault-proxy.py) that the t-reconnect-*
# tests put between nbdfs and the server, checked on its own with nbdkit and
# libnbd's tools (no nbdfs):
#   1. a fresh proxy: count "live=0 total=0", list empty;
#   2. data passes both ways untouched: nbdcopy writes 64 MiB through it,
#      nbdcopy reads it back directly and through it; nbdinfo sees the size;
#   3. count counts: each client is numbered, total grows by the number of
#      connections, live returns to 0 once they close; every accepted
#      connection has an "accepted" and a "closed" log line;
#   4. list shows a held connection (a raw client that read nbdkit's 18-byte
#      greeting) with down=18 up=0 state=forwarding; drop ID ends it with
#      end-of-file at the client; reset ID ends another;
#   5. drop and reset of the connection of a running nbdcopy (through a
#      second proxy with --rate 16M) make nbdcopy fail (not hang);
#   6. stall ID freezes a running nbdcopy (no byte counted for 1 s,
#      state=stalled, nbdcopy still running), resume ID lets it finish with
#      the right data;
#   7. stall-new on: nbdinfo times out (timeout 3), the connection is listed
#      stalled with nothing forwarded and the target was never contacted;
#      stall-new off: nbdinfo works again;
#   8. drop-all ends every held connection;
#   9. refuse on: nbdinfo fails at once and nothing is counted; off: works;
#  10. bad commands answer "error: ..." and exit 1;
#  11. SIGTERM: exit 0, sockets and pid file removed; no traceback in the log.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((64 * MiB))
PROXY_PY=$(cd "$(dirname "$0")/.." && pwd)/nbd-fault-proxy.py

serve_nbdkit mem memory "$SIZE"
DIRECT=$(unix_uri "$SOCK")
start_proxy px "$SOCK"
P=$(unix_uri "$PROXY_SOCK")
PX_CTL=$PROXY_CTL PX_PID=$PROXY_PID PX_SOCK=$PROXY_SOCK

# ---- 1. fresh ----
[ "$(proxy count)" = "live=0 total=0" ] || fail "fresh proxy: count says '$(proxy count)'"
[ -z "$(proxy list)" ] || fail "fresh proxy: list says '$(proxy list)'"

# ---- 2. data ----
[ "$(nbdinfo --size "$P")" = "$SIZE" ] || fail "nbdinfo through the proxy: size '$(nbdinfo --size "$P")'"
rand_file "$T/a.img" "$SIZE"
nbdcopy -- "$T/a.img" "$P" || fail "nbdcopy could not write through the proxy"
server_copy "$DIRECT" "$T/b.img"
cmp -s "$T/a.img" "$T/b.img" || fail "what nbdcopy wrote through the proxy is not on the server"
server_copy "$P" "$T/c.img"
cmp -s "$T/a.img" "$T/c.img" || fail "reading through the proxy differs"

# ---- 3. counting ----
wait_until 10 eval '[ "$(proxy_live)" = 0 ]' || fail "connections left live: $(proxy list)"
t0=$(proxy_total)
[ "$t0" -ge 3 ] || fail "after nbdinfo and two nbdcopy runs total=$t0"
for i in 1 2 3; do nbdinfo --size "$P" >/dev/null || fail "nbdinfo $i through the proxy failed"; done
wait_until 10 eval '[ "$(proxy_live)" = 0 ]' || fail "nbdinfo connections left live: $(proxy list)"
[ "$(proxy_total)" = $((t0 + 3)) ] || fail "three nbdinfo runs: total $t0 -> $(proxy_total), expected +3"
for ((i = 1; i <= t0 + 3; i++)); do
  grep -q "proxy: $i accepted" "$T/px.log" || fail "no 'accepted' log line for connection $i: $(cat "$T/px.log")"
  grep -q "proxy: $i closed" "$T/px.log" || fail "no 'closed' log line for connection $i: $(cat "$T/px.log")"
done

# hold OUT: a raw client that connects to $PROXY_SOCK, reads the server's
# 18-byte greeting and writes "greeting HEX" to OUT, then waits for the
# next event and appends "eof", "reset" or "data".  Sets HOLD_PID.
hold() {
  rm -f "$1"
  python3 - "$PROXY_SOCK" "$1" <<'PYEOF' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
out = open(sys.argv[2], "a", buffering=1)
got = b""
while len(got) < 18:
    b = s.recv(18 - len(got))
    if not b:
        break
    got += b
out.write("greeting %s\n" % got.hex())
try:
    r = "eof" if not s.recv(1) else "data"
except ConnectionResetError:
    r = "reset"
out.write(r + "\n")
PYEOF
  HOLD_PID=$!
  track_pid "$HOLD_PID"
  wait_until 10 grep -qs "^greeting 4e42444d41474943" "$1" || fail "held client got no NBD greeting: $(cat "$1" 2>&1)"
}

# ---- 4. list, drop, reset ----
hold "$T/h1"
h1=$HOLD_PID
id1=$(proxy_total)
[ "$(proxy list)" = "$id1 up=0 down=18 state=forwarding" ] || fail "list with one held client: '$(proxy list)'"
[ "$(proxy count)" = "live=1 total=$id1" ] || fail "count with one held client: '$(proxy count)'"
hold "$T/h2"
id2=$(proxy_total)
[ "$id2" = $((id1 + 1)) ] || fail "the second held client is connection $id2, expected $((id1 + 1))"
[ "$(proxy_live)" = 2 ] || fail "two held clients: $(proxy list)"
[ "$(proxy drop "$id1")" = ok ] || fail "drop $id1 failed"
wait_until 10 eval '! pid_alive "$h1"' || fail "the dropped client did not see its connection end"
[ "$(sed -n 2p "$T/h1")" = eof ] || fail "dropped client: '$(sed -n 2p "$T/h1")', expected end of file"
[ "$(proxy list)" = "$id2 up=0 down=18 state=forwarding" ] || fail "after drop $id1: list '$(proxy list)'"
proxy reset "$id2" >/dev/null || fail "reset $id2 failed"
wait_until 10 eval '! pid_alive "$HOLD_PID"' || fail "the reset client did not see its connection end"
grep -Eq '^(eof|reset)$' <(sed -n 2p "$T/h2") || fail "reset client: '$(sed -n 2p "$T/h2")'"
[ "$(proxy_live)" = 0 ] || fail "after drop and reset: $(proxy list)"
if proxy drop "$id1" >"$T/err.out"; then fail "drop of a closed connection succeeded"; fi
grep -q '^error: ' "$T/err.out" || fail "drop of a closed connection: '$(cat "$T/err.out")'"

# ---- 5. drop / reset under a running nbdcopy ----
# A slow path: the proxy forwards at most 16 MiB/s (64 MiB take 4 s).  nbdkit
# runs one thread per connection (-t 1): nbdkit 1.32 with several can abort
# (assertion `sock >= 0') when a connection is cut while it sends replies.
serve_nbdkit slow -t 1 file "$T/a.img"
SLOW=$SOCK
start_proxy pxs "$SLOW" --rate 16M
PS=$(unix_uri "$PROXY_SOCK")

# busy_conn: the id of the live connection that has carried most bytes
# towards the client, once that is over 1 MiB.
busy_conn() {
  busy=$(proxy list | awk '{split($3, d, "="); if (d[2] + 0 > max) {max = d[2] + 0; id = $1}} END {if (max > 1048576) print id}')
  [ -n "$busy" ]
}

for how in drop reset; do
  nbdcopy --connections=1 -- "$PS" null: 2>"$T/copy-$how.err" &
  cpid=$!
  track_pid "$cpid"
  wait_until 20 busy_conn || fail "$how: nbdcopy made no progress through the proxy: $(proxy list)"
  pid_alive "$cpid" || fail "$how: nbdcopy finished before the $how"
  [ "$(proxy "$how" "$busy")" = ok ] || fail "$how $busy failed"
  rc=0
  wait_until 30 eval '! pid_alive "$cpid"' || fail "$how: nbdcopy still runs 30 s after its connection was cut"
  wait "$cpid" || rc=$?
  [ "$rc" != 0 ] || fail "$how: nbdcopy succeeded although its connection was cut"
  note "$how: nbdcopy exited $rc: $(head -n 1 "$T/copy-$how.err")"
done

# ---- 6. stall / resume ----
nbdcopy --connections=1 -- "$PS" "$T/d.img" 2>"$T/copy-stall.err" &
cpid=$!
track_pid "$cpid"
wait_until 20 busy_conn || fail "stall: nbdcopy made no progress through the proxy: $(proxy list)"
[ "$(proxy stall "$busy")" = ok ] || fail "stall $busy failed"
sleep 0.3
b1=$(proxy_bytes "$busy" down)
sleep 1
b2=$(proxy_bytes "$busy" down)
[ -n "$b1" ] && [ "$b1" = "$b2" ] || fail "stalled connection $busy still forwards: $b1 -> $b2 bytes"
grep -q "^$busy .* state=stalled$" <<<"$(proxy list)" || fail "list does not show $busy stalled: $(proxy list)"
pid_alive "$cpid" || fail "nbdcopy ended while its connection was stalled: $(cat "$T/copy-stall.err")"
[ "$(proxy resume "$busy")" = ok ] || fail "resume $busy failed"
wait_until 30 eval '! pid_alive "$cpid"' || fail "nbdcopy did not finish after resume"
wait "$cpid" || fail "nbdcopy failed after stall and resume: $(cat "$T/copy-stall.err")"
cmp -s "$T/a.img" "$T/d.img" || fail "data copied across a stall differs"

# ---- 7. stall-new ----
PROXY_CTL=$PX_CTL PROXY_SOCK=$PX_SOCK
wait_until 10 eval '[ "$(proxy_live)" = 0 ]' || fail "connections left live: $(proxy list)"
[ "$(proxy stall-new on)" = ok ] || fail "stall-new on failed"
rc=0
timeout 3 nbdinfo "$P" >/dev/null 2>&1 || rc=$?
[ "$rc" = 124 ] || fail "with stall-new on, nbdinfo exited $rc instead of hanging (timeout 3)"
sid=$(proxy_total)
[ "$(proxy list)" = "$sid up=0 down=0 state=stalled" ] || fail "stall-new: list '$(proxy list)'"
if grep -q "proxy: $sid connected to the target" "$T/px.log"; then fail "stall-new: the target was contacted"; fi
[ "$(proxy stall-new off)" = ok ] || fail "stall-new off failed"
[ "$(nbdinfo --size "$P")" = "$SIZE" ] || fail "nbdinfo after stall-new off failed"
[ "$(proxy drop "$sid")" = ok ] || fail "drop of the stalled connection $sid failed"

# ---- 8. drop-all ----
hold "$T/h3"
h3=$HOLD_PID
hold "$T/h4"
[ "$(proxy_live)" = 2 ] || fail "two held clients: $(proxy list)"
[ "$(proxy drop-all)" = ok ] || fail "drop-all failed"
wait_until 10 eval '! pid_alive "$h3" && ! pid_alive "$HOLD_PID"' || fail "drop-all: held clients still connected"
[ "$(sed -n 2p "$T/h3")/$(sed -n 2p "$T/h4")" = eof/eof ] || fail "drop-all: clients saw '$(cat "$T/h3" "$T/h4")'"
[ "$(proxy_live)" = 0 ] || fail "after drop-all: $(proxy list)"

# ---- 9. refuse ----
t1=$(proxy_total)
[ "$(proxy refuse on)" = ok ] || fail "refuse on failed"
rc=0
timeout 10 nbdinfo --size "$P" >/dev/null 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "refuse on: nbdinfo succeeded"
[ "$rc" != 124 ] || fail "refuse on: nbdinfo hung"
[ "$(proxy_total)" = "$t1" ] || fail "refused client was counted: total $t1 -> $(proxy_total)"
grep -q 'refused a client' "$T/px.log" || fail "refusal not logged"
[ "$(proxy refuse off)" = ok ] || fail "refuse off failed"
[ "$(nbdinfo --size "$P")" = "$SIZE" ] || fail "nbdinfo after refuse off failed"

# ---- 10. bad commands ----
for cmd in "frobnicate" "drop" "drop x" "drop 99999" "stall 99999" "resume 99999" "stall-new maybe" \
  "refuse" "drop-all now"; do
  out=$(proxy "$cmd") && fail "'$cmd' succeeded: $out"
  case $out in "error: "*) ;; *) fail "'$cmd' answered '$out'" ;; esac
done
if python3 "$PROXY_PY" --control "$T/nonexistent.ctl" --send count 2>/dev/null; then
  fail "--send to a missing control socket succeeded"
fi

pid_alive "$SERVER_PID" || fail "nbdkit (slow) died: $(tail -n 5 "$T/slow.log")"

# ---- 11. SIGTERM ----
hold "$T/h5"      # a live connection at exit
for pair in "$PX_PID:px" "$PROXY_PID:pxs"; do
  pid=${pair%%:*} name=${pair#*:}
  kill -TERM "$pid"
  wait_until 10 eval '! pid_alive "$pid"' || fail "proxy $name did not exit on SIGTERM"
  rc=0
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || fail "proxy $name exited $rc on SIGTERM: $(tail -n 5 "$T/$name.log")"
  [ ! -e "$T/$name.sock" ] && [ ! -e "$T/$name.ctl" ] && [ ! -e "$T/$name.pid" ] ||
    fail "proxy $name left its sockets or pid file: $(ls "$T")"
  if grep -Eqi 'traceback|internal error|exception' "$T/$name.log"; then fail "proxy $name logged trouble: $(cat "$T/$name.log")"; fi
done
wait_until 10 grep -qs "^eof$" "$T/h5" || fail "the client held at SIGTERM was not disconnected: $(cat "$T/h5")"
echo ok
