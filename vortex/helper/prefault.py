"""A waiting spare init takes ahead the copy-on-write faults its init will take.

Why: a cloned init shares every private page with the fork helper,
copy-on-write.  CPython writes to each object it touches (reference counts),
so the init's Python, from its request to ``execve``, writes ~175 pages the
helper still shares, at one fault each (and a copy): after a pause, ~1 ms of
the init's 2.3 ms, ~0.6 ms of a whole start on this project's 2-core VM
(docs/performance.md, eleventh session).  A spare that is idle anyway can
take those faults before its request comes: ``MADV_POPULATE_WRITE`` (Linux
5.14) over the pages makes the private copies without running any code.

Which pages: those the first inits of this helper wrote, as the kernel saw
them.  A page an init has written is, by then, mapped by it alone (copied, or
left to it when the helper copied the page for itself), which
``/proc/self/pagemap`` says (bit 56, "exclusively mapped", Linux 4.2).  So the
first :data:`LEARNERS` spare inits of a helper list those pages, just before
they take their container's user, in memory the helper shares with every
process it clones (``MAP_SHARED``: it survives the clone as shared memory,
unlike the rest, and it goes at the ``execve``, with the rest).  Before each
clone the helper reads the lists into its own memory, so the next spare
inherits them.  In the benchmark's containers a page written by one init was
written by nearly every one (308 of 316 pages in 190 of 200 starts), and
after the copying an init took ~5 faults between its request and ``execve``
instead of ~180.

The set is a little larger than what the next init writes: it also holds the
pages the helper itself wrote while the learner ran (already the spare's own:
taking them copies nothing) and the spare's own first writes (made before it
waits).  So the copying costs the spare about what its init would have
copied anyway: ~1 MiB more held while it waits, ~0.6 ms of CPU on a core
that is idle then.  A spare cloned beside a running container copies only
once it has waited a while (``Runtime`` ``SPARE_AHEAD_AFTER``) without its
request: back to back, copying at once competed with the starting container
for the CPU and made starts slower (docs/performance.md).
"""

from __future__ import annotations

import array
import contextlib
import errno
import mmap
import select
import sys

from vortex import _linux as L

LEARNERS = 2
"""How many spare inits of a helper list the pages they wrote (a union of two: an
init's pages vary little, see above)."""

MAX_PAGES = 4096
"""At most this many pages (16 MiB) are written ahead, whatever the learners listed:
an init writes ~500, but one whose plan carried a large file (``WriteFile``) may
have listed that too."""

SLOT_BYTES = 64 << 10
"""Room for one learner's list: up to ~4,000 runs of pages, far more than an init
writes (~250 runs)."""

_PAGE_SHIFT = 12
_TOP_BYTE = 7 if sys.byteorder == "little" else 0
"""Where in a pagemap entry (a native 64-bit number) its flags' byte is."""
_OURS_ALONE = bytes(int(flags & 0x81 == 0x81) for flags in range(256))
"""For the top byte of a pagemap entry: 1 where both bit 63 ("present") and bit
56 ("exclusively mapped") are set (Documentation/admin-guide/mm/pagemap.rst)."""

CHECK_EVERY = 16
"""Runs of pages populated between two looks at the spare's socket: ~50 µs, so a
request that arrives meanwhile waits about that long."""


