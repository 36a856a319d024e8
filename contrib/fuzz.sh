#!/bin/bash
# fuzz.sh [SECONDS]: build the libFuzzer harnesses in tests/fuzz with clang
# (ASan + UBSan) and run each for SECONDS (default 60).
#
#   contrib/fuzz.sh 300            # five minutes per harness
#   FUZZ_ONLY=reply contrib/fuzz.sh # one harness (reply, handshake, uri)
#   FUZZ_OUT=/tmp/f contrib/fuzz.sh # where builds, work corpora, crashes go
#
# The seed corpus in tests/fuzz/corpus/<harness> is read, never written: new
# inputs go to $FUZZ_OUT/corpus/<harness>, crashes to $FUZZ_OUT/crashes/.
# Exits non-zero when a harness crashed; add the crashing input to the seed
# corpus (after reporting it) so the meson replay tests keep checking it.
set -euo pipefail

SECONDS_EACH=${1:-60}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${FUZZ_OUT:-$ROOT/build-fuzz}
CC=${CC_FUZZ:-clang}
HARNESSES=${FUZZ_ONLY:-reply handshake uri partition}

command -v "$CC" >/dev/null || { echo "fuzz.sh: $CC not found (apt-get install clang libclang-rt-dev)" >&2; exit 2; }

mkdir -p "$OUT/obj" "$OUT/corpus" "$OUT/crashes"
CFLAGS=(-g -O1 -std=gnu11 -fno-omit-frame-pointer -D_GNU_SOURCE -DNBDFS_VERSION=\"fuzz\"
        -I"$ROOT/include" -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all)

# Every src/*.c but main.c, built once into an archive: a harness links only
# the objects it needs (the wire layer, transports, handshake, connections),
# so files that need FUSE are compiled (with its flags) but never linked.
FUSE_CFLAGS=$(pkg-config --cflags fuse3 2>/dev/null || true)
rm -f "$OUT/obj/"*.o "$OUT/libnbdfs-fuzz.a"
for f in "$ROOT"/src/*.c; do
  base=$(basename "$f" .c)
  [ "$base" = main ] && continue
  # shellcheck disable=SC2086
  "$CC" "${CFLAGS[@]}" $FUSE_CFLAGS -c "$f" -o "$OUT/obj/$base.o" ||
    { echo "fuzz.sh: cannot compile $f" >&2; exit 2; }
done
ar rcs "$OUT/libnbdfs-fuzz.a" "$OUT"/obj/*.o

for h in $HARNESSES; do
  "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer "$ROOT/tests/fuzz/fuzz-$h.c" "$OUT/libnbdfs-fuzz.a" \
    -lgnutls -lpthread -o "$OUT/fuzz-$h"
done

max_len() {
  case $1 in
    uri) echo 8192 ;;
    *) echo 32768 ;;
  esac
}

status=0
for h in $HARNESSES; do
  mkdir -p "$OUT/corpus/$h"
  dict=()
  [ -f "$ROOT/tests/fuzz/$h.dict" ] && dict=(-dict="$ROOT/tests/fuzz/$h.dict")
  echo "== fuzz-$h for ${SECONDS_EACH}s (log: $OUT/fuzz-$h.log)"
  # -close_fd_mask=2: the daemon's own log lines are silenced; libFuzzer and
  # sanitizer reports still go to the log.
  set +e
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
    "$OUT/fuzz-$h" "$OUT/corpus/$h" "$ROOT/tests/fuzz/corpus/$h" "${dict[@]}" \
      -max_total_time="$SECONDS_EACH" -max_len="$(max_len "$h")" -timeout=10 -rss_limit_mb=2048 \
      -close_fd_mask=2 -print_final_stats=1 -artifact_prefix="$OUT/crashes/$h-" >"$OUT/fuzz-$h.log" 2>&1
  rc=$?
  set -e
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$OUT/fuzz-$h.log" || true
  grep -E 'cov: [0-9]+' "$OUT/fuzz-$h.log" | tail -1 || true
  if [ $rc -ne 0 ]; then
    echo "!! fuzz-$h failed (exit $rc):"
    grep -E 'ERROR|SUMMARY|Test unit written|deadly signal|runtime error' "$OUT/fuzz-$h.log" | head -20
    status=1
  fi
done
ls "$OUT/crashes" 2>/dev/null | sed 's/^/crash: /' || true
exit $status
