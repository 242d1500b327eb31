/*
 * refcontainer: the smallest honest container start, the C baseline of the
 * Vortex benchmarks.
 *
 *   refcontainer ROOTFS CMD [ARG...]
 *
 * What it does, and nothing more (no /sys, no /dev, no capabilities, no
 * seccomp; the benchmark report says so):
 *   1. a cgroup with a 100 MB memory limit: v2 when /sys/fs/cgroup is a
 *      cgroup2 mount, else the v1 memory hierarchy (hybrid and v1 hosts);
 *   2. clone() into new PID, mount, UTS, network and IPC namespaces;
 *   3. the parent writes the child's PID to cgroup.procs, then releases it
 *      through a pipe (so the command never runs outside its cgroup);
 *   4. the child: private propagation, rootfs bind-mounted onto itself,
 *      pivot_root(".", "."), old root detached, /proc mounted, hostname,
 *      loopback up with an ioctl, execv(CMD);
 *   5. the parent waits for it, removes the cgroup, exits with its status.
 *
 * Every failure prints one line and exits 125.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MEMORY_LIMIT "104857600"

static char *rootfs;
static char **command;
static int sync_pipe[2];

static void die(const char *what) {
    fprintf(stderr, "refcontainer: %s: %s\n", what, strerror(errno));
    _exit(125);
}

static void write_file(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) die(path);
    if (write(fd, value, strlen(value)) < 0) die(path);
    close(fd);
}

static void loopback_up(void) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) die("socket");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) die("SIOCGIFFLAGS lo");
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) die("SIOCSIFFLAGS lo");
    close(sock);
}

static int child(void *arg) {
    (void)arg;
    char byte;
    close(sync_pipe[1]);
    /* Wait until the parent has put us in the cgroup. */
    if (read(sync_pipe[0], &byte, 1) != 1) _exit(125);
    close(sync_pipe[0]);

    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("make / private");
    if (mount(rootfs, rootfs, NULL, MS_BIND | MS_REC, NULL) < 0) die("bind rootfs");
    if (chdir(rootfs) < 0) die("chdir rootfs");
    if (syscall(SYS_pivot_root, ".", ".") < 0) die("pivot_root");
    if (umount2(".", MNT_DETACH) < 0) die("detach old root");
    if (chdir("/") < 0) die("chdir /");
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV, NULL) < 0)
        die("mount /proc");
    if (sethostname("ref", 3) < 0) die("sethostname");
    loopback_up();
    execv(command[0], command);
    die(command[0]);
    return 125;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: refcontainer ROOTFS CMD [ARG...]\n");
        return 125;
    }
    rootfs = realpath(argv[1], NULL);
    if (rootfs == NULL) die(argv[1]);
    command = argv + 2;

    /* 1. the cgroup, named after our PID so that parallel runs do not collide */
    int v2 = access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0;
    const char *base = v2 ? "/sys/fs/cgroup/vortex-bench-ref" : "/sys/fs/cgroup/memory/vortex-bench-ref";
    char cgroup[256], file[320], pid_text[32];
    if (mkdir(base, 0755) < 0 && errno != EEXIST) die(base);
    if (v2) {
        /* v2: the memory controller must be enabled for the children of base */
        snprintf(file, sizeof file, "%s/cgroup.subtree_control", base);
        write_file(file, "+memory");
    }
    snprintf(cgroup, sizeof cgroup, "%s/%d", base, (int)getpid());
    if (mkdir(cgroup, 0755) < 0) die(cgroup);
    snprintf(file, sizeof file, "%s/%s", cgroup, v2 ? "memory.max" : "memory.limit_in_bytes");
    write_file(file, MEMORY_LIMIT);

    /* 2. clone */
    if (pipe2(sync_pipe, O_CLOEXEC) < 0) die("pipe");
    static char stack[256 * 1024];
    int flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWIPC | SIGCHLD;
    pid_t pid = clone(child, stack + sizeof stack, flags, NULL);
    if (pid < 0) die("clone");
    close(sync_pipe[0]);

    /* 3. into the cgroup, then release the child */
    snprintf(file, sizeof file, "%s/cgroup.procs", cgroup);
    snprintf(pid_text, sizeof pid_text, "%d", (int)pid);
    write_file(file, pid_text);
    if (write(sync_pipe[1], "x", 1) != 1) die("release child");
    close(sync_pipe[1]);

    /* 5. wait and clean up */
    int status;
    if (waitpid(pid, &status, 0) < 0) die("waitpid");
    if (rmdir(cgroup) < 0) die(cgroup);
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}
