/*
 * exitstamp: the container command of the exit-notification benchmark.
 *
 * Blocks until one byte arrives on stdin, then writes
 * "HOSTNAME CLOCK_MONOTONIC_NS\n" to stdout in a single write(2) and exits.
 * CLOCK_MONOTONIC is the same clock inside and outside the container (Vortex
 * creates no time namespace), so the Runtime's on_exit timestamp minus this
 * one is the notification latency, kernel exit and PID-namespace teardown
 * included.  Linked statically: it runs in a busybox root filesystem.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    char byte;
    if (read(0, &byte, 1) < 0) return 1;
    struct utsname names;
    uname(&names);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    char line[128];
    int n = snprintf(line, sizeof line, "%s %lld\n", names.nodename,
                     (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    if (write(1, line, (size_t)n) != n) return 1;
    _exit(0);
}
