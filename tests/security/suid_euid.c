/* Installed setuid-root in the test rootfs: prints the effective uid it got. */
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("euid=%d\n", (int)geteuid()); return 0; }