class WrittenPages:
    """Pages a spare's init will write, learned from the first inits of a helper.

    Made in the fork helper; every process it clones shares :attr:`_shared`
    (the learners' lists) and inherits a copy of :attr:`runs`."""

    def __init__(self) -> None:
        self._shared = mmap.mmap(-1, LEARNERS * SLOT_BYTES)  # MAP_SHARED, anonymous
        self._claimed = 0
        self._seen = [0] * LEARNERS
        """The learners' list lengths at the last :meth:`refresh`."""
        self.runs: tuple[tuple[int, int], ...] = ()
        """(address, length) of each run of known pages, in address order."""

    def claim_learner(self) -> int | None:
        """In the helper, before it clones a spare: the slot its init lists its pages
        in, or None once :data:`LEARNERS` spares have been asked."""
        if self._claimed >= LEARNERS:
            return None
        self._claimed += 1
        return self._claimed - 1

    def record(self, slot: int) -> None:
        """In an init, the last thing it does as root: list the pages it has written
        into ``slot``.  Not later: once its ids change, its pagemap is root's and
        a container user other than root could not read it.  Raises OSError when
        pagemap cannot be read."""
        runs = array.array("Q")  # first page, end page, first page, ...
        with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
            for start, end in private_writable_ranges():
                first = start >> _PAGE_SHIFT
                pagemap.seek(first * 8)
                entries = pagemap.read(((end - start) >> _PAGE_SHIFT) * 8)
                # One byte per page, 1 where it is ours alone; scanned for runs of 1s
                # by bytes.find, so that a large helper costs no Python per page.
                ours = entries[_TOP_BYTE::8].translate(_OURS_ALONE)
                at = ours.find(1)
                while at >= 0:
                    after = ours.find(0, at)
                    after = len(ours) if after < 0 else after
                    runs.extend((first + at, first + after))
                    at = ours.find(1, after)
        listed = runs.tobytes()[: (SLOT_BYTES - 8) // 16 * 16]  # whole runs only
        base = slot * SLOT_BYTES
        self._shared[base + 8 : base + 8 + len(listed)] = listed
        # The length last: the helper reads a slot only once it is set.
        self._shared[base : base + 8] = len(listed).to_bytes(8, "little")

    def refresh(self) -> None:
        """In the helper, before it clones a spare: take in the lists recorded since
        the last call."""
        bases = range(0, LEARNERS * SLOT_BYTES, SLOT_BYTES)
        lengths = [int.from_bytes(self._shared[base : base + 8], "little") for base in bases]
        if lengths == self._seen:
            return
        self._seen = lengths
        bounds = array.array("Q")
        for base, length in zip(bases, lengths, strict=True):
            bounds.frombytes(self._shared[base + 8 : base + 8 + length])
        runs: list[tuple[int, int]] = []  # the union of the learners' runs
        for first, end in sorted(zip(bounds[::2], bounds[1::2], strict=True)):
            if runs and first <= runs[-1][1]:
                runs[-1] = (runs[-1][0], max(end, runs[-1][1]))
            else:
                runs.append((first, end))
        kept, pages = [], 0
        for first, end in runs:
            end = min(end, first + MAX_PAGES - pages)
            if end <= first:
                break
            kept.append((first << _PAGE_SHIFT, (end - first) << _PAGE_SHIFT))
            pages += end - first
        self.runs = tuple(kept)


def populate_until_readable(runs: tuple[tuple[int, int], ...], fd: int) -> None:
    """Write-fault ``runs`` ((address, length) pairs) in, until ``fd`` becomes
    readable (or all are done, or the kernel lacks the call)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    for index, (address, length) in enumerate(runs):
        if index % CHECK_EVERY == 0 and poller.poll(0):
            return
        try:
            L.populate_write(address, length)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return  # before Linux 5.14: the faults stay where they were
            # ENOMEM: no longer mapped (the helper freed it before this clone)


def private_writable_ranges() -> list[tuple[int, int]]:
    """(start, end) of each private writable mapping of this process: anonymous
    memory, ``[heap]`` and the data segments of the interpreter and its libraries.
    Not ``[stack]``: a spare's own code writes it before it waits."""
    ranges = []
    with contextlib.suppress(OSError), open("/proc/self/maps", "rb") as maps:
        for line in maps:
            fields = line.split()
            if fields[1] != b"rw-p":
                continue
            if len(fields) > 5 and fields[5].startswith(b"[") and fields[5] != b"[heap]":
                continue
            start, end = fields[0].split(b"-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges
