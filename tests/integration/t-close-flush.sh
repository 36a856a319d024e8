#!/bin/bash
# close() makes a handle's writes durable, seen by the server through
# nbdkit's log filter:
#  - after plain writes (no fsync, no O_SYNC) and a plain close, the server
#    gets a Flush after the last Write, and it has completed when close()
#    returns (page cache and --direct-io);
#  - closing a read-only descriptor sends no Flush, even while another
#    descriptor has unflushed writes (which its own close then flushes);
#  - behind a writeback cache (nbdkit-cache-filter cache=writeback, with the
#    log filter *under* it: the first filter listed is the outermost), the
#    data and a Flush reach the layer below the cache before close()
#    returns, and the export holds the data after a clean unmount.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((64 * MiB))
mkdir "$T/mnt"
F=$T/mnt/disk

# flushed_after_writes LOG [OFFSET LENGTH]: in the nbdkit log lines in LOG,
# a Flush is called after the last Write returned, and that Flush returns
# 0; with OFFSET and LENGTH, the Writes also cover that range.
flushed_after_writes() {
  python3 - "$@" <<'EOF'
import re, sys
ls = open(sys.argv[1]).read().splitlines()
def field(l, name):
    return int(re.search(r"\b%s=(0x[0-9a-f]+|\d+)" % name, l).group(1), 0)
last = max((i for i, l in enumerate(ls) if re.search(r"\.\.\.Write id=\d+ return=0", l)), default=-1)
if last < 0:
    sys.exit("no completed Write")
if len(sys.argv) > 2:
    off, n = int(sys.argv[2]), int(sys.argv[3])
    got = sorted((field(l, "offset"), field(l, "count"))
                 for l in ls if re.search(r"connection=\d+ Write id=", l))
    pos = off
    for o, c in got:
        if o <= pos < o + c:
            pos = o + c
    if pos < off + n:
        sys.exit("the Writes do not cover [%d, %d): %s" % (off, off + n, got))
called = set()
for l in ls[last + 1:]:
    m = re.search(r"connection=(\d+) Flush id=(\d+) ", l)
    if m:
        called.add(m.groups())
    m = re.search(r"connection=(\d+) \.\.\.Flush id=(\d+) return=0", l)
    if m and m.groups() in called:
        sys.exit(0)
sys.exit("no Flush called after the last Write and completed" if not called else
         "a Flush was called after the last Write but did not complete")
EOF
}

serve_nbdkit plain --filter=log memory "$SIZE" logfile="$T/wire.log"
URI=$(unix_uri "$SOCK")
rand_file "$T/data" $((64 * 1024))
for direct in 0 1; do
  mode="page cache"
  if [ "$direct" = 1 ]; then
    mode="--direct-io"
    NBDFS_LOG=$T/nbdfs-direct.log mount_nbdfs "$URI" "$T/mnt" --direct-io
  else
    mount_nbdfs "$URI" "$T/mnt"
  fi

  # Plain dd: 16 writes of 4 KiB, then close() and exit.
  mark=$(log_mark "$T/wire.log")
  dd if="$T/data" of="$F" bs=4k count=16 seek=$((768 + 16 * direct)) conv=notrunc status=none ||
    fail "$mode: dd failed"
  log_since "$T/wire.log" "$mark" >"$T/close.log"
  why=$(flushed_after_writes "$T/close.log" $(((768 + 16 * direct) * 4096)) 65536 2>&1) ||
    soft_fail "$mode: close() after plain writes: $why (server log, last lines:)"; tail -n 20 "$T/close.log" >&2

  # A read-only close while a writable descriptor holds unflushed writes:
  # no Flush; then the writable one's close flushes.
  if ! out=$(python3 - "$F" "$T/wire.log" $((5 * MiB + direct * 8192)) 2>&1 <<'EOF'
import os, re, sys
path, log, off = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = lambda: open(log).read().splitlines()
flushes = lambda ls: [l for l in ls if re.search(r"connection=\d+ Flush id=", l)]
fw = os.open(path, os.O_WRONLY)
os.pwrite(fw, os.urandom(4096), off)
m0 = len(lines())
fr = os.open(path, os.O_RDONLY)
os.pread(fr, 4096, off)
os.close(fr)
ls = lines()[m0:]
if flushes(ls):
    sys.exit("closing a read-only descriptor sent a Flush:\n  " + "\n  ".join(ls))
m1 = len(lines())
os.close(fw)
ls = lines()[m1:]
if not any(re.search(r"\.\.\.Flush id=\d+ return=0", l) for l in ls):
    sys.exit("closing the written descriptor sent no (completed) Flush:\n  " + "\n  ".join(ls))
EOF
  ); then
    soft_fail "$mode: $out"
  fi
  pid_alive "$NBDFS_PID" || fail "$mode: nbdfs died"
  unmount_nbdfs "$T/mnt"
done

# Behind a writeback cache: the log shows what reaches the layer below it.
serve_nbdkit cached --filter=cache --filter=log memory "$SIZE" cache=writeback logfile="$T/below.log"
URI=$(unix_uri "$SOCK")
mount_nbdfs "$URI" "$T/mnt"
rand_file "$T/big" $((256 * 4096))
OFF=$((9 * MiB))
mark=$(log_mark "$T/below.log")
dd if="$T/big" of="$F" bs=4k count=256 seek=$((OFF / 4096)) conv=notrunc status=none ||
  fail "cache: dd failed"
log_since "$T/below.log" "$mark" >"$T/below-close.log"
why=$(flushed_after_writes "$T/below-close.log" "$OFF" $((256 * 4096)) 2>&1) ||
  soft_fail "cache=writeback: when close() returned, below the cache: $why (log, last lines:)"; tail -n 20 "$T/below-close.log" >&2
unmount_nbdfs "$T/mnt"
server_copy "$URI" "$T/server.img"
[ "$(range_sha "$T/server.img" "$OFF" $((256 * 4096)))" = "$(sha "$T/big")" ] ||
  soft_fail "cache=writeback: the export does not hold the data after unmount"
finish_test
