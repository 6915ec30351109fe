"""The outbox backlog's estimate, bound and commit signal (pure logic, on the mock clock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from app.outbox.backlog import Backlog


def test_the_bound_admits_up_to_the_limit_and_no_further() -> None:
    backlog = Backlog(10)
    assert backlog.admits(10) and not backlog.admits(11)
    backlog.committed(7)
    assert backlog.estimate == 7
    assert backlog.admits(3) and not backlog.admits(4)


def test_publishing_lowers_the_estimate_but_never_below_zero() -> None:
    backlog = Backlog(10)
    backlog.committed(5)
    backlog.published(3)
    assert backlog.estimate == 2
    backlog.published(5)  # rows counted by another instance's writer, say
    assert backlog.estimate == 0


def test_a_count_replaces_the_estimate_plus_what_was_committed_while_it_ran() -> None:
    backlog = Backlog(100)
    backlog.committed(4)
    before = backlog.committed_events
    backlog.committed(3)  # commits the count may not have seen
    backlog.counted(10, before)
    assert backlog.estimate == 13
    backlog.counted(10, backlog.committed_events)  # a count with no commit during it
    assert backlog.estimate == 10
    assert backlog.committed_events == 7, "counts do not change what was committed"


def test_nothing_committed_changes_nothing() -> None:
    backlog = Backlog(10)
    backlog.committed(0)
    assert (backlog.estimate, backlog.committed_events) == (0, 0)


async def test_a_commit_wakes_the_waiting_relay_at_once(autojump_clock: trio.testing.MockClock) -> None:
    backlog = Backlog(10)
    woken: list[tuple[bool, float]] = []

    async def relay() -> None:
        woken.append((await backlog.wait_for_commits(backlog.committed_events, 60), trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay)
        await trio.sleep(1)
        backlog.committed(1)
    [(committed, at)] = woken
    assert committed and at == pytest.approx(1)


async def test_a_commit_made_before_the_wait_began_is_not_missed(autojump_clock: trio.testing.MockClock) -> None:
    backlog = Backlog(10)
    before = backlog.committed_events  # noted before the relay's look at the table ...
    backlog.committed(2)  # ... which missed this commit
    started = trio.current_time()
    assert await backlog.wait_for_commits(before, 60)
    assert trio.current_time() == started


async def test_without_commits_the_wait_ends_at_its_timeout(autojump_clock: trio.testing.MockClock) -> None:
    backlog = Backlog(10)
    started = trio.current_time()
    assert not await backlog.wait_for_commits(backlog.committed_events, 5)
    assert trio.current_time() - started == pytest.approx(5)
