/* replay.c: run a libFuzzer harness over corpus files without libFuzzer,
 * so every normal test run replays the corpus (and past crashes).
 *   replay DIR|FILE...
 * Prints TAP: one line per input.  A crash or abort fails the test. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int n;

static int run_file(const char *path)
{
  FILE *f = fopen(path, "rb");
  if (!f) {
    printf("not ok %d - cannot open %s\n", ++n, path);
    return 1;
  }
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      cap = cap ? cap * 2 : 4096;
      uint8_t *nb = realloc(buf, cap);
      if (!nb)
        abort();
      buf = nb;
    }
    size_t r = fread(buf + len, 1, cap - len, f);
    if (r == 0)
      break;
    len += r;
  }
  fclose(f);
  /* Give the harness an exactly-sized copy so overreads are caught. */
  uint8_t *exact = malloc(len ? len : 1);
  if (!exact)
    abort();
  memcpy(exact, buf, len);
  free(buf);
  LLVMFuzzerTestOneInput(exact, len);
  free(exact);
  printf("ok %d - %s (%zu bytes)\n", ++n, path, len);
  fflush(stdout);
  return 0;
}

static int cmp(const struct dirent **a, const struct dirent **b)
{
  return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
  int bad = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) < 0) {
      printf("not ok %d - %s does not exist\n", ++n, argv[i]);
      bad++;
      continue;
    }
    if (!S_ISDIR(st.st_mode)) {
      bad += run_file(argv[i]);
      continue;
    }
    struct dirent **ents;
    int m = scandir(argv[i], &ents, NULL, cmp);
    for (int j = 0; j < m; j++) {
      if (ents[j]->d_name[0] != '.') {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", argv[i], ents[j]->d_name);
        bad += run_file(p);
      }
      free(ents[j]);
    }
    free(ents);
  }
  printf("1..%d\n", n);
  return bad ? 1 : 0;
}
