#!/bin/bash
# --exports with 200 exports (nbdkit's file plugin serving a directory of
# 200 files of different sizes, behind the log filter, which logs one
# "Preconnect" per accepted socket and one "Connect export=NAME" per
# NBD_OPT_INFO or NBD_OPT_GO).
#  - ls -l shows the 200 files with their sizes;
#  - listing does not connect per export: every listing (at mount, and the
#    refresh when the directory is read again) uses exactly one connection
#    (one Preconnect per ListExports), and no data is read;
#  - opening one file connects to that export only (all new "Connect"
#    lines name it), reads its content, and its connections are closed
#    some time after the last close (polled, no exact timing);
#  - a file opened again after its pool was closed connects again;
#  - several opens of one file share one pool: 10 concurrent first opens
#    make one pool (at most -C 4 connections, all to that export), and a
#    third open of a file held open twice makes no new connection;
#  - 20 files held open at once (20 pools) all open and read, and 20
#    files opened and read in parallel all read their content.
. "$(dirname "$0")/lib.sh"

N=200
mkdir "$T/files" "$T/mnt"
M=$T/mnt
size_of() { echo $((10#$1 * 4096 + 10#$1)); }
for i in $(seq -w 1 $N); do
  truncate -s "$(size_of "$i")" "$T/files/e$i"
  printf 'this is export e%s\n' "$i" | dd of="$T/files/e$i" conv=notrunc status=none
done

LOG=$T/server-io.log
serve_nbdkit many --filter=log file dir="$T/files" logfile="$LOG"
sockets() { grep -c ' Preconnect id=' "$LOG" || true; }
listings() { grep -c ' ListExports id=' "$LOG" || true; }

mount_nbdfs "$(unix_uri "$SOCK")" "$M" --exports -v
[ "$(listings)" -ge 1 ] || fail "no NBD_OPT_LIST at mount"

# ls -l: 200 regular files with the backing files' sizes.
ls -l "$M" >"$T/ls.txt" || fail "ls -l failed"
[ "$(grep -c '^-' "$T/ls.txt")" = $N ] || fail "ls -l shows $(grep -c '^-' "$T/ls.txt") files, expected $N"
awk '/^-/ {print $9, $5}' "$T/ls.txt" | sort >"$T/got.txt"
for i in $(seq -w 1 $N); do echo "e$i $(size_of "$i")"; done | sort >"$T/want.txt"
diff "$T/want.txt" "$T/got.txt" >"$T/diff.txt" || fail "ls -l names/sizes differ: $(head -20 "$T/diff.txt")"

# Read the directory again until it has been listed anew (at most once a
# second), then check every listing used exactly one connection.
before=$(listings)
wait_until 15 eval '[ "$(ls "$M" | wc -l)" = $N ] && [ "$(listings)" -gt "$before" ]' ||
  fail "reading the directory again did not list the exports again"
ls -l "$M" >"$T/ls2.txt"
[ "$(grep -c '^-' "$T/ls2.txt")" = $N ] || fail "second ls -l shows $(grep -c '^-' "$T/ls2.txt") files"
[ "$(sockets)" = "$(listings)" ] ||
  fail "$(sockets) connections for $(listings) listings: listing connected per export"
grep -q ' Read id=' "$LOG" && fail "listing read data from an export"
note "$(listings) listings, $(sockets) connections"

# Open one file: only that export gets connections.
mark=$(log_mark "$LOG") s0=$(sockets)
[ "$(head -c 19 "$M/e123")" = "this is export e123" ] || fail "e123 reads '$(head -c 19 "$M/e123")'"
[ "$(sha "$M/e123")" = "$(sha "$T/files/e123")" ] || fail "e123: content differs from its file"
opened=$(($(sockets) - s0))
[ "$opened" -ge 1 ] || fail "opening e123 made no connection"
[ "$opened" -le 4 ] || fail "opening e123 made $opened connections (at most -C 4 expected)"
log_since "$LOG" "$mark" | grep -o ' Connect export=[^ ]*' | sort -u >"$T/connects.txt"
[ "$(cat "$T/connects.txt")" = " Connect export=e123" ] ||
  fail "opening e123 connected to: $(tr '\n' ' ' <"$T/connects.txt")"
log_since "$LOG" "$mark" | grep ' ListExports id=' && fail "opening a file listed the exports"

# After the last close the pool is closed (about 10 s later; polled).
conns() { log_since "$LOG" "$mark" | grep -c " $1" || true; }
wait_until 60 eval '[ "$(conns Disconnect)" -ge "$(conns "Connect export=")" ]' ||
  fail "e123's connections were not closed after its last close ($(conns "Connect export=") connects, $(conns Disconnect) disconnects)"

# Opened again after its pool was closed: connects again and reads.
mark=$(log_mark "$LOG") s0=$(sockets)
[ "$(sha "$M/e123")" = "$(sha "$T/files/e123")" ] || fail "e123 (reopened after idle close) reads differently"
[ "$(sockets)" -gt "$s0" ] || fail "reopening e123 after its pool was closed made no connection"

# Opens of one file share its pool, also when they come at the same time
# before the export is open: 10 concurrent first opens of e050.
mark=$(log_mark "$LOG") s0=$(sockets)
pids=()
for i in $(seq 10); do
  (exec 6<"$M/e050" && [ "$(head -c 19 <&6)" = "this is export e050" ]) & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a concurrent first open/read of e050 failed"; done
[ "$(($(sockets) - s0))" -le 4 ] || fail "10 concurrent opens of e050 made $(($(sockets) - s0)) connections (one pool of at most 4 expected)"
log_since "$LOG" "$mark" | grep -o ' Connect export=[^ ]*' | sort -u >"$T/connects.txt"
[ "$(cat "$T/connects.txt")" = " Connect export=e050" ] ||
  fail "opening e050 connected to: $(tr '\n' ' ' <"$T/connects.txt")"

# Held opens of one file share its pool.
mark=$(log_mark "$LOG") s0=$(sockets)
exec 3<"$M/e007" 4<"$M/e007"
[ "$(head -c 19 <&3)" = "this is export e007" ] || fail "e007 (fd 3) reads differently"
[ "$(head -c 19 <&4)" = "this is export e007" ] || fail "e007 (fd 4) reads differently"
pool=$(($(sockets) - s0))
[ "$pool" -ge 1 ] || fail "opening e007 made no connection"
exec 5<"$M/e007"
[ "$(head -c 19 <&5)" = "this is export e007" ] || fail "e007 (fd 5) reads differently"
[ "$(($(sockets) - s0))" = "$pool" ] || fail "a third open of e007 made new connections ($(($(sockets) - s0)) vs $pool)"
log_since "$LOG" "$mark" | grep -o ' Connect export=[^ ]*' | sort -u >"$T/connects.txt"
[ "$(cat "$T/connects.txt")" = " Connect export=e007" ] ||
  fail "opening e007 connected to: $(tr '\n' ' ' <"$T/connects.txt")"
exec 3<&- 4<&- 5<&-

# 20 different files held open at the same time (20 pools, 80 connections
# with the default -C 4), each read through its descriptor.
fds=() held=()
for i in $(seq -w 131 150); do
  if ! exec {fd}<"$M/e$i"; then
    soft_fail "opening e$i while ${#fds[@]} other files are held open failed"
    continue
  fi
  fds+=("$fd") held+=("e$i")
done
for k in "${!fds[@]}"; do
  [ "$(head -c 19 <&"${fds[$k]}")" = "this is export ${held[$k]}" ] || soft_fail "${held[$k]} (held with others) reads differently"
done
for fd in "${fds[@]}"; do exec {fd}<&-; done

# 20 different files opened and read at the same time.
pids=()
for i in $(seq -w 101 120); do
  (cmp -s "$M/e$i" "$T/files/e$i") & pids+=($!)
done
nbad=0
for p in "${pids[@]}"; do wait "$p" || nbad=$((nbad + 1)); done
[ "$nbad" = 0 ] || soft_fail "$nbad of 20 concurrent reads of e101..e120 failed or differed"

unmount_nbdfs "$M"
finish_test
