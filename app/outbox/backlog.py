"""The outbox backlog: committed transactions the relay has not published yet, and their bound.

The writer asks :meth:`Backlog.admits` before it queues a request and reports every commit
(:meth:`Backlog.committed`); the relay sets the estimate from its count of the table
(:meth:`Backlog.counted`), subtracts what it publishes (:meth:`Backlog.published`) and waits
for new commits (:meth:`Backlog.wait_for_commits`) instead of polling the table.
"""

from __future__ import annotations

import trio


class Backlog:
    """The estimate of pending rows against ``OUTBOX_MAX_PENDING``, and the "rows were committed" signal.

    The estimate errs towards the limit, never past it: commits raise it at once, a count of the
    table replaces it (plus what was committed while the count ran), publishing lowers it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._estimate = 0
        # Events committed, ever: what a count of the table may have missed, and what the relay waits on.
        self._committed = 0
        self._commit_seen = trio.Event()

    @property
    def estimate(self) -> int:
        return self._estimate

    @property
    def committed_events(self) -> int:
        """Events committed since start: note it before a count or a look for work, then pass it back."""
        return self._committed

    def admits(self, events: int) -> bool:
        """Whether ``events`` more fit under the limit."""
        return self._estimate + events <= self.limit

    def committed(self, events: int) -> None:
        """``events`` rows were committed: they count against the limit, and the relay is woken."""
        if events <= 0:
            return
        self._estimate += events
        self._committed += events
        self._commit_seen.set()
        self._commit_seen = trio.Event()

    def counted(self, pending: int, committed_before: int) -> None:
        """A count of the table's pending rows, started when :attr:`committed_events` was ``committed_before``.

        Rows committed while the count was under way may be missing from it: they are added.
        """
        self._estimate = pending + self._committed - committed_before

    def published(self, events: int) -> None:
        """``events`` rows were published (and marked)."""
        self._estimate = max(0, self._estimate - events)

    async def wait_for_commits(self, committed_before: int, timeout: float) -> bool:
        """Wait until rows are committed after :attr:`committed_events` was ``committed_before``, at most ``timeout``.

        Returns whether there were. Commits made between noting ``committed_before`` and this
        call count, so none is missed.
        """
        with trio.move_on_after(timeout):
            while self._committed == committed_before:
                await self._commit_seen.wait()
        return self._committed != committed_before
