#!/bin/bash
# `meson install` of the build that $NBDFS comes from, into a temporary
# DESTDIR, and the installed files at work:
#  - the binary, the man page, the bash completion, the systemd unit for
#    the system and for the user manager (with the real bindir put in for
#    @BINDIR@, no placeholder left) and the example config are installed
#  - man -l renders the installed page without warnings, with SYNOPSIS,
#    OPTIONS, EXIT STATUS and --command
#  - the completion parses (bash -n), and completing `nbdfs --tl` offers
#    --tls, `nbdfs --tls ` offers off/on/require
#  - mount -t fuse.nbdfs URI DIR -o ro,connections=2: the file appears,
#    reads work, writes fail with EROFS, the daemon is the installed
#    binary and keeps 2 connections; umount DIR unmounts it, the daemon
#    exits and nothing is left mounted or running.
#    mount(8) drops PATH from the environment of its helpers, so
#    mount.fuse3 finds nbdfs only in /bin/sh's default PATH (where
#    `meson install` puts it with the default prefix /usr/local).  This
#    part therefore runs in a private mount namespace in which the
#    DESTDIR's bindir is bind-mounted over the real bindir: the installed
#    binary is then where a real install puts it, and nothing outside the
#    namespace changes.
. "$(dirname "$0")/lib.sh"

BUILD=$(cd "$(dirname "$NBDFS")" && pwd)
[ -f "$BUILD/build.ninja" ] || fail "$BUILD (the directory of \$NBDFS) is not a meson build directory"

