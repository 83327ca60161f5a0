"""Wake-ups for task watchers: changes made by this broker arrive at once, changes made by
another broker sharing the database are caught by a re-read every `poll_s`."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable


class ChangeHub:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = collections.defaultdict(set)
        self._listeners: list[Callable[[str], None]] = []

    def listen(self, callback: Callable[[str], None]) -> None:
        """Call back on every change of any task (the dispatcher listens)."""
        self._listeners.append(callback)

    def notify(self, task_id: str) -> None:
        for callback in self._listeners:
            callback(task_id)
        for event in self._waiters.get(task_id, ()):
            event.set()

    async def wait(self, task_id: str, timeout_s: float) -> None:
        """Return when the task changed here, or after timeout_s (whichever comes first)."""
        event = asyncio.Event()
        self._waiters[task_id].add(event)
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters[task_id]
            waiters.discard(event)
            if not waiters:
                del self._waiters[task_id]

    def watcher_count(self) -> int:
        return sum(len(w) for w in self._waiters.values())
