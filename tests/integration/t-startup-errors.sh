#!/bin/bash
# Start-up failures: each prints exactly one line, starting "nbdfs:", on
# stderr (matching the expected reason), exits non-zero, and leaves nothing
# mounted, no nbdfs process and no pid file behind - in the foreground and,
# for failures after the argument checks, also in daemon mode.  Among them:
# mounted over a regular file, a server whose reads fail (nbdfs reads the
# export's last byte at start, to give the kernel the file's size).
. "$(dirname "$0")/lib.sh"

mkdir "$T/mnt"
MP=$T/mnt
cases=0

# check_error WHAT REGEX [-f] ARGS...: run nbdfs ARGS, expect that failure.
check_error() {
  local what=$1 re=$2; shift 2
  local rc=0
  cases=$((cases + 1))
  timeout 60 "$NBDFS" "$@" >"$T/out" 2>"$T/err" </dev/null || rc=$?
  [ "$rc" != 0 ] || fail "$what: nbdfs $* succeeded"
  [ "$rc" != 124 ] || fail "$what: nbdfs $* hung (killed after 60s)"
  [ "$rc" -lt 128 ] || fail "$what: nbdfs $* died from signal $((rc - 128)): $(cat "$T/err")"
  local lines
  lines=$(wc -l <"$T/err")
  [ "$lines" = 1 ] || fail "$what: expected one line on stderr, got $lines: $(cat "$T/err")"
  grep -q '^nbdfs: ' "$T/err" || fail "$what: stderr does not start with 'nbdfs: ': $(cat "$T/err")"
  grep -Eqi -- "$re" "$T/err" || fail "$what: stderr '$(cat "$T/err")' does not match /$re/"
  [ ! -s "$T/out" ] || fail "$what: unexpected stdout: $(cat "$T/out")"
  check_nothing_left "$what"
}

check_nothing_left() {
  if grep -q " $T" /proc/mounts; then fail "$1: left a mount: $(grep " $T" /proc/mounts)"; fi
  # A daemon could still be on its way out: give it a moment, then insist.
  wait_until 5 eval '[ -z "$(nbdfs_pids_for "$T")" ]' ||
    fail "$1: nbdfs process(es) left: $(nbdfs_pids_for "$T")"
  [ ! -e "$T/nbdfs.pid" ] || fail "$1: left the pid file"
}

# Helper servers: a TCP server that answers with garbage, one that accepts
# and then says nothing, and a closed port.
cat >"$T/fake.py" <<'EOF'
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(16)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
keep = []
while True:
    c, _ = s.accept()
    if sys.argv[2] == "garbage":
        try:
            c.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 20)
        except OSError:
            pass
        c.close()
    else:
        keep.append(c)
EOF
python3 "$T/fake.py" "$T/garbage.port" garbage & track_pid $!
python3 "$T/fake.py" "$T/silent.port" silent & track_pid $!
wait_for_file "$T/garbage.port"
wait_for_file "$T/silent.port"
GARBAGE=$(cat "$T/garbage.port")
SILENT=$(cat "$T/silent.port")
CLOSED=$(free_port)

serve_nbdkit strict --filter=exportname memory 1M exportname-strict=true exportname=foo
STRICT=$SOCK
serve_nbdkit mem memory 1M
GOOD=$(unix_uri "$SOCK")
serve_nbdkit_tcp plain memory 1M     # no TLS
PLAIN=$PORT
serve_nbdkit noread --filter=error memory 1M error-pread=EIO error-pread-rate=1
NOREAD=$(unix_uri "$SOCK")
printf 'a regular file\n' >"$T/over.img"

