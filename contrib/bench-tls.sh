#!/usr/bin/env bash
# What TLS costs: sequential 1M writes and reads with fio through nbdfs over nbds:// (PSK),
# beside nbdfuse with the same URI, and beside plaintext nbdfs on the same kind of server.
#
# Usage: contrib/bench-tls.sh       (from anywhere; needs FUSE, nbdkit, fio, gnutls-bin, libnbd-bin)
#
# Environment:
#   BENCH_RUNTIME=5     seconds per fio job (time_based, after a 1 s ramp)
#   BENCH_SIZE=1G       size of each nbdkit memory export
#   NBDFS_BIN=path      nbdfs binary (default: build/nbdfs)
#   BENCH_OUTDIR=dir    keep fio's JSON and the logs there
#
# Paths, each with its own fresh `nbdkit memory` server, mounted with 4 connections:
#   nbdfs-psk     nbdfs   nbds+unix://alice@/?socket=S&tls-psk-file=F   (nbdkit --tls=require --tls-psk=F)
#   nbdfuse-psk   nbdfuse, the same URI.  libnbd refuses tls-psk-file= in URIs unless the
#                 program allows local files, which nbdfuse (1.14) does not: then this path is
#                 reported as not possible, with libnbd's message, and the next two paths
#                 compare the two over TLS in the way nbdfuse can do it:
#   nbdfs-x509    nbdfs   nbds://localhost:PORT/ with certificates in $HOME/.pki/libnbd (a
#                 temporary HOME), nbdkit --tls=require with a certificate for localhost
#   nbdfuse-x509  nbdfuse, the same URI and HOME
#   nbdfs-plain   nbdfs   nbd+unix:///?socket=S (nbdkit without TLS)
# Jobs (ioengine=libaio, direct=1, bs=1M, iodepth=8, numjobs=1, on the mounted file):
#   seqwrite-1M, then seqread-1M (so reads read what was written).
# Prints MB/s (10^6 bytes/s) per path and job, and the ratios TLS/plaintext and nbdfs/nbdfuse.
# Mounts, daemons and servers are torn down on exit, failure or Ctrl-C.
# Exit status: 0 when every job that could run ran cleanly.

set -u -o pipefail

RUNTIME=${BENCH_RUNTIME:-5}
RAMP=1
SIZE=${BENCH_SIZE:-1G}
OUTDIR=${BENCH_OUTDIR:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NBDFS=${NBDFS_BIN:-$ROOT/build/nbdfs}
PATHS=(nbdfs-psk nbdfuse-psk nbdfs-x509 nbdfuse-x509 nbdfs-plain)
JOBS=(seqwrite-1M seqread-1M)

BENCH_NAME=bench-tls
. "$ROOT/contrib/bench-lib.sh"

case "${1:-}" in
    -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    "") ;;
    *) die "unexpected argument '$1' (configuration is by environment variables; see --help)" ;;
esac
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNTIME must be a positive integer (seconds)"
for c in nbdkit fio nbdfuse certtool psktool fusermount3 python3; do
    command -v "$c" >/dev/null || die "$c is missing (packages: nbdkit fio libnbd-bin gnutls-bin fuse3 python3)"
done
ensure_nbdfs
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"

# ---------------------------------------------------------------- state and cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nbdfs-bench-tls.XXXXXX") || die "mktemp failed"
RES=$TMP/results
mkdir -p "$RES"

save_results() {
    if [[ -n $OUTDIR ]]; then
        mkdir -p "$OUTDIR" && cp -r "$RES"/. "$OUTDIR"/ 2>/dev/null
    fi
}
bench_trap_cleanup

# ---------------------------------------------------------------- credentials
export HOME_TLS=$TMP/home
mkdir -p "$TMP/pki" "$HOME_TLS/.pki/libnbd"
psktool -u alice -p "$TMP/keys.psk" >/dev/null 2>&1 || die "psktool failed"
mkcert() {  # mkcert NAME TEMPLATE-LINES...: key and certificate signed by the CA
    local n=$1; shift
    printf '%s\n' "$@" >"$TMP/pki/$n.tmpl"
    certtool --generate-privkey --key-type=ecdsa --outfile "$TMP/pki/$n-key.pem" >/dev/null 2>&1 &&
    certtool --generate-certificate --load-privkey "$TMP/pki/$n-key.pem" \
        --load-ca-certificate "$TMP/pki/ca-cert.pem" --load-ca-privkey "$TMP/pki/ca-key.pem" \
        --template "$TMP/pki/$n.tmpl" --outfile "$TMP/pki/$n-cert.pem" >/dev/null 2>&1 || die "certtool ($n) failed"
}
printf '%s\n' 'cn = "bench CA"' ca cert_signing_key 'expiration_days = 30' >"$TMP/pki/ca.tmpl"
certtool --generate-privkey --key-type=ecdsa --outfile "$TMP/pki/ca-key.pem" >/dev/null 2>&1 &&
certtool --generate-self-signed --load-privkey "$TMP/pki/ca-key.pem" --template "$TMP/pki/ca.tmpl" \
    --outfile "$TMP/pki/ca-cert.pem" >/dev/null 2>&1 || die "certtool (CA) failed"
