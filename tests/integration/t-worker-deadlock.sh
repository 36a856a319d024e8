#!/bin/bash
# The worker never blocks waiting for a request-table slot.  A server whose
# maximum block size is 2 KiB turns every 1 MiB read into 512 requests; fio
# with iodepth 64 of 1 MiB O_DIRECT reads on one connection then wants
# 32768 requests in flight, more than the connection's table holds.  While
# that runs, stat answers within 5 s (a worker stuck in the table would
# also stop receiving the replies that free slots: a deadlock), fio ends
# within 60 s without an error, and the unmount is clean (exit 0).
# (delay-read=1ms keeps the server's 16 threads from draining the backlog
# at once; with whole seconds fio could not finish in time.)
. "$(dirname "$0")/lib.sh"

# stuck WHY: fail, killing nbdfs first, so that the cleanup's look at the
# mount point does not hang on the stuck daemon.
stuck() { kill -9 "$NBDFS_PID" 2>/dev/null || true; fail "$@"; }

serve_nbdkit slow --filter=blocksize-policy --filter=delay memory 1G \
  blocksize-preferred=512 blocksize-maximum=2048 delay-read=1ms
mkdir "$T/mnt"
F=$T/mnt/disk
mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" -C 1 --timeout 10 -v
grep -q 'block sizes 1/512/2048' "$T/nbdfs.log" || fail "unexpected block sizes: $(cat "$T/nbdfs.log")"

timeout 60 fio --name=d --filename="$F" --direct=1 --ioengine=libaio --iodepth=64 --bs=1M \
  --rw=read --size=128M --runtime=10 --time_based >"$T/fio.out" 2>&1 &
fio_pid=$!
track_pid "$fio_pid"
for at in 2 4 6; do
  sleep 2
  pid_alive "$fio_pid" || break
  rc=0
  timeout 5 stat "$F" >/dev/null 2>"$T/stat.err" || rc=$?
  [ "$rc" != 124 ] || stuck "stat at ${at}s into the fio run hung for 5 s (the worker is stuck)"
  [ "$rc" = 0 ] || fail "stat at ${at}s failed: $(cat "$T/stat.err")"
done
rc=0
wait "$fio_pid" || rc=$?
[ "$rc" != 124 ] || stuck "fio did not finish within 60 s: $(tail -n 20 "$T/fio.out")"
[ "$rc" = 0 ] || fail "fio failed (status $rc): $(tail -n 20 "$T/fio.out")"
grep -q 'err= 0' "$T/fio.out" || fail "fio reports an error: $(cat "$T/fio.out")"
note "$(grep -m1 'READ:' "$T/fio.out")"
unmount_nbdfs "$T/mnt"
echo ok