# The build's install directories (absolute ones win over the prefix).
dirs=$(meson introspect --buildoptions "$BUILD" | python3 -c '
import json, os, sys
o = {x["name"]: x["value"] for x in json.load(sys.stdin)}
p = o["prefix"]
for k in ("bindir", "mandir", "datadir"):
    print(os.path.join(p, o[k]))
print(p)') || fail "meson introspect --buildoptions $BUILD failed"
{ read -r BINDIR; read -r MANDIR; read -r DATADIR; read -r PREFIX; } <<<"$dirs"
note "prefix $PREFIX, bindir $BINDIR"

DEST=$T/dest
DESTDIR=$DEST meson install -C "$BUILD" --no-rebuild --quiet >"$T/install.log" 2>&1 ||
  fail "meson install failed: $(tail -n 20 "$T/install.log")"

# ---- what is installed ----
BIN=$DEST$BINDIR/nbdfs
MAN=$DEST$MANDIR/man1/nbdfs.1
COMPL=$DEST$DATADIR/bash-completion/completions/nbdfs
[ -x "$BIN" ] || fail "no executable $BIN: $(cd "$DEST" && find . -type f)"
cmp -s "$BIN" "$NBDFS" || soft_fail "the installed binary differs from $NBDFS"
[ -f "$MAN" ] || soft_fail "no man page $MAN"
[ -f "$COMPL" ] || soft_fail "no bash completion $COMPL"
[ -f "$DEST$DATADIR/doc/nbdfs/nbdfs.conf.example" ] || soft_fail "no nbdfs.conf.example"
for manager in system user; do
  unit=$DEST$PREFIX/lib/systemd/$manager/nbdfs@.service
  if [ ! -f "$unit" ]; then
    soft_fail "no $manager unit $unit"
    continue
  fi
  grep -q "^ExecStart=$BINDIR/nbdfs " "$unit" ||
    soft_fail "$manager unit: ExecStart does not run $BINDIR/nbdfs: $(grep ExecStart "$unit")"
  ! grep -q '@[A-Za-z_]*@' "$unit" || soft_fail "$manager unit: placeholder left: $(grep '@[A-Za-z_]*@' "$unit")"
  grep -q '^Type=notify' "$unit" || soft_fail "$manager unit is not Type=notify"
  grep -q '^KillMode=mixed' "$unit" || soft_fail "$manager unit: not KillMode=mixed (a server child would die before the final FLUSH)"
done

# ---- systemd accepts the unit (pointing at the installed binary) ----
if command -v systemd-analyze >/dev/null; then
  mkdir -p "$T/units"
  sed "s|^ExecStart=$BINDIR/|ExecStart=$DEST$BINDIR/|" "$DEST$PREFIX/lib/systemd/system/nbdfs@.service" \
    >"$T/units/nbdfs@test.service"
  systemd-analyze verify --man=no "$T/units/nbdfs@test.service" >"$T/verify.log" 2>&1 ||
    soft_fail "systemd-analyze verify: $(cat "$T/verify.log")"
else
  soft_fail "systemd-analyze is not installed: cannot check the unit"
fi

# ---- the man page ----
if ! command -v man >/dev/null; then
  soft_fail "man is not installed (man-db): cannot check the installed man page"
elif [ -f "$MAN" ]; then
  MANWIDTH=80 man -l "$MAN" >"$T/man.txt" 2>"$T/man.err" || soft_fail "man -l $MAN failed: $(cat "$T/man.err")"
  for want in SYNOPSIS OPTIONS 'EXIT STATUS' --command; do
    grep -q -- "$want" "$T/man.txt" || soft_fail "the rendered man page has no '$want'"
  done
  warnings=$(MANROFFSEQ='' MANWIDTH=80 man --warnings -l "$MAN" 2>&1 >/dev/null)
  [ -z "$warnings" ] || soft_fail "man --warnings: $warnings"
fi

# ---- the bash completion ----
if [ -f "$COMPL" ]; then
  bash -n "$COMPL" || soft_fail "bash -n $COMPL failed"
  # complete ARGS...: what completing the last of ARGS offers, one a line
  # (the words as COMP_WORDS; the function is the one `complete -p` names).
  complete_words() {
    bash -c '
      . "$1" || exit 1
      fn=$(complete -p nbdfs | sed -n "s/.* -F \([^ ]*\) .*/\1/p")
      [ -n "$fn" ] || { echo "no completion function for nbdfs" >&2; exit 1; }
      shift
      COMP_WORDS=("$@")
      COMP_CWORD=$(($# - 1))
      "$fn" nbdfs "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
      printf "%s\n" "${COMPREPLY[@]}"' _ "$COMPL" "$@" 2>"$T/compl.err"
  }
  out=$(complete_words nbdfs --tl) || soft_fail "completion failed: $(cat "$T/compl.err")"
  grep -qx -- --tls <<<"$out" || soft_fail "completing 'nbdfs --tl' offers '$(tr '\n' ' ' <<<"$out")', not --tls"
  out=$(complete_words nbdfs --tls "") || soft_fail "completion failed: $(cat "$T/compl.err")"
  [ "$(tr '\n' ' ' <<<"$out")" = "off on require " ] ||
    soft_fail "completing 'nbdfs --tls ' offers '$(tr '\n' ' ' <<<"$out")'"
fi

# ---- mount -t fuse.nbdfs with the installed binary ----
SIZE=$((8 * 1048576))
serve_nbdkit mem --filter=log memory "$SIZE" logfile="$T/nbdkit-log.txt"
URI=$(unix_uri "$SOCK")
mkdir "$T/mnt"
DIR=$T/mnt
# The bind target: the real bindir when /bin/sh's default PATH has it.
TARGET=$BINDIR
case $TARGET in
  /usr/local/sbin | /usr/local/bin | /usr/sbin | /usr/bin | /sbin | /bin) ;;
  *) TARGET=/usr/local/bin; note "bindir $BINDIR is not in /bin/sh's default PATH: using $TARGET" ;;
esac

# Runs in the namespace; its findings go to $T/ns.out, one FAIL line each.
cat >"$T/in-ns.sh" <<'EOF'
set -u
DEST_BIN=$1 TARGET=$2 URI=$3 DIR=$4 SIZE=$5 T=$6
bad() { echo "FAIL: $*"; }
mount --bind "$DEST_BIN" "$TARGET" || { bad "mount --bind $DEST_BIN $TARGET failed"; exit 1; }
# The nbdfs daemon serving DIR (its command line names DIR).
daemon_pid() {
  local p
  for p in $(pgrep -x nbdfs); do
    tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | grep -qx -- "$DIR" && echo "$p"
  done
}
if ! timeout 60 mount -t fuse.nbdfs "$URI" "$DIR" -o ro,connections=2 >"$T/mount.out" 2>&1; then
  bad "mount -t fuse.nbdfs $URI $DIR -o ro,connections=2 failed: $(cat "$T/mount.out")"
  exit 1
fi
pid=$(daemon_pid)
echo "$pid" >"$T/daemon.pid"
grep -q " $DIR fuse.nbdfs " /proc/mounts || bad "not mounted as fuse.nbdfs: $(grep " $DIR " /proc/mounts)"
F=$DIR/disk
if [ ! -f "$F" ]; then
  bad "no file $F: $(ls -la "$DIR" 2>&1)"
else
  [ "$(stat -c %s "$F")" = "$SIZE" ] || bad "$F has size $(stat -c %s "$F"), expected $SIZE"
  n=$(dd if="$F" bs=64k count=4 status=none | wc -c)
  [ "$n" = 262144 ] || bad "reading $F gave $n bytes"
  if dd if=/dev/zero of="$F" bs=4k count=1 conv=notrunc status=none 2>"$T/write.err"; then
    bad "a write to the ro mount succeeded"
  else
    grep -qi 'read-only file system' "$T/write.err" || bad "the write failed with '$(cat "$T/write.err")', not EROFS"
  fi
fi
if [ -z "$pid" ]; then
  bad "no nbdfs process serving $DIR: $(pgrep -a nbdfs)"
else
  [ "$(readlink "/proc/$pid/exe")" = "$TARGET/nbdfs" ] ||
    bad "the daemon runs $(readlink "/proc/$pid/exe"), not $TARGET/nbdfs"
  cmp -s "/proc/$pid/exe" "$DEST_BIN/nbdfs" || bad "the daemon's binary is not the installed one"
  live=$(( $(grep -c ' Connect export=' "$T/nbdkit-log.txt") - $(grep -c ' Disconnect ' "$T/nbdkit-log.txt") ))
  [ "$live" = 2 ] || bad "the server sees $live connections, expected 2 (connections=2)"
fi
umount "$DIR" 2>"$T/umount.err" || bad "umount $DIR failed: $(cat "$T/umount.err")"
for ((i = 0; i < 200; i++)); do
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && bad "nbdfs $pid still runs 20 s after umount"
grep -q " $DIR " /proc/mounts && bad "$DIR still mounted after umount"
exit 0
EOF
unshare --mount --propagation private bash "$T/in-ns.sh" "$DEST$BINDIR" "$TARGET" "$URI" "$DIR" \
  "$SIZE" "$T" >"$T/ns.out" 2>&1 || soft_fail "the namespace part did not run through"
[ -s "$T/daemon.pid" ] && [ -n "$(cat "$T/daemon.pid")" ] && track_pid "$(cat "$T/daemon.pid")"
while IFS= read -r line; do
  case $line in
    FAIL:*) soft_fail "${line#FAIL: }" ;;
    *) note "$line" ;;
  esac
done <"$T/ns.out"
# From outside: the daemon is gone (its namespace with it), and so is any
# nbdfs started for $DIR.
if [ -s "$T/daemon.pid" ] && pid_alive "$(cat "$T/daemon.pid")"; then
  soft_fail "nbdfs $(cat "$T/daemon.pid") still runs"
fi
[ -z "$(nbdfs_pids_for "$DIR")" ] || soft_fail "nbdfs processes left: $(nbdfs_pids_for "$DIR")"
! is_mounted "$DIR" || soft_fail "$DIR is mounted outside the namespace"
finish_test
