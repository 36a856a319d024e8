#!/bin/bash
# The mountpoint is resolved once and held, and relative paths keep working
# after nbdfs detaches (it changes to /).
#  - a directory swapped for a symlink during a slow handshake: refused,
#    nothing mounted at the symlink's target
#  - DIR/NAME whose DIR gains a file during the handshake: refused
#  - an existing non-empty directory is refused like DIR/NAME's directory,
#    with the same message; --nonempty mounts over it anyway
#  - --exports with a relative socket= (daemon mode): files open and read
#  - a relative pid file in daemon mode
#  - a mount left dead by a killed daemon (ENOTCONN) is cleared by the next
#    start on the same mountpoint (systemd Restart=on-failure)
. "$(dirname "$0")/lib.sh"

MiB=1048576
cd "$T"

# A server that takes 2 s before answering: connecting waits for it.
slow=(sh -c 'sleep 2; exec nbdkit memory 1M')

# ---- the directory is replaced by a symlink while connecting ----
mkdir "$T/m" "$T/elsewhere"
_mounts+=("$T/m" "$T/elsewhere")
"$NBDFS" -f [ "${slow[@]}" ] "$T/m" >"$T/swap.log" 2>&1 &
pid=$!
track_pid "$pid"
sleep 0.5
mv "$T/m" "$T/m.orig"
ln -s "$T/elsewhere" "$T/m"
wait "$pid" && fail "mounted although the mountpoint was replaced: $(cat "$T/swap.log")"
grep -q 'replaced while connecting' "$T/swap.log" || fail "swap: $(cat "$T/swap.log")"
is_mounted "$T/elsewhere" && fail "mounted on the symlink's target"
is_mounted "$T/m.orig" && fail "mounted on the moved directory"
rm "$T/m"
mv "$T/m.orig" "$T/m"
note "swapped mountpoint refused"

# ---- DIR/NAME: DIR gains a file while connecting ----
mkdir "$T/n"
_mounts+=("$T/n")
"$NBDFS" -f [ "${slow[@]}" ] "$T/n/img" >"$T/fill.log" 2>&1 &
pid=$!
track_pid "$pid"
sleep 0.5
echo precious >"$T/n/file"
wait "$pid" && fail "DIR/NAME hid a directory that became non-empty: $(cat "$T/fill.log")"
grep -q 'is not empty' "$T/fill.log" || fail "DIR/NAME refill: $(cat "$T/fill.log")"
[ "$(cat "$T/n/file")" = precious ] || fail "the file in DIR is hidden"
note "DIR/NAME re-checked after the handshake"

# ---- a non-empty directory: refused in every form, --nonempty allows ----
serve_nbdkit mem memory $((4 * MiB))
out=$("$NBDFS" -f "$(unix_uri "$SOCK")" "$T/n" 2>&1) && fail "mounted over a non-empty directory"
[ "$(printf '%s\n' "$out" | grep -c .)" = 1 ] || fail "non-empty: not one line: $out"
printf '%s' "$out" | grep -q "$T/n is not empty" || fail "non-empty directory: $out"
out=$("$NBDFS" -f "$(unix_uri "$SOCK")" "$T/n/img" 2>&1) && fail "DIR/NAME over a non-empty DIR"
printf '%s' "$out" | grep -q "$T/n is not empty" || fail "non-empty DIR/NAME: $out"
out=$("$NBDFS" -f --exports "$(unix_uri "$SOCK")" "$T/n" 2>&1) && fail "--exports over a non-empty directory"
printf '%s' "$out" | grep -q "$T/n is not empty" || fail "non-empty --exports: $out"
mount_nbdfs "$(unix_uri "$SOCK")" "$T/n" --nonempty
[ -f "$T/n/disk" ] || fail "--nonempty: $(ls "$T/n")"
[ -e "$T/n/file" ] && fail "--nonempty: the directory's own file is visible"
unmount_nbdfs "$T/n"
[ "$(cat "$T/n/file")" = precious ] || fail "the file is gone after unmount"
note "non-empty directories"

# ---- relative socket= and pid file, detached ----
serve_nbdkit srv --filter=exportname memory $((4 * MiB)) exportname=one exportname=two \
  exportname-list=explicit
mkdir "$T/d"
_mounts+=("$T/d")
"$NBDFS" -P rel.pid --exports "nbd+unix:///?socket=srv.sock" "$T/d" >"$T/rel.log" 2>&1 ||
  fail "--exports with a relative socket: $(cat "$T/rel.log")"
[ -s "$T/rel.pid" ] || fail "relative pid file not written in $T"
track_pid "$(cat "$T/rel.pid")"
wait_until 10 test -f "$T/d/two" || fail "no export two: $(ls -la "$T/d")"
head -c 65536 /dev/urandom >"$T/data"
dd if="$T/data" of="$T/d/two" bs=64k conv=notrunc,fsync status=none ||
  fail "writing an export through a relative socket failed"
[ "$(server_sha "$(unix_uri "$T/srv.sock" two)" 65536)" = "$(sha "$T/data")" ] ||
  fail "the data did not reach export two"
dpid=$(cat "$T/rel.pid")
fusermount3 -u "$T/d"
wait_until 20 eval '! pid_alive "$dpid"' || fail "daemon did not exit"
[ -e "$T/rel.pid" ] && fail "relative pid file not removed at exit"
note "relative socket= and pid file"

# ---- a dead mount (daemon killed) is cleared by the next start ----
for form in dir named; do
  mkdir -p "$T/dead"
  mp=$T/dead
  [ "$form" = named ] && mp=$T/dead/img
  _mounts+=("$T/dead")
  "$NBDFS" -P "$T/dead.pid" [ nbdkit memory 1M ] "$mp" >"$T/dead.log" 2>&1 ||
    fail "$form: first mount failed: $(cat "$T/dead.log")"
  dpid=$(cat "$T/dead.pid")
  track_pid "$dpid"
  kill -9 "$dpid"
  wait_until 10 eval '! pid_alive "$dpid"' || fail "$form: daemon survived kill -9"
  stat "$mp" >/dev/null 2>&1 && fail "$form: the mount is not dead after kill -9"
  "$NBDFS" -P "$T/dead.pid" [ nbdkit memory 1M ] "$mp" >"$T/dead.log" 2>&1 ||
    fail "$form: a start over the dead mount failed: $(cat "$T/dead.log")"
  track_pid "$(cat "$T/dead.pid")"
  grep -q 'cleared the dead FUSE mount' "$T/dead.log" || fail "$form: no message about the dead mount: $(cat "$T/dead.log")"
  [ "$(grep -c " $T/dead fuse" /proc/mounts)" = 1 ] || fail "$form: mounts: $(grep "$T/dead" /proc/mounts)"
  [ -f "$T/dead/$([ "$form" = named ] && echo img || echo disk)" ] || fail "$form: no file after the restart: $(ls "$T/dead")"
  dpid=$(cat "$T/dead.pid")
  fusermount3 -u "$T/dead"
  wait_until 20 eval '! pid_alive "$dpid"' || fail "$form: daemon did not exit"
done
note "dead mounts cleared at start"
