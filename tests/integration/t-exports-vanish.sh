#!/bin/bash
# --exports: what happens to files whose export leaves the listing, and the
# cost of keeping the listing current.  nbdkit's sh plugin lists the names
# in $CTL/list (edited by the test) and serves export NAME from
# $CTL/data/NAME; every open is appended to $CTL/opens (NBD_OPT_INFO and
# NBD_OPT_GO both open the export in nbdkit), every listing to $CTL/lists.
#  - a descriptor held on an export that vanishes fails read, write,
#    fsync, fallocate and SEEK_DATA with EIO (never hangs), and keeps
#    failing when the export is listed again; a new open then works;
#  - exports coming and going under new names do not grow the table: the
#    slots of vanished, unused files are recycled (inode numbers keep their
#    slot in the low 32 bits), and a recycled slot's old inode number
#    names nothing;
#  - an export of size 0 is probed (a full connection) once, not at every
#    listing;
#  - an NBD_OPT_INFO size above INT64_MAX (fake server) is refused and
#    logged; the file shows NBD_OPT_GO's size, never a negative one.
. "$(dirname "$0")/lib.sh"

MiB=1048576
EIO=5
CTL=$T/ctl
mkdir -p "$CTL/data" "$T/mnt"
M=$T/mnt
cat >"$T/plugin.sh" <<'EOF'
#!/bin/bash
case "$1" in
  list_exports) echo list >>"$CTL/lists"; echo NAMES; cat "$CTL/list" ;;
  open)
    echo "$3" >>"$CTL/opens"
    [ -e "$CTL/data/$3" ] || { echo "no export '$3'" >&2; exit 1; }
    echo "$CTL/data/$3" ;;
  get_size) stat -c %s "$2" ;;
  pread) dd if="$2" skip="$4" count="$3" iflag=skip_bytes,count_bytes status=none ;;
  pwrite) dd of="$2" seek="$4" oflag=seek_bytes conv=notrunc status=none ;;
  can_write) exit 0 ;;
  *) exit 2 ;;
esac
EOF
chmod +x "$T/plugin.sh"
rand_file "$CTL/data/alpha" $((4 * MiB))
rand_file "$CTL/data/beta" $((1 * MiB))
: >"$CTL/data/empty"
printf '%s\n' alpha beta empty >"$CTL/list"

CTL=$CTL serve_nbdkit vanish sh "$T/plugin.sh"
mount_nbdfs "$(unix_uri "$SOCK")" "$M" --exports -v

listing() { (cd "$M" && ls -A | sort | tr '\n' ' '); }
[ "$(listing)" = "alpha beta empty " ] || fail "initial listing: $(listing)"

# try_fd FD OP: one operation on an inherited descriptor, bounded; prints
# "ok" or "errno N"; exit 124 = hang.
try_fd() {
  timeout 20 python3 -c '
import os, sys
fd, op = int(sys.argv[1]), sys.argv[2]
try:
    if op == "read": os.pread(fd, 4096, 65536)
    elif op == "write": os.pwrite(fd, b"x" * 4096, 65536)
    elif op == "fsync": os.fsync(fd)
    elif op == "punch":
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
        if libc.fallocate(fd, 3, ctypes.c_long(0), ctypes.c_long(4096)) != 0:
            raise OSError(ctypes.get_errno(), "fallocate")
    elif op == "seek": os.lseek(fd, 0, os.SEEK_DATA)
    print("ok")
except OSError as e:
    print("errno", e.errno)' "$@"
}

# ---- 1. a held descriptor fails with EIO once its export is gone ----
exec 3<>"$M/alpha"
for op in read write fsync seek; do
  [ "$(try_fd 3 $op)" = ok ] || fail "$op on alpha (listed) failed: $(try_fd 3 $op)"
done
printf '%s\n' beta empty >"$CTL/list"
wait_until 15 eval '[ "$(listing)" = "beta empty " ]' || fail "alpha did not disappear: $(listing)"
for op in read write fsync punch seek; do
  r=$(try_fd 3 $op) || fail "$op on alpha (gone) hung or crashed: $r"
  [ "$r" = "errno $EIO" ] || fail "$op on alpha (gone) gave '$r', not EIO"
