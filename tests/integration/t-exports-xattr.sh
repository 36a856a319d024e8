#!/bin/bash
# Extended attributes (user.nbd.export, description, uri, block_size,
# flags) in --exports mode and in single-export mode, compared with what
# nbdinfo --json reports for the same export.  Servers:
#  - nbdkit's sh plugin with two exports that differ in everything:
#    "full" (description, block sizes 512/64K/64M advertised -- a maximum
#    above 32M --, writable, flush, FUA, trim, zero, fast zero, cache,
#    multi-conn, rotational) and "bare" (read-only, nothing else, no
#    description, no block sizes);
#  - nbd-server 3.24 (simple replies only: no DF, no block status) with
#    "plain" and "plainro" (readonly = true).
# For every file: getfattr -d shows exactly the five attributes (and
# user.nbd.stats, checked by t-stats.sh) with the
# expected values (block_size = nbdinfo's min/preferred/max, or 1/4096/32M
# when the server advertises none; flags = nbdinfo's is_read_only, can_*,
# is_rotational, "structured" and whether base:allocation is among the
# contexts); user.nbd.block_size is the same before and after the export
# was opened; user.nbd.uri, given to nbdinfo, names the same export; no
# other attributes are listed and setting one fails.
. "$(dirname "$0")/lib.sh"

MiB=1048576
cat >"$T/plugin.sh" <<'EOF'
#!/bin/bash
h=${2:-}
case "$1" in
  list_exports) printf 'INTERLEAVED\nfull\nthe full disk\nbare\n\n' ;;
  open) case "$3" in full|bare) echo "$3" ;; *) echo "no export '$3'" >&2; exit 1 ;; esac ;;
  export_description) [ "$h" = full ] && echo "the full disk" || exit 2 ;;
  get_size) echo 1M ;;
  block_size) [ "$h" = full ] && echo 512 64K 64M || exit 2 ;;
  pread) dd if=/dev/zero count="$3" iflag=count_bytes status=none ;;
  can_write|can_flush|can_trim|can_zero|can_fast_zero|can_multi_conn|is_rotational|can_extents)
    [ "$h" = full ] && exit 0 || exit 3 ;;
  can_fua|can_cache) [ "$h" = full ] && echo native || echo none ;;
  pwrite) cat >/dev/null ;;
  flush|trim|zero|cache) ;;
  extents) echo 0 1M 0 ;;
  *) exit 2 ;;
esac
EOF
chmod +x "$T/plugin.sh"
serve_nbdkit sh sh "$T/plugin.sh"
KIT=$(unix_uri "$SOCK")

rand_file "$T/plain.img" $((2 * MiB))
rand_file "$T/plainro.img" $((MiB))
start_nbd_server() {
  serve_nbd_server "allowlist = true" <<EOF
[plain]
    exportname = $T/plain.img
[plainro]
    exportname = $T/plainro.img
    readonly = true
EOF
}
start_nbd_server
NBDS=nbd://127.0.0.1:$PORT

# expected_xattrs JSON: what getfattr -d should print for the export that
# nbdinfo --json described in JSON (without the "# file:" line).
expected_xattrs() {
  python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
e = d["exports"][0]
b = lambda k: "true" if e[k] else "false"
if "block_size_minimum" in e:
    bs = "%d/%d/%d" % (e["block_size_minimum"], e["block_size_preferred"], e["block_size_maximum"])
else:
    bs = "1/4096/33554432"
# (No Debian 12 server here speaks extended headers.)
flags = ("read_only=%s flush=%s fua=%s rotational=%s trim=%s zero=%s fast_zero=%s cache=%s "
         "multi_conn=%s df=%s structured_replies=%s extended_headers=false block_status=%s") % (
    b("is_read_only"), b("can_flush"), b("can_fua"), b("is_rotational"), b("can_trim"),
    b("can_zero"), b("can_fast_zero"), b("can_cache"), b("can_multi_conn"), b("can_df"),
    "true" if d["structured"] else "false",
    "base:allocation" if "base:allocation" in e.get("contexts", []) else "none")
protocol = "handshake=%s replies=%s tls=%s export_option=go" % (
    {"newstyle-fixed": "fixed-newstyle"}.get(d["protocol"], d["protocol"]),
    "structured" if d["structured"] else "simple", "yes" if d["TLS"] else "no")
print('user.nbd.block_size="%s"' % bs)
print('user.nbd.description="%s"' % e.get("description", ""))
print('user.nbd.export="%s"' % e["export-name"])
print('user.nbd.flags="%s"' % flags)
print('user.nbd.protocol="%s"' % protocol)
EOF
}

xattr() { getfattr --absolute-names --only-values -n "$2" "$1"; }

