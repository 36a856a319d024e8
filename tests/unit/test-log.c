/* test-log.c: rate-limited failure messages, log_notice and the log file
 * (src/log.c). */
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "log.h"

/* ---- capture stderr (where log.c writes) in a temporary file ---- */

static FILE *cap_file;
static int cap_saved = -1;

static void cap_start(void)
{
  fflush(stderr);
  cap_file = tmpfile();
  cap_saved = dup(2);
  if (!cap_file || cap_saved < 0 || dup2(fileno(cap_file), 2) < 0)
    abort();
}

/* Stop capturing; returns what was written (malloc'd, NUL-terminated). */
static char *cap_end(void)
{
  fflush(stderr);
  if (dup2(cap_saved, 2) < 0)
    abort();
  close(cap_saved);
  long n = ftell(cap_file);
  if (n < 0)
    n = 0;
  char *s = malloc((size_t)n + 1);
  if (!s)
    abort();
  rewind(cap_file);
  size_t got = fread(s, 1, (size_t)n, cap_file);
  s[got] = 0;
  fclose(cap_file);
  return s;
}

/* Show captured output as TAP comments. */
static void show(const char *s)
{
  for (const char *l = s; *l;) {
    const char *e = strchr(l, '\n');
    int len = e ? (int)(e - l) : (int)strlen(l);
    printf("#   stderr: %.*s\n", len, l);
    l += len + (e ? 1 : 0);
  }
}

static int count_lines(const char *s, const char *needle)
{
  int n = 0;
  for (const char *l = s; *l;) {
    const char *e = strchr(l, '\n');
    size_t len = e ? (size_t)(e - l) : strlen(l);
    if (!needle || memmem(l, len, needle, strlen(needle)))
      n++;
    l += len + (e ? 1 : 0);
  }
  return n;
}

/* Sum of N over the "N more similar message(s) suppressed" lines. */
static unsigned long long sum_suppressed(const char *s)
{
  unsigned long long sum = 0;
  for (const char *l = s; (l = strstr(l, "nbdfs: ")); l++) {
    unsigned long long n;
    char word[8];
    if (sscanf(l, "nbdfs: %llu more similar %7s", &n, word) == 2)
      sum += n;
  }
  return sum;
}

/* ---- the burst, the report, the window ---- */

static struct log_limit burst = LOG_LIMIT_INIT;

static void test_burst(void)
{
  cap_start();
  for (int i = 0; i < 1000; i++)
    log_failure(&burst, "read %d failed: %s", i, "Input/output error");
  char *out = cap_end();
  CHECK_EQ(count_lines(out, NULL), LOG_LIMIT_BURST, "1000 failures in a burst give 5 lines");
  CHECK(strstr(out, "nbdfs: read 0 failed: Input/output error\n") &&
        strstr(out, "nbdfs: read 4 failed: Input/output error\n") && !strstr(out, "read 5 "),
        "the first 5 are the ones shown, prefixed nbdfs:");
  CHECK_EQ(burst.suppressed, 995, "995 counted");
  free(out);

  cap_start();
  log_flush_suppressed();
  out = cap_end();
  CHECK_EQ(count_lines(out, NULL), 1, "log_flush_suppressed: one line");
  bool ok = strstr(out, "nbdfs: 995 more similar messages suppressed") != NULL;
  CHECK(ok, "it says 995 suppressed");
  if (!ok)
    show(out);
  CHECK(strstr(out, "the last: read 999 failed: Input/output error\n") != NULL,
        "and quotes the last one");
  free(out);

  cap_start();
  log_flush_suppressed();
  log_limit_flush(&burst);
  out = cap_end();
  CHECK_EQ(strlen(out), 0, "nothing pending: flushing again prints nothing");
  free(out);

  /* Still in the window: counted, then reported by log_limit_flush. */
  cap_start();
  log_failure(&burst, "one more");
  log_limit_flush(&burst);
  out = cap_end();
  ok = !strcmp(out, "nbdfs: 1 more similar message suppressed; the last: one more\n");
  CHECK(ok, "log_limit_flush reports a single suppressed message");
  if (!ok)
    show(out);
  free(out);

  /* The window ends (pretend 11 s passed): the next message first reports
   * what the old window suppressed, then is shown. */
  cap_start();
  for (int i = 0; i < 7; i++)
    log_failure(&burst, "late %d", i);
  burst.window_start_ns -= (int64_t)(LOG_LIMIT_WINDOW_S + 1) * 1000000000;
  log_failure(&burst, "after the window");
  out = cap_end();
  CHECK(!strcmp(out, "nbdfs: 7 more similar messages suppressed; the last: late 6\n"
                     "nbdfs: after the window\n"),
        "after the window: the count first, then the message");
  CHECK(burst.shown == 1 && burst.suppressed == 0, "a new window has begun");
  free(out);
}

