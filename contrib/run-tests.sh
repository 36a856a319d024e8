#!/bin/bash
# run-tests.sh: everything CI runs, from a fresh Debian 12 machine (as root).
#
#   1. install the build and test dependencies (skipped when all present)
#   2. build build/ (normal), build-asan/ (ASan + UBSan) and build-tsan/
#      (ThreadSanitizer; the nbdfs binary only)
#   3. meson test -C build                       (unit tests)
#   4. tests/integration/t-*.sh against build/nbdfs
#   5. the same against build-asan/nbdfs, sanitizers aborting on any error
#   6. meson test -C build-asan
#   7. the concurrency and unmount tests ($TSAN_TESTS) against
#      build-tsan/nbdfs with --threads 2, a data race or lock-order report
#      failing the test
#
# Prints PASS/FAIL per test (with the tail of a failing test's output), and
# as its last line "N passed, N failed".  Exits non-zero if anything failed.
# Environment: NBDFS_TESTS="t-foo t-bar" runs only those integration tests
# (in step 7, only those of them in $TSAN_TESTS); NBDFS_SKIP_ASAN=1 skips
# steps 5 and 6; NBDFS_SKIP_TSAN=1 skips step 7; NBDFS_SKIP_INSTALL=1 skips
# step 1.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
TEST_TIMEOUT=300
# Step 7's subset: tests with many threads, connections and shutdown races.
TSAN_TESTS="t-multiconn t-lifecycle t-reconnect-drop t-reconnect-stall t-reconnect-tls t-unmount-race t-worker-deadlock t-server-cmd t-notify t-partitions t-stats t-cache-modes t-readahead t-busy-poll t-write-fairness"
RUN_ID=$$
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/nbdfs-run-tests.XXXXXX")
# Sanitizer reports, also from an nbdfs the test user runs: it may create
# files there (sticky; not list them), and pass through $LOGDIR.
mkdir -m 1733 "$LOGDIR/sanitizer" && chmod 0711 "$LOGDIR"
passed=0
failed=0
failures=()

say() { printf '%s\n' "$*"; }
pass() { passed=$((passed + 1)); say "PASS $1"; }
fail_test() {  # NAME [LOGFILE]
  failed=$((failed + 1))
  failures+=("$1")
  say "FAIL $1"
  if [ -n "${2:-}" ] && [ -s "$2" ]; then
    tail -n 40 "$2" | sed 's/^/    | /'
  fi
}

# ---- 1. dependencies ----
PACKAGES=(build-essential pkg-config meson ninja-build libfuse3-dev fuse3 libgnutls28-dev
          gnutls-bin nbdkit qemu-utils qemu-system-common nbd-server libnbd-bin fio attr
          python3 clang libclang-rt-14-dev libtsan2 procps kmod util-linux coreutils passwd
          man-db groff-base systemd fdisk e2fsprogs fuse2fs)

install_deps() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "dependencies: all installed"
    return 0
  fi
  say "dependencies: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get update >"$LOGDIR/apt.log" 2>&1 ||
     ! apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOGDIR/apt.log" 2>&1; then
    fail_test "install-dependencies" "$LOGDIR/apt.log"
    return 1
  fi
}

# qemu 10 from bookworm-backports for the extended-headers test: its
# qemu-utils is downloaded and unpacked aside into $QEMU_BPO (never
# installed), so Debian's qemu 7.2 stays the one on PATH for every other
# test.  Its libraries are all bookworm's (qemu-utils Depends), so the
# unpacked qemu-nbd runs as it is; checked by running it.
QEMU_BPO=${QEMU_BPO:-/opt/qemu-bpo}
install_qemu_bpo() {
  local nbd=$QEMU_BPO/usr/bin/qemu-nbd dl=$LOGDIR/qemu-bpo
  if [ -x "$nbd" ] && "$nbd" --version >/dev/null 2>&1; then
    say "qemu-nbd from bookworm-backports: $("$nbd" --version | head -1)"
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$dl" "$QEMU_BPO"
  local list=/etc/apt/sources.list.d/backports.list
  grep -qs bookworm-backports "$list" ||
    echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$list"
  chmod 0777 "$dl"  # apt-get download drops to the _apt user
  if ! apt-get update >>"$LOGDIR/apt.log" 2>&1 ||
     ! (cd "$dl" && apt-get download -t bookworm-backports qemu-utils) >>"$LOGDIR/apt.log" 2>&1 ||
     ! dpkg -x "$dl"/qemu-utils_*.deb "$QEMU_BPO" >>"$LOGDIR/apt.log" 2>&1 ||
     ! "$nbd" --version >>"$LOGDIR/apt.log" 2>&1; then
    fail_test "install-qemu-bookworm-backports" "$LOGDIR/apt.log"
    return 1
  fi
  say "qemu-nbd from bookworm-backports: $("$nbd" --version | head -1)"
}

if [ "${NBDFS_SKIP_INSTALL:-}" != 1 ]; then
  install_deps
  install_qemu_bpo
fi
export QEMU_NBD_10=$QEMU_BPO/usr/bin/qemu-nbd
modprobe fuse 2>/dev/null || true
if [ ! -c /dev/fuse ]; then
  mknod -m 666 /dev/fuse c 10 229 2>/dev/null || true
fi
# Some tests mount as an unprivileged user (tests/integration/lib.sh:
# as_user).  Distributions ship /dev/fuse 0666; containers may not.
if ! id nbdfs-test >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin nbdfs-test ||
    say "WARN: cannot create the user nbdfs-test: the tests that run as a user will fail"
fi
chmod 0666 /dev/fuse 2>/dev/null || true

# ---- one run at a time; stale state from a crashed run ----
exec 9>"${TMPDIR:-/tmp}/nbdfs-run-tests.lock"
if ! flock -n 9; then
  say "another run-tests.sh is running; waiting for it"
  flock 9
fi

# The value of NBDFS_TEST_RUN_ID in PID's environment, if any.
run_id_of() { tr '\0' '\n' 2>/dev/null <"/proc/$1/environ" | sed -n 's/^NBDFS_TEST_RUN_ID=//p'; }

# Processes started by a test (they inherit NBDFS_TEST_RUN_ID), daemons
# included.  Prints "PID RUN-ID" lines.
marked_processes() {
  local f p id
  for f in $(grep -alz '^NBDFS_TEST_RUN_ID=' /proc/[0-9]*/environ 2>/dev/null); do
    p=${f#/proc/}
    p=${p%/environ}
    [ "$p" = "$$" ] && continue
    id=$(run_id_of "$p")
    [ -n "$id" ] && echo "$p $id"
  done
  return 0
}

# The FUSE mount an nbdfs process with these arguments serves (its last
# argument is the mountpoint: a directory or file, or DIR/NAME).
mount_of_nbdfs() {
  local mp
  mp=$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | tail -n 1)
  [ -n "$mp" ] || return 0
  if grep -q " $mp fuse" /proc/mounts; then echo "$mp"
  elif grep -q " $(dirname "$mp") fuse" /proc/mounts; then dirname "$mp"
  fi
}

# kill_leftovers PID...: unmount what those that are nbdfs serve, then end
# them (by pid).
kill_leftovers() {
  local p m
  for p in "$@"; do
    case $(readlink "/proc/$p/exe" 2>/dev/null) in
      */nbdfs*)
        m=$(mount_of_nbdfs "$p")
        [ -n "$m" ] && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true; } ;;
    esac
  done
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  local i alive
  for ((i = 0; i < 50; i++)); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}

# Is any integration test script running now (e.g. by hand, outside a run)?
tests_running() {
  grep -alz 'tests/integration/t-[^/]*\.sh$' /proc/[0-9]*/cmdline 2>/dev/null | grep -vq "^/proc/$$/" 2>/dev/null
}

