#!/bin/bash
# Owners and modes, and mounting as an unprivileged user.
#  - as root, -o uid=N,gid=M,umask=027: the file is N:M 0640, the
#    directory N:M 0750; chmod, chown and chgrp of both work and show in
#    stat (for the mount's lifetime: a new mount has the defaults again);
#    the same for a file mounted over a regular file;
#    a read-only export shows no write bits, even after chmod 666
#  - as the user $TEST_USER (mounting with -f through setuid fusermount3):
#    the file is the user's, 0644; chmod works and the kernel enforces it
#    (mode 0: the user cannot read); chown to root fails with EPERM; data
#    written by the user through the mount reaches the server and reads
#    back; fusermount3 -u by the user unmounts and nbdfs exits 0
#  - -o allow_other (and allow_root) as the user, without user_allow_other
#    in /etc/fuse.conf: nbdfs fails at once with one line naming
#    user_allow_other and /etc/fuse.conf, and nothing is mounted
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((8 * MiB))
serve_nbdkit mem memory "$SIZE"
URI=$(unix_uri "$SOCK")

# perms PATH: "UID:GID:MODE" as stat shows them (run by $AS, if set).
perms() { ${AS:-} stat -c %u:%g:%a "$1"; }
expect_perms() {  # PATH WANT WHAT
  local got
  got=$(perms "$1") || fail "$3: stat $1 failed"
  [ "$got" = "$2" ] || fail "$3: $1 is $got, expected $2"
}

# ---- as root: -o uid, gid, umask ----
mkdir "$T/d"
F=$T/d/disk
mount_nbdfs "$URI" "$T/d" -o uid=4321,gid=4322,umask=027
expect_perms "$F" 4321:4322:640 "-o uid=4321,gid=4322,umask=027"
expect_perms "$T/d" 4321:4322:750 "the directory with umask=027"
chmod 600 "$F" || fail "chmod 600 of the file failed"
expect_perms "$F" 4321:4322:600 "after chmod 600"
chown 1234:1235 "$F" || fail "chown 1234:1235 of the file failed"
expect_perms "$F" 1234:1235:600 "after chown 1234:1235"
chgrp 77 "$F" || fail "chgrp 77 of the file failed"
expect_perms "$F" 1234:77:600 "after chgrp 77"
chmod 711 "$T/d" || fail "chmod 711 of the directory failed"
chown 55:56 "$T/d" || fail "chown of the directory failed"
expect_perms "$T/d" 55:56:711 "the directory after chmod and chown"
[ "$(stat -c %s "$F")" = "$SIZE" ] || fail "size $(stat -c %s "$F") after chown"
head -c 4096 "$F" >/dev/null || fail "reading after chmod and chown failed"
unmount_nbdfs "$T/d"
mount_nbdfs "$URI" "$T/d"
expect_perms "$F" 0:0:644 "a new mount without -o uid/gid/umask"
expect_perms "$T/d" 0:0:755 "the directory of a new mount"
unmount_nbdfs "$T/d"

# Mounted over a regular file, the file is the mount's root.
printf 'x\n' >"$T/over.img"
mount_nbdfs "$URI" "$T/over.img" -o uid=4321,umask=077
expect_perms "$T/over.img" 4321:0:600 "mounted over a file with uid=4321,umask=077"
chmod 640 "$T/over.img" || fail "chmod of a file mounted over failed"
expect_perms "$T/over.img" 4321:0:640 "a file mounted over, after chmod 640"
unmount_nbdfs "$T/over.img"

mount_nbdfs "$URI" "$T/d" -r -o umask=027
expect_perms "$F" 0:0:440 "-r with umask=027"
chmod 666 "$F" || fail "chmod 666 of a read-only export failed"
expect_perms "$F" 0:0:444 "a read-only export after chmod 666"
unmount_nbdfs "$T/d"

# ---- as the unprivileged user ----
user_dir
chmod 0666 "$SOCK"   # connecting to a Unix socket needs write permission
U=$(id -u "$TEST_USER"):$(id -g "$TEST_USER")
AS=as_user
as_user mkdir "$UT/m"
UF=$UT/m/disk
mount_nbdfs_as_user "$URI" "$UT/m"
expect_perms "$UF" "$U:644" "mounted by $TEST_USER"
expect_perms "$UT/m" "$U:755" "the directory mounted by $TEST_USER"
as_user chmod 600 "$UF" || fail "chmod 600 by the user failed"
expect_perms "$UF" "$U:600" "after the user's chmod 600"
if as_user chown root "$UF" 2>"$T/err"; then fail "the user could chown the file to root"; fi
grep -q 'Operation not permitted' "$T/err" || fail "chown to root: '$(cat "$T/err")', expected EPERM"
expect_perms "$UF" "$U:600" "after the refused chown"
# The kernel enforces the modes (default_permissions): mode 0 locks the owner out.
as_user chmod 0 "$UF" || fail "chmod 0 by the user failed"
if as_user head -c 1 "$UF" >/dev/null 2>"$T/err"; then fail "the user read a file of mode 0"; fi
grep -q 'Permission denied' "$T/err" || fail "reading a file of mode 0: '$(cat "$T/err")', expected EACCES"
as_user chmod 600 "$UF" || fail "chmod back to 600 failed"

rand_file "$T/r1" $((2 * MiB))
chmod 0644 "$T/r1"
as_user dd if="$T/r1" of="$UF" bs=1M seek=1 conv=notrunc,fsync status=none ||
  fail "the user's write through the mount failed"
got=$(as_user dd if="$UF" bs=1M skip=1 count=2 status=none | sha256sum | cut -d' ' -f1)
[ "$got" = "$(sha "$T/r1")" ] || fail "the user reads back something else"
server_copy "$URI" "$T/server.img"
[ "$(range_sha "$T/server.img" "$MiB" $((2 * MiB)))" = "$(sha "$T/r1")" ] ||
  fail "the user's write did not reach the server"
unmount_nbdfs_as_user "$UT/m"
! is_mounted "$UT/m" || fail "$UT/m still mounted after the user's fusermount3 -u"
AS=

# ---- allow_other as the user ----
if grep -Eq '^[[:space:]]*user_allow_other([[:space:]]|$)' /etc/fuse.conf 2>/dev/null; then
  note "skipping the allow_other check: /etc/fuse.conf has user_allow_other"
else
  as_user mkdir "$UT/ao"
  _mounts+=("$UT/ao")
  for opt in allow_other allow_root; do
    rc=0
    as_user timeout -k 5 10 "$NBDFS" -f -o "$opt" "$URI" "$UT/ao" >"$T/ao.out" 2>&1 || rc=$?
    [ "$rc" != 0 ] || fail "-o $opt as a user without user_allow_other: nbdfs exited 0"
    [ "$rc" != 124 ] && [ "$rc" != 137 ] || fail "-o $opt as a user: nbdfs mounted and ran until killed: $(cat "$T/ao.out")"
    [ "$(wc -l <"$T/ao.out")" = 1 ] || fail "-o $opt as a user: expected one line, got: $(cat "$T/ao.out")"
    grep -q 'user_allow_other' "$T/ao.out" && grep -q '/etc/fuse.conf' "$T/ao.out" ||
      fail "-o $opt as a user: the message does not name user_allow_other and /etc/fuse.conf: $(cat "$T/ao.out")"
    ! is_mounted "$UT/ao" || fail "-o $opt as a user: $UT/ao is mounted"
  done
  note "$(cat "$T/ao.out")"
fi
echo ok
