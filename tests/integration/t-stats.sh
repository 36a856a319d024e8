#!/bin/bash
# user.nbd.stats and SIGUSR1.
#   nbdkit memory 64 MiB with the error filter (errors only while
#   $T/inject exists); nbdfs -C 4.
# Asserts:
#   - idle after mounting: connections=4/4 inflight=0 queued=0 requests=0;
#   - after 4 MiB written with O_DIRECT in 1 MiB blocks, 2 MiB read, one
#     fsync and a 1 MiB hole punched: bytes_written >= 4 MiB, writes >= 4,
#     bytes_read >= 2 MiB, reads >= 2, flushes >= 1, zeroes >= 1,
#     bytes_zeroed >= 1 MiB, errors=0, requests = the sum of the kinds,
#     inflight=0 when idle, and each latency field MEAN/P50/P99/MAX is
#     ordered (P50 <= P99 <= MAX, MEAN <= MAX) and non-zero where counted;
#   - counters never go down between two reads;
#   - reads the server fails (injected EIO) are counted in errors= and in
#     reads=, and not in bytes_read=;
#   - kill -9 of the server and a restart on the same socket: reconnects=
#     goes up, connections come back to 4/4, I/O works again;
#   - SIGUSR1 logs one "stats:" line with the same keys and the mount
#     carries on (no unmount, I/O works);
#   - directory mode (nbdkit file dir= with two exports, both used): SIGUSR1
#     gives two lines, one per export; a partition-less file's stats are
#     its own (each export counts only its own bytes).
. "$(dirname "$0")/lib.sh"

MiB=1048576
KEYS="connections inflight queued requests errors bytes_read bytes_written bytes_zeroed reads writes flushes zeroes reconnects read_us write_us flush_us zero_us"

serve_nbdkit srv --filter=error memory $((64 * MiB)) error-pread=EIO error-pread-rate=1 error-file="$T/inject"
mkdir "$T/mnt"
F=$T/mnt/disk
mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" -C 4

stats() { getfattr --absolute-names --only-values -n user.nbd.stats "$1"; }
# get KEY [FILE]: the value of KEY in FILE's stats (default $F).
get() {
  local s
  s=$(stats "${2:-$F}") || fail "getfattr user.nbd.stats failed"
  python3 -c '
import sys
d = dict(kv.split("=", 1) for kv in sys.argv[1].split())
print(d[sys.argv[2]])' "$s" "$1"
}
# check_line LINE: every key once, in order; latencies ordered; requests is the sum.
check_line() {
  python3 - "$1" "$KEYS" <<'EOF' || fail "bad stats line: $1"
import sys
line, keys = sys.argv[1], sys.argv[2].split()
pairs = [kv.split("=", 1) for kv in line.split()]
assert [k for k, _ in pairs] == keys, "keys %s, expected %s" % ([k for k, _ in pairs], keys)
d = dict(pairs)
n = {k: int(d[k]) for k in keys if k not in ("connections",) and not k.endswith("_us")}
assert n["requests"] == n["reads"] + n["writes"] + n["flushes"] + n["zeroes"], "requests is not the sum"
for kind, cnt in (("read", "reads"), ("write", "writes"), ("flush", "flushes"), ("zero", "zeroes")):
    mean, p50, p99, mx = map(int, d[kind + "_us"].split("/"))
    assert p50 <= p99 <= mx and mean <= mx, "%s_us=%s out of order" % (kind, d[kind + "_us"])
    if n[cnt] == 0:
        assert (mean, p50, p99, mx) == (0, 0, 0, 0), "%s_us=%s with no %s" % (kind, d[kind + "_us"], cnt)
    else:
        assert mx > 0, "%s_us=%s: a request took 0 us" % (kind, d[kind + "_us"])
EOF
}

wait_until 20 eval '[ "$(get connections)" = 4/4 ]' || fail "connections never reached 4/4: $(stats "$F")"
s0=$(stats "$F")
check_line "$s0"
note "idle: $s0"
for kv in inflight=0 queued=0 requests=0 errors=0 reconnects=0; do
  case " $s0 " in *" $kv "*) ;; *) fail "fresh mount: no $kv in: $s0" ;; esac
done

# Known I/O.
rand_file "$T/src" $((4 * MiB))
dd if="$T/src" of="$F" bs=1M count=4 oflag=direct conv=notrunc status=none || fail "dd write failed"
dd if="$F" of="$T/back" bs=1M count=2 iflag=direct status=none || fail "dd read failed"
python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); os.fsync(fd); os.close(fd)' "$F" ||
  fail "fsync failed"
[ "$(falloc "$F" 'PUNCH_HOLE|KEEP_SIZE' $((8 * MiB)) $MiB)" = ok ] || fail "punching a hole failed"
s1=$(stats "$F")
check_line "$s1"
note "after I/O: $s1"
[ "$(get bytes_written)" -ge $((4 * MiB)) ] || fail "bytes_written < 4 MiB: $s1"
[ "$(get writes)" -ge 4 ] || fail "writes < 4: $s1"
[ "$(get bytes_read)" -ge $((2 * MiB)) ] || fail "bytes_read < 2 MiB: $s1"
[ "$(get reads)" -ge 2 ] || fail "reads < 2: $s1"
[ "$(get flushes)" -ge 1 ] || fail "flushes < 1: $s1"
[ "$(get zeroes)" -ge 1 ] || fail "zeroes < 1: $s1"
[ "$(get bytes_zeroed)" -ge $MiB ] || fail "bytes_zeroed < 1 MiB: $s1"
[ "$(get errors)" = 0 ] || fail "errors without a failure: $s1"
[ "$(get inflight)" = 0 ] || fail "inflight not 0 when idle: $s1"
[ "$(get connections)" = 4/4 ] || fail "connections not 4/4: $s1"

