"""Light synchronisation for connections: a wait queue, a one-shot event, a FIFO lock.

trio's own (``ParkingLot``, ``Event``, ``StrictFIFOLock``) do the same jobs,
but an idle connection keeps several of them for as long as it lives, mostly
never waited on: a ParkingLot is about 240 bytes, a task parked in it adds an
OrderedDict of about 670 more, an Event with its lot about 400.  These make
their wait queue only when a task waits, and park tasks in a plain list.

``park()`` and ``Flag.wait()`` are plain functions that return trio's own
awaitable: awaiting them puts no frame of ours between trio and the waiting
task, so waking it resumes one coroutine fewer (a message's round trip
wakes a task several times).
"""

from __future__ import annotations

from collections.abc import Awaitable

import trio

__all__ = ["Flag", "SendLock", "WaitQueue"]


class WaitQueue:
    """Tasks waiting their turn, first in first out: a lighter ``trio.lowlevel.ParkingLot``."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: list[trio.lowlevel.Task] = []

    def park(self) -> Awaitable[object]:
        """``await queue.park()``: wait until unpark() or unpark_all() picks this task; a cancel point."""
        task = trio.lowlevel.current_task()
        tasks = self._tasks
        tasks.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        return trio.lowlevel.wait_task_rescheduled(abort)  # noqa: ASYNC105 (awaited by the caller)

    def unpark(self) -> bool:
        """Wake the task that waited longest, if any; ``True`` if there was one."""
        if not self._tasks:
            return False
        trio.lowlevel.reschedule(self._tasks.pop(0))
        return True

    def unpark_all(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            trio.lowlevel.reschedule(task)


class Flag:
    """A one-shot event, as ``trio.Event``, whose wait queue is made only if a task waits."""

    __slots__ = ("_is_set", "_lot")

    def __init__(self) -> None:
        self._is_set = False
        self._lot: WaitQueue | None = None

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        if not self._is_set:
            self._is_set = True
            if self._lot is not None:
                self._lot.unpark_all()
                self._lot = None

    def wait(self) -> Awaitable[object]:
        """``await flag.wait()``: until the flag is set; a checkpoint either way."""
        if self._is_set:
            return trio.lowlevel.checkpoint()  # noqa: ASYNC105 (awaited by the caller)
        if self._lot is None:
            self._lot = WaitQueue()
        return self._lot.park()


class SendLock:
    """A FIFO lock, as ``trio.StrictFIFOLock``, whose wait queue is made only on contention.

    Frames must go out whole and in order, so writers take this lock; most
    connections never contend for it.  No ownership checks: only
    ``_connection`` takes it, always with try/finally or ``async with``.

    Taking a free lock is a cancel point but not a schedule point: whoever
    takes it goes on to write (the write is the schedule point), so a frame
    costs one trip through trio's scheduler, not two.
    """

    __slots__ = ("_locked", "_lot")

    def __init__(self) -> None:
        self._locked = False
        self._lot: WaitQueue | None = None

    async def acquire(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._locked:
            self._locked = True
            return
        if self._lot is None:
            self._lot = WaitQueue()
        await self._lot.park()  # release() hands the lock over: still locked, now ours

    def locked(self) -> bool:
        return self._locked

    def try_acquire(self) -> bool:
        """Take the lock if it is free, without waiting (and without a checkpoint)."""
        if self._locked:
            return False
        self._locked = True
        return True

    def release(self) -> None:
        assert self._locked
        if not (self._lot is not None and self._lot.unpark()):
            self._locked = False

    # ``async with lock:`` without a second call each way (a write is a few
    # dozen calls in all; these add up).
    __aenter__ = acquire

    async def __aexit__(self, *exc_info: object) -> None:
        if not (self._lot is not None and self._lot.unpark()):
            self._locked = False
