import math

import pytest
import trio

from app.ratelimit import TokenBucket, take_all


async def test_a_bucket_admits_its_capacity_then_its_rate(autojump_clock: trio.abc.Clock) -> None:
    bucket = TokenBucket(rate=100, capacity=100, clock=trio.current_time)
    assert take_all([bucket], 100) == 0
    assert take_all([bucket], 1) == pytest.approx(0.01)
    await trio.sleep(0.5)
    assert take_all([bucket], 50) == 0
    assert take_all([bucket], 10) == pytest.approx(0.1)
    await trio.sleep(10)
    assert bucket.wait_time(100) == 0 and bucket.wait_time(101) == math.inf


async def test_several_buckets_are_taken_from_all_or_none(autojump_clock: trio.abc.Clock) -> None:
    shipper = TokenBucket(rate=1000, capacity=1000, clock=trio.current_time)
    key = TokenBucket(rate=10, capacity=10, clock=trio.current_time)
    assert take_all([shipper, key], 10) == 0
    assert take_all([shipper, key], 5) == pytest.approx(0.5)
    assert shipper.wait_time(990) == 0, "the refused request took nothing from the shipper bucket"


async def test_a_sustained_rate_is_held_at_the_limit(autojump_clock: trio.abc.Clock) -> None:
    bucket = TokenBucket(rate=200, capacity=200, clock=trio.current_time)
    admitted = 0
    for _ in range(4000):  # 400 requests/s offered for 10 s
        if take_all([bucket], 1) == 0:
            admitted += 1
        await trio.sleep(1 / 400)
    assert 2000 <= admitted <= 2200 + 1