clean_stale() {
  local stale=() p id m
  # Processes of earlier runs whose runner is gone.
  while read -r p id; do
    kill -0 "${id%%.*}" 2>/dev/null || stale+=("$p")
  done < <(marked_processes)
  if [ ${#stale[@]} -gt 0 ]; then
    say "cleaning up ${#stale[@]} process(es) left by an earlier run"
    kill_leftovers "${stale[@]}"
  fi
  # Mounts left under test directories: all of them when no test runs now,
  # otherwise only those whose daemon is gone.
  local all=0
  tests_running || all=1
  for m in $(awk '$3 ~ /^fuse/ && $2 ~ /^\/tmp\/nbdfs-test\./ {print $2}' /proc/mounts); do
    if [ "$all" = 1 ] || ! stat "$m" >/dev/null 2>&1; then
      say "unmounting stale $m"
      fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    fi
  done
  if [ "$all" = 1 ]; then
    for m in /tmp/nbdfs-test.*; do
      [ -d "$m" ] || continue
      grep -q " $m" /proc/mounts && continue
      rm -rf --one-file-system "$m" 2>/dev/null || true
    done
  fi
}
clean_stale

# ---- 2. build ----
# $BUILD_TARGET, if set, is the one target to compile (default: all).
build() {  # DIR [MESON-SETUP-OPTIONS...]
  local dir=$1; shift
  local log=$LOGDIR/build-$dir.log
  : >"$log"
  if [ ! -f "$dir/build.ninja" ] && ! meson setup "$dir" "$@" >>"$log" 2>&1; then
    fail_test "build:$dir (meson setup)" "$log"
    return 1
  fi
  if ! meson compile -C "$dir" ${BUILD_TARGET:+"$BUILD_TARGET"} >>"$log" 2>&1; then
    fail_test "build:$dir" "$log"
    return 1
  fi
  pass "build:$dir"
}
build_ok=0
asan_ok=0
tsan_ok=0
build build && build_ok=1
if [ "${NBDFS_SKIP_ASAN:-}" != 1 ]; then
  build build-asan -Db_sanitize=address,undefined -Db_lundef=false && asan_ok=1
fi
# Only nbdfs itself: the fuzz harnesses add -fsanitize=address, which cannot
# be combined with thread.
if [ "${NBDFS_SKIP_TSAN:-}" != 1 ]; then
  BUILD_TARGET=nbdfs build build-tsan -Db_sanitize=thread -Db_lundef=false && tsan_ok=1
fi

# ---- unit tests ----
unit_tests() {  # DIR LABEL
  local dir=$1 label=$2
  local log=$LOGDIR/meson-test-$dir.log json=$dir/meson-logs/testlog.json
  rm -f "$json"
  local rc=0
  meson test -C "$dir" --print-errorlogs --timeout-multiplier 3 >"$log" 2>&1 || rc=$?
  if [ ! -s "$json" ]; then
    if [ "$rc" = 0 ] && grep -qi 'no tests defined' "$log"; then
      say "($label: no unit tests defined)"
    else
      fail_test "$label (meson test exited $rc)" "$log"
    fi
    return
  fi
  local name result
  while IFS=$'\t' read -r name result; do
    case $result in
      OK | EXPECTEDFAIL) pass "$label/$name" ;;
      SKIP) say "SKIP $label/$name" ;;
      *)
        fail_test "$label/$name ($result)"
        python3 - "$json" "$name" <<'EOF' | tail -n 40 | sed 's/^/    | /'
import json, sys
for line in open(sys.argv[1]):
    t = json.loads(line)
    if t.get("name", "").split(":", 1)[-1].replace(" / ", "/") == sys.argv[2]:
        print((t.get("stdout") or "") + (t.get("stderr") or ""))
EOF
        ;;
    esac
  done < <(python3 - "$json" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if line:
        t = json.loads(line)
        name = t.get("name", "?")
        name = name.split(":", 1)[-1].replace(" / ", "/")   # "nbdfs:unit / uri" -> "unit/uri"
        print("%s\t%s" % (name, t.get("result", "?")))
EOF
)
}