mkcert server 'cn = "localhost"' 'dns_name = "localhost"' 'ip_address = "127.0.0.1"' tls_www_server \
    signing_key encryption_key 'expiration_days = 30'
mkcert client 'cn = "bench client"' tls_www_client signing_key encryption_key 'expiration_days = 30'
mkdir -p "$TMP/server-pki"
cp "$TMP/pki/ca-cert.pem" "$TMP/pki/server-cert.pem" "$TMP/pki/server-key.pem" "$TMP/server-pki/"
cp "$TMP/pki/ca-cert.pem" "$TMP/pki/client-cert.pem" "$TMP/pki/client-key.pem" "$HOME_TLS/.pki/libnbd/"

# ---------------------------------------------------------------- servers and mounts
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server NAME unix|tcp NBDKIT-ARGS...: fresh nbdkit memory; sets SERVER_PID, SOCK or PORT.
start_server() {
    local name=$1 how=$2; shift 2
    local d=$TMP/$name n try
    mkdir -p "$d"
    for try in 1 2 3 4 5; do
        rm -f "$d/nbdkit.pid"
        if [[ $how = unix ]]; then
            SOCK=$d/nbd.sock
            nbdkit -f -U "$SOCK" -P "$d/nbdkit.pid" "$@" memory size="$SIZE" >"$RES/$name-nbdkit.log" 2>&1 &
        else
            PORT=$(free_port)
            nbdkit -f -i 127.0.0.1 -p "$PORT" -P "$d/nbdkit.pid" "$@" memory size="$SIZE" \
                >"$RES/$name-nbdkit.log" 2>&1 &
        fi
        SERVER_PID=$!
        n=100
        while [[ ! -s $d/nbdkit.pid ]] && pid_alive "$SERVER_PID" && ((n-- > 0)); do sleep 0.1; done
        [[ -s $d/nbdkit.pid ]] && return 0
        wait "$SERVER_PID" 2>/dev/null
        grep -qi 'in use' "$RES/$name-nbdkit.log" || break
    done
    die "nbdkit ($name) did not start: $(tail -n 3 "$RES/$name-nbdkit.log")"
}

# mount_path NAME URI: mount URI with nbdfs or nbdfuse (by NAME), 4 connections; sets
# TARGET.  Returns 1 (with the reason in $RES/NAME.skip) if the daemon exits first.
mount_path() {
    local name=$1 uri=$2 n=300 home=$HOME
    MOUNT_DIR=$TMP/$name/mnt
    mkdir -p "$MOUNT_DIR"
    [[ $name = *x509 ]] && home=$HOME_TLS
    case $name in
        nbdfs-*)
            HOME=$home "$NBDFS" -f -C 4 "$uri" "$MOUNT_DIR" >"$RES/$name-daemon.log" 2>&1 &
            TARGET=$MOUNT_DIR/disk ;;
        nbdfuse-*)
            HOME=$home nbdfuse -C 4 "$MOUNT_DIR/" "$uri" >"$RES/$name-daemon.log" 2>&1 &
            TARGET=$MOUNT_DIR/nbd ;;
    esac
    DAEMON_PID=$!
    while ((n-- > 0)); do
        if ! pid_alive "$DAEMON_PID"; then
            wait "$DAEMON_PID" 2>/dev/null
            DAEMON_PID=""
            tail -n 3 "$RES/$name-daemon.log" | tr '\n' ' ' >"$RES/$name.skip"
            return 1
        fi
        grep -q " $MOUNT_DIR fuse" /proc/mounts && [[ -e $TARGET ]] && return 0
        sleep 0.1
    done
    die "$name did not mount within 30 s: $(tail -n 3 "$RES/$name-daemon.log")"
}

