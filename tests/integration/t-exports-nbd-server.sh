#!/bin/bash
# --exports against nbd-server 3.24 (TCP, configured by a file).  Its
# NBD_OPT_INFO reports size 0, so nbdfs must learn the sizes another way.
#  1. allowlist = true, three exports backed by files of different sizes,
#     one "readonly = true": the directory holds exactly those three files,
#     with the backing files' sizes and modes 0644/0644/0444; each reads
#     back as its backing file; a write through one file changes only that
#     backing file (checked after fsync and after unmount); the read-only
#     one refuses writes (EROFS).
#  2. allowlist off (the default): nbd-server refuses NBD_OPT_LIST; nbdfs
#     (daemon mode) exits non-zero with a one-line "nbdfs:" error that
#     mentions listing, nothing is mounted and no nbdfs process is left.
. "$(dirname "$0")/lib.sh"

MiB=1048576
A=$T/alpha.img B=$T/beta.img R=$T/gamma.img
rand_file "$A" $((5 * MiB))
rand_file "$B" $((3 * MiB + 4096))
rand_file "$R" $((2 * MiB))
for f in "$A" "$B" "$R"; do cp "$f" "$f.orig"; done

# start_nbd_server ALLOWLIST: the three exports, listable or not.
start_nbd_server() {
  serve_nbd_server "allowlist = $1" <<EOF
[alpha]
    exportname = $A
[beta]
    exportname = $B
[gamma]
    exportname = $R
    readonly = true
EOF
}

stop_nbd_server() {
  kill "$SERVER_PID"
  wait_until 30 eval '! pid_alive "$SERVER_PID"' || fail "nbd-server did not exit"
}

# ---- 1: allowlist = true ----
start_nbd_server true
URI=nbd://127.0.0.1:$PORT
mkdir "$T/mnt"
M=$T/mnt
mount_nbdfs "$URI" "$M" --exports -v

listing=$(cd "$M" && ls -A | sort | tr '\n' ' ')
[ "$listing" = "alpha beta gamma " ] || fail "directory lists '$listing', expected 'alpha beta gamma'"
for f in alpha:$A:644 beta:$B:644 gamma:$R:444; do
  IFS=: read -r name backing mode <<<"$f"
  [ -f "$M/$name" ] || fail "$name is not a regular file"
  want=$(stat -c %s "$backing")
  got=$(stat -c %s "$M/$name")
  [ "$got" = "$want" ] || fail "$name: size $got, expected $want"
  got=$(stat -c %a "$M/$name")
  [ "$got" = "$mode" ] || fail "$name: mode $got, expected $mode"
  [ "$(sha "$M/$name")" = "$(sha "$backing")" ] || fail "$name: content differs from its backing file"
  [ "$(getfattr --absolute-names --only-values -n user.nbd.export "$M/$name")" = "$name" ] ||
    fail "$name: user.nbd.export is '$(getfattr --absolute-names --only-values -n user.nbd.export "$M/$name")'"
done

# Write into beta only, at an odd offset and at the end.
rand_file "$T/p1" $((MiB + 333))
rand_file "$T/p2" 4096
cp "$B.orig" "$T/beta.expected"
for w in "12345 p1" "$((3 * MiB)) p2"; do
  set -- $w
  write_at "$M/beta" "$1" "$T/$2" || fail "write of $2 at $1 into beta failed"
  write_at "$T/beta.expected" "$1" "$T/$2"
done
python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDWR); os.fsync(fd); os.close(fd)' "$M/beta" ||
  fail "fsync of beta failed"
[ "$(sha "$B")" = "$(sha "$T/beta.expected")" ] || fail "after fsync: beta's backing file lacks the write"
[ "$(sha "$A")" = "$(sha "$A.orig")" ] || fail "after fsync: alpha's backing file changed"
[ "$(sha "$R")" = "$(sha "$R.orig")" ] || fail "after fsync: gamma's backing file changed"
[ "$(sha "$M/beta")" = "$(sha "$T/beta.expected")" ] || fail "beta reads back differently through the mount"
[ "$(sha "$M/alpha")" = "$(sha "$A.orig")" ] || fail "alpha reads differently after writing beta"

# The read-only export refuses writes.
if dd if="$T/p2" of="$M/gamma" conv=notrunc status=none 2>"$T/dd.err"; then
  fail "write to the read-only export succeeded"
fi
grep -qi 'read-only file system' "$T/dd.err" || fail "write to gamma: $(cat "$T/dd.err"), expected EROFS"

unmount_nbdfs "$M"
[ "$(sha "$B")" = "$(sha "$T/beta.expected")" ] || fail "after unmount: beta's backing file differs from expected"
[ "$(sha "$A")" = "$(sha "$A.orig")" ] || fail "after unmount: alpha's backing file changed"
[ "$(sha "$R")" = "$(sha "$R.orig")" ] || fail "after unmount: gamma's backing file changed"
stop_nbd_server

# ---- 2: no allowlist: listing refused ----
start_nbd_server false
URI=nbd://127.0.0.1:$PORT
_mounts+=("$M")
rc=0
"$NBDFS" -P "$T/nofail.pid" --exports "$URI" "$M" >"$T/refused.out" 2>"$T/refused.err" </dev/null || rc=$?
[ "$rc" -ne 0 ] || fail "nbdfs --exports succeeded against a server refusing NBD_OPT_LIST"
[ ! -s "$T/refused.out" ] || fail "unexpected output on stdout: $(cat "$T/refused.out")"
[ "$(wc -l <"$T/refused.err")" = 1 ] || fail "expected a one-line error, got: $(cat "$T/refused.err")"
grep -q '^nbdfs: ' "$T/refused.err" || fail "error does not start with 'nbdfs: ': $(cat "$T/refused.err")"
grep -qi 'list' "$T/refused.err" || fail "error does not mention listing: $(cat "$T/refused.err")"
is_mounted "$M" && fail "something is mounted on $M after the failed mount"
[ ! -e "$T/nofail.pid" ] || fail "a pid file was written by the failed mount"
[ -z "$(nbdfs_pids_for "$T")" ] || fail "an nbdfs process is left: $(nbdfs_pids_for "$T")"
[ -z "$(ls -A "$M")" ] || fail "mount point not empty after the failed mount: $(ls -A "$M")"
note "refused: $(cat "$T/refused.err")"
echo ok
