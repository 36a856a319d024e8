#!/bin/bash
# A server that nbdfs starts itself: [ CMD ] (socket activation),
# --command [ CMD ] (NBD on stdin/stdout) and --fd N (an inherited socket).
#  - [ nbdkit file IMG ] with a relative IMG (CMD runs in the caller's
#    directory): writes land in IMG; at unmount the server is stopped after
#    the final FLUSH and no process is left; LISTEN_* reach the server, and
#    NOTIFY_SOCKET does not
#  - [ qemu-nbd -f qcow2 IMG ]: the raw view has the virtual size; after
#    writes and unmount qemu-img check passes and convert shows the bytes
#  - [ nbdkit ... ] with --exports and several connections
#  - --command [ nbdkit -s ... ]; --command with --exports is refused
#  - --fd N from a wrapper that connects and execs nbdfs
#  - the server killed: I/O fails with EIO at once, the log gives how it
#    ended, unmount is clean
#  - SIGTERM to nbdfs (daemon) stops the server too; SIGKILL to nbdfs: the
#    server goes as well (no orphan)
#  - a command that cannot run, or a server that exits at once: a one-line
#    error, exit 1, nothing mounted or running
. "$(dirname "$0")/lib.sh"

MiB=1048576

# mount_cmd MOUNTPOINT ARGS...: nbdfs -f ARGS MOUNTPOINT (ARGS hold the
# server), in the background; waits until mounted.  Sets NBDFS_PID.
mount_cmd() { local mp=$1; shift; mount_nbdfs_argv "$mp" -f "$@" "$mp"; }

# children PID: the pids of PID's children.
children() { pgrep -P "$1" || true; }

mkdir "$T/m"
cd "$T"

# ---- [ nbdkit file IMG ]: relative path, data lands, server stopped ----
truncate -s $((16 * MiB)) disk.img
rand_file "$T/data" $((2 * MiB))
cat >"$T/env-nbdkit.sh" <<'EOF'
#!/bin/sh
env | grep -E '^(LISTEN_|NOTIFY_SOCKET)' | sort >"$ENV_OUT"
exec nbdkit "$@"
EOF
chmod +x "$T/env-nbdkit.sh"
ENV_OUT=$T/server.env NOTIFY_SOCKET=$T/nowhere.sock \
  mount_cmd "$T/m" [ "$T/env-nbdkit.sh" file disk.img ]
server=$(children "$NBDFS_PID")
[ -n "$server" ] || fail "no server process under nbdfs"
[ -f "$T/m/disk" ] || fail "no file: $(ls -la "$T/m")"
[ "$(stat -c %s "$T/m/disk")" = $((16 * MiB)) ] || fail "size $(stat -c %s "$T/m/disk")"
grep -qx 'LISTEN_FDS=1' "$T/server.env" || fail "server environment: $(cat "$T/server.env")"
grep -qx "LISTEN_PID=$server" "$T/server.env" || fail "LISTEN_PID is not the server's pid $server: $(cat "$T/server.env")"
grep -qx 'LISTEN_FDNAMES=nbd' "$T/server.env" || fail "no LISTEN_FDNAMES: $(cat "$T/server.env")"
grep -q NOTIFY_SOCKET "$T/server.env" && fail "the server saw NOTIFY_SOCKET"
[ "$(getfattr --absolute-names --only-values -n user.nbd.uri "$T/m/disk")" != "" ] || fail "no user.nbd.uri"
dd if="$T/data" of="$T/m/disk" bs=64k seek=3 conv=notrunc,fsync status=none
unmount_nbdfs "$T/m"
pid_alive "$server" && fail "the server $server is still running after unmount"
[ "$(range_sha "$T/disk.img" $((3 * 65536)) $((2 * MiB)))" = "$(sha "$T/data")" ] ||
  fail "the written bytes are not in disk.img"
ls -d "${TMPDIR:-/tmp}"/nbdfs-?????? 2>/dev/null | while read -r d; do
  [ -d "$d" ] && [ ! -e "$d/sock" ] && fail "socket directory $d left behind"; done || true
note "[ nbdkit file IMG ]: data landed, server stopped"

# ---- [ qemu-nbd -f qcow2 IMG ] ----
qemu-img create -q -f qcow2 vm.qcow2 $((48 * MiB))
mount_cmd "$T/m" [ qemu-nbd -f qcow2 vm.qcow2 ]
[ "$(stat -c %s "$T/m/disk")" = $((48 * MiB)) ] || fail "qcow2 raw view has size $(stat -c %s "$T/m/disk")"
qemu-img info -f raw "$T/m/disk" >/dev/null || fail "qemu-img info on the raw view failed"
dd if="$T/data" of="$T/m/disk" bs=1M seek=7 conv=notrunc,fsync status=none
unmount_nbdfs "$T/m"
qemu-img check -q vm.qcow2 || fail "qemu-img check of the qcow2 failed after unmount"
qemu-img convert -f qcow2 -O raw vm.qcow2 vm.raw
[ "$(range_sha vm.raw $((7 * MiB)) $((2 * MiB)))" = "$(sha "$T/data")" ] ||
  fail "qemu-img convert of the qcow2 does not show the written bytes"
note "[ qemu-nbd -f qcow2 ]: raw view, check and convert"

# ---- [ nbdkit ] with --exports and multi-conn ----
mkdir "$T/d"
mount_cmd "$T/d" --exports -C 3 [ nbdkit --filter=exportname memory $((4 * MiB)) exportname=a exportname=b exportname-list=explicit ]
wait_until 10 test -f "$T/d/a" || fail "--exports with [ CMD ]: $(ls -la "$T/d")"
[ -f "$T/d/b" ] || fail "no export b: $(ls "$T/d")"
dd if="$T/data" of="$T/d/b" bs=1M count=1 conv=notrunc,fsync status=none
[ "$(sha "$T/d/b" $MiB)" = "$(sha "$T/data" $MiB)" ] || fail "export b reads back wrong"
unmount_nbdfs "$T/d"
note "[ CMD ] --exports"

