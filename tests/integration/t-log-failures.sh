#!/bin/bash
# Failed requests are logged rate-limited: 300 reads and 300 writes that the
# server fails (nbdkit error filter, EIO) give at least one line about a
# failed read and one about a failed write, each naming the export (or the
# server) and the error; fewer than 60 lines about the failures in all; and
# "N more similar messages suppressed" lines whose counts, with the lines
# shown, account for every failure (checked after the unmount, as the
# daemon reports pending counts at exit).
. "$(dirname "$0")/lib.sh"

N=300
serve_nbdkit err --filter=error memory $((64 * 1048576)) error-pread-rate=1 error-pwrite-rate=1
mkdir "$T/mnt"
F=$T/mnt/disk
mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" -v
mark=$(log_mark "$T/nbdfs.log")

nr=0
for ((i = 0; i < N; i++)); do
  timeout 30 dd if="$F" of=/dev/null bs=4k count=1 skip=$((i * 5)) iflag=direct status=none 2>>"$T/read.err" ||
    nr=$((nr + 1))
done
nw=0
for ((i = 0; i < N; i++)); do
  timeout 30 dd if=/dev/zero of="$F" bs=4k count=1 seek=$((i * 5 + 2)) oflag=direct conv=notrunc \
    status=none 2>>"$T/write.err" || nw=$((nw + 1))
done
[ "$nr" = "$N" ] || soft_fail "$((N - nr)) of $N reads succeeded, expected all to fail"
[ "$nw" = "$N" ] || soft_fail "$((N - nw)) of $N writes succeeded, expected all to fail"
grep -qi 'input/output error' "$T/read.err" || soft_fail "reads did not fail with EIO: $(head -n 3 "$T/read.err")"
grep -qi 'input/output error' "$T/write.err" || soft_fail "writes did not fail with EIO: $(head -n 3 "$T/write.err")"

fusermount3 -u "$T/mnt" || fail "fusermount3 -u failed"
wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "nbdfs did not exit after unmount"
rc=0
wait "$NBDFS_PID" || rc=$?
[ "$rc" = 0 ] || soft_fail "nbdfs exited with status $rc (no acknowledged write was lost)"

# The log after the mount, with our temp dir's name (random letters) out of
# the way of the word matches.
log_since "$T/nbdfs.log" "$mark" | sed "s|$T|TMP|g" >"$T/part.log"
python3 - "$T/part.log" "$N" <<'PYEOF' || soft_fail "log checks failed (see above)"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
n = int(sys.argv[2])
bad = []
err = re.compile(r"input/output error|\bEIO\b", re.I)
named = re.compile(r"export|socket|nbd\+unix|nbd://", re.I)
supp = re.compile(r"\b(\d+)\b[^;]*\bsuppressed\b", re.I)
failure_lines = [l for l in lines if err.search(l) or supp.search(l)]
def shown(kind):
    return [l for l in failure_lines if not supp.search(l) and re.search(r"\b%s\b" % kind, l, re.I)]
def suppressed(kind):
    return sum(int(supp.search(l).group(1)) for l in failure_lines
               if supp.search(l) and re.search(r"\b%s\b" % kind, l, re.I))
for kind in ("read", "write"):
    s = shown(kind)
    if not s:
        bad.append("no line about a failed %s" % kind)
    elif not any(named.search(l) and err.search(l) for l in s):
        bad.append("no failed-%s line names the export and the error, e.g. %r" % (kind, s[0]))
    total = len(s) + suppressed(kind)
    if total < n:
        bad.append("%s failures: %d lines shown + %d counted as suppressed < %d failures"
                   % (kind, len(s), suppressed(kind), n))
if len(failure_lines) >= 60:
    bad.append("%d lines about the failures (expected fewer than 60), e.g. %r"
               % (len(failure_lines), failure_lines[len(failure_lines) // 2]))
if not any(supp.search(l) for l in failure_lines):
    bad.append("no 'N ... suppressed' line")
for b in bad:
    print("FAIL: " + b, file=sys.stderr)
print("%d lines about failures; e.g.:" % len(failure_lines), file=sys.stderr)
for l in failure_lines[:3] + [l for l in failure_lines if supp.search(l)][:2]:
    print("    " + l, file=sys.stderr)
sys.exit(1 if bad else 0)
PYEOF
finish_test
