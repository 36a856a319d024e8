#!/bin/bash
# --exports: export names that need escaping.  nbdkit's sh plugin serves
# each export from its own backing file (chosen by a hash of the export
# name, so every export has distinct content); the exportname filter lists
# exactly the names below, including the default export "".
#  - the directory lists exactly the documented file names, once each
#    (the server lists two of the names twice): '%', '/',
#    control characters (0x01-0x1f, 0x7f) as uppercase %XX, "." and ".."
#    as %2E / %2E%2E, "" as "default" and a real "default" as "%64efault";
#    everything else (spaces, UTF-8, "...") unchanged;
#  - each file reads back as its export's backing file, and a write into
#    some of them lands in the right backing file;
#  - user.nbd.export of each file is the export name byte for byte;
#  - user.nbd.uri of each file names that export: nbdinfo reports that
#    name and nbdcopy reads that export's content from it;
#  - non-canonical spellings (lower-case hex, an escaped ordinary letter)
#    do not resolve.
. "$(dirname "$0")/lib.sh"

SIZE=65536
mkdir "$T/data" "$T/mnt"
M=$T/mnt

# The plugin: the handle is the backing file of the export.
cat >"$T/plugin.sh" <<'EOF'
#!/bin/bash
case "$1" in
  open) printf '%s/%s\n' "$DATA" "$(printf %s "$3" | sha256sum | cut -c1-16)" ;;
  get_size) stat -c %s "$2" ;;
  pread) dd if="$2" skip="$4" count="$3" iflag=skip_bytes,count_bytes status=none ;;
  can_write) exit 0 ;;
  pwrite) dd of="$2" seek="$4" oflag=seek_bytes conv=notrunc status=none ;;
  can_flush) exit 0 ;;
  flush) sync "$2" ;;
  *) exit 2 ;;
esac
EOF
chmod +x "$T/plugin.sh"
backing() { printf '%s/%s' "$T/data" "$(printf %s "$1" | sha256sum | cut -c1-16)"; }
hex() { od -An -tx1 -v | tr -d ' \n'; }

# Export name -> documented file name.
names=(""  "a/b"   ".."     "."   "with space" "ünïcødé" "50%off"   "default"   "%64efault"
       $'tab\there' $'del\x7f' $'new\nline' $'\x01x' "..." "x.")
files=("default" "a%2Fb" "%2E%2E" "%2E" "with space" "ünïcødé" "50%25off" "%64efault" "%2564efault"
       "tab%09here" "del%7F" "new%0Aline" "%01x" "..." "x.")
args=()
for n in "${names[@]}"; do
  rand_file "$(backing "$n")" "$SIZE"
  cp "$(backing "$n")" "$(backing "$n").expected"
  args+=("exportname=$n")
done
[ "$(ls "$T/data" | grep -vc expected)" = "${#names[@]}" ] || fail "hash collision in the test's backing files"

# The server lists two names twice: each still gets one file.
DATA=$T/data serve_nbdkit names --filter=exportname sh "$T/plugin.sh" exportname-list=explicit "${args[@]}" \
  "exportname=a/b" "exportname="
nbdinfo --list --json "$(unix_uri "$SOCK")" >"$T/list.json" || fail "nbdinfo --list failed"
python3 - "$T/list.json" "${#names[@]}" <<'EOF' || fail "the server does not list the test's names: $(cat "$T/list.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert len(d["exports"]) == int(sys.argv[2]) + 2, len(d["exports"])
EOF

mount_nbdfs "$(unix_uri "$SOCK")" "$M" --exports -v

# Exactly the documented names (compared as NUL-separated byte strings).
got=$(cd "$M" && find . -mindepth 1 -maxdepth 1 -printf '%P\0' | sort -z | hex)
want=$(printf '%s\0' "${files[@]}" | sort -z | hex)
if [ "$got" != "$want" ]; then
  (cd "$M" && ls -A --quoting-style=c) >&2
  fail "the directory does not list exactly the expected names"
fi

for i in "${!names[@]}"; do
  n=${names[$i]} f=$M/${files[$i]}
  q=$(printf '%q' "${files[$i]}")
  [ -f "$f" ] || fail "$q: not a regular file"
  [ "$(stat -c %s "$f")" = "$SIZE" ] || fail "$q: size $(stat -c %s "$f")"
  [ "$(stat -c %a "$f")" = 644 ] || fail "$q: mode $(stat -c %a "$f")"
  [ "$(sha "$f")" = "$(sha "$(backing "$n")")" ] || fail "$q: content differs from its export's"
  got=$(getfattr --absolute-names --only-values -n user.nbd.export "$f" | hex)
  [ "$got" = "$(printf %s "$n" | hex)" ] || fail "$q: user.nbd.export is $got (hex), expected $(printf %s "$n" | hex)"
  uri=$(getfattr --absolute-names --only-values -n user.nbd.uri "$f") || fail "$q: no user.nbd.uri"
  nbdinfo --json "$uri" >"$T/info.json" 2>"$T/info.err" || fail "$q: nbdinfo '$uri' failed: $(cat "$T/info.err")"
  got=$(python3 -c 'import json,sys; sys.stdout.buffer.write(json.load(open(sys.argv[1]))["exports"][0]["export-name"].encode())' "$T/info.json" | hex)
  [ "$got" = "$(printf %s "$n" | hex)" ] || fail "$q: user.nbd.uri '$uri' names export $got (hex)"
  [ "$(nbdcopy -- "$uri" - | sha256sum | cut -d' ' -f1)" = "$(sha "$(backing "$n")")" ] ||
    fail "$q: nbdcopy from user.nbd.uri '$uri' reads other content"
done

# Writes reach the right export.
rand_file "$T/patch" 1000
for i in 1 2 7 8 11; do
  n=${names[$i]} f=$M/${files[$i]}
  write_at "$f" $((i * 100)) "$T/patch" || fail "$(printf %q "${files[$i]}"): write failed"
  write_at "$(backing "$n").expected" $((i * 100)) "$T/patch"
done
unmount_nbdfs "$M"
for n in "${names[@]}"; do
  [ "$(sha "$(backing "$n")")" = "$(sha "$(backing "$n").expected")" ] ||
    fail "export $(printf %q "$n"): backing file differs from what was written through the mount"
done

# Non-canonical spellings are not other names for the same export.
mount_nbdfs "$(unix_uri "$SOCK")" "$M" --exports
for bad in "a%2fb" "%2e" "%2e%2e" "%64efaul%74" "%61%2Fb" "50%off" "del%7f"; do
  [ ! -e "$M/$bad" ] || fail "non-canonical name '$bad' resolves"
done
[ -e "$M/a%2Fb" ] || fail "a%2Fb vanished"
unmount_nbdfs "$M"
echo ok
