"""The consumer-lag reader in a child process of its own, so that librdkafka cannot abort the gateway.

librdkafka (2.16 and earlier) aborts the whole process with ``rd_kafka_enq_once_del_source_return:
Assertion `eonce->refcnt > 0' failed`` when a coordinator-bound admin request
(``ListConsumerGroupOffsets``, which the lag reading needs) meets a connection that drops:
confluentinc/librdkafka#3663 and #4605, fixed by the open #5397. A broker restart is enough, so a
gateway that read the lag in its own process could die in the very outage it is meant to ride
through. :class:`LagProcess` runs :class:`app.kafka.lag.LagReader` in ``python -m
app.kafka.lag_process`` instead: one JSON line per round each way over its stdin and stdout, the
child's log records sent back with its answer and logged here. A child that dies, or does not
answer within the round's deadline, fails that round (``KafkaUnavailable``, which the watcher
counts and logs); the next round starts a new one.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import trio

from app.config import Settings
from app.kafka.connection import connection_config
from app.kafka.errors import KafkaConfigError, KafkaUnavailable
from app.kafka.lag import LagReader, LagReading, lag_topics

log = logging.getLogger(__name__)

# Beyond LAG_TIMEOUT, what a round may take: starting the child (imports and clients) and the pipes.
SPARE_SECONDS: Final = 10.0
# How long a closing child has to close its clients once its stdin is closed, before it is killed.
CLOSE_SECONDS: Final = 2.0
# The largest answer line taken from the child (a reading of many groups and partitions fits in far less).
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
# Log records the child keeps for its next answer; older ones are counted, not kept.
MAX_LOG_RECORDS: Final = 200


class LagSpec(msgspec.Struct, frozen=True):
    """What the child builds its LagReader from: the first line it reads."""

    connection: dict[str, Any]
    topics: list[str]
    groups: list[str]
    max_groups: int
    timeout: float
    client_id: str
    log_level: int = logging.WARNING


class _Answer(msgspec.Struct, frozen=True):
    reading: LagReading | None = None
    unavailable: str | None = None
    config_error: str | None = None
    logs: list[tuple[int, str, str]] = []  # (level, logger, message) of the child's records
    logs_dropped: int = 0


class LagProcess:
    """Reads the consumer lag in a child process, restarted after it dies. Used from the trio thread."""

    def __init__(self, spec: LagSpec, *, spare: float = SPARE_SECONDS) -> None:
        self.spec = spec
        self._spare = spare
        self._process: trio.Process | None = None
        self._buffer = bytearray()
        self._encode = msgspec.json.Encoder()
        self._decode = msgspec.json.Decoder(_Answer)
        self._started = False
        self.restarts = 0  # children started after the first one ended

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.returncode is None else None

    async def read(self) -> LagReading:
        """One round in the child. Raises KafkaUnavailable when the cluster or the child fails it,
        KafkaConfigError when the clients refuse their configuration."""
        with trio.move_on_after(self.spec.timeout + self._spare) as scope:
            answer = await self._round()
        if scope.cancelled_caught:
            await self._close(grace=0.0, why="no answer within LAG_TIMEOUT")
            raise KafkaUnavailable("the lag reader process did not answer within LAG_TIMEOUT; it was stopped")
        self._log(answer)
        if answer.config_error is not None:
            raise KafkaConfigError(answer.config_error)
        if answer.unavailable is not None or answer.reading is None:
            raise KafkaUnavailable(answer.unavailable or "the lag reader process answered nothing")
        return answer.reading

    async def _round(self) -> _Answer:
        process = self._process
        if process is None:
            process = await self._start()
        assert process.stdin is not None and process.stdout is not None
        try:
            await process.stdin.send_all(b"read\n")
            line = await self._line(process.stdout)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            line = None
        if line is None:
            ended = await self._close(grace=CLOSE_SECONDS)
            raise KafkaUnavailable(f"the lag reader process ended ({ended}); the next round starts another")
        try:
            return self._decode.decode(line)
        except msgspec.DecodeError as error:
            await self._close(grace=0.0, why="a garbled answer")
            raise KafkaUnavailable(f"the lag reader process answered garbage ({error}); it was stopped") from None

    async def _start(self) -> trio.Process:
        if self._started:
            self.restarts += 1
        self._started = True
        self._buffer.clear()
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "app.kafka.lag_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Its stderr is the gateway's: librdkafka's own last words, when it aborts, land there.
            start_new_session=True,  # a terminal's Ctrl-C reaches the gateway, which closes the child
        )
        self._process = process
        assert process.stdin is not None
        try:
            await process.stdin.send_all(self._encode.encode(self.spec) + b"\n")
        except trio.BrokenResourceError:
            pass  # dead already: the round's request fails the same way, and says how it ended
        log.debug("lag reader process started (pid %d)", process.pid)
        return process

    async def _line(self, stdout: trio.abc.ReceiveStream) -> bytes | None:
        """The next line from the child, or None at end of file."""
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_ANSWER_BYTES:
                raise KafkaUnavailable(f"the lag reader process answered more than {MAX_ANSWER_BYTES} bytes")
            data = await stdout.receive_some(1 << 16)
            if not data:
                return None
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    async def _close(self, *, grace: float, why: str = "") -> str:
        """Close the child, if there is one: its stdin first, so it can close its clients; killed
        (``why`` logged) when it has not ended within ``grace``; its pipes closed, and waited for.
        How it ended."""
        process, self._process = self._process, None
        if process is None:
            return "not running"
        assert process.stdin is not None and process.stdout is not None
        with trio.CancelScope(shield=True):
            await process.stdin.aclose()
            with trio.move_on_after(grace):
                await process.wait()
            stuck = process.returncode is None
            if stuck:
                if why:
                    log.warning("stopping the lag reader process (pid %d): %s", process.pid, why)
                process.kill()
            await process.stdout.aclose()
            code = await process.wait()
        if stuck:
            return "stopped answering"
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"

    def _log(self, answer: _Answer) -> None:
        for level, name, message in answer.logs:
            logging.getLogger(name).log(level, "%s", message, extra={"lag_reader_pid": self.pid})
        if answer.logs_dropped:
            log.warning("the lag reader process dropped %d log records", answer.logs_dropped)

    async def aclose(self) -> None:
        """Close the child: it has CLOSE_SECONDS to close its clients once its stdin is closed."""
        await self._close(grace=CLOSE_SECONDS)


def lag_process(settings: Settings) -> LagProcess:
    """The reader configured by LAG_GROUPS, LAG_MAX_GROUPS and LAG_TIMEOUT, in a child process."""
    return LagProcess(
        LagSpec(
            connection_config(settings),
            topics=lag_topics(settings),
            groups=[group.strip() for group in settings.lag_groups.split(",") if group.strip()],
            max_groups=settings.lag_max_groups,
            timeout=settings.lag_timeout,
            client_id=settings.kafka_client_id,
            log_level=logging.getLevelName(settings.log_level.upper()),
        )
    )


# -- the child -----------------------------------------------------------------------------------


class _Records(logging.Handler):
    """Keeps the child's log records for its next answer (bounded: the oldest go first, counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: deque[tuple[int, str, str]] = deque(maxlen=MAX_LOG_RECORDS)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) == self.records.maxlen:
            self.dropped += 1
        self.records.append((record.levelno, record.name, record.getMessage()))

    def take(self) -> tuple[list[tuple[int, str, str]], int]:
        self.acquire()  # emit runs under this lock, in whichever thread logs
        try:
            taken, dropped = list(self.records), self.dropped
            self.records.clear()
            self.dropped = 0
        finally:
            self.release()
        return taken, dropped


def main() -> int:
    """The child: a LagReader, one round per line on stdin, one JSON answer per round on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway closes it
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    first = stdin.readline()
    if not first:
        return 0
    spec = msgspec.json.decode(first, type=LagSpec)
    records = _Records()
    logging.basicConfig(level=spec.log_level, handlers=[records])
    reader = LagReader(
        spec.connection, topics=spec.topics, groups=spec.groups, max_groups=spec.max_groups,
        timeout=spec.timeout, client_id=spec.client_id,
    )
    encode = msgspec.json.Encoder().encode
    try:
        for _ in iter(stdin.readline, b""):
            answer: dict[str, Any] = {}
            try:
                answer["reading"] = reader.read()
            except KafkaUnavailable as error:
                answer["unavailable"] = str(error)
            except KafkaConfigError as error:
                answer["config_error"] = str(error)
            answer["logs"], answer["logs_dropped"] = records.take()
            stdout.write(encode(answer) + b"\n")
            stdout.flush()
    except BrokenPipeError:
        pass  # the gateway is gone
    finally:
        reader.close()
    return 0


__all__: Sequence[str] = ("LagProcess", "LagSpec", "lag_process")

if __name__ == "__main__":
    sys.exit(main())
