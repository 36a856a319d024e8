/* daemon.h: detach from the terminal, and tell the waiting caller how the
 * start went.
 *
 * The process forks; the parent waits until the daemon reports (the exit
 * status it should give: 0 once the mount is usable) and exits with it, so
 * `nbdfs URI DIR && ls DIR` works and a failed start fails the command.
 * Until then the daemon still writes to the caller's stderr, so its errors
 * are seen; if it dies without reporting, the parent exits 1.
 */
#ifndef NBDFS_DAEMON_H
#define NBDFS_DAEMON_H

/* Fork; returns 0 in the daemon (in a new session), -1 on failure.  Never
 * returns in the parent.  Call before any thread is started. */
int daemon_detach(void);
/* Report the start's outcome to the waiting parent, and (on success) point
 * stdin, stdout and stderr at /dev/null.  No-op when not detached. */
void daemon_report(int status);

#endif
