#!/bin/bash
# Direct writes to one file run in parallel (FOPEN_PARALLEL_DIRECT_WRITES,
# which nbdfs sets on direct opens itself: libfuse 3.14 has no name for it).
# Without it the kernel holds the inode lock across each synchronous direct
# write, so four threads writing at once reach the server one at a time.
#  - four threads, each with its own O_DIRECT descriptor, write one block
#    each; the server (1 s delay per write) has at least two writes in
#    flight at once (nbdkit log filter), and every block is on the server
#  - the same with --cache=none and plain (not O_DIRECT) descriptors
. "$(dirname "$0")/lib.sh"

SIZE=$((8 * 1048576))
serve_nbdkit mem --filter=log --filter=delay memory "$SIZE" delay-write=1 logfile="$T/requests.log"
URI=$(unix_uri "$SOCK")

cat >"$T/writers.py" <<'PY'
import mmap, os, sys, threading
path, flags, fill = sys.argv[1], os.O_WRONLY | int(sys.argv[2]), int(sys.argv[3])
errors = []
def write(i):
    try:
        fd = os.open(path, flags)
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
        buf.write(bytes([fill + i]) * 4096)
        os.pwrite(fd, buf, i * 65536)
        os.close(fd)
    except OSError as e:
        errors.append(e)
threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
sys.exit(str(errors[0]) if errors else 0)
PY

# max_in_flight LOG_MARK: the most Writes the server had at once since the mark.
max_in_flight() {
  log_since "$T/requests.log" "$1" | awk '
    / Write id=/ {n++; if (n > m) m = n}
    /\.\.\.Write id=.* return=/ {n--}
    END {print m + 0}'
}

# check MODE OPEN_FLAGS FILL: mount with --cache=MODE, write, check.
check() {
  local mode=$1 flags=$2 fill=$3 mark n i
  mkdir -p "$T/m"
  mount_nbdfs "$URI" "$T/m" --cache="$mode"
  mark=$(log_mark "$T/requests.log")
  /usr/bin/python3 "$T/writers.py" "$T/m/disk" "$flags" "$fill" || fail "--cache=$mode: a writer failed"
  n=$(max_in_flight "$mark")
  note "--cache=$mode: at most $n writes in flight at once"
  [ "$n" -ge 2 ] || fail "--cache=$mode: direct writes from four threads reached the server one at a time"
  unmount_nbdfs "$T/m"
  server_copy "$URI" "$T/server.img"
  /usr/bin/python3 - "$T/server.img" "$fill" <<'PY' || fail "--cache=$mode: the blocks written are not on the server"
import sys
data, fill = open(sys.argv[1], "rb").read(), int(sys.argv[2])
for i in range(4):
    if data[i * 65536:i * 65536 + 4096] != bytes([fill + i]) * 4096:
        sys.exit("block %d differs" % i)
PY
}

check writeback "$(/usr/bin/python3 -c 'import os; print(os.O_DIRECT)')" 1
check none 0 11
exit 0
