#!/bin/bash
# The README recipe "the files inside a VM disk, without root", as written:
#   nbdfs --partitions [ qemu-nbd -r -f qcow2 vm.qcow2 ] mnt/
#   fuse2fs -o ro,fakeroot mnt/disk.p1 root/
# on a qcow2 made from a GPT disk with ext4 in partition 1.  The file put
# there by mkfs.ext4 -d reads back through both layers; unmounting leaves
# no server running and the qcow2 unchanged.
. "$(dirname "$0")/lib.sh"

MiB=1048576
cd "$T"
truncate -s $((64 * MiB)) raw.img
printf 'label: gpt\nstart=2048, size=%d, type=L\n' $((32 * MiB / 512)) | sfdisk -q raw.img
mkdir src
printf 'inside the VM disk\n' >src/hello.txt
mkfs.ext4 -q -F -d src p1.img $((32 * MiB / 1024))k >"$T/mkfs.log" 2>&1 || fail "mkfs.ext4: $(cat "$T/mkfs.log")"
dd if=p1.img of=raw.img bs=1M seek=1 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 raw.img vm.qcow2
before=$(sha vm.qcow2)

mkdir mnt root
mount_nbdfs_argv "$T/mnt" -f --partitions [ qemu-nbd -r -f qcow2 vm.qcow2 ] "$T/mnt"
[ "$(ls mnt | tr '\n' ' ')" = "disk disk.p1 " ] || fail "listing: $(ls mnt)"
e2fsck -fn mnt/disk.p1 >"$T/fsck.log" 2>&1 || fail "e2fsck -fn mnt/disk.p1: $(cat "$T/fsck.log")"
_mounts+=("$T/root")
fuse2fs -o ro,fakeroot mnt/disk.p1 root/ >"$T/fuse2fs.log" 2>&1 || fail "fuse2fs: $(cat "$T/fuse2fs.log")"
wait_until 10 is_mounted "$T/root" || fail "fuse2fs did not mount"
[ "$(cat root/hello.txt)" = "inside the VM disk" ] || fail "hello.txt through fuse2fs: $(cat root/hello.txt 2>&1)"
fusermount3 -u root
server=$(pgrep -P "$NBDFS_PID" || true)
[ -n "$server" ] || fail "no qemu-nbd under nbdfs"
unmount_nbdfs "$T/mnt"
pid_alive "$server" && fail "qemu-nbd $server still running after unmount"
[ "$(sha vm.qcow2)" = "$before" ] || fail "the read-only recipe changed vm.qcow2"
qemu-img check -q vm.qcow2 || fail "qemu-img check failed"