done
printf '%s\n' alpha beta empty >"$CTL/list"
# (The listing, not [ -e ]: a dentry the kernel still caches for the old
# alpha would satisfy that before the next refresh.)
wait_until 15 eval '[ "$(listing)" = "alpha beta empty " ]' || fail "alpha did not come back: $(listing)"
r=$(try_fd 3 read) || fail "read on alpha (held across its absence) hung: $r"
[ "$r" = "errno $EIO" ] || fail "a descriptor opened before alpha vanished works again: '$r'"
[ "$(sha "$M/alpha")" = "$(sha "$CTL/data/alpha")" ] || fail "alpha (back, opened anew) reads differently"
{ exec 3>&-; } 2>/dev/null || true # (close reports EIO too: its writes may not have reached the server)

# ---- 4. an export of size 0 is probed once ----
# alpha and beta report their sizes through INFO; empty reports 0, which
# nbd-server 3.24 also does for exports it has, so nbdfs opens it (GO) to
# check.  Whatever it finds, it keeps for a while.
# (Listings ask NBD_OPT_INFO for exports already known only once a minute:
# beta's opens count those; empty's opens beyond them are probes.)
lists0=$(wc -l <"$CTL/lists")
for i in 1 2 3 4; do sleep 1.1; ls "$M" >/dev/null; done
lists=$(( $(wc -l <"$CTL/lists") - lists0 ))
opens_of() { grep -cx "$1" "$CTL/opens" || true; }
probes=$(( $(opens_of empty) - $(opens_of beta) ))
note "listings: $lists more; opens: beta $(opens_of beta), empty $(opens_of empty)"
[ "$lists" -ge 3 ] || fail "only $lists listings in 4 directory reads over 4 s"
[ "$probes" -le 1 ] || fail "the empty export was probed $probes times"
[ "$(stat -c %s "$M/empty")" = 0 ] || fail "empty: size $(stat -c %s "$M/empty")"

# ---- 3. exports coming and going do not grow the table ----
slot() { echo $(( $(stat -c %i "$1") & 0xffffffff )); }
max=$(slot "$M/beta")
for f in alpha empty; do s=$(slot "$M/$f"); [ "$s" -gt "$max" ] && max=$s; done
printf '%s\n' alpha beta empty >"$CTL/list"
old_ino=
for i in 1 2 3 4 5 6; do
  rand_file "$CTL/data/tmp$i" 65536
  printf '%s\n' alpha beta empty "tmp$i" >"$CTL/list"
  wait_until 15 eval 'ls "$M" >/dev/null; [ -e "$M/tmp$i" ]' || fail "tmp$i did not appear: $(listing)"
  [ "$(sha "$M/tmp$i")" = "$(sha "$CTL/data/tmp$i")" ] || fail "tmp$i reads differently"
  s=$(slot "$M/tmp$i")
  note "tmp$i: inode $(stat -c %i "$M/tmp$i") (slot $s)"
  [ "$s" -le $((max + 2)) ] || fail "tmp$i took slot $s: the table grew past $((max + 2))"
  [ -n "$old_ino" ] || old_ino=$(stat -c %i "$M/tmp$i")
  rm "$CTL/data/tmp$i"
done
[ "$(listing)" = "alpha beta empty tmp6 " ] || fail "listing after the churn: $(listing)"
# Recycled slots got new inode numbers: the first tmp's number names nothing.
[ "$(stat -c %i "$M/tmp6")" != "$old_ino" ] || fail "tmp6 has tmp1's inode number $old_ino"

unmount_nbdfs "$M"

# ---- 5. an INFO size above INT64_MAX is refused ----
serve_fake huge --scenario info-huge-size --export disk --size $((2 * MiB))
mount_nbdfs "$(unix_uri "$SOCK")" "$M" --exports -v
[ "$(ls "$M")" = disk ] || fail "fake server's listing: $(ls "$M")"
size=$(stat -c %s "$M/disk")
[ "$size" = $((2 * MiB)) ] || fail "disk shows size $size (INFO said 2^64 - 4096, GO $((2 * MiB)))"
grep -q "ignoring the server's NBD_INFO_EXPORT answer (a size above INT64_MAX" "$T/nbdfs.log" ||
  fail "the refused INFO size was not logged: $(cat "$T/nbdfs.log")"
[ "$(sha "$M/disk")" = "$(python3 "$(dirname "$0")/../fake-nbd-server.py" --print-pattern 0 $((2 * MiB)) | sha256sum | cut -d' ' -f1)" ] ||
  fail "disk reads differently"
unmount_nbdfs "$M"
echo ok
