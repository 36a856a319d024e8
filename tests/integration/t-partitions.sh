#!/bin/bash
# Partitions as files (--partitions).  Images made here with sfdisk (fdisk
# -b 4096 for 4096-byte sectors) and mkfs.ext4 -d, served by nbdkit file;
# what nbdfs shows is compared with sfdisk's own reading of the image
# (--json, or the script fdisk dumps), and what it writes with the image.
#  - a GPT disk (ext4 made by mkfs.ext4 -d in p1, p2 sparse), nbdfs mounted
#    by the unprivileged user $TEST_USER:
#     - the listing is disk, disk.p1, disk.p2; sizes and the xattrs
#       user.nbd.partition (number=N start=BYTES length=BYTES),
#       partition_type (GUID), partition_name, partition_uuid are sfdisk's;
#       disk keeps its user.nbd.* xattrs; each partition reads as its
#       window of the image
#     - e2fsck -fn disk.p1 is clean; fuse2fs -o ro (run by the user) mounts
#       disk.p1 and the files mkfs put there read back the same; neither
#       changes a byte of p1
#     - SEEK_DATA/SEEK_HOLE of disk.p2 are relative to the partition (data
#       put at 3 MiB in p2: SEEK_DATA(0) = 3 MiB) and stop at its end
#       (ENXIO past its data, though the disk has data further on); the map
#       of p1 is the server's map clipped; st_blocks of each partition is
#       the server's allocation inside it
#     - writes, punch hole and zero range through the partitions land at
#       the right offsets of the image and nowhere else (the whole image is
#       compared with a model); the first and last MiB (the GPT) are
#       untouched; a write at the end of a partition fails with ENOSPC
#       (also O_DIRECT), one across the end is short (--cache=read: where
#       write() reports it), its first part lands
#       and not a byte beyond; reads at/across the end return 0/short
#     - repartitioning through the mount (sfdisk --delete of p2, then
#       sfdisk writing a table with a new p3 elsewhere): each time ls shows
#       the new layout with sfdisk's sizes and xattrs; an fd held open on
#       disk.p2 then fails reads and writes with EIO (the write lands
#       nowhere), one held on the unchanged disk.p1 still reads; disk.p3
#       reads what was written through p2 at the same place of the disk
#  - naked (mounted over a regular file), --partitions is refused
#  - an MBR disk (primary p1 at an odd sector, of an odd length, extended
#    p2 with logical p5 and p6), nbdfs starting the server itself
#    ([ nbdkit ... ]) behind the blocksize-policy filter (minimum 4096,
#    misaligned requests fail), mounted as DIR/vm.raw: vm.raw.p1, .p5,
#    .p6 (not the container); types 0xNN; content; unaligned writes, punch,
#    zero, and writes at and across p1's end read-modify-write correctly
#    (the bytes around the partition, in the same 4096-byte blocks, stay)
#  - --exports of a directory of images (nbdkit file dir=): a 4096-byte-
#    sector GPT (partitions 1 and 3: byte offsets are sectors * 4096,
#    numbers keep the gap), a GPT whose primary header is damaged and one
#    whose primary entry array is damaged (both read from the backup,
#    including a non-ASCII name); contents match the image
#  - --exports where an export is named like a partition file of another
#    (disk.img.p1 beside a disk.img with two partitions): listed once, it
#    is the export, partition 2 is there, and one log line names the clash;
#    an export disk.img.p2 that appears later is not shown (the partition
#    keeps the name), and one log line says so
#  - broken tables: an EBR chain looping on itself, one looping over two
#    EBRs, two overlapping primary partitions, a GPT with both headers
#    damaged: no partition files, the disk still works, and exactly one
#    log line with "partition table" and the reason (loop, overlap, GPT)
. "$(dirname "$0")/lib.sh"

MiB=1048576
for tool in sfdisk fdisk mkfs.ext4 e2fsck fuse2fs fallocate getfattr nbdinfo; do
  command -v "$tool" >/dev/null || fail "no $tool (contrib/run-tests.sh installs fdisk, e2fsprogs and fuse2fs)"
done
# The test user's python: the python3 on root's PATH may be out of its reach.
UPY=/usr/bin/python3
[ -x "$UPY" ] || fail "no $UPY"
user_dir

PT=$T/pt.py
cat >"$PT" <<'EOF'
# pt.py CMD ARGS: helpers of t-partitions.sh (run by root or the test user).
import errno, hashlib, json, os, re, stat, struct, sys

EXTENDED = (0x05, 0x0F, 0x85)