/* ---- the registry: every limiter with a pending count, once ---- */

static struct log_limit reg_a = LOG_LIMIT_INIT, reg_b = LOG_LIMIT_INIT, reg_quiet = LOG_LIMIT_INIT;

static void test_registry(void)
{
  cap_start();
  for (int i = 0; i < 8; i++)
    log_failure(&reg_a, "a %d", i);
  for (int i = 0; i < 12; i++)
    log_failure(&reg_b, "b %d", i);
  log_failure(&reg_quiet, "quiet");
  char *out = cap_end();
  CHECK_EQ(count_lines(out, NULL), 11, "5 + 5 + 1 lines shown");
  free(out);
  CHECK(atomic_load(&reg_a.registered) && atomic_load(&reg_quiet.registered),
        "limiters register on first use");

  cap_start();
  log_flush_suppressed();
  out = cap_end();
  CHECK_EQ(count_lines(out, "suppressed"), 2, "two limiters have pending counts");
  CHECK(strstr(out, "nbdfs: 3 more similar messages suppressed; the last: a 7\n") &&
        strstr(out, "nbdfs: 7 more similar messages suppressed; the last: b 11\n"),
        "each with its own count and last message");
  CHECK(!strstr(out, "quiet"), "a limiter with nothing pending says nothing");
  free(out);

  cap_start();
  log_failure(NULL, "no limiter: %d", 42);
  out = cap_end();
  CHECK(!strcmp(out, "nbdfs: no limiter: 42\n"), "a NULL limiter logs plainly");
  free(out);
}

/* ---- 4 threads hammering one limiter ---- */

#define THREADS 4
#define CALLS 20000

static struct log_limit hammered = LOG_LIMIT_INIT;

static void *hammer(void *arg)
{
  int id = (int)(intptr_t)arg;
  for (int i = 0; i < CALLS; i++)
    log_failure(&hammered, "thread %d call %d", id, i);
  return NULL;
}

static void test_threads(void)
{
  cap_start();
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++)
    pthread_create(&th[i], NULL, hammer, (void *)(intptr_t)i);
  for (int i = 0; i < THREADS; i++)
    pthread_join(th[i], NULL);
  log_flush_suppressed();
  char *out = cap_end();
  int shown = count_lines(out, " call ") - count_lines(out, "suppressed");
  unsigned long long suppressed = sum_suppressed(out);
  CHECK(shown >= LOG_LIMIT_BURST && shown <= 4 * LOG_LIMIT_BURST,
        "%d threads x %d calls: %d lines shown", THREADS, CALLS, shown);
  CHECK_EQ(shown + suppressed, (unsigned long long)THREADS * CALLS,
           "shown (%d) + reported suppressed (%llu) == calls", shown, suppressed);
  CHECK_EQ(hammered.suppressed, 0, "nothing left pending after log_flush_suppressed");
  free(out);
}

/* ---- log_notice: always shown ---- */

static void test_notice(void)
{
  int saved = nbd_verbose;
  nbd_verbose = 0;
  cap_start();
  log_notice("server: %s", "listening");
  log_info("hidden");
  char *out = cap_end();
  CHECK_STR(out, "nbdfs: server: listening\n", "log_notice is shown at verbosity 0, log_info is not");
  free(out);
  nbd_verbose = saved;
}

/* ---- the log file (last: once set, it takes every line) ---- */

/* "2026-11-28T04:40:00.123Z nbdfs[PID]: " at the start of LINE: returns
 * the message after it, or NULL. */
