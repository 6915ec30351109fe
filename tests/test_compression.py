import gzip

import pytest

import cramjam

from app.compression import gunzip, unsnappy
from app.core import Refusal


def test_gunzip_within_the_limit() -> None:
    assert gunzip(gzip.compress(b"x" * 1000), 1000) == b"x" * 1000


def test_gunzip_reads_every_member_of_a_multi_member_body_within_the_limit_of_them_all() -> None:
    body = gzip.compress(b"a" * 600) + gzip.compress(b"b" * 400)
    assert gunzip(body, 1000) == b"a" * 600 + b"b" * 400
    with pytest.raises(Refusal) as info:
        gunzip(body, 999)
    assert info.value.status == 413
    with pytest.raises(Refusal) as info:
        gunzip(body + b"trailing garbage", 2000)
    assert info.value.status == 400


def test_gunzip_refuses_a_body_that_inflates_past_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000)
    assert len(bomb) < 20_000
    with pytest.raises(Refusal) as info:
        gunzip(bomb, 1_000_000)
    assert info.value.status == 413


@pytest.mark.parametrize("body", [b"not gzip", gzip.compress(b"x" * 100, mtime=0)[:-12]], ids=["not gzip", "truncated"])
def test_gunzip_refuses_malformed_streams(body: bytes) -> None:
    with pytest.raises(Refusal) as info:
        gunzip(body, 1000)
    assert info.value.status == 400


def test_unsnappy_within_the_limit_and_a_bomb_refused_by_its_stated_length() -> None:
    block = bytes(cramjam.snappy.compress_raw(b"x" * 1000))
    assert unsnappy(block, 1000) == b"x" * 1000
    bomb = bytes(cramjam.snappy.compress_raw(b"\0" * 10_000_000))
    assert len(bomb) < 500_000
    with pytest.raises(Refusal) as info:
        unsnappy(bomb, 1_000_000)
    assert info.value.status == 413 and "10000000" in info.value.detail


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff\xff\xff", bytes(cramjam.snappy.compress_raw(b"x" * 100))[:-3]])
def test_unsnappy_refuses_malformed_blocks(body: bytes) -> None:
    with pytest.raises(Refusal) as info:
        unsnappy(body, 1000)
    assert info.value.status == 400