def ename(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def parse_dump(path):
    """The partitions in an sfdisk --json dump or an sfdisk script (sfdisk -d,
    fdisk's O): dicts n, start, length (bytes), type (GUID upper-case, or
    0xNN), uuid, name, label.  MBR extended containers are left out."""
    text = open(path, encoding="utf-8").read()
    raw = []
    if text.lstrip().startswith("{"):
        t = json.loads(text)["partitiontable"]
        label, ss = t["label"], int(t.get("sectorsize", 512))
        for p in t.get("partitions", []):
            raw.append((p["node"], p))
    else:
        hdr = {}
        for line in text.splitlines():
            m = re.match(r"^(\S.*?)\s+:\s+(start=.*)$", line)
            if m:
                f = {k: v[1:-1] if v.startswith('"') else v
                     for k, v in re.findall(r'(\w+)=\s*("[^"]*"|[^,\s]+)', m.group(2))}
                raw.append((m.group(1), {"start": int(f["start"]), "size": int(f["size"]),
                                         "type": f["type"], "uuid": f.get("uuid"), "name": f.get("name")}))
            else:
                m = re.match(r"^([\w-]+):\s*(.*)$", line)
                if m:
                    hdr[m.group(1)] = m.group(2)
        label, ss = hdr["label"], int(hdr.get("sector-size", 512))
    parts = []
    for node, p in raw:
        n = int(re.search(r"(\d+)$", node).group(1))
        if label == "dos":
            t = int(p["type"], 16)
            if t in EXTENDED:
                continue
            typ = "0x%02x" % t
        else:
            typ = p["type"].upper()
        parts.append(dict(n=n, start=p["start"] * ss, length=p["size"] * ss, type=typ,
                          uuid=p.get("uuid"), name=p.get("name"), label=label))
    return parts


def getx(path, name):
    try:
        return os.getxattr(path, name).decode("utf-8", "backslashreplace")
    except OSError as e:
        return "<%s>" % ename(e)


def cmd_parts(args):
    """parts DUMP: "N START LENGTH" a partition."""
    for p in parse_dump(args[0]):
        print(p["n"], p["start"], p["length"])


def cmd_check(args):
    """check DIR NAME DUMP [NAME DUMP...]: DIR lists exactly each NAME and
    NAME.pN for the partitions of its DUMP ("-": none), of the right sizes
    and xattrs."""
    d, errs, want = args[0], [], set()
    for name, dump in zip(args[1::2], args[2::2]):
        want.add(name)
        for p in ([] if dump == "-" else parse_dump(dump)):
            f = "%s.p%d" % (name, p["n"])
            want.add(f)
            path = os.path.join(d, f)
            try:
                st = os.stat(path)
            except OSError as e:
                errs.append("%s: stat: %s" % (f, e))
                continue
            if not stat.S_ISREG(st.st_mode):
                errs.append("%s: not a regular file (mode %o)" % (f, st.st_mode))
            if st.st_size != p["length"]:
                errs.append("%s: size %d, expected %d" % (f, st.st_size, p["length"]))
            exp = {"user.nbd.partition": "number=%d start=%d length=%d" % (p["n"], p["start"], p["length"]),
                   "user.nbd.partition_type": p["type"]}
            if p["label"] == "gpt":
                exp["user.nbd.partition_uuid"] = p["uuid"].upper()
                if p["name"]:
                    exp["user.nbd.partition_name"] = p["name"]
            try:
                listed = os.listxattr(path)
            except OSError as e:
                listed = []
                errs.append("%s: listxattr: %s" % (f, e))
            for k, v in exp.items():
                got = getx(path, k)
                same = got.lower() == v.lower() if p["label"] == "dos" and k.endswith("_type") else got == v
                if not same:
                    errs.append("%s: %s is %r, expected %r" % (f, k, got, v))
                if k not in listed:
                    errs.append("%s: listxattr does not list %s (it lists %s)" % (f, k, listed))
    try:
        got = set(os.listdir(d))
    except OSError as e:
        got = set()
        errs.append("listing %s: %s" % (d, e))
    if got != want:
        errs.append("%s lists %s, expected %s" % (d, sorted(got), sorted(want)))
    for e in errs:
        print(e)
    sys.exit(1 if errs else 0)


def cmd_seekmap(args):
    """seekmap FILE: the data ranges by SEEK_DATA/SEEK_HOLE, "START END" each."""
    fd = os.open(args[0], os.O_RDONLY)
    size, off = os.fstat(fd).st_size, 0
    while off < size:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        h = os.lseek(fd, d, os.SEEK_HOLE)
        if not (off <= d < h <= size):
            sys.exit("SEEK_DATA(%d)=%d SEEK_HOLE(%d)=%d out of order (size %d)" % (off, d, d, h, size))
        print(d, h)
        off = h


def cmd_seek(args):
    """seek FILE data|hole OFFSET: lseek's answer, or the errno's name."""
    fd = os.open(args[0], os.O_RDONLY)
    try:
        print(os.lseek(fd, int(args[2]), os.SEEK_DATA if args[1] == "data" else os.SEEK_HOLE))
    except OSError as e:
        print(ename(e))


def cmd_hold(args):
    """hold FILE OFFSET r|rw ...: open each FILE, say "open", wait for a line
    on stdin, then pread 4096 bytes at OFFSET ("NAME read LEN SHA" or "NAME
    read ERRNO") and with rw pwrite 4096 bytes 0xa5 there and fsync ("NAME
    write ok" or "NAME write ERRNO")."""
    fds = [(p, os.open(p, os.O_RDWR), int(o), m) for p, o, m in zip(args[0::3], args[1::3], args[2::3])]
    print("open", flush=True)
    sys.stdin.readline()
    for path, fd, off, mode in fds:
        name = os.path.basename(path)
        try:
            data = os.pread(fd, 4096, off)
            print(name, "read", len(data), hashlib.sha256(data).hexdigest())
        except OSError as e:
            print(name, "read", ename(e))
        if mode == "rw":
            try:
                os.pwrite(fd, b"\xa5" * 4096, off)
                os.fsync(fd)
                print(name, "write ok")
            except OSError as e:
                print(name, "write", ename(e))
    print("done", flush=True)


def cmd_flip(args):
    """flip IMG OFFSET: invert the byte at OFFSET."""
    with open(args[0], "r+b") as f:
        f.seek(int(args[1]))
        b = f.read(1)[0]
        f.seek(int(args[1]))
        f.write(bytes([b ^ 0xFF]))


def mbr_entry(buf, i):
    o = 446 + 16 * i
    return buf[o + 4], struct.unpack_from("<II", buf, o + 8)


def ebr_chain(f):
    """The sectors of the EBRs (up to 8; a repeat ends it, marked "loop")."""
    f.seek(0)
    mbr = f.read(512)
    ext = [mbr_entry(mbr, i)[1][0] for i in range(4) if mbr_entry(mbr, i)[0] in EXTENDED][0]
    chain, rel = [], 0
    while len(chain) < 8:
        if ext + rel in chain:
            return chain, ext, True
        chain.append(ext + rel)
        f.seek((ext + rel) * 512)
        t, (s, n) = mbr_entry(f.read(512), 1)
        if t not in EXTENDED or n == 0:
            return chain, ext, False
        rel = s
    return chain, ext, True


def cmd_ebr(args):
    """ebr IMG [K M]: with K and M, point the link of the K-th EBR at the
    M-th; then print the chain of EBR sectors, "loop" after it if it loops."""
    with open(args[0], "r+b") as f:
        if len(args) == 3:
            chain, ext, _ = ebr_chain(f)
            k, m = int(args[1]), int(args[2])
            f.seek(chain[0] * 512 + 446 + 16)   # a link entry (type 5) to copy
            link = bytearray(f.read(16))
            struct.pack_into("<I", link, 8, chain[m - 1] - ext)
            f.seek(chain[k - 1] * 512 + 446 + 16)
            f.write(link)
        chain, ext, loop = ebr_chain(f)
        print(" ".join(map(str, chain)) + (" loop" if loop else ""))


def cmd_mbrsize(args):
    """mbrsize IMG SLOT SECTORS: set the length of primary entry SLOT (1-4)."""
    with open(args[0], "r+b") as f:
        f.seek(446 + 16 * (int(args[1]) - 1) + 12)
        f.write(struct.pack("<I", int(args[2])))


globals()["cmd_" + sys.argv[1]](sys.argv[2:])
EOF
chmod 0644 "$PT"
pt() { python3 "$PT" "$@"; }
upt() { as_user "$UPY" "$PT" "$@"; }

# zero_at FILE OFFSET LENGTH: LENGTH zero bytes into FILE at OFFSET, in place.
zero_at() { dd if=/dev/zero of="$1" bs=64k seek="$2" count="$3" oflag=seek_bytes iflag=count_bytes conv=notrunc status=none; }
# table_sha IMG: sha256 of the first and the last MiB of IMG.
table_sha() { { head -c "$MiB" "$1"; tail -c "$MiB" "$1"; } | sha256sum | cut -d' ' -f1; }
# clip START LENGTH: the "START END" ranges on stdin that fall in [START,
# START+LENGTH), relative to START.
clip() { awk -v s="$1" -v l="$2" '{a = $1 > s ? $1 : s; b = $2 < s + l ? $2 : s + l; if (a < b) printf "%d %d\n", a - s, b - s}'; }
# mark_parts IMG DUMP: random 4096 bytes at the start and at the end of each
# partition of DUMP in IMG (so that a window at a wrong offset reads wrong).
mark_parts() {
  local n s l
  rand_file "$T/mark" 8192
  while read -r n s l; do
    dd if="$T/mark" of="$1" bs=4096 count=1 seek="$s" oflag=seek_bytes conv=notrunc status=none
    dd if="$T/mark" of="$1" bs=4096 skip=1 count=1 seek=$((s + l - 4096)) oflag=seek_bytes conv=notrunc status=none
    rand_file "$T/mark" 8192
  done < <(pt parts "$2")
}
# check_content DIR NAME IMG DUMP [AS]: each partition file of DUMP reads
# as its window of IMG (read by AS, e.g. as_user, if given).
check_content() {
  local d=$1 name=$2 img=$3 dump=$4 as=${5:-} n s l got
  while read -r n s l; do
    got=$($as dd if="$d/$name.p$n" bs=1M status=none 2>"$T/err" | sha256sum | cut -d' ' -f1) ||
      got="a read error: $(cat "$T/err")"
    [ "$got" = "$(range_sha "$img" "$s" "$l")" ] ||
      soft_fail "$name.p$n does not read as bytes $s..$((s + l)) of $(basename "$img") ($got)"
  done < <(pt parts "$dump")
}
# urange_sha FILE OFFSET LENGTH: range_sha, read by the test user.
urange_sha() {
  as_user dd if="$1" bs=1M skip="$2" count="$3" iflag=skip_bytes,count_bytes status=none | sha256sum | cut -d' ' -f1
}
# expect_image IMG MODEL WHAT: IMG is byte for byte MODEL.
expect_image() {
  cmp "$1" "$2" >"$T/cmp.out" 2>&1 || soft_fail "$3: the image differs from the model: $(head -n 3 "$T/cmp.out")"
}
# expect_enospc WHAT CMD...: CMD fails with "No space left on device".
expect_enospc() {
  local what=$1; shift
  if "$@" 2>"$T/err"; then
    soft_fail "$what succeeded"
  elif ! grep -qi 'no space left' "$T/err"; then
    soft_fail "$what: '$(cat "$T/err")', expected ENOSPC"
  fi
}

# ======== GPT, mounted by the unprivileged user ========
G=$T/gpt.img
P1S=$((1 * MiB)) P1L=$((32 * MiB)) P2S=$((34 * MiB)) P2L=$((24 * MiB))
mkdir -p "$T/src/sub"
printf 'hello from mkfs.ext4 -d\n' >"$T/src/hello.txt"
rand_file "$T/src/sub/blob" 300001
mkfs.ext4 -q -F -d "$T/src" "$T/part1.img" $((P1L / 1024))k >"$T/mkfs.out" 2>&1 || fail "mkfs.ext4 failed: $(cat "$T/mkfs.out")"
truncate -s $((64 * MiB)) "$G"
sfdisk -q "$G" >"$T/sfdisk.out" 2>&1 <<EOF || fail "sfdisk (GPT) failed: $(cat "$T/sfdisk.out")"
label: gpt
start=$((P1S / 512)), size=$((P1L / 512)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="rootfs"
start=$((P2S / 512)), size=$((P2L / 512)), type=933AC7E1-2EB4-4F13-B844-0E14E2AEF915, name="scratch data"
EOF
dd if="$T/part1.img" of="$G" bs=64k seek=$((P1S / 65536)) conv=notrunc,sparse status=none
rand_file "$T/seekdata" 65536
write_at "$G" $((P2S + 3 * MiB)) "$T/seekdata"
sfdisk --json "$G" >"$T/gpt.json"
[ "$(pt parts "$T/gpt.json" | tr '\n' ' ')" = "1 $P1S $P1L 2 $P2S $P2L " ] || fail "setup: sfdisk made $(cat "$T/gpt.json")"
p1_sha=$(range_sha "$G" "$P1S" "$P1L")

serve_nbdkit gpt file "$G"
chmod 0666 "$SOCK"   # the user connects too
GURI=$(unix_uri "$SOCK")

# Naked: refused.
printf 'x\n' >"$T/over.img"
_mounts+=("$T/over.img")
rc=0
timeout -k 5 20 "$NBDFS" -f --partitions "$GURI" "$T/over.img" >"$T/naked.out" 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "--partitions over a regular file: nbdfs exited 0"
[ "$rc" != 124 ] && [ "$rc" != 137 ] || fail "--partitions over a regular file: nbdfs mounted and ran until killed: $(cat "$T/naked.out")"
! is_mounted "$T/over.img" || fail "--partitions over a regular file: mounted"
grep -qi 'partition' "$T/naked.out" || soft_fail "--partitions over a regular file: the message does not say why: $(cat "$T/naked.out")"
note "naked: $(head -n 1 "$T/naked.out")"

UM=$UT/m
as_user mkdir "$UM"
mount_nbdfs_as_user "$GURI" "$UM" --partitions --cache=read
as_user ls -A "$UM" >"$T/ls.out" || fail "ls $UM failed"
out=$(upt check "$UM" disk "$T/gpt.json") || soft_fail "GPT as the user: $out"
for a in user.nbd.uri user.nbd.block_size user.nbd.flags; do
  v=$(as_user getfattr --absolute-names --only-values -n "$a" "$UM/disk" 2>&1) && [ -n "$v" ] ||
    soft_fail "disk lost its xattr $a: '$v'"
done
[ "$(as_user stat -c %s "$UM/disk")" = $((64 * MiB)) ] || soft_fail "disk: size $(as_user stat -c %s "$UM/disk")"
check_content "$UM" disk "$G" "$T/gpt.json" as_user

# e2fsck and fuse2fs, both run by the user (fuse2fs needs no -o fakeroot
# here: mkfs.ext4 -d kept the files' modes, readable by all).
rc=0
as_user e2fsck -fn "$UM/disk.p1" >"$T/e2fsck.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || soft_fail "e2fsck -fn disk.p1 exited $rc: $(tail -n 5 "$T/e2fsck.out")"
as_user mkdir "$UT/fs"
_mounts+=("$UT/fs")
as_user fuse2fs -f -o ro "$UM/disk.p1" "$UT/fs" >"$T/fuse2fs.log" 2>&1 &
F2_PID=$!
track_pid "$F2_PID"
wait_until 20 is_mounted "$UT/fs" || fail "fuse2fs did not mount disk.p1: $(cat "$T/fuse2fs.log")"
got=$(as_user cat "$UT/fs/hello.txt") || soft_fail "fuse2fs: cannot read hello.txt"
[ "$got" = "$(cat "$T/src/hello.txt")" ] || soft_fail "fuse2fs: hello.txt reads '$got'"
as_user cmp "$UT/fs/sub/blob" "$T/src/sub/blob" >"$T/cmp.out" 2>&1 || soft_fail "fuse2fs: sub/blob differs: $(cat "$T/cmp.out")"
as_user fusermount3 -u "$UT/fs" || fail "fusermount3 -u of the fuse2fs mount failed"
wait "$F2_PID" || soft_fail "fuse2fs exited with status $?: $(cat "$T/fuse2fs.log")"
[ "$(range_sha "$G" "$P1S" "$P1L")" = "$p1_sha" ] || soft_fail "e2fsck -n or fuse2fs -o ro changed p1"
note "e2fsck -fn and fuse2fs -o ro on disk.p1 as $TEST_USER: ok"

# SEEK_DATA/SEEK_HOLE and st_blocks, against the server's map.
nbd_data_map "$GURI" >"$T/gpt.map"
want2=$(clip "$P2S" "$P2L" <"$T/gpt.map")
[ "$want2" = "$((3 * MiB)) $((3 * MiB + 65536))" ] ||
  fail "setup: the server's map of p2 is '$want2' (does the file system of $T keep holes?)"
got=$(upt seekmap "$UM/disk.p2" 2>&1) || true
[ "$got" = "$want2" ] || soft_fail "disk.p2: SEEK_DATA/SEEK_HOLE map '$got', expected '$want2'"
got=$(upt seek "$UM/disk.p2" data 0)
[ "$got" = $((3 * MiB)) ] || soft_fail "disk.p2: SEEK_DATA(0) = $got, expected $((3 * MiB))"
got=$(upt seek "$UM/disk.p2" hole $((3 * MiB)))
[ "$got" = $((3 * MiB + 65536)) ] || soft_fail "disk.p2: SEEK_HOLE(3 MiB) = $got, expected $((3 * MiB + 65536))"
got=$(upt seek "$UM/disk.p2" data $((3 * MiB + 65536)))
[ "$got" = ENXIO ] || soft_fail "disk.p2: SEEK_DATA after its data = $got, expected ENXIO (the disk has data after p2, the partition none)"
got=$(upt seek "$UM/disk.p2" hole $((P2L - 1)))
[ "$got" = $((P2L - 1)) ] || soft_fail "disk.p2: SEEK_HOLE(size-1) = $got, expected $((P2L - 1))"
want1=$(clip "$P1S" "$P1L" <"$T/gpt.map")
got=$(upt seekmap "$UM/disk.p1" 2>&1) || true
[ "$got" = "$want1" ] || soft_fail "disk.p1: SEEK_DATA/SEEK_HOLE map differs from the server's: $(diff <(echo "$want1") <(echo "$got") | head -n 6)"
for p in 1 2; do
  eval "want=\$want$p"
  bytes=$(map_bytes <<<"$want")
  wait_until 10 eval '[ "$(as_user stat -c %b "$UM/disk.p$p")" = $(((bytes + 511) / 512)) ]' ||
    soft_fail "disk.p$p: st_blocks $(as_user stat -c %b "$UM/disk.p$p"), expected $(((bytes + 511) / 512)) (the server's allocation in it)"
done

# Writes through the partitions: the whole image is compared with a model.
tsha=$(table_sha "$G")
E=$T/expect.img
cp --sparse=always "$G" "$E"
rand_file "$T/w1" "$MiB"
rand_file "$T/w2" 262144
as_user dd if="$T/w1" of="$UM/disk.p2" bs=1M seek=$((6 * MiB + 12345)) oflag=seek_bytes conv=notrunc,fsync status=none ||
  soft_fail "writing 1 MiB at 6 MiB+12345 of disk.p2 failed"
write_at "$E" $((P2S + 6 * MiB + 12345)) "$T/w1"
as_user dd if="$T/w2" of="$UM/disk.p2" bs=1M seek=$((12 * MiB + 100)) oflag=seek_bytes conv=notrunc,fsync status=none ||
  soft_fail "writing 256 KiB at 12 MiB+100 of disk.p2 failed"
write_at "$E" $((P2S + 12 * MiB + 100)) "$T/w2"
as_user fallocate -p -o $((12 * MiB + 5000)) -l 70000 "$UM/disk.p2" || soft_fail "punch hole in disk.p2 failed"
zero_at "$E" $((P2S + 12 * MiB + 5000)) 70000
as_user fallocate -z -o $((12 * MiB + 150000)) -l 30000 "$UM/disk.p2" || soft_fail "zero range in disk.p2 failed"
zero_at "$E" $((P2S + 12 * MiB + 150000)) 30000
as_user sync "$UM/disk.p2" || soft_fail "fsync of disk.p2 failed"
expect_image "$G" "$E" "after writing, punching and zeroing through disk.p2"
[ "$(urange_sha "$UM/disk.p2" $((6 * MiB + 12345)) "$MiB")" = "$(sha "$T/w1")" ] ||
  soft_fail "disk.p2 does not read back what was written"

# The ends: at the end ENOSPC, across it short (the first part lands).
rand_file "$T/w3" 8192
head -c 4096 "$T/w3" >"$T/w3a"
expect_enospc "a write at the end of disk.p1" \
  as_user dd if="$T/w3" of="$UM/disk.p1" bs=4096 count=1 seek=$((P1L / 4096)) conv=notrunc status=none
expect_enospc "an O_DIRECT write past the end of disk.p2" \
  as_user dd if="$T/w3" of="$UM/disk.p2" bs=4096 count=1 seek=$((P2L / 4096 + 100)) conv=notrunc oflag=direct status=none
expect_enospc "a write across the end of disk.p1 (should be short, then ENOSPC)" \
  as_user dd if="$T/w3" of="$UM/disk.p1" bs=8192 count=1 seek=$((P1L - 4096)) oflag=seek_bytes conv=notrunc,fsync status=none
write_at "$E" $((P1S + P1L - 4096)) "$T/w3a"
as_user sync "$UM/disk.p1" || soft_fail "fsync of disk.p1 failed"
for p in 1 2; do
  eval "len=\$P${p}L"
  [ "$(as_user stat -c %s "$UM/disk.p$p")" = "$len" ] || soft_fail "disk.p$p: size $(as_user stat -c %s "$UM/disk.p$p") after writing past its end"
  got=$(as_user dd if="$UM/disk.p$p" bs=4096 skip=$((len / 4096)) count=1 status=none | wc -c) || got="a read error"
  [ "$got" = 0 ] || soft_fail "disk.p$p: a read at the end returned $got bytes"
  got=$(as_user dd if="$UM/disk.p$p" bs=8192 skip=$((len - 4096)) count=1 iflag=skip_bytes status=none | wc -c) || got="a read error"
  [ "$got" = 4096 ] || soft_fail "disk.p$p: a read across the end returned $got bytes, expected 4096"
done
[ "$(urange_sha "$UM/disk.p1" $((P1L - 4096)) 8192)" = "$(sha "$T/w3a")" ] ||
  soft_fail "disk.p1: the last 4096 bytes do not read back as written"
expect_image "$G" "$E" "after the writes at and across the ends"
[ "$(table_sha "$G")" = "$tsha" ] || soft_fail "writes to the partitions changed the first or last MiB (the GPT)"

# ---- repartitioning through the mount ----
mkfifo "$T/hold.in"
as_user "$UPY" "$PT" hold "$UM/disk.p2" $((16 * MiB)) rw "$UM/disk.p1" $((4 * MiB)) r <"$T/hold.in" >"$T/hold.out" 2>&1 &
HOLD_PID=$!
track_pid "$HOLD_PID"
exec 8>"$T/hold.in"
wait_until 20 grep -q '^open' "$T/hold.out" || fail "could not hold disk.p1 and disk.p2 open: $(cat "$T/hold.out")"

as_user sfdisk -q --delete "$UM/disk" 2 >"$T/sfdisk.out" 2>&1 || fail "sfdisk --delete through the mount failed: $(cat "$T/sfdisk.out")"
sfdisk --json "$G" >"$T/gpt-del.json"
[ "$(pt parts "$T/gpt-del.json" | tr '\n' ' ')" = "1 $P1S $P1L " ] || fail "sfdisk --delete through the mount left: $(cat "$T/gpt-del.json")"
as_user ls -A "$UM" >"$T/ls.out" || fail "ls $UM failed after sfdisk --delete"
out=$(upt check "$UM" disk "$T/gpt-del.json") || soft_fail "after deleting p2 through the mount, then ls: $out"
cp --sparse=always "$G" "$E"
echo go >&8
exec 8>&-
wait "$HOLD_PID" || soft_fail "the holder failed: $(cat "$T/hold.out")"
grep -qx 'disk.p2 read EIO' "$T/hold.out" || soft_fail "a read from an fd on the deleted disk.p2: $(grep 'p2 read' "$T/hold.out"), expected EIO"
grep -qx 'disk.p2 write EIO' "$T/hold.out" || soft_fail "a write to an fd on the deleted disk.p2: $(grep 'p2 write' "$T/hold.out"), expected EIO"
grep -qx "disk.p1 read 4096 $(range_sha "$G" $((P1S + 4 * MiB)) 4096)" "$T/hold.out" ||
  soft_fail "a read from an fd on the unchanged disk.p1: $(grep 'p1 read' "$T/hold.out"), expected its bytes"
expect_image "$G" "$E" "a write to an fd on the deleted disk.p2"

# A new partition 3 where p2 was (from 40 MiB: 6 MiB into the old p2).
P3S=$((40 * MiB)) P3L=$((16 * MiB))
as_user sfdisk -d "$UM/disk" >"$T/dump" || fail "sfdisk -d through the mount failed"
printf '%s : start=%d, size=%d, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name="new part"\n' \
  "$UM/disk3" $((P3S / 512)) $((P3L / 512)) >>"$T/dump"
as_user sfdisk -q "$UM/disk" <"$T/dump" >"$T/sfdisk.out" 2>&1 || fail "sfdisk through the mount failed: $(cat "$T/sfdisk.out")"
sfdisk --json "$G" >"$T/gpt-new.json"
[ "$(pt parts "$T/gpt-new.json" | tr '\n' ' ')" = "1 $P1S $P1L 3 $P3S $P3L " ] || fail "sfdisk through the mount made: $(cat "$T/gpt-new.json")"
as_user ls -A "$UM" >"$T/ls.out" || fail "ls $UM failed after adding p3"
out=$(upt check "$UM" disk "$T/gpt-new.json") || soft_fail "after adding p3 through the mount, then ls: $out"
[ "$(urange_sha "$UM/disk.p3" 12345 "$MiB")" = "$(sha "$T/w1")" ] ||
  soft_fail "disk.p3 at 12345 does not read what was written through the old p2 at 6 MiB+12345"
check_content "$UM" disk "$G" "$T/gpt-new.json" as_user
unmount_nbdfs_as_user "$UM"
note "GPT as $TEST_USER: listing, xattrs, e2fsck, fuse2fs, seek, writes, ends, repartitioning: done"

# ======== MBR through [ nbdkit ... ] behind blocksize-policy ========
M=$T/mbr.img
truncate -s $((64 * MiB)) "$M"
sfdisk -q "$M" >"$T/sfdisk.out" 2>&1 <<EOF || fail "sfdisk (MBR) failed: $(cat "$T/sfdisk.out")"
label: dos
start=2049, size=16381, type=83
start=20480, size=100000, type=5
start=22528, size=20480, type=8e
start=45056, size=20480, type=fd
EOF
sfdisk --json "$M" >"$T/mbr.json"
Q1S=$((2049 * 512)) Q1L=$((16381 * 512))
[ "$(pt parts "$T/mbr.json" | tr '\n' ' ')" = "1 $Q1S $Q1L 5 $((22528 * 512)) $((20480 * 512)) 6 $((45056 * 512)) $((20480 * 512)) " ] ||
  fail "setup: sfdisk made $(cat "$T/mbr.json")"
mark_parts "$M" "$T/mbr.json"
# Random bytes just before and after p1, in its first and last 4096-byte blocks.
rand_file "$T/around" 65536
head -c 512 "$T/around" >"$T/around512"
write_at "$M" $((Q1S - 512)) "$T/around512"
write_at "$M" $((Q1S + Q1L)) "$T/around"
mkdir "$T/mb"
mount_nbdfs_argv "$T/mb" -f --partitions --cache=read [ nbdkit --filter=blocksize-policy file "$M" \
  blocksize-minimum=4096 blocksize-preferred=65536 blocksize-error-policy=error ] "$T/mb/vm.raw"
bs=$(getfattr --absolute-names --only-values -n user.nbd.block_size "$T/mb/vm.raw" 2>&1) || true
[[ "$bs" == 4096[!0-9]* ]] || fail "setup: the server's block size is '$bs', expected a minimum of 4096"
out=$(pt check "$T/mb" vm.raw "$T/mbr.json") || soft_fail "MBR: $out"
check_content "$T/mb" vm.raw "$M" "$T/mbr.json"
E=$T/expect-mbr.img
cp --sparse=always "$M" "$E"
F1=$T/mb/vm.raw.p1
rand_file "$T/w4" 10000
write_at "$F1" 1000 "$T/w4" conv=fsync || soft_fail "an unaligned write to vm.raw.p1 failed"
write_at "$E" $((Q1S + 1000)) "$T/w4"
write_at "$T/mb/vm.raw.p5" 513 "$T/w4" conv=fsync || soft_fail "an unaligned write to vm.raw.p5 failed"
write_at "$E" $((22528 * 512 + 513)) "$T/w4"
write_at "$T/mb/vm.raw.p6" $((20480 * 512 - 10000)) "$T/w4" conv=fsync || soft_fail "a write up to the end of vm.raw.p6 failed"
write_at "$E" $((45056 * 512 + 20480 * 512 - 10000)) "$T/w4"
[ "$(falloc "$F1" 'PUNCH_HOLE|KEEP_SIZE' 300 5000)" = ok ] || soft_fail "an unaligned punch in vm.raw.p1 failed"
zero_at "$E" $((Q1S + 300)) 5000
[ "$(falloc "$F1" ZERO_RANGE $((Q1L - 3000)) 3000)" = ok ] || soft_fail "a zero range up to the end of vm.raw.p1 failed"
zero_at "$E" $((Q1S + Q1L - 3000)) 3000
expect_enospc "a write at the end of vm.raw.p1" \
  dd if="$T/w3" of="$F1" bs=4096 count=1 seek="$Q1L" oflag=seek_bytes conv=notrunc status=none
expect_enospc "a write across the end of vm.raw.p1 (should be short, then ENOSPC)" \
  dd if="$T/w3" of="$F1" bs=8192 count=1 seek=$((Q1L - 4096)) oflag=seek_bytes conv=notrunc,fsync status=none
write_at "$E" $((Q1S + Q1L - 4096)) "$T/w3a"
sync "$F1" "$T/mb/vm.raw.p5" "$T/mb/vm.raw.p6" || soft_fail "fsync of the partition files failed"
expect_image "$M" "$E" "unaligned writes, punch, zero and writes at the end on a 4096-byte-block server"
check_content "$T/mb" vm.raw "$E" "$T/mbr.json"
unmount_nbdfs "$T/mb"
note "MBR ([ nbdkit ], minimum block size 4096, DIR/NAME): done"

# ======== --exports: 4096-byte sectors, damaged primary GPT ========
mkdir "$T/exp"
K=$T/exp/gpt4k.img
truncate -s $((32 * MiB)) "$K"
cat >"$T/4k.sfdisk" <<EOF
label: gpt
sector-size: 4096

${K}1 : start=256, size=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="four-k one"
${K}3 : start=2560, size=3000, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
EOF
printf 'I\n%s\nw\n' "$T/4k.sfdisk" | fdisk -b 4096 "$K" >"$T/fdisk.out" 2>&1 || fail "fdisk -b 4096 failed: $(cat "$T/fdisk.out")"
printf 'O\n%s\nq\n' "$T/4k.dump" | fdisk -b 4096 "$K" >>"$T/fdisk.out" 2>&1 || fail "fdisk -b 4096 (dump) failed: $(cat "$T/fdisk.out")"
[ "$(pt parts "$T/4k.dump" | tr '\n' ' ')" = "1 $((256 * 4096)) $((2048 * 4096)) 3 $((2560 * 4096)) $((3000 * 4096)) " ] ||
  fail "setup: fdisk -b 4096 made $(cat "$T/4k.dump")"
printf 'EFI PART' >"$T/efi-sig"
! cmp -s -n 8 -i 512:0 "$K" "$T/efi-sig" && cmp -s -n 8 -i 4096:0 "$K" "$T/efi-sig" ||
  fail "setup: $K has no GPT header at 4096, or one at 512"
mark_parts "$K" "$T/4k.dump"

B=$T/base.img
truncate -s $((16 * MiB)) "$B"
sfdisk -q "$B" >"$T/sfdisk.out" 2>&1 <<EOF || fail "sfdisk (base) failed: $(cat "$T/sfdisk.out")"
label: gpt
start=2048, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="données"
start=12288, size=8192, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="basic"
EOF
sfdisk --json "$B" >"$T/base.json"
mark_parts "$B" "$T/base.json"
cp "$B" "$T/exp/hdr.img"
pt flip "$T/exp/hdr.img" $((512 + 0x38))          # the disk GUID in the primary header
cp "$B" "$T/exp/ent.img"
pt flip "$T/exp/ent.img" $((1024 + 0x38))         # the name of entry 1 in the primary array
for i in hdr ent; do
  sfdisk --json "$T/exp/$i.img" >"$T/$i.json" 2>"$T/$i.err"
  grep -qi corrupt "$T/$i.err" && [ "$(pt parts "$T/$i.json")" = "$(pt parts "$T/base.json")" ] ||
    fail "setup: sfdisk does not read $i.img from the backup: $(cat "$T/$i.err" "$T/$i.json")"
done
serve_nbdkit exp file dir="$T/exp"
mkdir "$T/e"
NBDFS_LOG=$T/nbdfs-exports.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/e" --exports --partitions
out=$(pt check "$T/e" gpt4k.img "$T/4k.dump" hdr.img "$T/base.json" ent.img "$T/base.json") || soft_fail "--exports: $out"
check_content "$T/e" gpt4k.img "$K" "$T/4k.dump"
check_content "$T/e" hdr.img "$T/exp/hdr.img" "$T/base.json"
check_content "$T/e" ent.img "$T/exp/ent.img" "$T/base.json"
unmount_nbdfs "$T/e"
note "--exports: 4096-byte-sector GPT, damaged primary header, damaged primary entries: done"

# ======== --exports: an export named like a partition file keeps its name ========
mkdir "$T/clash"
cp "$B" "$T/clash/disk.img"
rand_file "$T/clash/disk.img.p1" $((1 * MiB))
serve_nbdkit clash file dir="$T/clash"
mkdir "$T/c"
NBDFS_LOG=$T/nbdfs-clash.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/c" --exports --partitions
listed=$(ls -1 "$T/c" | sort | tr '\n' ' ')
[ "$listed" = "disk.img disk.img.p1 disk.img.p2 " ] ||
  fail "clash: the mount lists '$listed', expected each of disk.img, disk.img.p1 (the export), disk.img.p2 once"
[ "$(stat -c %s "$T/c/disk.img.p1")" = $((1 * MiB)) ] && cmp -s "$T/c/disk.img.p1" "$T/clash/disk.img.p1" ||
  fail "clash: disk.img.p1 is not the export of that name"
[ -z "$(getfattr --absolute-names --only-values -n user.nbd.partition "$T/c/disk.img.p1" 2>/dev/null)" ] ||
  fail "clash: disk.img.p1 has a partition's xattr"
[ "$(getfattr --absolute-names --only-values -n user.nbd.partition "$T/c/disk.img.p2" 2>/dev/null)" = \
  "number=2 start=$((12288 * 512)) length=$((8192 * 512))" ] || fail "clash: disk.img.p2 is not partition 2"
n=$(grep -c "partition 1 not shown: an export's file is named disk.img.p1 already" "$T/nbdfs-clash.log")
[ "$n" = 1 ] || fail "clash: $n log lines name the clash, expected 1: $(cat "$T/nbdfs-clash.log")"
# An export that appears later under a partition file's name is not shown:
# the name keeps naming the partition.
rand_file "$T/clash/disk.img.p2" $((1 * MiB))
# (listings reach the server at most once a second: list until one did)
later_export_seen() {
  ls "$T/c" >/dev/null &&
    grep -q "export 'disk.img.p2' not shown: a partition file of disk.img has its name" "$T/nbdfs-clash.log"
}
wait_until 10 later_export_seen || fail "clash: no log line names the later export: $(cat "$T/nbdfs-clash.log")"
listed=$(ls -1 "$T/c" | sort | tr '\n' ' ')
[ "$listed" = "disk.img disk.img.p1 disk.img.p2 " ] ||
  fail "clash: after export disk.img.p2 appeared the mount lists '$listed'"
[ "$(getfattr --absolute-names --only-values -n user.nbd.partition "$T/c/disk.img.p2" 2>/dev/null)" = \
  "number=2 start=$((12288 * 512)) length=$((8192 * 512))" ] ||
  fail "clash: disk.img.p2 stopped being partition 2 when an export of that name appeared"
unmount_nbdfs "$T/c"
note "--exports: a name shown first keeps its file (export or partition), one log line each: done"

# ======== broken tables ========
L=$T/loop.img
truncate -s $((32 * MiB)) "$L"
sfdisk -q "$L" >"$T/sfdisk.out" 2>&1 <<EOF || fail "sfdisk (logical partitions) failed: $(cat "$T/sfdisk.out")"
label: dos
start=2048, size=8192, type=83
start=12288, size=40960, type=5
start=14336, size=8192, type=83
start=24576, size=8192, type=83
start=34816, size=8192, type=83
EOF
[ "$(pt ebr "$L")" = "12288 22528 32768" ] || fail "setup: EBR chain $(pt ebr "$L")"
mkdir "$T/broken"
cp "$L" "$T/broken/ebr-self.img"
[ "$(pt ebr "$T/broken/ebr-self.img" 2 2)" = "12288 22528 loop" ] || fail "setup: ebr-self.img does not loop"
cp "$L" "$T/broken/ebr-cycle.img"
[ "$(pt ebr "$T/broken/ebr-cycle.img" 3 2)" = "12288 22528 32768 loop" ] || fail "setup: ebr-cycle.img does not loop"
cp "$L" "$T/broken/overlap.img"
pt mbrsize "$T/broken/overlap.img" 1 20000        # p1 now runs into the extended p2
cp "$B" "$T/broken/gpt-both.img"
pt flip "$T/broken/gpt-both.img" $((512 + 0x38))
pt flip "$T/broken/gpt-both.img" $((16 * MiB - 512 + 0x38))
out=$(sfdisk --json "$T/broken/gpt-both.img" 2>&1) || true
grep -q '"type": "ee"' <<<"$out" || fail "setup: sfdisk reads a GPT in gpt-both.img: $out"
for img in "$T"/broken/*.img; do
  n=$(basename "$img" .img)
  serve_nbdkit "b-$n" file "$img"
  mkdir "$T/b-$n"
  log=$T/nbdfs-$n.log
  NBDFS_LOG=$log mount_nbdfs "$(unix_uri "$SOCK")" "$T/b-$n" --partitions
  [ "$(ls -A "$T/b-$n")" = disk ] || soft_fail "$n: the broken table shows files: $(ls -A "$T/b-$n" | tr '\n' ' ')"
  [ "$(sha "$T/b-$n/disk")" = "$(sha "$img")" ] || soft_fail "$n: the disk file does not read as the image"
  count=$(grep -c 'partition table' "$log" || true)
  [ "$count" = 1 ] || soft_fail "$n: $count log lines with 'partition table', expected 1: $(cat "$log")"
  case $n in ebr-*) why=loop ;; overlap) why=overlap ;; gpt-*) why=GPT ;; esac
  grep 'partition table' "$log" | grep -qi "$why" || soft_fail "$n: the log line does not say why (no '$why'): $(cat "$log")"
  note "$n: $(grep -m1 'partition table' "$log" || true)"
  unmount_nbdfs "$T/b-$n"
done
finish_test
