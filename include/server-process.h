/* server-process.h: an NBD server that nbdfs starts itself and owns.
 *
 *   nbdfs [ CMD ARGS... ] MNT            socket activation: CMD gets a listening
 *                                        Unix socket in a private directory as
 *                                        fd 3 (LISTEN_PID, LISTEN_FDS=1,
 *                                        LISTEN_FDNAMES), so nbdfs may connect
 *                                        as often as it likes
 *   nbdfs --command [ CMD ARGS... ] MNT  CMD speaks NBD on its stdin and stdout:
 *                                        one connection, never reconnected
 *
 * The child runs in the caller's working directory, in its own process
 * group (a terminal's ^C reaches nbdfs, which flushes before stopping it),
 * and gets SIGTERM if nbdfs dies without stopping it.  Its stdout and
 * stderr lines go to nbdfs's log.  Lifecycle:
 *
 *   RUNNING --(exits on its own)--> EXITED     (server_process_reap says so)
 *   RUNNING --server_process_stop--> STOPPING --> EXITED
 *                                    SIGTERM, then SIGKILL after the grace time
 */
#ifndef NBDFS_SERVER_PROCESS_H
#define NBDFS_SERVER_PROCESS_H

#include <stdbool.h>
#include <stddef.h>

enum server_process_kind { SERVER_PROCESS_ACTIVATE, SERVER_PROCESS_STDIO };

struct server_process;

/* Start argv[0] (found on PATH) with argv.  Returns NULL with a one-line
 * reason in err when it cannot be started (including exec failing). */
struct server_process *server_process_start(char *const argv[], enum server_process_kind kind,
                                            char *err, size_t errlen);

/* ACTIVATE: the absolute path of the socket it listens on. */
const char *server_process_socket(const struct server_process *sp);
/* STDIO: our end of its stdin/stdout, handed over once (then -1). */
int server_process_take_fd(struct server_process *sp);
/* "server 'nbdkit' (pid 123)", for messages. */
const char *server_process_desc(const struct server_process *sp);

/* A descriptor that becomes readable when the process exits (-1 if the
 * kernel has no pidfd: then call server_process_reap now and then). */
int server_process_exit_fd(const struct server_process *sp);
/* Reap it if it has exited.  Returns true once it has (and logs how it
 * ended, as an error unless it was being stopped), false while it runs. */
bool server_process_reap(struct server_process *sp);

/* Stop it (SIGTERM; SIGKILL after grace_s), reap it, remove its socket
 * directory and wait for its last log lines.  Safe if it already exited. */
void server_process_stop(struct server_process *sp, int grace_s);
/* Free (after stop). */
void server_process_free(struct server_process *sp);

#endif
