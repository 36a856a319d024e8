#!/bin/bash
# The command line as mount.fuse3 and fstab write it.
#  - "URI MOUNTPOINT -f -o connections=2,ro,timeout=5" (options after the
#    positionals): 2 connections reach the server (the default is 4), the
#    file is 0444, writes fail with EROFS, and ro reached the mount itself
#  - [ CMD ] with options of its own (--filter=log, which nbdfs does not
#    know) followed by MOUNTPOINT and -o: the command runs as given and
#    the trailing -o applies
#  - mount.fuse3 "nbdfs#URI" MOUNTPOINT -o ...,_netdev,nofail,x-...,
#    pidfile=FILE: the daemon mounts, honours the -o items and writes FILE
#  - -o connections=abc and -o readonly=1: exit 2, one line, nothing mounted
. "$(dirname "$0")/lib.sh"

SIZE=$((8 * 1048576))
serve_nbdkit mem --filter=log memory "$SIZE" logfile="$T/requests.log"
URI=$(unix_uri "$SOCK")

# connections LOG: how many connections the nbdkit log filter saw open.
connections() { grep -c ' Connect export=' "$1" || true; }

# expect_connections LOG N: N connections, and no more a moment later.
expect_connections() {
  local log=$1 n=$2
  wait_until 10 eval '[ "$(connections "$log")" -ge "$n" ]' ||
    fail "expected $n connections, the server saw $(connections "$log")"
  sleep 0.5
  [ "$(connections "$log")" = "$n" ] || fail "expected $n connections, the server saw $(connections "$log")"
}

# expect_read_only FILE: mode 0444, EROFS on write.
expect_read_only() {
  [ "$(stat -c %a "$1")" = 444 ] || fail "read-only: $1 has mode $(stat -c %a "$1"), expected 444"
  if dd if=/dev/zero of="$1" bs=4k count=1 conv=notrunc status=none 2>"$T/err"; then
    fail "read-only: a write to $1 succeeded"
  fi
  grep -qi 'read-only file system' "$T/err" || fail "read-only: write failed with '$(cat "$T/err")', expected EROFS"
}

# ro_mount DIR: the mount on DIR has the kernel's "ro" flag (-o ro reached FUSE).
ro_mount() { awk -v m="$1" '$2 == m {print $4}' /proc/mounts | tr , '\n' | grep -qx ro; }

# ---- options after the positionals ----
mkdir "$T/m"
mount_nbdfs_argv "$T/m" "$URI" "$T/m" -f -o connections=2,ro,timeout=5
expect_connections "$T/requests.log" 2
expect_read_only "$T/m/disk"
ro_mount "$T/m" || fail "-o ro was not passed on to the mount: $(grep " $T/m " /proc/mounts)"
head -c 65536 "$T/m/disk" >/dev/null || fail "reading failed"
unmount_nbdfs "$T/m"

# ---- [ CMD ] with options of its own, then MOUNTPOINT and -o ----
mount_nbdfs_argv "$T/m" [ nbdkit --filter=log memory "$SIZE" logfile="$T/cmd.log" ] "$T/m" \
  -f -o connections=2,read_only
expect_connections "$T/cmd.log" 2
expect_read_only "$T/m/disk"
! ro_mount "$T/m" || fail "-o read_only is nbdfs's own, yet the mount is ro"
unmount_nbdfs "$T/m"

# ---- mount.fuse3 (as fstab's "nbdfs#URI MOUNTPOINT fuse OPTIONS" runs it) ----
if command -v mount.fuse3 >/dev/null; then
  mkdir "$T/bin" "$T/m2"
  ln -s "$NBDFS" "$T/bin/nbdfs"
  serve_nbdkit mem2 --filter=log memory "$SIZE" logfile="$T/requests2.log"
  _mounts+=("$T/m2")
  PATH=$T/bin:$PATH mount.fuse3 "nbdfs#$(unix_uri "$SOCK")" "$T/m2" \
    -o connections=2,ro,_netdev,nofail,x-systemd.automount,comment=test,pidfile="$T/m2.pid" \
    >"$T/mount.out" 2>&1 || fail "mount.fuse3 failed: $(cat "$T/mount.out")"
  wait_until 10 test -s "$T/m2.pid" || fail "-o pidfile=: no pid file"
  NBDFS_PID=$(cat "$T/m2.pid")
  track_pid "$NBDFS_PID"
  is_mounted "$T/m2" || fail "mount.fuse3 returned but nothing is mounted"
  expect_connections "$T/requests2.log" 2
  expect_read_only "$T/m2/disk"
  ro_mount "$T/m2" || fail "mount.fuse3 -o ro: the mount is not ro"
  unmount_nbdfs_daemon "$T/m2"
else
  note "no mount.fuse3: skipping its check"
fi

# ---- bad -o values ----
for bad in connections=abc readonly=1; do
  rc=0
  timeout -k 5 20 "$NBDFS" -f "$URI" "$T/m" -o "$bad" >"$T/bad.out" 2>&1 || rc=$?
  [ "$rc" = 2 ] || fail "-o $bad: exit $rc, expected 2: $(cat "$T/bad.out")"
  [ "$(wc -l <"$T/bad.out")" = 1 ] || fail "-o $bad: expected one line, got: $(cat "$T/bad.out")"
  grep -q "^nbdfs: .*${bad%%=*}" "$T/bad.out" || fail "-o $bad: the message does not name it: $(cat "$T/bad.out")"
  ! is_mounted "$T/m" || fail "-o $bad: $T/m is mounted"
done
echo ok
