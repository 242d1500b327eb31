#!/bin/sh
# setup_rootfs.sh - download the Alpine minirootfs for Vortex containers.
#
# Successor of the C++ runtime's script of the same name.  All the work is done
# by `vortex rootfs alpine`, which picks the tarball for this machine's
# architecture, verifies its sha256 (from the .sha256 file Alpine publishes
# next to it), shows a progress bar and extracts it safely; on failure it
# leaves nothing behind.  This wrapper only keeps old habits working.
#
# Usage:
#   contrib/setup_rootfs.sh [DIR [OPTIONS]]
#
#   With no arguments DIR is ./rootfs; it must be new or empty.  OPTIONS are those of
#   `vortex rootfs alpine --help`, e.g.:
#     --url URL       another tarball (e.g. another Alpine version or mirror)
#     --sha256 HEX    expected checksum instead of <url>.sha256
#     --from FILE     a tarball already on disk (verified only with --sha256)
#     --no-progress   no progress report on stderr
#
#   Without network, `vortex rootfs busybox DIR` builds a smaller rootfs from
#   the host's static busybox (apt-get install busybox-static).
#
# Environment:
#   VORTEX   the vortex command to run (default: vortex from $PATH)
set -eu

vortex=${VORTEX:-vortex}
if ! command -v "$vortex" >/dev/null 2>&1; then
    echo "setup_rootfs.sh: '$vortex' not found; install Vortex (pip install -e .) or set VORTEX" >&2
    exit 127
fi

# No arguments at all: install into ./rootfs.
if [ "$#" -eq 0 ]; then
    set -- rootfs
fi

exec "$vortex" rootfs alpine "$@"
