#!/bin/bash
# --exports start-up errors: each gives exactly one line on stderr starting
# "nbdfs: ", a non-zero exit status, nothing mounted, no pid file and no
# nbdfs process left (daemon mode and foreground mode):
#  - a URI naming an export (Unix socket and TCP, also an export literally
#    named "default"): the message says the URI must not name an export;
#  - a server whose NBD_OPT_LIST fails (nbdkit exportname-list=error): the
#    message mentions listing;
#  - nothing listening on the socket;
#  - a mount point that is a regular file, or does not exist.
# Afterwards the same server mounts fine with a URI naming no export.
. "$(dirname "$0")/lib.sh"

mkdir "$T/mnt"
M=$T/mnt
_mounts+=("$M")

serve_nbdkit ok memory 1M
GOOD=$SOCK
serve_nbdkit nolist --filter=exportname memory 1M exportname-list=error
NOLIST=$SOCK
serve_nbdkit_tcp tcp memory 1M

# expect_failure WHAT PATTERN NBDFS-ARGS...: nbdfs fails as described above,
# its one line matching the extended regex PATTERN.
n=0
expect_failure() {
  local what=$1 pattern=$2 mode rc out err pidf
  shift 2
  for mode in daemon foreground; do
    n=$((n + 1))
    out=$T/out.$n err=$T/err.$n pidf=$T/fail.$n.pid
    rc=0
    if [ $mode = daemon ]; then
      timeout 60 "$NBDFS" -P "$pidf" "$@" >"$out" 2>"$err" </dev/null || rc=$?
    else
      timeout 60 "$NBDFS" -f -P "$pidf" "$@" >"$out" 2>"$err" </dev/null || rc=$?
    fi
    [ "$rc" != 124 ] || fail "$what ($mode): nbdfs hung"
    [ "$rc" != 0 ] || fail "$what ($mode): nbdfs succeeded"
    [ ! -s "$out" ] || fail "$what ($mode): output on stdout: $(cat "$out")"
    [ "$(wc -l <"$err")" = 1 ] || fail "$what ($mode): expected one line on stderr, got: $(cat "$err")"
    grep -q '^nbdfs: ' "$err" || fail "$what ($mode): message lacks the 'nbdfs: ' prefix: $(cat "$err")"
    grep -Eqi -- "$pattern" "$err" || fail "$what ($mode): message does not match /$pattern/: $(cat "$err")"
    is_mounted "$M" && fail "$what ($mode): something got mounted on $M"
    [ ! -e "$pidf" ] || fail "$what ($mode): a pid file was written"
    [ -z "$(nbdfs_pids_for "$T")" ] || fail "$what ($mode): nbdfs process left: $(nbdfs_pids_for "$T")"
    [ -z "$(ls -A "$M")" ] || fail "$what ($mode): mount point not empty: $(ls -A "$M")"
  done
  note "$what: $(cat "$err")"
}

NAMED='must not name an export'
expect_failure "unix URI naming an export" "$NAMED" --exports "$(unix_uri "$GOOD" disk)" "$M"
expect_failure "URI naming 'default'" "$NAMED" --exports "$(unix_uri "$GOOD" default)" "$M"
expect_failure "URI naming an escaped export" "$NAMED" --exports "$(unix_uri "$GOOD" 'a%2Fb')" "$M"
expect_failure "TCP URI naming an export" "$NAMED" --exports "nbd://127.0.0.1:$PORT/disk" "$M"
expect_failure "options after --exports" "$NAMED" --exports -r "$(unix_uri "$GOOD" x)" "$M"
expect_failure "LIST refused" 'list' --exports "$(unix_uri "$NOLIST")" "$M"
expect_failure "nothing listening" '.' --exports "$(unix_uri "$T/nobody.sock")" "$M"
touch "$T/regular"
expect_failure "mount point is a regular file" 'director' --exports "$(unix_uri "$GOOD")" "$T/regular"
expect_failure "mount point does not exist" 'director|exist' --exports "$(unix_uri "$GOOD")" "$T/nonexistent/dir"
[ ! -e "$T/nonexistent" ] || fail "a failed mount created the mount point"

# The server itself is fine: the same URI without an export mounts.
mount_nbdfs "$(unix_uri "$GOOD")" "$M" --exports
[ "$(ls "$M")" = default ] || fail "good server lists: $(ls "$M")"
[ "$(stat -c %s "$M/default")" = 1048576 ] || fail "default: size $(stat -c %s "$M/default")"
unmount_nbdfs "$M"
for u in "nbd://127.0.0.1:$PORT" "nbd://127.0.0.1:$PORT/"; do
  mount_nbdfs "$u" "$M" --exports
  [ "$(ls "$M")" = default ] || fail "good TCP server ($u) lists: $(ls "$M")"
  unmount_nbdfs "$M"
done
echo ok
