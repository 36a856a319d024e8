#!/bin/bash
# --exports: the listing follows the server, and one export's failure stays
# with that export.  nbdkit's sh plugin lists the names in a file the test
# edits ($CTL/list) and serves export NAME from $CTL/data/NAME; its open
# refuses "broken" always and NAME while $CTL/fail-NAME exists; its listing
# fails while $CTL/list-fails exists.
#  - an export added to the list appears when the directory is read again
#    (polled, up to 15 s) and reads as its data;
#  - an export removed from the list disappears (ls, and lookups by name),
#    and reads on a descriptor held open on it fail with EIO, never hang
#    (t-exports-vanish.sh checks the other operations);
#  - an export removed whose data also went away: the same;
#  - a removed export listed again comes back and works, but a descriptor
#    held across its absence keeps failing with EIO;
#  - "broken" is listed but opening it fails (bounded, not a hang), and so
#    does opening an export whose open the server refuses after it was
#    listed, while the other files keep working; once the server accepts
#    it again, it opens (the failure is not remembered); user.nbd.flags
#    of "broken" fails (bounded) while user.nbd.export works;
#  - a refresh that fails (server refuses LIST) keeps the last listing.
. "$(dirname "$0")/lib.sh"

MiB=1048576
CTL=$T/ctl
mkdir -p "$CTL/data" "$T/mnt"
M=$T/mnt
cat >"$T/plugin.sh" <<'EOF'
#!/bin/bash
case "$1" in
  list_exports)
    [ -e "$CTL/list-fails" ] && { echo "listing disabled by the test" >&2; exit 1; }
    echo NAMES; cat "$CTL/list" ;;
  open)
    [ "$3" = broken ] && { echo "export 'broken' always fails" >&2; exit 1; }
    [ -e "$CTL/fail-$3" ] && { echo "export '$3' refused by the test" >&2; exit 1; }
    [ -e "$CTL/data/$3" ] || { echo "no export '$3'" >&2; exit 1; }
    echo "$CTL/data/$3" ;;
  get_size) stat -c %s "$2" ;;
  pread) dd if="$2" skip="$4" count="$3" iflag=skip_bytes,count_bytes status=none ;;
  *) exit 2 ;;
esac
EOF
chmod +x "$T/plugin.sh"
for e in alpha beta delta; do rand_file "$CTL/data/$e" $((4 * MiB)); done
rand_file "$CTL/data/gamma" $((2 * MiB))
printf '%s\n' alpha beta broken delta >"$CTL/list"

CTL=$CTL serve_nbdkit refresh sh "$T/plugin.sh"
mount_nbdfs "$(unix_uri "$SOCK")" "$M" --exports -v

listing() { (cd "$M" && ls -A | sort | tr '\n' ' '); }
[ "$(listing)" = "alpha beta broken delta " ] || fail "initial listing: $(listing)"
[ "$(stat -c %s "$M/alpha")" = $((4 * MiB)) ] || fail "alpha: size $(stat -c %s "$M/alpha")"

# pread_fd FD OFFSET LENGTH: read from an inherited descriptor, bounded;
# prints the data's sha256, or "errno N" on failure; exit 124 = hang.
pread_fd() {
  timeout 20 python3 -c '
import hashlib, os, sys
fd, off, n = (int(a) for a in sys.argv[1:4])
try:
    print(hashlib.sha256(os.pread(fd, n, off)).hexdigest())
except OSError as e:
    print("errno", e.errno)' "$@"
}
EIO=5

# Hold alpha and delta open, read a little of each.
exec 3<"$M/alpha" 4<"$M/delta"
[ "$(pread_fd 3 0 4096)" = "$(range_sha "$CTL/data/alpha" 0 4096)" ] || fail "alpha (held) reads differently"
[ "$(pread_fd 4 0 4096)" = "$(range_sha "$CTL/data/delta" 0 4096)" ] || fail "delta (held) reads differently"

# ---- an export appears ----
printf '%s\n' alpha beta broken delta gamma >"$CTL/list"
wait_until 15 eval '[ -n "$(ls "$M" | grep -x gamma)" ]' || fail "gamma did not appear: $(listing)"
[ "$(stat -c %s "$M/gamma")" = $((2 * MiB)) ] || fail "gamma: size $(stat -c %s "$M/gamma")"
[ "$(sha "$M/gamma")" = "$(sha "$CTL/data/gamma")" ] || fail "gamma reads differently"

