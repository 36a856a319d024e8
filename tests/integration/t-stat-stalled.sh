#!/bin/bash
# stat never waits for the server.  st_blocks comes from block status,
# which nbdfs computes in the background: with the server stopped (SIGSTOP)
# right after a write (which makes the last allocated size stale), stat
# and ls -l still answer at once, while a read waits.  Once the server
# runs again, st_blocks catches up, and the mount unmounts cleanly.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((64 * MiB))
mkdir "$T/mnt"
F=$T/mnt/disk

serve_nbdkit mem memory "$SIZE"
mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt"
rand_file "$T/data" $((2 * MiB))
write_at "$F" $((8 * MiB)) "$T/data" conv=notrunc,fsync || fail "writing failed"
stat "$F" >/dev/null || fail "stat failed"
# Written again: the allocated size known so far is out of date.
write_at "$F" $((20 * MiB)) "$T/data" conv=notrunc,fsync || fail "writing failed"

kill -STOP "$SERVER_PID"
stopped=1
resume() {
  if [ "$stopped" = 1 ]; then kill -CONT "$SERVER_PID" 2>/dev/null || true; fi
  stopped=0
}

# quick SECONDS CMD...: CMD must succeed within SECONDS; prints the elapsed
# milliseconds, or why not.  Run in the background and watched rather than
# only under timeout: a process waiting for a FUSE request already sent
# cannot die before its answer, so a stuck CMD is let go by resuming the
# server.
quick() {
  local secs=$1 t0 pid; shift
  t0=$(date +%s%N)
  timeout "$secs" "$@" >/dev/null 2>"$T/quick.err" &
  pid=$!
  if ! wait_until "$secs" eval '! pid_alive $pid'; then
    resume
    wait "$pid" || true
    echo "still running after $secs s"
    return 1
  fi
  wait "$pid" || { echo "failed: $(cat "$T/quick.err")"; return 1; }
  echo $((($(date +%s%N) - t0) / 1000000))
}

for i in 1 2 3; do
  ms=$(quick 5 stat "$F") || fail "stat #$i with the server stopped: $ms"
  [ "$ms" -lt 2000 ] || soft_fail "stat #$i with the server stopped took $ms ms"
  ms=$(quick 5 ls -l "$T/mnt") || fail "ls -l #$i with the server stopped: $ms"
  [ "$ms" -lt 2000 ] || soft_fail "ls -l #$i with the server stopped took $ms ms"
  sleep 0.5
done
# A read of data not in the page cache does wait for the server: the
# stall above was real.
dd if="$F" of=/dev/null bs=4k count=1 skip=$((40 * MiB / 4096)) iflag=direct status=none &
reader=$!
sleep 1.5
pid_alive "$reader" || soft_fail "a direct read finished with the server stopped (was it stopped?)"

resume
wait "$reader" || soft_fail "the read waiting for the stopped server failed once it resumed"
# The background scan can finish now: st_blocks shows the allocation (at
# least the 4 MiB written, less than the whole export).
alloc_ok() {
  local b
  b=$(stat -c %b "$F") || return 1
  [ $((b * 512)) -ge $((4 * MiB)) ] && [ $((b * 512)) -lt "$SIZE" ]
}
wait_until 20 alloc_ok || soft_fail "st_blocks did not settle after the server resumed: $(stat -c '%b %B' "$F")"
[ "$(range_sha "$F" $((20 * MiB)) $((2 * MiB)))" = "$(sha "$T/data")" ] || soft_fail "data reads back differently"
pid_alive "$NBDFS_PID" || fail "nbdfs died"
unmount_nbdfs "$T/mnt"
finish_test
