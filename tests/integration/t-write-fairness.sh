#!/bin/bash
# Reads, stat and opens are not stuck behind write-back (a mount made by an
# unprivileged user, a server that writes 1 MB/s).  While a buffered writer
# has tens of MiB of write-back queued, each of these finishes long before
# that write-back could have (the writer is still writing afterwards):
#  - stat, once the cached attributes expired (a GETATTR);
#  - a new O_DIRECT open and a 1 MiB read elsewhere in the file;
#  - a new cached open and a 1 MiB read elsewhere in the file.
# Before, the first two waited in the kernel's queue behind every write
# already queued, and every open waited for all write-back to finish.
# Then: nbdfs never had more than 8 MiB (+ one request) of writes in flight
# at the server, and everything written reached it (nbdcopy).
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((256 * MiB))
WRITE=$((96 * MiB))
echo 8M >"$T/rate" # bits per second: 1 MB/s; raised at the end
# Also on failure, so that unmounting need not write back at 1 MB/s.
trap 'echo 100G >"$T/rate.new" && mv "$T/rate.new" "$T/rate"; cleanup' EXIT
serve_nbdkit mem --filter=log --filter=rate memory "$SIZE" rate=8M rate-file="$T/rate" \
  logfile="$T/requests.log"
URI=$(unix_uri "$SOCK")
user_dir
chmod 0666 "$SOCK"
as_user mkdir "$UT/m"
F=$UT/m/disk
rand_file "$T/src" "$WRITE"
rand_file "$T/other" "$MiB"
chmod 0644 "$T/src" "$T/other"
mount_nbdfs_as_user "$URI" "$UT/m"
# Data to read back later, at 200 MiB (written before the writer starts).
as_user dd if="$T/other" of="$F" bs=1M seek=200 conv=notrunc oflag=direct status=none ||
  fail "writing the data to read back failed"

AS_USER=(setpriv --reuid="$TEST_USER" --regid="$(id -g "$TEST_USER")" --init-groups --)
io_of() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/io" 2>/dev/null || echo 0; }
# (exec: $! is dd itself, whose /proc/PID/io counts what it wrote)
(exec "${AS_USER[@]}" dd if="$T/src" of="$F" bs=1M conv=notrunc 2>"$T/w.err") &
wpid=$!
wait_until 60 eval '[ "$(io_of $wpid wchar)" -ge $((48 * MiB)) ]' ||
  fail "the writer did not get 48 MiB into the page cache: $(cat "$T/w.err")"
sleep 1.5 # the cached attributes expire: the next stat asks nbdfs
note "writer at $(($(io_of $wpid wchar) / MiB)) MiB, the server at 1 MB/s"

# A reader that opens the file, reads 1 MiB at 200 MiB into OUT and then
# creates OUT.done; its close waits for the file's dirty pages (the
# kernel's rule with the writeback cache), so it is waited for at the end.
cat >"$T/reader.py" <<'EOF'
import mmap, os, sys
path, out, direct = sys.argv[1], sys.argv[2], sys.argv[3] == "direct"
fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
buf = mmap.mmap(-1, 1 << 20)
assert os.preadv(fd, [buf], 200 << 20) == 1 << 20
open(out, "wb").write(buf)
open(out + ".done", "w").close()
EOF
readers=()
# read_check WHAT MODE: the read must be done within 20 s, where waiting for
# the write-back queued ahead of it would take a minute.
read_check() {
  local what=$1 out=$UT/$2.out t0=$SECONDS
  "${AS_USER[@]}" /usr/bin/python3 "$T/reader.py" "$F" "$out" "$2" 2>"$T/$2.err" &
  readers+=($!)
  wait_until 20 test -e "$out.done" || fail "$what waited behind the write-back (more than 20 s): $(cat "$T/$2.err")"
  cmp -s "$out" "$T/other" || fail "$what returned other data"
  note "$what: $((SECONDS - t0)) s"
}
t0=$SECONDS
timeout 20 "${AS_USER[@]}" stat -c %s "$F" >"$T/stat" || fail "stat waited behind the write-back (or failed)"
[ "$(cat "$T/stat")" = "$SIZE" ] || fail "stat said $(cat "$T/stat")"
note "stat: $((SECONDS - t0)) s"
read_check "O_DIRECT open and read" direct
read_check "cached open and read" cached
pid_alive "$wpid" || fail "the writer finished before the checks: they prove nothing"

# Let the server catch up, then check what arrived.
echo 100G >"$T/rate.new" && mv "$T/rate.new" "$T/rate"
wait_until 120 eval '! pid_alive '"$wpid" || fail "the writer did not finish"
wait "$wpid" || fail "the writer failed: $(cat "$T/w.err")"
for p in "${readers[@]}"; do wait "$p" || fail "a reader failed at close"; done
unmount_nbdfs_as_user "$UT/m"
[ "$(server_prefix_sha "$URI" "$WRITE")" = "$(sha "$T/src")" ] ||
  fail "the server does not have what was written"

# The largest number of write bytes outstanding at the server at once.
peak=$(/usr/bin/python3 - "$T/requests.log" <<'EOF'
import re, sys
out = peak = 0
size = {}
for line in open(sys.argv[1]):
    m = re.search(r"connection=(\d+) (\.\.\.)?Write id=(\d+)(?: offset=0x[0-9a-f]+ count=(0x[0-9a-f]+))?", line)
    if not m:
        continue
    key = (m.group(1), m.group(3))
    if m.group(2):
        out -= size.pop(key, 0)
    else:
        size[key] = int(m.group(4), 16)
        out += size[key]
        peak = max(peak, out)
print(peak)
EOF
)
note "at most $((peak / MiB)) MiB of writes outstanding at the server"
[ "$peak" -gt 0 ] || fail "no writes in the server's log"
[ "$peak" -le $((9 * MiB)) ] || fail "$peak bytes of writes were outstanding at once (bound: 8 MiB + one request)"
echo ok
