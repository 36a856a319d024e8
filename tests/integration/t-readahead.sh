#!/bin/bash
# Read-ahead of sequential reads through the page cache, on a mount made by
# an unprivileged user (whose kernel readahead stays at 128 KiB requests).
#  - a sequential read gets the server's data, the kernel asked in 128 KiB
#    requests, and nbdfs fetched ahead in 512 KiB READs
#  - a write through the mount lands in what was fetched ahead: the reader,
#    reading on with the same descriptor, sees the new data (the prefetch
#    is dropped before the write is sent)
#  - another client's write ahead of a reader shows up at the next open
#  - --cache=none: no read-ahead (every READ is one the caller asked for)
. "$(dirname "$0")/lib.sh"

SIZE=$((8 * 1048576))
serve_nbdkit mem --filter=log memory "$SIZE" logfile="$T/requests.log"
URI=$(unix_uri "$SOCK")
rand_file "$T/data" "$SIZE"
server_copy "$T/data" "$URI"
user_dir
chmod 0666 "$SOCK" "$T/data"
as_user mkdir "$UT/m"
F=$UT/m/disk

# reads_of LOG_MARK COUNT: how many READs of COUNT bytes (hex) since the mark.
reads_of() { log_since "$T/requests.log" "$1" | log_requests Read | grep -c "count=$2 " || true; }

# ---- a sequential read ----
mount_nbdfs_as_user "$URI" "$UT/m"
mark=$(log_mark "$T/requests.log")
got=$(as_user dd if="$F" bs=128k status=none | sha256sum | cut -d' ' -f1)
[ "$got" = "$(sha "$T/data")" ] || fail "a sequential read did not return the server's data"
kernel=$(reads_of "$mark" 0x20000)
ahead=$(reads_of "$mark" 0x80000)
note "sequential read of 8 MiB: $kernel READs of 128 KiB, $ahead of 512 KiB"
[ "$ahead" -ge 8 ] || fail "only $ahead READs of 512 KiB: nothing was fetched ahead"

# ---- a write through the mount into what was fetched ahead ----
# The reader and the writer (O_DIRECT) open first, so that no open drops
# the prefetch: only the write may.
cat >"$T/coherent.py" <<'EOF'
import mmap, os, sys
path, data = sys.argv[1], open(sys.argv[2], "rb").read()
r = os.open(path, os.O_RDONLY)
w = os.open(path, os.O_WRONLY | os.O_DIRECT)
K = 1024
for off in range(0, 1024 * K, 128 * K):  # sequential: fetches ahead past 1 MiB
    assert os.pread(r, 128 * K, off) == data[off:off + 128 * K], "before the write at %d" % off
buf = mmap.mmap(-1, 4096)
buf.write(b"\xab" * 4096)
at = 1024 * K + 64 * K
assert os.pwrite(w, buf, at) == 4096
expect = data[:at] + b"\xab" * 4096 + data[at + 4096:]
for off in range(1024 * K, 2048 * K, 128 * K):
    got = os.pread(r, 128 * K, off)
    if got != expect[off:off + 128 * K]:
        sys.exit("after the write: the read at %d returned old data" % off)
EOF
mark=$(log_mark "$T/requests.log")
as_user /usr/bin/python3 "$T/coherent.py" "$F" "$T/data" || fail "a reader did not see a write through the mount"
[ "$(reads_of "$mark" 0x80000)" -ge 1 ] || fail "the reader did not fetch ahead before the write"
printf '\xab%.0s' $(seq 4096) | dd of="$T/data" bs=4096 seek=$((1088 / 4)) conv=notrunc status=none

# ---- another client's write, seen at the next open ----
cat >"$T/reopen.py" <<'EOF'
import os, subprocess, sys
path, uri = sys.argv[1], sys.argv[2]
K = 1024
r = os.open(path, os.O_RDONLY)
for off in range(0, 1024 * K, 128 * K):
    os.pread(r, 128 * K, off)
subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xcd 1088k 4k", uri],
               check=True, stdout=subprocess.DEVNULL)
os.close(r)
r = os.open(path, os.O_RDONLY)
got = os.pread(r, 4096, 1088 * K)
if got != b"\xcd" * 4096:
    sys.exit("after reopening, the other client's write is not there")
EOF
as_user /usr/bin/python3 "$T/reopen.py" "$F" "$URI" || fail "another client's write did not show at the next open"
unmount_nbdfs_as_user "$UT/m"

# ---- --cache=none: nothing fetched ahead ----
mount_nbdfs_as_user "$URI" "$UT/m" --cache=none
mark=$(log_mark "$T/requests.log")
as_user dd if="$F" of=/dev/null bs=128k count=32 status=none || fail "reading with --cache=none failed"
[ "$(reads_of "$mark" 0x80000)" = 0 ] || fail "--cache=none fetched ahead"
unmount_nbdfs_as_user "$UT/m"
exit 0
