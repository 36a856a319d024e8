/* notify.h: the systemd readiness protocol (sd_notify(3)) without libsystemd.
 *
 * When a service manager starts nbdfs with NOTIFY_SOCKET set, nbdfs tells it
 * when the mount is usable (READY=1), what it is doing (STATUS=...) and
 * that it is shutting down (STOPPING=1), one datagram each.  Without
 * NOTIFY_SOCKET every call is a no-op. */
#ifndef NBDFS_NOTIFY_H
#define NBDFS_NOTIFY_H

#include <stdbool.h>

/* Read NOTIFY_SOCKET once and remove it from the environment (so a server
 * nbdfs starts does not talk to systemd as us).  No-op everywhere when
 * unset.  Call before any thread starts.  Calling it again re-reads the
 * environment (the unit test does). */
void notify_init(void);
bool notify_enabled(void);

/* Send one datagram.  Thread-safe, never blocks (MSG_DONTWAIT); a failure
 * is logged once with log_debug and otherwise ignored.  MAINPID is the
 * pid at the time of the call, so after daemonizing it names the daemon. */
void notify_ready(void);                  /* "READY=1\nMAINPID=<getpid()>" */
void notify_stopping(void);               /* "STOPPING=1"; STATUS= is quiet from then on */
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));  /* "STATUS=..." one line */

#endif
