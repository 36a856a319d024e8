#!/bin/bash
# Block size constraints: nbdkit memory behind the blocksize-policy filter
# (minimum 4096, preferred 65536, maximum 262144, error policy "error", so
# any request that breaks the constraints fails with EINVAL).  The log
# filter (outermost) records every request the client sends.
#  - st_blksize (stat %o) is the preferred block size, 65536;
#  - many threads at once (os.pwrite/os.pread) write odd-sized chunks at
#    odd offsets into byte ranges they own, ranges that share 4096-byte
#    blocks with other threads' ranges, and re-read their own bytes at odd
#    offsets; then the whole region is compared with a local model
#    (bytearray), read through the mount at odd offsets and with nbdcopy;
#  - the same with Linux AIO (io_submit of many O_DIRECT writes at once, so
#    that partial-block writes to the same blocks really are in flight in
#    nbdfs together, not serialised by the kernel's inode lock);
#  - both with --direct-io and through the page cache;
#  - a 1 MiB direct write (4x the maximum) at an aligned and at an odd
#    offset, and a 1 MiB read at an odd offset;
#  - punch hole and zero range at unaligned offsets read back zeros and
#    leave the bytes around them alone;
#  - the server refused nothing, and every request the client sent was
#    aligned to 4096 and (for reads and writes) at most 262144 bytes.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((64 * MiB))
serve_nbdkit bs --filter=log --filter=blocksize-policy memory "$SIZE" logfile="$T/bs.log" \
  blocksize-minimum=4096 blocksize-preferred=65536 blocksize-maximum=262144 blocksize-error-policy=error
URI=$(unix_uri "$SOCK")
mkdir "$T/mnt"
F=$T/mnt/disk

cat >"$T/stress.py" <<'EOF'
# stress.py FILE MODEL MODE SEED: MODE "threads" or "aio".  MODEL holds the
# expected content of the whole export and is updated.
import ctypes, os, platform, random, sys, threading

path, model_path, mode, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
MiB = 1 << 20
REGION_START = 3 * MiB + 1          # odd: no range below starts aligned
REGION = 6 * MiB
model = bytearray(open(model_path, "rb").read())
rnd = random.Random(seed)
errors = []

def owned_ranges(nowners, rnd):
    """Split the region into consecutive ranges of odd, mixed sizes (many
    smaller than a block, some spanning several), owned round-robin."""
    ranges = [[] for _ in range(nowners)]
    pos, k = REGION_START, 0
    while pos < REGION_START + REGION:
        n = rnd.choice([1, 3, 17, 511, 777, 1000, 2049, 4095, 4097, 6001, 40001, 150001])
        n = min(n, REGION_START + REGION - pos)
        ranges[k % nowners].append((pos, n))
        pos += n
        k += 1
    return ranges

def verify(fd, what):
    """The whole region, read in odd-sized pieces, equals the model."""
    pos, end = REGION_START - 4097, REGION_START + REGION + 4097
    while pos < end:
        n = min(rnd.choice([1, 4095, 4097, 65537, 300001]), end - pos)
        got = os.pread(fd, n, pos)
        if got != bytes(model[pos:pos + n]):
            i = next(i for i in range(len(got)) if i >= len(got) or got[i] != model[pos + i]) if len(got) == n else len(got)
            sys.exit("%s: pread(%d, %d) differs from the model at byte %d" % (what, pos, n, pos + i))
        pos += n

def worker(fd, ranges, tseed, rounds):
    r = random.Random(tseed)
    try:
        for _ in range(rounds):
            off, n = r.choice(ranges)
            a = r.randrange(n)
            b = r.randrange(a, n) + 1           # [a, b) inside the owned range
            data = r.randbytes(b - a)
            if os.pwrite(fd, data, off + a) != b - a:
                raise Exception("short write at %d" % (off + a))
            model[off + a:off + b] = data       # bytes only this thread owns
            # re-read some own bytes at an odd place
            off2, n2 = r.choice(ranges)
            a2 = r.randrange(n2)
            b2 = r.randrange(a2, n2) + 1
            got = os.pread(fd, b2 - a2, off2 + a2)
            if got != bytes(model[off2 + a2:off2 + b2]):
                raise Exception("pread(%d, %d) of own bytes differs" % (off2 + a2, b2 - a2))
    except Exception as e:
        errors.append(str(e))

