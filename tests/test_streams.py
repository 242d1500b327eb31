"""The fd streams (vortex/streams.py): closing one that another task waits on."""

from __future__ import annotations

import os

import anyio
import pytest

from vortex.streams import FdReceiveStream, read_all

pytestmark = pytest.mark.anyio


async def test_closing_a_stream_another_task_waits_on_spares_the_next_wait() -> None:
    """Closed at once, the fd's number could be reused by the next pipe, and the
    woken reader would then unregister the wait on that new pipe (anyio's asyncio
    backend unregisters by number): that wait would never end.  The stream leaves
    the close to the task that waits."""
    first_r, first_w = os.pipe()
    first = FdReceiveStream(first_r)
    async with anyio.create_task_group() as tg:
        tg.start_soon(read_all, first)
        await anyio.wait_all_tasks_blocked()
        await first.aclose()
        # No checkpoint since the close: the reader has not run its clean-up yet.
        second_r, second_w = os.pipe()
        second = FdReceiveStream(second_r)
        os.write(second_w, b"data")
        os.close(second_w)
        with anyio.fail_after(5):
            assert await read_all(second) == b"data"
        await second.aclose()
    os.close(first_w)
    # The first read end stayed open until its reader woke, then the reader closed it.
    assert second_r != first_r
    with pytest.raises(OSError):
        os.fstat(first_r)


async def test_a_stream_nobody_waits_on_closes_at_once() -> None:
    read_end, write_end = os.pipe()
    stream = FdReceiveStream(read_end)
    await stream.aclose()
    with pytest.raises(OSError):
        os.fstat(read_end)
    os.close(write_end)
    with pytest.raises(anyio.ClosedResourceError):
        await stream.receive()
