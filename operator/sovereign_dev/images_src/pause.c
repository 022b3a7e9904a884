/*
 * The sandbox ("pause") process of the real node's pods: it holds the pod's namespaces open,
 * does nothing else, and exits 0 when asked to stop. As PID 1 of the pod it is also the parent
 * of any process orphaned in the pod, so it reaps them rather than leave zombies behind; when it
 * is not PID 1 (a test runs it directly) it becomes a child subreaper to keep the same duty.
 *
 * Built statically by sovereign_dev.images (gcc -static), so its image needs no libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested = 0;

static void request_stop(int signal_number) {
    (void)signal_number;
    stop_requested = 1;
}

static void reap_children(int signal_number) {
    (void)signal_number;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int on(int signal_number, void (*handler)(int)) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = signal_number == SIGCHLD ? SA_NOCLDSTOP | SA_RESTART : 0;
    return sigaction(signal_number, &action, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        puts("sovereign-pause " SOVEREIGN_PAUSE_VERSION);
        return 0;
    }
    if (getpid() != 1 && prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
        perror("pause: PR_SET_CHILD_SUBREAPER");
    }
    if (on(SIGINT, request_stop) || on(SIGTERM, request_stop) || on(SIGCHLD, reap_children)) {
        perror("pause: sigaction");
        return 1;
    }
    /* Block the stop signals between the check and the wait, so none is lost in that gap. */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGCHLD);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    /* A child that exited before the handler was in place sent its SIGCHLD to nobody. */
    reap_children(SIGCHLD);
    while (!stop_requested) {
        sigsuspend(&waiting);
    }
    return 0;
}