# check_file FILE URI MODE: FILE's attributes against nbdinfo's view of URI.
check_file() {
  local f=$1 uri=$2 mode=$3 q
  q="$mode $(basename "$f")"
  nbdinfo --json "$uri" >"$T/info.json" 2>"$T/info.err" || fail "$q: nbdinfo '$uri': $(cat "$T/info.err")"
  expected_xattrs "$T/info.json" >"$T/want.txt"
  local bs_before
  bs_before=$(xattr "$f" user.nbd.block_size) || fail "$q: no user.nbd.block_size"
  getfattr --absolute-names -d "$f" 2>"$T/getfattr.err" | grep -v '^# file:' | grep -v '^$' |
    grep -v '^user.nbd.uri=' | grep -v '^user.nbd.stats=' | grep -v '^user.nbd.canonical_name=' \
    >"$T/got.txt" || true
  # The canonical name is the server's NBD_INFO_NAME (nbdinfo does not show
  # it): the export's own name, or "" from a server that sends none.
  local canon
  canon=$(xattr "$f" user.nbd.canonical_name) || fail "$q: no user.nbd.canonical_name"
  [ -z "$canon" ] || [ "$canon" = "$(xattr "$f" user.nbd.export)" ] ||
    fail "$q: user.nbd.canonical_name '$canon' is not the export's name"
  diff -u "$T/want.txt" "$T/got.txt" >"$T/diff.txt" || fail "$q: attributes differ from nbdinfo's: $(cat "$T/diff.txt")"
  [ "$(xattr "$f" user.nbd.block_size)" = "$bs_before" ] ||
    fail "$q: user.nbd.block_size changed from $bs_before to $(xattr "$f" user.nbd.block_size) once opened"
  # The URI attribute names the same export.
  local u
  u=$(xattr "$f" user.nbd.uri) || fail "$q: no user.nbd.uri"
  nbdinfo --json "$u" >"$T/info2.json" 2>"$T/info.err" || fail "$q: nbdinfo on user.nbd.uri '$u': $(cat "$T/info.err")"
  python3 -c '
import json, sys
a, b = (json.load(open(p))["exports"][0] for p in sys.argv[1:3])
assert a["export-name"] == b["export-name"] and a["export-size"] == b["export-size"], (a, b)' \
    "$T/info.json" "$T/info2.json" || fail "$q: user.nbd.uri '$u' names another export than '$uri'"
  # Exactly these attributes (user.nbd.stats is t-stats.sh's), in every
  # namespace; none can be set.
  local names
  names=$(getfattr --absolute-names -m - "$f" 2>/dev/null | grep -v '^# file:' | grep -v '^$' | sort | tr '\n' ' ')
  [ "$names" = "user.nbd.block_size user.nbd.canonical_name user.nbd.description user.nbd.export user.nbd.flags user.nbd.protocol user.nbd.stats user.nbd.uri " ] ||
    fail "$q: listed attributes: $names"
  if setfattr -n user.nbd.export -v other "$f" 2>/dev/null || setfattr -n user.other -v x "$f" 2>/dev/null; then
    fail "$q: setting an attribute succeeded"
  fi
  note "$q: $(grep flags "$T/got.txt")"
}

mkdir "$T/mnt"
M=$T/mnt

# --exports mode.
NBDFS_LOG=$T/nbdfs-kit.log mount_nbdfs "$KIT" "$M" --exports
[ "$(ls "$M" | sort | tr '\n' ' ')" = "bare full " ] || fail "nbdkit: directory lists $(ls "$M")"
check_file "$M/full" "$(unix_uri "$SOCK" full)" exports
check_file "$M/bare" "$(unix_uri "$SOCK" bare)" exports
[ "$(stat -c %a "$M/bare")" = 444 ] || fail "bare: mode $(stat -c %a "$M/bare")"
unmount_nbdfs "$M"

NBDFS_LOG=$T/nbdfs-nbds.log mount_nbdfs "$NBDS" "$M" --exports
[ "$(ls "$M" | sort | tr '\n' ' ')" = "plain plainro " ] || fail "nbd-server: directory lists $(ls "$M")"
check_file "$M/plain" "$NBDS/plain" exports
check_file "$M/plainro" "$NBDS/plainro" exports
unmount_nbdfs "$M"

# Single-export mode.
for e in full bare; do
  NBDFS_LOG=$T/nbdfs-$e.log mount_nbdfs "$(unix_uri "$SOCK" "$e")" "$M"
  [ -f "$M/$e" ] || fail "single $e: no file $M/$e: $(ls "$M")"
  check_file "$M/$e" "$(unix_uri "$SOCK" "$e")" single
  unmount_nbdfs "$M"
done
for e in plain plainro; do
  NBDFS_LOG=$T/nbdfs-$e.log mount_nbdfs "$NBDS/$e" "$M"
  [ -f "$M/$e" ] || fail "single $e: no file $M/$e: $(ls "$M")"
  check_file "$M/$e" "$NBDS/$e" single
  unmount_nbdfs "$M"
done
echo ok
