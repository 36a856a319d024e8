#!/bin/bash
# --busy-poll: a worker that just handled an event polls instead of sleeping.
#  - with --busy-poll 0, 2000 direct 4 KiB reads one at a time put the
#    daemon to sleep about once per read or more (voluntary context
#    switches, from /proc: the worker sleeps in epoll between the request
#    and the server's reply, and often again before the next request)
#  - with a generous --busy-poll (5 ms, so a slow machine still answers
#    within it) the same reads sleep fewer than half as many times, and
#    the data read is the server's
#  - once the reads stop, the polling stops: an idle second costs the
#    daemon far less than a second of CPU
#  - -o busy_poll=abc: exit 2 and one line naming the option
. "$(dirname "$0")/lib.sh"

SIZE=$((16 * 1048576))
serve_nbdkit mem memory "$SIZE"
URI=$(unix_uri "$SOCK")
rand_file "$T/data" $((2000 * 4096))
nbdcopy -- "$T/data" "$URI" || fail "seeding the export failed"
N=2000

# sleeps PID: voluntary context switches of all the daemon's threads.
sleeps() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n}'; }
# cpu_ticks PID: user + system CPU time of the daemon, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }

# reads_sleeps POLL_US: mount, and set SLEPT to the sleeps taken by N
# single 4 KiB direct reads.
reads_sleeps() {
  mkdir -p "$T/m"
  mount_nbdfs "$URI" "$T/m" --busy-poll "$1"
  head -c 65536 "$T/m/disk" >/dev/null  # the first stat's count, the connections
  sleep 0.5
  local before after
  before=$(sleeps "$NBDFS_PID")
  dd if="$T/m/disk" of="$T/out" bs=4k count=$N iflag=direct status=none || fail "reading failed"
  after=$(sleeps "$NBDFS_PID")
  cmp -s "$T/out" "$T/data" || fail "--busy-poll $1: the data read is not the server's"
  SLEPT=$((after - before))
}

reads_sleeps 0
s0=$SLEPT
unmount_nbdfs "$T/m"
note "--busy-poll 0: $s0 sleeps for $N reads"
# (at least one per read, waiting for the reply; some slack for a read
# that somehow found its reply already there)
[ "$s0" -ge $((N * 3 / 4)) ] || fail "--busy-poll 0: only $s0 sleeps for $N reads; expected about one per read or more"

reads_sleeps 5000
s1=$SLEPT
note "--busy-poll 5000: $s1 sleeps for $N reads"
[ "$s1" -lt $((s0 / 2)) ] || fail "--busy-poll 5000: $s1 sleeps for $N reads, not fewer than half of $s0"

# Idle again: the worker goes back to sleeping in epoll.
sleep 0.2
hz=$(getconf CLK_TCK)
c0=$(cpu_ticks "$NBDFS_PID")
sleep 1.5
c1=$(cpu_ticks "$NBDFS_PID")
note "idle 1.5 s: $((c1 - c0)) CPU ticks (of $hz per second)"
[ $((c1 - c0)) -lt $((hz / 2)) ] || fail "idle for 1.5 s, the daemon used $((c1 - c0)) ticks of CPU: it keeps polling"
unmount_nbdfs "$T/m"

# ---- a bad value ----
set +e
"$NBDFS" "$URI" "$T/m" -f -o busy_poll=abc >"$T/bad.out" 2>&1
rc=$?
set -e
[ "$rc" = 2 ] || fail "-o busy_poll=abc: exit status $rc, expected 2"
[ "$(wc -l <"$T/bad.out")" = 1 ] && grep -q -- '--busy-poll' "$T/bad.out" ||
  fail "-o busy_poll=abc: expected one line naming --busy-poll, got: $(cat "$T/bad.out")"
is_mounted "$T/m" && fail "-o busy_poll=abc left a mount"
exit 0