# ---- integration tests ----
# $only_tests, if set, limits a run to those tests (names without .sh);
# $sanitizer_opts and $tsan_opts, if set, are the ASan/UBSan and TSan
# options; each sanitizer report (a file $sanlog.PID) fails the test.
integration_tests() {  # LABEL NBDFS-BINARY [ENV=VALUE...]
  local label=$1 bin=$2; shift 2
  local t name log rc leftovers p id
  local list=()
  if [ -n "${NBDFS_TESTS:-}" ]; then
    for name in $NBDFS_TESTS; do
      name=${name%.sh}
      [ -z "${only_tests:-}" ] || [[ " $only_tests " == *" $name "* ]] || continue
      list+=("tests/integration/$name.sh")
    done
  elif [ -n "${only_tests:-}" ]; then
    for name in $only_tests; do list+=("tests/integration/$name.sh"); done
  else
    list=(tests/integration/t-*.sh)
  fi
  for t in "${list[@]}"; do
    [ -f "$t" ] || { fail_test "$label/$(basename "$t") (no such test)"; continue; }
    name=$(basename "$t" .sh)
    log=$LOGDIR/$label-$name.log
    local sanlog=$LOGDIR/sanitizer/$label-$name
    rc=0
    local start=$SECONDS
    env NBDFS="$ROOT/$bin" NBDFS_TEST_RUN_ID="$RUN_ID.$label.$name" "$@" \
      ${sanitizer_opts:+ASAN_OPTIONS="$sanitizer_opts:log_path=$sanlog"} \
      ${sanitizer_opts:+UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1:log_path=$sanlog"} \
      ${tsan_opts:+TSAN_OPTIONS="$tsan_opts:log_path=$sanlog"} \
      timeout -k 30 "$TEST_TIMEOUT" bash "$t" </dev/null >"$log" 2>&1 || rc=$?
    echo "$((SECONDS - start)) $label/$name" >>"$LOGDIR/times.txt"
    # Anything the test left running: report and clean up.
    leftovers=()
    while read -r p id; do
      [ "$id" = "$RUN_ID.$label.$name" ] && leftovers+=("$p")
    done < <(marked_processes)
    if [ ${#leftovers[@]} -gt 0 ]; then
      {
        echo "run-tests: leftover processes after the test:"
        for p in "${leftovers[@]}"; do echo "  $p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"; done
      } >>"$log"
      say "WARN $label/$name left ${#leftovers[@]} process(es) running; ending them"
      kill_leftovers "${leftovers[@]}"
    fi
    if compgen -G "$sanlog.*" >/dev/null; then
      cat "$sanlog".* >>"$log"
      fail_test "$label/$name (sanitizer report)" "$log"
    elif [ "$rc" = 0 ]; then
      pass "$label/$name"
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      fail_test "$label/$name (timed out after ${TEST_TIMEOUT}s)" "$log"
    else
      fail_test "$label/$name (exit $rc)" "$log"
    fi
  done
}

sanitizer_opts=
if [ "$build_ok" = 1 ]; then
  unit_tests build meson
  integration_tests integration build/nbdfs
else
  fail_test "unit + integration tests (not run: build failed)"
fi

if [ "${NBDFS_SKIP_ASAN:-}" != 1 ]; then
  if [ "$asan_ok" = 1 ]; then
    sanitizer_opts="halt_on_error=1:abort_on_error=1:detect_leaks=1:print_summary=1"
    integration_tests asan build-asan/nbdfs
    sanitizer_opts=
    ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_summary=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1" \
      unit_tests build-asan meson-asan
  else
    fail_test "asan tests (not run: build-asan failed)"
  fi
fi

if [ "${NBDFS_SKIP_TSAN:-}" != 1 ]; then
  if [ "$tsan_ok" = 1 ]; then
    tsan_opts="halt_on_error=1:abort_on_error=1:second_deadlock_stack=1"
    only_tests=$TSAN_TESTS
    integration_tests tsan build-tsan/nbdfs NBDFS_EXTRA_ARGS="--threads 2"
    only_tests=
    tsan_opts=
  else
    fail_test "tsan tests (not run: build-tsan failed)"
  fi
fi

say ""
if [ -s "$LOGDIR/times.txt" ]; then
  say "slowest integration tests (seconds): $(sort -rn "$LOGDIR/times.txt" | head -n 5 | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1}')"
fi
if [ "$failed" -gt 0 ]; then
  say "failed: ${failures[*]}"
fi
say "logs: $LOGDIR"
say "$passed passed, $failed failed"
[ "$failed" = 0 ]