# Counters never go down.
s2=$(stats "$F")
python3 - "$s1" "$s2" <<'EOF' || fail "a counter went down: $s1 -> $s2"
import sys
a, b = (dict(kv.split("=", 1) for kv in s.split()) for s in sys.argv[1:3])
for k in ("requests", "errors", "bytes_read", "bytes_written", "reads", "writes", "flushes", "zeroes"):
    assert int(b[k]) >= int(a[k]), k
EOF

# Injected failures: reads fail with EIO while $T/inject exists.
r0=$(get reads) e0=$(get errors) b0=$(get bytes_read)
touch "$T/inject"
nfail=0
for i in 1 2 3; do
  dd if="$F" of=/dev/null bs=4k count=1 skip=$((i * 100)) iflag=direct status=none 2>/dev/null ||
    nfail=$((nfail + 1))
done
rm -f "$T/inject"
[ "$nfail" = 3 ] || fail "only $nfail of 3 injected reads failed"
s3=$(stats "$F")
check_line "$s3"
note "after 3 failed reads: $s3"
[ "$(get errors)" -ge $((e0 + 3)) ] || fail "errors did not count 3 failed reads: $s3"
[ "$(get reads)" -ge $((r0 + 3)) ] || fail "reads did not count 3 failed reads: $s3"
[ "$(get bytes_read)" = "$b0" ] || fail "failed reads counted in bytes_read: $s3"

# SIGUSR1: one line with the same keys; the mount stays.
mark=$(log_mark "$T/nbdfs.log")
kill -USR1 "$NBDFS_PID"
wait_until 10 eval 'log_since "$T/nbdfs.log" $mark | grep -q "stats: "' || fail "no stats line after SIGUSR1: $(cat "$T/nbdfs.log")"
sleep 0.3
lines=$(log_since "$T/nbdfs.log" "$mark" | grep -c "stats: ")
[ "$lines" = 1 ] || fail "SIGUSR1 gave $lines stats lines, expected 1: $(log_since "$T/nbdfs.log" "$mark")"
logged=$(log_since "$T/nbdfs.log" "$mark" | grep "stats: " | sed 's/.*stats: [^:]*: //')
check_line "$logged"
note "SIGUSR1: $(log_since "$T/nbdfs.log" "$mark" | grep "stats: ")"
pid_alive "$NBDFS_PID" || fail "nbdfs died of SIGUSR1"
is_mounted "$T/mnt" || fail "SIGUSR1 unmounted"
[ "$(sha "$T/back")" = "$(sha "$T/src" $((2 * MiB)))" ] || fail "read back wrong data"
dd if="$F" of=/dev/null bs=1M count=1 iflag=direct status=none || fail "I/O after SIGUSR1 failed"

# Server killed and restarted on the same socket: reconnections are counted.
kill -9 "$SERVER_PID"
wait_until 10 eval '! pid_alive "$SERVER_PID"' || fail "nbdkit survived kill -9"
sleep 0.5
rm -f "$SOCK"
serve_nbdkit srv --filter=error memory $((64 * MiB)) error-pread=EIO error-pread-rate=1 error-file="$T/inject"
wait_until 30 eval '[ "$(get reconnects)" -ge 1 ] && [ "$(get connections)" = 4/4 ]' ||
  fail "no reconnection counted after the restart: $(stats "$F")"
dd if="$F" of=/dev/null bs=1M count=1 iflag=direct status=none || fail "I/O after the restart failed"
s4=$(stats "$F")
check_line "$s4"
note "after the restart: $s4"
unmount_nbdfs "$T/mnt"

# Directory mode, two exports, both used: SIGUSR1 gives a line for each.
mkdir "$T/files"
truncate -s $((8 * MiB)) "$T/files/a" "$T/files/b"
serve_nbdkit dir file dir="$T/files"
NBDFS_LOG=$T/nbdfs-dir.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" --exports
dd if="$T/src" of="$T/mnt/a" bs=1M count=1 oflag=direct conv=notrunc status=none || fail "write to a failed"
dd if="$T/mnt/b" of=/dev/null bs=1M count=3 iflag=direct status=none || fail "read of b failed"
[ "$(get bytes_written "$T/mnt/a")" -ge $MiB ] || fail "a: bytes_written: $(stats "$T/mnt/a")"
[ "$(get bytes_written "$T/mnt/b")" = 0 ] || fail "b: counted a's writes: $(stats "$T/mnt/b")"
[ "$(get bytes_read "$T/mnt/b")" -ge $((3 * MiB)) ] || fail "b: bytes_read: $(stats "$T/mnt/b")"
mark=$(log_mark "$T/nbdfs-dir.log")
kill -USR1 "$NBDFS_PID"
wait_until 10 eval '[ "$(log_since "$T/nbdfs-dir.log" $mark | grep -c "stats: ")" -ge 2 ]' ||
  fail "SIGUSR1 in directory mode: $(log_since "$T/nbdfs-dir.log" "$mark")"
sleep 0.3
log_since "$T/nbdfs-dir.log" "$mark" | grep "stats: " >"$T/dir-lines"
[ "$(wc -l <"$T/dir-lines")" = 2 ] || fail "expected 2 stats lines: $(cat "$T/dir-lines")"
grep -q "export 'a'" "$T/dir-lines" && grep -q "export 'b'" "$T/dir-lines" ||
  fail "not one line per export: $(cat "$T/dir-lines")"
while IFS= read -r l; do check_line "$(printf '%s' "$l" | sed 's/.*stats: [^:]*: //')"; done <"$T/dir-lines"
note "$(cat "$T/dir-lines")"
unmount_nbdfs "$T/mnt"
echo ok
