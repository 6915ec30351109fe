import trio

from app.breaker import BreakerState, CircuitBreaker


def breaker() -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=10, open_seconds=5, clock=trio.current_time)


def state(b: CircuitBreaker) -> BreakerState:
    """``b.state`` read anew: the property changes with the clock and with calls, but mypy would keep the
    narrowing of an earlier ``assert b.state is ...`` across them."""
    return b.state


async def test_opens_after_ten_consecutive_failures_only(autojump_clock: trio.abc.Clock) -> None:
    b = breaker()
    for _ in range(9):
        b.record_failure("timeout")
    b.record_success()
    for _ in range(9):
        b.record_failure("timeout")
    assert b.allows()
    b.record_failure("timeout")
    assert b.state is BreakerState.OPEN and not b.allows()
    assert "10 consecutive" in (b.reason or "")


async def test_half_opens_after_the_wait_and_closes_on_a_good_probe(autojump_clock: trio.abc.Clock) -> None:
    b = breaker()
    b.trip("all brokers down")
    assert b.retry_after() == 5
    await trio.sleep(4.9)
    assert state(b) is BreakerState.OPEN
    await trio.sleep(0.2)
    assert state(b) is BreakerState.HALF_OPEN and not b.allows()
    b.probe_failed("still down")
    assert state(b) is BreakerState.OPEN
    await trio.sleep(5)
    assert state(b) is BreakerState.HALF_OPEN
    b.probe_succeeded()
    assert state(b) is BreakerState.CLOSED and b.allows() and b.reason is None


async def test_a_delivery_success_closes_an_open_breaker(autojump_clock: trio.abc.Clock) -> None:
    b = breaker()
    b.trip("all brokers down")
    b.record_success()
    assert b.allows()