run_fio() {   # run_fio LOG ARGS...: in the background so Ctrl-C reaches the trap at once
    local log=$1 rc
    shift
    timeout --foreground -k 10 $((RUNTIME + RAMP + 120)) fio "$@" >"$log" 2>&1 &
    JOB_PID=$!
    wait "$JOB_PID"
    rc=$?
    JOB_PID=""
    return $rc
}

run_path() {
    local name=$1 uri job rw rc
    say "== $name"
    case $name in
        *-psk)
            start_server "$name" unix --tls=require --tls-psk="$TMP/keys.psk"
            uri="nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$TMP/keys.psk" ;;
        *-x509)
            start_server "$name" tcp --tls=require --tls-certificates="$TMP/server-pki"
            uri="nbds://localhost:$PORT/" ;;
        *-plain)
            start_server "$name" unix
            uri="nbd+unix:///?socket=$SOCK" ;;
    esac
    say "$name: $uri"
    if ! mount_path "$name" "$uri"; then
        say "$name: not possible: $(cat "$RES/$name.skip")"
        stop_server
        return 0
    fi
    for job in "${JOBS[@]}"; do
        case $job in seqwrite-1M) rw=write ;; seqread-1M) rw=read ;; esac
        say "$name: $job (${RUNTIME}s)"
        run_fio "$RES/$name-$job.log" --name="$job" --filename="$TARGET" --ioengine=libaio --direct=1 \
            --rw="$rw" --bs=1M --iodepth=8 --numjobs=1 --size="$SIZE" --time_based \
            --runtime="$RUNTIME" --ramp_time="$RAMP" --output-format=json --output="$RES/$name-$job.json"
        rc=$?
        echo "$rc" >"$RES/$name-$job.rc"
        ((rc)) && say "$name: $job failed (exit $rc): $(tail -n 3 "$RES/$name-$job.log" | tr '\n' ' ')"
    done
    stop_daemon
    stop_server
}

say "runtime ${RUNTIME}s (+${RAMP}s ramp) per job; exports of $SIZE; $(nproc) CPUs; nbdfs: $NBDFS"
for p in "${PATHS[@]}"; do
    run_path "$p"
done

python3 - "$RES" "${PATHS[@]}" <<'EOF'
import json, os, sys

res, paths = sys.argv[1], sys.argv[2:]
jobs = [("seqwrite-1M", "write"), ("seqread-1M", "read")]
problems = []
val = {}

for p in paths:
    skip = os.path.join(res, p + ".skip")
    for job, ddir in jobs:
        base = os.path.join(res, f"{p}-{job}")
        if os.path.exists(skip):
            val[p, job] = "n/a"
            continue
        try:
            rc = int(open(base + ".rc").read().strip())
            text = open(base + ".json").read()
            j = json.loads(text[text.index("{"):])["jobs"][0]
        except (OSError, ValueError, KeyError, IndexError):
            problems.append(f"{p} {job}: no fio result")
            val[p, job] = "ERR"
            continue
        if rc or j.get("error"):
            problems.append(f"{p} {job}: fio exit {rc}, error {j.get('error')}")
            val[p, job] = "ERR"
            continue
        val[p, job] = j[ddir]["bw_bytes"] / 1e6

def fmt(v):
    return f"{v:.0f} MB/s" if isinstance(v, float) else v

def ratio(a, b):
    return f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) and b > 0 else "-"

print()
print(f"{'path':<14} " + " ".join(f"{job:<13}" for job, _ in jobs))
for p in paths:
    print(f"{p:<14} " + " ".join(f"{fmt(val[p, job]):<13}" for job, _ in jobs))
print()
print("ratios                      " + " ".join(f"{job:<13}" for job, _ in jobs))
for a, b, what in [("nbdfs-psk", "nbdfs-plain", "TLS (PSK) / plaintext"),
                   ("nbdfs-x509", "nbdfs-plain", "TLS (X.509) / plaintext"),
                   ("nbdfs-psk", "nbdfuse-psk", "nbdfs / nbdfuse, PSK"),
                   ("nbdfs-x509", "nbdfuse-x509", "nbdfs / nbdfuse, X.509")]:
    print(f"{what:<27} " + " ".join(f"{ratio(val[a, job], val[b, job]):<13}" for job, _ in jobs))
for p in paths:
    skip = os.path.join(res, p + ".skip")
    if os.path.exists(skip):
        print(f"{p}: not possible: {open(skip).read().strip()}")
for pr in problems:
    print("problem:", pr)
sys.exit(1 if problems else 0)
EOF
