#!/bin/bash
# --exports against qemu-storage-daemon serving three named NBD exports of
# three raw files on a Unix socket: "one" (writable), "two" (read-only, with
# a description) and the default export "" (writable).
#  - the directory lists exactly "default", "one", "two" with the files'
#    sizes and modes 0644/0444/0644; user.nbd.description of "two" is the
#    one given to qemu;
#  - every file reads back as its backing file;
#  - writes (aligned, odd offsets, at the end, into two files at the same
#    time) round-trip: read back through the mount, seen by nbdcopy after
#    fsync, and in the backing files after unmount and after the daemon has
#    exited (sha256 and qemu-img compare); the untouched files stay as
#    they were; "two" refuses writes with EROFS;
#  - with -r every file is 0444 and refuses writes.
. "$(dirname "$0")/lib.sh"

command -v qemu-storage-daemon >/dev/null || fail "qemu-storage-daemon is not installed (Debian: qemu-system-common)"

MiB=1048576
I1=$T/one.img I2=$T/two.img I3=$T/def.img
rand_file "$I1" $((8 * MiB))
rand_file "$I2" $((3 * MiB))
truncate -s $((2 * MiB + 512)) "$I3"
rand_file "$T/init" $((MiB / 2))
write_at "$I3" $((MiB / 4)) "$T/init"
for f in "$I1" "$I2" "$I3"; do cp "$f" "$f.expected"; done

SOCK=$T/qsd.sock
qemu-storage-daemon \
  --blockdev driver=file,node-name=f1,filename="$I1" \
  --blockdev driver=file,node-name=f2,filename="$I2",read-only=on \
  --blockdev driver=file,node-name=f3,filename="$I3" \
  --nbd-server addr.type=unix,addr.path="$SOCK" \
  --export type=nbd,id=e1,node-name=f1,name=one,writable=on \
  --export type=nbd,id=e2,node-name=f2,name=two,description="the second disk" \
  --export type=nbd,id=e3,node-name=f3,name=,writable=on \
  --pidfile "$T/qsd.pid" --daemonize >"$T/qsd.log" 2>&1 ||
  fail "qemu-storage-daemon did not start: $(cat "$T/qsd.log")"
wait_until 10 test -s "$T/qsd.pid" || fail "no pid file from qemu-storage-daemon"
SERVER_PID=$(cat "$T/qsd.pid")
track_pid "$SERVER_PID"
wait_until 10 test -S "$SOCK" || fail "no socket from qemu-storage-daemon"
URI=$(unix_uri "$SOCK")

mkdir "$T/mnt"
M=$T/mnt
mount_nbdfs "$URI" "$M" --exports -v

listing=$(cd "$M" && ls -A | sort | tr '\n' ' ')
[ "$listing" = "default one two " ] || fail "directory lists '$listing', expected 'default one two'"
for f in one:$I1:644 two:$I2:444 default:$I3:644; do
  IFS=: read -r name backing mode <<<"$f"
  got=$(stat -c %s "$M/$name")
  [ "$got" = "$(stat -c %s "$backing")" ] || fail "$name: size $got, expected $(stat -c %s "$backing")"
  got=$(stat -c %a "$M/$name")
  [ "$got" = "$mode" ] || fail "$name: mode $got, expected $mode"
  [ "$(sha "$M/$name")" = "$(sha "$backing")" ] || fail "$name: content differs from its backing file"
done
desc=$(getfattr --absolute-names --only-values -n user.nbd.description "$M/two")
[ "$desc" = "the second disk" ] || fail "two: user.nbd.description is '$desc'"
[ "$(getfattr --absolute-names --only-values -n user.nbd.export "$M/default")" = "" ] ||
  fail "default: user.nbd.export is not empty"

# write_both FILE EXPECTED OFFSET SRC: through the mount and into EXPECTED.
write_both() {
  write_at "$1" "$3" "$4" || fail "write of $4 at $3 into $1 failed"
  write_at "$2" "$3" "$4"
}
rand_file "$T/p1" $((2 * MiB))
rand_file "$T/p2" 777
rand_file "$T/p3" 4096
rand_file "$T/p4" $((MiB + 1))
write_both "$M/one" "$I1.expected" 0 "$T/p1"
write_both "$M/one" "$I1.expected" $((3 * MiB + 5)) "$T/p2"
write_both "$M/one" "$I1.expected" $((8 * MiB - 4096)) "$T/p3"
write_both "$M/default" "$I3.expected" 511 "$T/p2"
write_both "$M/default" "$I3.expected" $((2 * MiB + 512 - 777)) "$T/p2"

# Two files written at the same time.
write_at "$M/one" $((5 * MiB)) "$T/p4" & w1=$!
write_at "$M/default" $((MiB / 2)) "$T/p4" & w2=$!
wait "$w1" || fail "concurrent write into one failed"
wait "$w2" || fail "concurrent write into default failed"
write_at "$I1.expected" $((5 * MiB)) "$T/p4"
write_at "$I3.expected" $((MiB / 2)) "$T/p4"

# The read-only export refuses writes.
if dd if="$T/p3" of="$M/two" conv=notrunc status=none 2>"$T/dd.err"; then
  fail "write to the read-only export succeeded"
fi
grep -qi 'read-only file system' "$T/dd.err" || fail "write to two: $(cat "$T/dd.err"), expected EROFS"

for f in one:$I1 default:$I3 two:$I2; do
  IFS=: read -r name backing <<<"$f"
  python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.close(fd)' "$M/$name" ||
    fail "fsync of $name failed"
  [ "$(sha "$M/$name")" = "$(sha "$backing.expected")" ] || fail "$name reads back differently through the mount"
  exp=$name; [ "$name" = default ] && exp=
  server_copy "$(unix_uri "$SOCK" "$exp")" "$T/server-$name.img"
  [ "$(sha "$T/server-$name.img")" = "$(sha "$backing.expected")" ] || fail "$name: nbdcopy sees different content"
done

unmount_nbdfs "$M"

# --exports -r: every file read-only, writes refused, nothing changes.
mount_nbdfs "$URI" "$M" --exports -r
for name in one two default; do
  [ "$(stat -c %a "$M/$name")" = 444 ] || fail "-r: $name has mode $(stat -c %a "$M/$name")"
  if dd if="$T/p3" of="$M/$name" conv=notrunc status=none 2>"$T/dd.err"; then
    fail "-r: write to $name succeeded"
  fi
done
[ "$(sha "$M/one")" = "$(sha "$I1.expected")" ] || fail "-r: one reads differently"
unmount_nbdfs "$M"

kill "$SERVER_PID"
wait_until 30 eval '! pid_alive "$SERVER_PID"' || fail "qemu-storage-daemon did not exit"
for f in one:$I1 default:$I3 two:$I2; do
  IFS=: read -r name backing <<<"$f"
  [ "$(sha "$backing")" = "$(sha "$backing.expected")" ] || fail "$name: backing file differs from the expected image"
  qemu-img compare -f raw -F raw "$backing.expected" "$backing" >"$T/compare.log" 2>&1 ||
    fail "$name: qemu-img compare: $(cat "$T/compare.log")"
done
echo ok