static const char *after_stamp(const char *line, long pid)
{
  int Y, M, D, h, m, s, ms, end = 0;
  long p;
  if (sscanf(line, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ nbdfs[%ld]: %n", &Y, &M, &D, &h, &m, &s, &ms, &p,
             &end) != 8 || !end)
    return NULL;
  /* The fixed widths: digits where digits belong. */
  if (strlen(line) < 24 || line[4] != '-' || line[10] != 'T' || line[19] != '.' || line[23] != 'Z')
    return NULL;
  if (Y < 2024 || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || s > 60 || ms > 999 ||
      p != pid)
    return NULL;
  return line + end;
}

static void *file_hammer(void *arg)
{
  int id = (int)(intptr_t)arg;
  for (int i = 0; i < 500; i++)
    log_error("thread %d line %d %s", id, i, "padding padding padding padding padding padding");
  return NULL;
}

static void test_file(void)
{
  char dir[] = "/tmp/test-log.XXXXXX", path[64], err[256] = "";
  if (!mkdtemp(dir))
    abort();
  snprintf(path, sizeof path, "%s/no/such/dir/log", dir);
  CHECK(log_use_file(path, err, sizeof err) < 0, "a log file in a missing directory: refused");
  CHECK(strstr(err, path) && strstr(err, "No such file"), "the error names the file and why: %s", err);

  snprintf(path, sizeof path, "%s/nbdfs.log", dir);
  mode_t mask = umask(027);
  umask(mask);
  err[0] = 0;
  CHECK_EQ(log_use_file(path, err, sizeof err), 0, "log_use_file: %s", err[0] ? err : "ok");
  struct stat st;
  CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == (0640 & ~mask), "created with mode 0640 (less umask)");
  log_error("first %d", 1);
  /* Opening it again appends (and replaces the first descriptor). */
  err[0] = 0;
  CHECK_EQ(log_use_file(path, err, sizeof err), 0, "log_use_file again: %s", err[0] ? err : "ok");
  log_use_syslog(); /* the file wins */
  cap_start();
  log_notice("second");
  log_info("not shown at verbosity 0");
  log_warn("long %s", "");
  char big[3000];
  memset(big, 'y', sizeof big - 1);
  big[sizeof big - 1] = 0;
  log_error("%s", big);
  char *out = cap_end();
  CHECK_EQ(strlen(out), 0, "nothing on stderr once a log file is set");
  free(out);

  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++)
    pthread_create(&th[i], NULL, file_hammer, (void *)(intptr_t)i);
  for (int i = 0; i < THREADS; i++)
    pthread_join(th[i], NULL);

  FILE *f = fopen(path, "r");
  char line[4096];
  const char *msg;
  long pid = (long)getpid();
  bool ok = fgets(line, sizeof line, f) && (msg = after_stamp(line, pid)) && !strcmp(msg, "first 1\n");
  CHECK(ok, "ISO UTC time with ms, nbdfs[pid], message; kept when opened again");
  printf("#   %s", line);
  CHECK(fgets(line, sizeof line, f) && (msg = after_stamp(line, pid)) && !strcmp(msg, "second\n"),
        "log_notice goes to the file");
  CHECK(fgets(line, sizeof line, f) && (msg = after_stamp(line, pid)) && !strcmp(msg, "long \n"),
        "log_info below the verbosity is left out");
  ok = fgets(line, sizeof line, f) && (msg = after_stamp(line, pid)) && msg[0] == 'y' &&
       line[strlen(line) - 1] == '\n' && strlen(line) < 1300;
  CHECK(ok, "an over-long message is cut, still one line (%zu bytes)", strlen(line));
  int whole = 0, bad = 0;
  while (fgets(line, sizeof line, f)) {
    int id, i;
    msg = after_stamp(line, pid);
    if (msg && sscanf(msg, "thread %d line %d padding", &id, &i) == 2 && line[strlen(line) - 1] == '\n')
      whole++;
    else
      bad++;
  }
  CHECK(whole == THREADS * 500 && bad == 0, "%d threads: %d whole lines, %d mangled", THREADS, whole, bad);
  fclose(f);
  unlink(path);
  rmdir(dir);
}

int main(void)
{
  test_burst();
  test_registry();
  test_threads();
  test_notice();
  test_file();
  return done_testing();
}