# ---- --command [ nbdkit -s ] ----
mount_cmd "$T/m" --export vol --command [ nbdkit -s memory $((8 * MiB)) ]
[ -f "$T/m/vol" ] || fail "--export vol with --command: $(ls -la "$T/m")"
dd if="$T/data" of="$T/m/vol" bs=1M conv=notrunc,fsync status=none
[ "$(sha "$T/m/vol" $((2 * MiB)))" = "$(sha "$T/data")" ] || fail "--command: reads back wrong"
server=$(children "$NBDFS_PID")
unmount_nbdfs "$T/m"
pid_alive "$server" && fail "--command server $server still running"
out=$("$NBDFS" -f --exports --command [ nbdkit -s memory 1M ] "$T/d" 2>&1) && fail "--exports --command was accepted"
[ "$(printf '%s\n' "$out" | wc -l)" = 1 ] || fail "--exports --command: not one line: $out"
printf '%s' "$out" | grep -q -- '--exports' || fail "--exports --command: $out"
note "--command"

# ---- --fd N ----
serve_nbdkit fdsrv memory $((8 * MiB))
cat >"$T/fd-wrapper.py" <<'EOF'
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
fd = os.dup(s.fileno())
os.set_inheritable(fd, True)
args = [a.replace("FD", str(fd)) for a in sys.argv[2:]]
os.execv(args[0], args)
EOF
_mounts+=("$T/m")
python3 "$T/fd-wrapper.py" "$SOCK" "$NBDFS" -f --fd FD "$T/m" >>"$T/nbdfs.log" 2>&1 &
NBDFS_PID=$!
track_pid "$NBDFS_PID"
wait_until 10 is_mounted "$T/m" || fail "--fd did not mount: $(cat "$T/nbdfs.log")"
dd if="$T/data" of="$T/m/disk" bs=1M conv=notrunc,fsync status=none
[ "$(server_sha "$(unix_uri "$SOCK")" $((2 * MiB)))" = "$(sha "$T/data")" ] || fail "--fd: data not on the server"
unmount_nbdfs "$T/m"
out=$("$NBDFS" -f --fd 0 "$T/m" </dev/null 2>&1) && fail "--fd on /dev/null was accepted"
printf '%s' "$out" | grep -q 'not a connected socket' || fail "--fd 0 (/dev/null): $out"
note "--fd"

# ---- the server dies: EIO at once, clean unmount ----
: >"$T/nbdfs.log"
mount_cmd "$T/m" [ nbdkit memory $((8 * MiB)) ]
dd if="$T/data" of="$T/m/disk" bs=1M conv=notrunc,fsync status=none
server=$(children "$NBDFS_PID")
kill -9 "$server"
wait_until 10 grep -q 'killed by signal 9' "$T/nbdfs.log" || fail "no log line for the killed server: $(cat "$T/nbdfs.log")"
# With a 30 s --reconnect-delay, a read must still fail at once: the
# server is known to be gone.  (timeout only guards against a hang.)
timeout 10 dd if="$T/m/disk" of=/dev/null bs=4k count=1 iflag=direct 2>"$T/dd.err" &&
  fail "a read after the server died succeeded"
grep -q 'Input/output error' "$T/dd.err" || fail "read after server death: $(cat "$T/dd.err")"
unmount_nbdfs "$T/m"
note "server killed: EIO, clean unmount"

# ---- SIGTERM and SIGKILL to a daemon: the server goes too ----
for sig in TERM KILL; do
  rm -f "$T/d.pid"
  _mounts+=("$T/m")
  "$NBDFS" -P "$T/d.pid" [ nbdkit memory $MiB ] "$T/m" >>"$T/nbdfs.log" 2>&1 ||
    fail "daemon mount failed: $(cat "$T/nbdfs.log")"
  dpid=$(cat "$T/d.pid")
  track_pid "$dpid"
  server=$(children "$dpid")
  [ -n "$server" ] || fail "the daemon $dpid has no server child"
  track_pid "$server"
  kill -"$sig" "$dpid"
  wait_until 20 eval '! pid_alive "$server"' || fail "SIG$sig to nbdfs left the server $server running"
  if [ "$sig" = KILL ]; then fusermount3 -u "$T/m" 2>/dev/null || true; fi
  wait_until 10 eval '! is_mounted "$T/m"' || fail "still mounted after SIG$sig"
done
note "SIGTERM/SIGKILL to nbdfs: no orphan"

# ---- failed starts ----
out=$("$NBDFS" [ /nonexistent/nbd-server ] "$T/m" 2>&1) && fail "a missing command was accepted"
[ "$(printf '%s\n' "$out" | grep -c .)" = 1 ] || fail "missing command: not one line: $out"
printf '%s' "$out" | grep -q "cannot run '/nonexistent/nbd-server'" || fail "missing command: $out"
is_mounted "$T/m" && fail "mounted after a failed start"
out=$("$NBDFS" [ nbdkit file /nonexistent.img ] "$T/m" 2>&1; echo "rc=$?")
printf '%s' "$out" | grep -q 'rc=1$' || fail "a server that exits at once: $out"
printf '%s' "$out" | grep -q 'nbdkit' || fail "the server's own error is not shown: $out"
is_mounted "$T/m" && fail "mounted after the server failed"
[ -z "$(pgrep -f 'nbdkit file /nonexistent.img' || true)" ] || fail "server left running"
note "failed starts"