# ---- argument and URI errors (before any connection) ----
check_error "bad scheme"        'scheme'                -f 'foo://x' "$MP"
check_error "no host"           'host'                  -f 'nbd://' "$MP"
check_error "port out of range" 'port'                  -f 'nbd://127.0.0.1:99999' "$MP"
check_error "non-numeric port"  'port'                  -f 'nbd://127.0.0.1:abc' "$MP"
check_error "unknown query"     "unknown.*query.*'foo'" -f 'nbd://127.0.0.1/?foo=bar' "$MP"
check_error "unknown query (unix)" "unknown.*query.*'bogus'" -f "nbd+unix:///?socket=$T/x.sock&bogus=1" "$MP"
check_error "unix without socket" 'socket'              -f 'nbd+unix:///' "$MP"
check_error "-C 0"              'connections'           -f -C 0 "$GOOD" "$MP"
check_error "-C x"              'connections'           -f -C x "$GOOD" "$MP"
check_error "--timeout -1"      'timeout'               -f --timeout -1 "$GOOD" "$MP"
check_error "unknown option"    "unknown option.*bogus" -f --bogus "$GOOD" "$MP"
check_error "unknown short option" "unknown option.*-Z" -f -Z "$GOOD" "$MP"
check_error "missing argument"  'needs an argument'     -f "$GOOD" "$MP" -C
check_error "one argument"      'expected URI and MOUNTPOINT' -f "$GOOD"
check_error "three arguments"   'expected URI and MOUNTPOINT' -f "$GOOD" "$MP" extra
check_error "missing mountpoint" 'does not exist'       -f "$GOOD" "$T/no/such/dir/file"
check_error "mountpoint a device" 'neither a directory nor a regular file' -f "$GOOD" /dev/null

# ---- server errors ----
check_error "closed port"       'cannot connect.*refused' -f "nbd://127.0.0.1:$CLOSED" "$MP"
check_error "no socket"         'cannot connect'        -f "nbd+unix:///?socket=$T/none.sock" "$MP"
check_error "unknown export"    "'bar'"                 -f "$(unix_uri "$STRICT" bar)" "$MP"
check_error "not an NBD server" '.'                     -f "nbd://127.0.0.1:$GARBAGE" "$MP"
check_error "silent server"     '.'                     -f --connect-timeout 2 "nbd://127.0.0.1:$SILENT" "$MP"
# nbds:// to a server without TLS: "TLS not supported yet" from an nbdfs
# without TLS, a refused STARTTLS from one with it ("... refusing to continue
# without TLS", whole: not cut short); never a plain mount.
check_error "TLS (nbds)"        'TLS not supported yet|refus.*without TLS$' -f "nbds://127.0.0.1:$PLAIN/" "$MP"

# Over a regular file the kernel gets the size from the export's last
# byte, read at start: a server that fails it leaves nothing mounted.
check_error "over a file, reads fail" "over.img: reading the export's last byte.*Input/output error" \
  -f "$NOREAD" "$T/over.img"
[ "$(cat "$T/over.img")" = "a regular file" ] || fail "over a file, reads fail: the file changed"

# ---- daemon mode (no -f), with a pid file ----
check_error "closed port (daemon)"    'cannot connect.*refused' -P "$T/nbdfs.pid" "nbd://127.0.0.1:$CLOSED" "$MP"
check_error "unknown export (daemon)" "'bar'"           -P "$T/nbdfs.pid" "$(unix_uri "$STRICT" bar)" "$MP"
check_error "no socket (daemon)"      'cannot connect'  -P "$T/nbdfs.pid" "nbd+unix:///?socket=$T/none.sock" "$MP"
check_error "TLS (daemon)"            'TLS'             -P "$T/nbdfs.pid" "nbds://127.0.0.1:$PLAIN/" "$MP"
check_error "over a file, reads fail (daemon)" "over.img: reading the export's last byte" \
  -P "$T/nbdfs.pid" "$NOREAD" "$T/over.img"

# ---- a bad FUSE option: libfuse explains it first, nbdfs has the last word ----
rc=0
timeout 60 "$NBDFS" -f -o no_such_fuse_option "$GOOD" "$MP" >"$T/out" 2>"$T/err" </dev/null || rc=$?
[ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$rc" -lt 128 ] || fail "bad FUSE option: status $rc: $(cat "$T/err")"
tail -n 1 "$T/err" | grep -q '^nbdfs: ' || fail "bad FUSE option: last line is not nbdfs's: $(cat "$T/err")"
grep -q 'no_such_fuse_option' "$T/err" || fail "bad FUSE option: the option is not named: $(cat "$T/err")"
check_nothing_left "bad FUSE option"

# The working server was never disturbed: a good mount still works.
mount_nbdfs "$GOOD" "$MP"
[ "$(stat -c %s "$MP/disk")" = 1048576 ] || fail "good mount after the errors: wrong size"
unmount_nbdfs "$MP"
note "$cases error cases checked"
echo ok
