#!/bin/bash
# quickstart.sh: from a fresh Debian 12 machine (as root) to a mounted NBD
# export in one command.
#
#   contrib/quickstart.sh         install what is missing, build, start a 1 GiB
#                                 nbdkit memory export on a Unix socket, mount
#                                 it with nbdfs at /tmp/nbdfs-demo/mnt/disk
#   contrib/quickstart.sh stop    unmount and stop the server again
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO=/tmp/nbdfs-demo
SOCK=$DEMO/nbd.sock
MNT=$DEMO/mnt
URI="nbd+unix:///?socket=$SOCK"

stop() {
  local i pid
  pid=$(cat "$DEMO/nbdfs.pid" 2>/dev/null || true)
  if grep -q " $MNT fuse" /proc/mounts; then
    echo "+ fusermount3 -u $MNT"
    fusermount3 -u "$MNT"
  fi
  if [ -n "$pid" ]; then   # nbdfs flushes and disconnects on its way out
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ -s "$DEMO/nbdkit.pid" ] && kill -0 "$(cat "$DEMO/nbdkit.pid")" 2>/dev/null; then
    echo "+ kill $(cat "$DEMO/nbdkit.pid")   # nbdkit"
    kill "$(cat "$DEMO/nbdkit.pid")"
  fi
  rm -f "$DEMO/nbdkit.pid" "$DEMO/nbdfs.pid" "$SOCK"
}

if [ "${1:-}" = stop ]; then
  stop
  exit 0
fi

# 1. Packages (only those missing).
PACKAGES=(build-essential pkg-config meson ninja-build libfuse3-dev fuse3 libgnutls28-dev
          nbdkit qemu-utils)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "+ apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
modprobe fuse 2>/dev/null || true

# 2. Build.
cd "$ROOT"
[ -f build/build.ninja ] || meson setup build
meson compile -C build
NBDFS=$ROOT/build/nbdfs

# 3. A server: 1 GiB in memory, on a Unix socket.  (Any NBD server works:
#    qemu-nbd, nbd-server, nbdkit with any plugin, over TCP or Unix.)
stop >/dev/null 2>&1 || true
mkdir -p "$MNT"
echo "+ nbdkit -U $SOCK -P $DEMO/nbdkit.pid memory 1G"
nbdkit -U "$SOCK" -P "$DEMO/nbdkit.pid" memory 1G
for ((i = 0; i < 100; i++)); do [ -S "$SOCK" ] && break; sleep 0.05; done

# 4. Mount it (nbdfs detaches once the file is there).
echo "+ nbdfs -P $DEMO/nbdfs.pid '$URI' $MNT"
"$NBDFS" -P "$DEMO/nbdfs.pid" "$URI" "$MNT"

echo
echo "+ ls -l $MNT"
ls -l "$MNT"
echo
echo "+ qemu-img info -U -f raw $MNT/disk"
qemu-img info -U -f raw "$MNT/disk"
cat <<EOF

The export is the file $MNT/disk: read and write it with anything, e.g.
    dd if=/dev/urandom of=$MNT/disk bs=1M count=16 conv=notrunc,fsync
    mkfs.ext4 -F $MNT/disk          # then: mount -o loop $MNT/disk /somewhere

Unmount and stop the server:
    fusermount3 -u $MNT
    kill \$(cat $DEMO/nbdkit.pid)
or simply:
    $0 stop
EOF