if mode == "threads":
    fd = os.open(path, os.O_RDWR)
    nthreads = 16
    ranges = owned_ranges(nthreads, rnd)
    # first give every owned byte a value, so that every block is written
    for t in range(nthreads):
        for off, n in ranges[t]:
            data = rnd.randbytes(n)
            os.pwrite(fd, data, off)
            model[off:off + n] = data
    verify(fd, "after the initial fill")
    threads = [threading.Thread(target=worker, args=(fd, ranges[t], seed * 1000 + t, 300))
               for t in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("threads: " + "; ".join(errors[:5]))
    verify(fd, "after the threads")
    os.close(fd)

elif mode == "aio":
    libc = ctypes.CDLL(None, use_errno=True)
    nr = {"x86_64": (206, 207, 209, 208), "aarch64": (0, 1, 2, 4)}.get(platform.machine())
    if nr is None:
        sys.exit("aio: unknown syscall numbers for " + platform.machine())
    SYS_setup, SYS_destroy, SYS_submit, SYS_getevents = nr
    class iocb(ctypes.Structure):
        _fields_ = [("data", ctypes.c_uint64), ("key", ctypes.c_uint32), ("rw_flags", ctypes.c_int32),
                    ("opcode", ctypes.c_uint16), ("reqprio", ctypes.c_int16), ("fildes", ctypes.c_uint32),
                    ("buf", ctypes.c_uint64), ("nbytes", ctypes.c_uint64), ("offset", ctypes.c_int64),
                    ("reserved2", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("resfd", ctypes.c_uint32)]
    class io_event(ctypes.Structure):
        _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]
    libc.syscall.restype = ctypes.c_long
    ctx = ctypes.c_ulong(0)
    DEPTH = 128
    if libc.syscall(SYS_setup, DEPTH, ctypes.byref(ctx)) != 0:
        sys.exit("io_setup: errno %d" % ctypes.get_errno())
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    for rnd_i in range(12):
        # This round's pieces: neighbours share blocks; each piece is one
        # write, all submitted at once.
        pieces = owned_ranges(1, rnd)[0]
        rnd.shuffle(pieces)
        for start in range(0, len(pieces), DEPTH):
            batch = pieces[start:start + DEPTH]
            bufs, cbs = [], (iocb * len(batch))()
            for i, (off, n) in enumerate(batch):
                data = rnd.randbytes(n)
                model[off:off + n] = data
                b = ctypes.create_string_buffer(data, n)
                bufs.append(b)
                cbs[i] = iocb(data=i, opcode=1, fildes=fd, buf=ctypes.addressof(b), nbytes=n, offset=off)
            ptrs = (ctypes.POINTER(iocb) * len(batch))(*[ctypes.pointer(cbs[i]) for i in range(len(batch))])
            done = 0
            while done < len(batch):
                r = libc.syscall(SYS_submit, ctx, len(batch) - done, ctypes.byref(ptrs, done * ctypes.sizeof(ctypes.c_void_p)))
                if r <= 0:
                    sys.exit("io_submit: %d errno %d" % (r, ctypes.get_errno()))
                done += r
            events = (io_event * len(batch))()
            got = 0
            while got < len(batch):
                r = libc.syscall(SYS_getevents, ctx, 1, len(batch) - got, ctypes.byref(events, got * ctypes.sizeof(io_event)), None)
                if r < 0:
                    if ctypes.get_errno() == 4:
                        continue
                    sys.exit("io_getevents: errno %d" % ctypes.get_errno())
                got += r
            for e in events:
                off, n = batch[e.data]
                if e.res != n:
                    sys.exit("aio write of %d bytes at %d: result %d" % (n, off, e.res))
        verify(fd, "aio round %d" % rnd_i)
    os.close(fd)
    libc.syscall(SYS_destroy, ctx)

open(model_path, "wb").write(model)
EOF

check_log() {  # WHAT: nothing refused, everything aligned and within the maximum
  python3 - "$T/bs.log" "$1" <<'EOF' || fail "$1: the client broke the block size constraints (see above)"
import re, sys
bad = []
for line in open(sys.argv[1]):
    if "return=-1" in line:
        bad.append(line.strip())
        continue
    m = re.search(r"connection=\d+ (Read|Write|Zero|Trim|Cache) id=\d+ offset=0x([0-9a-f]+) count=0x([0-9a-f]+)", line)
    if not m:
        continue
    act, off, cnt = m.group(1), int(m.group(2), 16), int(m.group(3), 16)
    if off % 4096 or cnt % 4096 or (act in ("Read", "Write") and cnt > 262144):
        bad.append(line.strip())
if bad:
    sys.exit("%s: %d bad requests, e.g.\n  %s" % (sys.argv[2], len(bad), "\n  ".join(bad[:5])))
EOF
}

check_all() {  # WHAT: the export (through the mount and by nbdcopy) equals the model
  [ "$(range_sha "$F" 0 "$SIZE")" = "$(sha "$T/model")" ] || fail "$1: the mounted file differs from the model"
  server_copy "$URI" "$T/server.img"
  [ "$(sha "$T/server.img")" = "$(sha "$T/model")" ] || fail "$1: the export (nbdcopy) differs from the model"
}

truncate -s "$SIZE" "$T/model"
seed=$RANDOM
note "seed $seed"
for direct in 1 0; do
  if [ "$direct" = 1 ]; then
    NBDFS_LOG=$T/nbdfs-direct.log mount_nbdfs "$URI" "$T/mnt" --direct-io -v
    what="--direct-io"
  else
    NBDFS_LOG=$T/nbdfs-cached.log mount_nbdfs "$URI" "$T/mnt" -v
    what="page cache"
  fi
  [ "$(stat -c %o "$F")" = 65536 ] || fail "$what: st_blksize $(stat -c %o "$F"), expected 65536"
  [ "$(stat -c %s "$F")" = "$SIZE" ] || fail "$what: size $(stat -c %s "$F")"
  python3 "$T/stress.py" "$F" "$T/model" threads "$((seed + direct))" || fail "$what: threads: see above (seed $seed)"
  check_log "$what, threads"
  python3 "$T/stress.py" "$F" "$T/model" aio "$((seed + 10 + direct))" || fail "$what: aio: see above (seed $seed)"
  check_log "$what, aio"

  # Writes larger than the maximum block size, aligned and not.
  for off in $((40 * MiB)) $((44 * MiB + 4097)); do
    rand_file "$T/big" "$MiB"
    write_at "$F" "$off" "$T/big" oflag=direct || fail "$what: 1 MiB O_DIRECT write at $off failed"
    write_at "$T/model" "$off" "$T/big"
    [ "$(range_sha "$F" "$off" "$MiB")" = "$(sha "$T/big")" ] || fail "$what: 1 MiB write at $off reads back differently"
    [ "$(dd if="$F" bs=1M skip=$((off - 12345)) count=1 iflag=skip_bytes,direct status=none | sha256sum | cut -d' ' -f1)" = \
      "$(dd if="$T/model" bs=1M skip=$((off - 12345)) count=1 iflag=skip_bytes status=none | sha256sum | cut -d' ' -f1)" ] ||
      fail "$what: 1 MiB O_DIRECT read at an odd offset differs"
  done
  check_log "$what, large writes"

  # Unaligned punch hole and zero range: the partial blocks at the edges
  # are read-modify-written, the whole blocks zeroed.
  for op in "PUNCH_HOLE|KEEP_SIZE $((3 * MiB + 5)) 3000" "ZERO_RANGE $((3 * MiB + 4000)) 200" \
            "PUNCH_HOLE|KEEP_SIZE $((4 * MiB + 4095)) $((300 * 1024 + 2))" "ZERO_RANGE $((5 * MiB - 1)) $((MiB + 2))" \
            "PUNCH_HOLE|KEEP_SIZE $((41 * MiB)) $((4096 * 3))"; do
    set -- $op
    res=$(falloc "$F" "$1" "$2" "$3")
    [ "$res" = ok ] || fail "$what: fallocate $op: $res"
    dd if=/dev/zero of="$T/model" bs=1M seek="$2" count="$3" oflag=seek_bytes iflag=count_bytes conv=notrunc status=none
    [ "$(range_sha "$F" "$2" "$3")" = "$(zero_sha "$3")" ] || fail "$what: fallocate $op does not read as zeros"
  done
  check_log "$what, fallocate"
  check_all "$what"
  unmount_nbdfs "$T/mnt"
done
check_log "end"
echo ok
