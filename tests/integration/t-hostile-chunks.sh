#!/bin/bash
# A hostile server answers one READ with 1-byte OFFSET_DATA chunks (every
# even offset ascending, then every odd one: tests/fake-nbd-server.py
# --scenario tiny-chunks), 524288 chunks (15 MB) for a 512 KiB read.  Coverage
# tracking used to go quadratic on this (29 s of CPU for that one read,
# nothing else served meanwhile).  Now:
#  - the read fails with EIO, promptly (the chunks per READ are capped);
#  - while the chunks arrive, the daemon still answers other requests
#    (a stat that reaches it returns at once);
#  - the whole episode costs the daemon little CPU;
#  - afterwards reads elsewhere return the right bytes, the daemon is alive
#    and unmounts cleanly with status 0.
. "$(dirname "$0")/lib.sh"

FAKE=$(cd "$(dirname "$0")/.." && pwd)/fake-nbd-server.py
KiB=1024
SIZE=$((2 * 1024 * KiB))
BAD=$((512 * KiB))      # the READ covering this byte gets the tiny chunks
CPU_LIMIT_TICKS=$((5 * $(getconf CLK_TCK)))   # 5 s (the quadratic code needed ~29 s)

# cpu_ticks PID: utime + stime of the process (all its threads), in clock ticks.
cpu_ticks() {
  local s
  s=$(cat "/proc/$1/stat") || fail "no /proc/$1/stat (nbdfs gone?)"
  s=${s##*) }   # the fields after "(comm) "; utime and stime are fields 14 and 15
  awk '{print $12 + $13}' <<<"$s"
}

serve_fake tiny --scenario tiny-chunks --size "$SIZE" --bad-offset "$BAD"
mp=$T/mnt
mkdir "$mp"
NBDFS_LOG=$T/nbdfs-tiny.log
export NBDFS_LOG
mount_nbdfs "$(unix_uri "$SOCK")" "$mp" -C 1 --timeout 60
f=$mp/disk
[ -f "$f" ] || fail "no file $f"

cpu0=$(cpu_ticks "$NBDFS_PID")
t0=$(date +%s.%N)

# The hostile read, in the background.
rc=0
timeout -k 5 30 dd if="$f" of="$T/bad.out" iflag=direct bs=512k count=1 skip=$((BAD / (512 * KiB))) \
  status=none 2>"$T/bad.err" &
dd_pid=$!
track_pid "$dd_pid"

# Meanwhile the daemon is not pinned: once the server has the READ and is
# sending its chunks, a stat that must reach the daemon (--cached=never: not
# from the kernel's attribute cache) comes back quickly.
wait_until 20 grep -q 'scenario tiny-chunks' "$T/tiny.log" ||
  fail "the hostile READ never reached the server: $(cat "$T/tiny.log")"
sleep 0.05
sending=yes
grep -q 'one-byte chunks' "$T/tiny.log" && sending=no
st_rc=0
ts=$(date +%s.%N)
timeout -k 2 5 stat --cached=never -c %s "$f" >"$T/stat.out" 2>"$T/stat.err" || st_rc=$?
st_dt=$(awk -v a="$ts" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
[ "$st_rc" != 124 ] && [ "$st_rc" != 137 ] ||
  fail "stat hung (over 5 s) while the tiny chunks were being received: the worker is pinned"
[ "$st_rc" = 0 ] || fail "stat failed (status $st_rc) during the hostile read: $(cat "$T/stat.err")"
[ "$(cat "$T/stat.out")" = "$SIZE" ] || fail "stat during the hostile read: size $(cat "$T/stat.out"), not $SIZE"
grep -q 'one-byte chunks' "$T/tiny.log" || sending="$sending, and still when it returned"
note "stat during the hostile read: ${st_dt}s (server still sending when it began: $sending)"

wait "$dd_pid" || rc=$?
dd_dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
[ "$rc" != 124 ] && [ "$rc" != 137 ] || fail "the hostile read did not finish within 30 s"
[ "$rc" != 0 ] || fail "the hostile read succeeded (524288 one-byte chunks must fail the READ)"
grep -q 'Input/output error' "$T/bad.err" || fail "the hostile read failed, but not with EIO: $(cat "$T/bad.err")"
pid_alive "$NBDFS_PID" || fail "nbdfs died during the hostile read: $(tail -5 "$NBDFS_LOG")"
note "hostile read: EIO after ${dd_dt}s"
grep -q 'scenario tiny-chunks' "$T/tiny.log" || fail "the scenario never triggered: $(cat "$T/tiny.log")"
note "server: $(grep -E 'scenario tiny-chunks|one-byte chunks' "$T/tiny.log" | sed 's/^fake-nbd-server: //' | paste -sd';' -)"

# Afterwards: a normal read elsewhere (the scenario triggers once) returns the
# right bytes, on the same connection (-C 1) once it has skipped the rest.
rc=0
timeout -k 5 30 dd if="$f" of="$T/good.out" iflag=direct bs=512k count=1 skip=2 status=none 2>"$T/good.err" ||
  rc=$?
[ "$rc" != 124 ] && [ "$rc" != 137 ] || fail "a later read hung"
[ "$rc" = 0 ] || fail "a later read failed: $(cat "$T/good.err")"
python3 "$FAKE" --print-pattern $((1024 * KiB)) $((512 * KiB)) | cmp -s - "$T/good.out" ||
  fail "a later read returned wrong data"
# And 4 KiB just before the hostile range, through the page cache.
rc=0
timeout -k 5 30 dd if="$f" of="$T/good2.out" bs=4096 count=1 skip=$((BAD / 4096 - 1)) status=none \
  2>"$T/good2.err" || rc=$?
[ "$rc" = 0 ] || fail "a later buffered read failed (status $rc): $(cat "$T/good2.err")"
python3 "$FAKE" --print-pattern $((BAD - 4096)) 4096 | cmp -s - "$T/good2.out" ||
  fail "a later buffered read returned wrong data"

cpu1=$(cpu_ticks "$NBDFS_PID")
note "nbdfs CPU for the whole episode: $((cpu1 - cpu0)) ticks ($(getconf CLK_TCK)/s), limit $CPU_LIMIT_TICKS"
[ $((cpu1 - cpu0)) -lt "$CPU_LIMIT_TICKS" ] ||
  fail "nbdfs used $((cpu1 - cpu0)) ticks of CPU on one hostile read (limit $CPU_LIMIT_TICKS)"
note "connections the server saw: $(grep -c 'transmission (' "$T/tiny.log")"
if grep -q 'too many chunks' "$NBDFS_LOG"; then note "$(grep -m1 'too many chunks' "$NBDFS_LOG")"; fi

# Still alive; unmounts cleanly and exits 0.
pid_alive "$NBDFS_PID" || fail "nbdfs exited: $(tail -5 "$NBDFS_LOG")"
fusermount3 -u "$mp" || fail "cannot unmount $mp"
wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "nbdfs did not exit after unmount"
st=0
wait "$NBDFS_PID" 2>/dev/null || st=$?
[ "$st" -lt 128 ] || fail "nbdfs died with signal $((st - 128)): $(tail -5 "$NBDFS_LOG")"
[ "$st" = 0 ] || fail "nbdfs exited with status $st after unmount: $(tail -5 "$NBDFS_LOG")"
! is_mounted "$mp" || fail "still mounted after the daemon exited"
kill "$SERVER_PID" 2>/dev/null || true

echo "t-hostile-chunks: ok"
