/* Escape-attempt probe for tests/test_security.py: calls each syscall with
 * arguments that are harmless even when the call is allowed (bad paths, bad
 * fds, bad magic numbers) and prints "name errno" (0 = the call succeeded).
 * EPERM means the container refused it. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *name, long ret) {
    printf("%s %d\n", name, ret < 0 ? errno : 0);
}

#define TRY(name, ...) do { errno = 0; report(name, syscall(__VA_ARGS__)); } while (0)

int main(void) {
    struct { long sec, usec; } bad_tv = {0, 2000000};
    struct { long sec, nsec; } ts = {0, 0};
    char buf[256];
    memset(buf, 0, sizeof buf);
    TRY("keyctl", SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 0);
    TRY("add_key", SYS_add_key, "user", "vortex-probe", "x", 1, -2 /* process keyring */);
    TRY("request_key", SYS_request_key, "user", "vortex-probe-none", NULL, 0);
    TRY("bpf", SYS_bpf, 0xffff, NULL, 0);
    TRY("perf_event_open", SYS_perf_event_open, NULL, 0, -1, -1, 0);
    TRY("ptrace", SYS_ptrace, 16 /* PTRACE_ATTACH */, 999999, 0, 0);
    TRY("mount", SYS_mount, "none", "/nonexistent-vortex", "tmpfs", 0, NULL);
    TRY("umount2", SYS_umount2, "/nonexistent-vortex", 0);
    TRY("pivot_root", SYS_pivot_root, "/nonexistent-vortex", "/nonexistent-vortex");
    TRY("unshare_user", SYS_unshare, CLONE_NEWUSER);
    TRY("setns", SYS_setns, -1, CLONE_NEWUSER);
    TRY("kexec_load", SYS_kexec_load, 0, 0, NULL, 0xffffffffUL);
    TRY("kexec_file_load", SYS_kexec_file_load, -1, -1, 0, NULL, 0);
    TRY("init_module", SYS_init_module, buf, 0, "");
    TRY("finit_module", SYS_finit_module, -1, "", 0);
    TRY("delete_module", SYS_delete_module, "vortex_probe_none", 04000 /* O_NONBLOCK */);
    TRY("reboot", SYS_reboot, 0, 0, 0, NULL); /* bad magic: EINVAL when allowed */
    TRY("open_by_handle_at", SYS_open_by_handle_at, -1, NULL, 0);
    TRY("swapon", SYS_swapon, "/nonexistent-vortex", 0);
    TRY("swapoff", SYS_swapoff, "/nonexistent-vortex");
    TRY("settimeofday", SYS_settimeofday, &bad_tv, NULL);
    TRY("clock_settime", SYS_clock_settime, 1 /* MONOTONIC: EINVAL */, &ts);
    TRY("adjtimex", SYS_adjtimex, buf); /* modes 0: a read when allowed */
    TRY("userfaultfd", SYS_userfaultfd, 0);
    TRY("acct", SYS_acct, "/nonexistent-vortex");
    TRY("quotactl", SYS_quotactl, 0, NULL, 0, NULL);
    TRY("syslog", SYS_syslog, 10 /* SIZE_BUFFER */, NULL, 0);
#ifdef SYS_iopl
    TRY("iopl", SYS_iopl, 0);
    TRY("ioperm", SYS_ioperm, 0, 0, 0);
#endif
    TRY("io_uring_setup", SYS_io_uring_setup, 0, NULL);
    TRY("sethostname", SYS_sethostname, "x", 1);
    return 0;
}
