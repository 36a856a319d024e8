/* log.h: one-line diagnostics to stderr (foreground) or syslog (daemon). */
#ifndef NBDFS_LOG_H
#define NBDFS_LOG_H

#include <stdbool.h>

extern int nbd_verbose;

/* Switch to syslog once the process has detached from its terminal. */
void log_use_syslog(void);

void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