# ---- exports disappear (alpha still served, delta's data gone) ----
printf '%s\n' beta broken gamma >"$CTL/list"
mv "$CTL/data/delta" "$CTL/delta.gone"
wait_until 15 eval '[ "$(listing)" = "beta broken gamma " ]' || fail "alpha and delta did not disappear: $(listing)"
wait_until 15 eval '[ ! -e "$M/alpha" ] && [ ! -e "$M/delta" ]' || fail "removed exports can still be looked up"
if timeout 20 cat "$M/alpha" >/dev/null 2>&1; then fail "a removed export can still be opened by name"; fi
r=$(pread_fd 3 $((3 * MiB)) 65536) || fail "read on alpha (held, removed from the list) hung or crashed: $r"
[ "$r" = "errno $EIO" ] || fail "read on alpha (held, removed from the list) returned '$r', not EIO"
r=$(pread_fd 4 $((3 * MiB)) 65536) || fail "read on delta (held, data gone) hung or crashed: $r"
[ "$r" = "errno $EIO" ] || fail "read on delta (held, data gone) returned '$r', not EIO"
exec 4<&-

# ---- a removed export comes back ----
printf '%s\n' alpha beta broken gamma >"$CTL/list"
wait_until 15 eval 'ls "$M" >/dev/null; [ -e "$M/alpha" ]' || fail "alpha did not come back: $(listing)"
[ "$(sha "$M/alpha")" = "$(sha "$CTL/data/alpha")" ] || fail "alpha (back) reads differently"
r=$(pread_fd 3 $((2 * MiB)) 4096) || fail "read on alpha (held throughout) hung after it came back: $r"
[ "$r" = "errno $EIO" ] || fail "alpha (held throughout) gave '$r' after coming back, not EIO: reopen it"
exec 3<&-

# ---- per-export open failures ----
rc=0
timeout 30 cat "$M/broken" >/dev/null 2>"$T/broken.err" || rc=$?
[ "$rc" != 0 ] || fail "opening broken succeeded"
[ "$rc" != 124 ] || fail "opening broken hung"
note "broken: $(cat "$T/broken.err")"
rc=0
timeout 30 getfattr --absolute-names -n user.nbd.flags "$M/broken" >/dev/null 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "user.nbd.flags of broken (which cannot be opened) succeeded"
[ "$rc" != 124 ] || fail "user.nbd.flags of broken hung"
[ "$(getfattr --absolute-names --only-values -n user.nbd.export "$M/broken")" = broken ] ||
  fail "user.nbd.export of broken is not available without opening it"
touch "$CTL/fail-beta"
rc=0
timeout 30 cat "$M/beta" >/dev/null 2>"$T/beta.err" || rc=$?
[ "$rc" != 0 ] || fail "opening beta succeeded although the server refuses it"
[ "$rc" != 124 ] || fail "opening beta (refused) hung"
note "beta (refused): $(cat "$T/beta.err")"
[ "$(sha "$M/gamma")" = "$(sha "$CTL/data/gamma")" ] || fail "gamma fails after beta's open failed"
[ "$(sha "$M/alpha")" = "$(sha "$CTL/data/alpha")" ] || fail "alpha fails after beta's open failed"
[ "$(listing)" = "alpha beta broken gamma " ] || fail "listing after the failures: $(listing)"
rm "$CTL/fail-beta"
[ "$(timeout 30 sha256sum "$M/beta" | cut -d" " -f1)" = "$(sha "$CTL/data/beta")" ] || fail "beta still fails once the server accepts it"

# ---- a failed refresh keeps the last listing ----
touch "$CTL/list-fails"
mark=$(log_mark "$T/nbdfs.log")
wait_until 15 eval 'ls "$M" >/dev/null; log_since "$T/nbdfs.log" "$mark" | grep -q "refreshing the export list"' ||
  fail "no failed refresh logged: $(log_since "$T/nbdfs.log" "$mark")"
[ "$(listing)" = "alpha beta broken gamma " ] || fail "listing after a failed refresh: $(listing)"
[ "$(sha "$M/gamma")" = "$(sha "$CTL/data/gamma")" ] || fail "gamma fails after a failed refresh"
rm "$CTL/list-fails"

unmount_nbdfs "$M"
echo ok
