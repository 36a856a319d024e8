# bench-lib.sh: helpers shared by the benchmark scripts (sourced).
# Set BENCH_NAME (the message prefix) and ROOT before sourcing.

say() { printf '%s: %s\n' "${BENCH_NAME:-bench}" "$*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
    if ((EUID == 0)); then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $*"; fi
}

APT_UPDATED=0
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]}"
    if ((!APT_UPDATED)); then as_root apt-get update -qq || die "apt-get update failed"; APT_UPDATED=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# ensure_nbdfs: build nbdfs unless $NBDFS is already there.
ensure_nbdfs() {
    [[ -x $NBDFS ]] && return 0
    [[ -n ${NBDFS_BIN:-} ]] && die "NBDFS_BIN=$NBDFS_BIN is not an executable"
    ensure_pkgs meson ninja-build gcc pkg-config libfuse3-dev libgnutls28-dev
    say "building nbdfs"
    (cd "$ROOT" && { [[ -d build ]] || meson setup build >/dev/null; } && meson compile -C build >/dev/null) \
        || die "building nbdfs failed"
    [[ -x $NBDFS ]] || die "build did not produce $NBDFS"
}

pid_alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

wait_gone() {
    local pid=$1 n=$2
    while pid_alive "$pid" && ((n-- > 0)); do sleep 0.1; done
    if pid_alive "$pid"; then return 1; fi
    wait "$pid" 2>/dev/null
    return 0
}

stop_pid() {
    local pid=$1
    pid_alive "$pid" || { [[ -n $pid ]] && wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    wait_gone "$pid" 50 && return 0
    kill -KILL "$pid" 2>/dev/null
    wait_gone "$pid" 30
}

unmount_dir() {
    local dir=$1 dev
    [[ -n $dir ]] && mountpoint -q "$dir" 2>/dev/null || return 0
    fusermount3 -u "$dir" 2>/dev/null && return 0
    sleep 1
    fusermount3 -u "$dir" 2>/dev/null && return 0
    dev=$(mountpoint -d "$dir" 2>/dev/null)
    if [[ -n $dev && -w /sys/fs/fuse/connections/${dev#*:}/abort ]]; then
        echo 1 >"/sys/fs/fuse/connections/${dev#*:}/abort" 2>/dev/null
    fi
    fusermount3 -u "$dir" 2>/dev/null || fusermount3 -uz "$dir" 2>/dev/null || umount -l "$dir" 2>/dev/null
}

# What bench_cleanup tears down; scripts set these as they go.
SERVER_PID=""      # the NBD server of the path being measured
DAEMON_PID=""      # nbdfs or nbdfuse
MOUNT_DIR=""
JOB_PID=""         # fio or qemu-img running in the background

stop_daemon() {
    unmount_dir "$MOUNT_DIR"
    if [[ -n $DAEMON_PID ]]; then
        # A FUSE daemon exits by itself once unmounted; give it a moment before signalling.
        wait_gone "$DAEMON_PID" 100 || stop_pid "$DAEMON_PID"
    fi
    DAEMON_PID=""
    MOUNT_DIR=""
}

stop_server() { stop_pid "$SERVER_PID"; SERVER_PID=""; }

# bench_cleanup: stop everything above, let the script keep its results
# (save_results, if it defines one), and remove $TMP unless something is
# still mounted in it.  Installed for every exit by bench_trap_cleanup.
CLEANED=0
# shellcheck disable=SC2317  # invoked from the EXIT trap
bench_cleanup() {
    ((CLEANED)) && return
    CLEANED=1
    trap '' INT TERM HUP
    stop_pid "$JOB_PID"
    stop_daemon
    stop_server
    if declare -F save_results >/dev/null; then save_results; fi
    [[ -n ${TMP:-} ]] || return 0
    if grep -q " $TMP/" /proc/mounts; then
        say "warning: something is still mounted under $TMP; leaving it"
    else
        rm -rf "$TMP"
    fi
}

bench_trap_cleanup() {
    trap bench_cleanup EXIT
    trap 'say interrupted; exit 130' INT
    trap 'say terminated; exit 143' TERM
    trap 'exit 129' HUP
}
