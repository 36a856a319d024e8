#!/bin/bash
# A server that stops answering (SIGSTOP), and a server that comes back as
# a different export.  nbdkit memory 64M; nbdfs -C 1 --timeout 2
# --reconnect-delay 4 (one connection, so that healing needs a new one).
# Every read is a 64 KiB O_DIRECT dd.  nbdkit runs with -t 1: after SIGCONT
# it answers on connections nbdfs has given up, and nbdkit 1.32 with several
# threads per connection can abort (assertion `sock >= 0') doing that.
#   1. With nbdkit stopped, a read ends with EIO within 4 + 2 + 10 s: the
#      silent connection is dropped after --timeout, its replacement cannot
#      be negotiated, and the request gives up after --reconnect-delay.  It
#      never hangs (timeout 30 around it must not fire).
#   2. SIGCONT: the mount heals by itself: within 15 s reads give what was
#      written before the stop, and a new write (fsynced) reads back and is
#      on the server (nbdcopy); the log says 'lost' and 'reconnected'.
#   3. The server is replaced by one with a different size: once nbdfs has
#      logged a refusal ('refus', other than "Connection refused"), reads
#      fail with EIO.
#   4. The same with a read-only export of the right size (nbdkit -r).
#   Unmount works (nbdfs exits, not by a signal).
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((64 * MiB))

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# expect_read_eio LABEL OFFSET MAX_MS: a read of $F at OFFSET fails with EIO
# within MAX_MS milliseconds (and does not hang).
expect_read_eio() {
  local t0 rc=0 ms
  t0=$(now_ms)
  timeout 30 dd if="$F" of=/dev/null bs=64k count=1 skip="$2" iflag=direct,skip_bytes status=none \
    2>"$T/read.err" || rc=$?
  ms=$(($(now_ms) - t0))
  [ "$rc" != 124 ] || fail "$1: the read hung (killed by timeout 30)"
  [ "$rc" != 0 ] || fail "$1: the read succeeded"
  grep -qi 'input/output error' "$T/read.err" || fail "$1: '$(cat "$T/read.err")', expected EIO"
  [ "$ms" -lt "$3" ] || fail "$1: the read took $ms ms to fail, expected less than $3 ms"
  note "$1: EIO after $ms ms"
}

# drange_sha OFFSET LENGTH: sha256 of LENGTH bytes of $F at OFFSET, read
# with O_DIRECT (never from the page cache); errors in $T/heal.err.
drange_sha() {
  dd if="$F" bs=1M skip="$1" count="$2" iflag=direct,skip_bytes,count_bytes status=none 2>"$T/heal.err" |
    sha256sum | cut -d' ' -f1
}

# healed: a read of the data written before the stop gives it back, and a
# new write at 8 MiB reads back.
healed() {
  [ "$(drange_sha 0 $((4 * MiB)))" = "$(sha "$T/before")" ] || return 1
  write_at "$F" $((8 * MiB)) "$T/after" oflag=direct 2>"$T/heal.err" || return 1
  [ "$(drange_sha $((8 * MiB)) $((1 * MiB)))" = "$(sha "$T/after")" ]
}

# refusals MARK: the number of lines logged since MARK that say nbdfs
# refused something ('refus'), not counting "Connection refused" (a
# connect(2) to a socket nobody listens on yet).
refusals() { log_since "$LOG" "$1" | grep -i refus | grep -vic 'connection refused'; }

# replace_server LABEL ARGS...: kill -9 the server, start nbdkit ARGS on the
# same socket.
replace_server() {
  local label=$1; shift
  kill -9 "$SERVER_PID"
  wait_until 10 eval '! pid_alive "$SERVER_PID"' || fail "$label: nbdkit did not exit"
  rm -f "$T/mem.sock"
  serve_nbdkit mem "$@"
}

serve_nbdkit mem -t 1 memory "$SIZE"
URI=$(unix_uri "$SOCK")
mkdir "$T/mnt"
F=$T/mnt/disk
LOG=$T/nbdfs.log
mount_nbdfs "$URI" "$T/mnt" -v -C 1 --timeout 2 --reconnect-delay 4
rand_file "$T/before" $((4 * MiB))
rand_file "$T/after" $((1 * MiB))
write_at "$F" 0 "$T/before" oflag=direct || fail "writing before the stop failed"
sync "$F" || fail "fsync before the stop failed"

# ---- 1. stopped server ----
kill -STOP "$SERVER_PID"
expect_read_eio "read from a stopped server" $((16 * MiB)) 16000
grep -qi 'lost' "$LOG" || fail "no 'lost' line in the log: $(cat "$LOG")"
note "$(grep -i -m1 'lost' "$LOG")"

# ---- 2. it answers again ----
kill -CONT "$SERVER_PID"
wait_until 15 healed || fail "the mount did not heal within 15 s of SIGCONT: $(cat "$T/heal.err"): $(tail -n 5 "$LOG")"
sync "$F" || fail "fsync after healing failed"
server_copy "$URI" "$T/server.img"
[ "$(range_sha "$T/server.img" 0 $((4 * MiB)))" = "$(sha "$T/before")" ] || fail "the server lost the data written before the stop"
[ "$(range_sha "$T/server.img" $((8 * MiB)) $((1 * MiB)))" = "$(sha "$T/after")" ] ||
  fail "the write after healing is not on the server"
grep -qi 'reconnected' "$LOG" || fail "no 'reconnected' line in the log: $(cat "$LOG")"
note "$(grep -i -m1 'reconnected' "$LOG")"
pid_alive "$SERVER_PID" || fail "nbdkit died after SIGCONT: $(tail -n 5 "$T/mem.log")"

# ---- 3. another size ----
m=$(log_mark "$LOG")
replace_server "size" -t 1 memory $((2 * SIZE))
wait_until 20 eval '[ "$(refusals "$m")" -gt 0 ]' ||
  fail "an export of another size: no refusal logged within 20 s: $(log_since "$LOG" "$m")"
note "$(log_since "$LOG" "$m" | grep -i refus | grep -vi -m1 'connection refused')"
expect_read_eio "read with an export of another size" $((1 * MiB)) 16000
expect_read_eio "second read with an export of another size" $((2 * MiB)) 16000

# ---- 4. read-only ----
m=$(log_mark "$LOG")
replace_server "read-only" -t 1 -r memory "$SIZE"
wait_until 20 eval '[ "$(refusals "$m")" -gt 0 ]' ||
  fail "a read-only export: no refusal logged within 20 s: $(log_since "$LOG" "$m")"
note "$(log_since "$LOG" "$m" | grep -i refus | grep -vi -m1 'connection refused')"
expect_read_eio "read with a read-only export" $((1 * MiB)) 16000

fusermount3 -u "$T/mnt" || fail "fusermount3 -u failed"
wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "nbdfs did not exit within 30 s of unmount"
rc=0
wait "$NBDFS_PID" || rc=$?
[ "$rc" -lt 128 ] || fail "nbdfs died from signal $((rc - 128))"
echo ok
