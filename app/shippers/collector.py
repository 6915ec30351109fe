"""The host collector: samples this machine with psutil and ships the samples as metric events.

Every interval, each sensor runs in a worker thread of its own with the interval as its
deadline. A sensor that fails is skipped with a warning; one that is still busy from an
earlier round (a hung NFS mount, say) is skipped until it returns; neither stops the loop.

Samples go to the infrastructure profile like any agent's. When the profile refuses them
(buffer full, breaker open) they are dropped and counted: a host sample is worth less than the
backpressure that protects client requests.

``rate`` > 0 turns the collector into a load source: it re-emits the latest readings, with
fresh event ids and timestamps, at a fixed number of events per second.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import trio

from app import events
from app.observability.metrics import Metrics
from app.core import Outcome
from app.profile import ProducerProfile
from app.streams import metric_records

log = logging.getLogger(__name__)

WARNING_EVERY_SECONDS = 60.0
RATE_TICK_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class Reading:
    metric: str
    value: float
    unit: str
    labels: dict[str, str] = field(default_factory=dict)


Sensor = Callable[[], list[Reading]]


def cpu() -> list[Reading]:
    """Utilisation per CPU and in total since the previous call (primed by :func:`default_sensors`)."""
    per_cpu = psutil.cpu_percent(interval=None, percpu=True)
    readings = [Reading("system.cpu.utilization", value, "percent", {"cpu": str(n)}) for n, value in enumerate(per_cpu)]
    if per_cpu:
        readings.append(Reading("system.cpu.utilization", sum(per_cpu) / len(per_cpu), "percent", {"cpu": "total"}))
    return readings


def load() -> list[Reading]:
    return [
        Reading("system.load_average", value, "1", {"period": period})
        for period, value in zip(("1m", "5m", "15m"), os.getloadavg())
    ]


def memory() -> list[Reading]:
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    return [
        Reading("system.memory.total", memory.total, "bytes"),
        Reading("system.memory.used", memory.used, "bytes"),
        Reading("system.memory.available", memory.available, "bytes"),
        Reading("system.memory.utilization", memory.percent, "percent"),
        Reading("system.swap.total", swap.total, "bytes"),
        Reading("system.swap.used", swap.used, "bytes"),
        Reading("system.swap.utilization", swap.percent, "percent"),
    ]


def disk_usage() -> list[Reading]:
    """Usage of every mounted file system; a mount that cannot be read is left out."""
    readings: list[Reading] = []
    for partition in psutil.disk_partitions(all=False):
        try:
            usage = psutil.disk_usage(partition.mountpoint)
        except OSError as error:
            log.debug("disk usage of %s: %s", partition.mountpoint, error)
            continue
        labels = {"mount": partition.mountpoint, "device": partition.device, "fstype": partition.fstype}
        readings += [
            Reading("system.disk.total", usage.total, "bytes", labels),
            Reading("system.disk.used", usage.used, "bytes", labels),
            Reading("system.disk.utilization", usage.percent, "percent", labels),
        ]
    return readings


def disk_io() -> list[Reading]:
    """Cumulative I/O counters per block device."""
    readings: list[Reading] = []
    for device, counters in (psutil.disk_io_counters(perdisk=True) or {}).items():
        labels = {"device": device}
        readings += [
            Reading("system.disk.read_bytes", counters.read_bytes, "bytes", labels),
            Reading("system.disk.write_bytes", counters.write_bytes, "bytes", labels),
            Reading("system.disk.reads", counters.read_count, "operations", labels),
            Reading("system.disk.writes", counters.write_count, "operations", labels),
        ]
    return readings


def network() -> list[Reading]:
    """Cumulative I/O counters per network interface."""
    readings: list[Reading] = []
    for interface, counters in psutil.net_io_counters(pernic=True).items():
        labels = {"interface": interface}
        readings += [
            Reading("system.network.bytes_sent", counters.bytes_sent, "bytes", labels),
            Reading("system.network.bytes_received", counters.bytes_recv, "bytes", labels),
            Reading("system.network.packets_sent", counters.packets_sent, "packets", labels),
            Reading("system.network.packets_received", counters.packets_recv, "packets", labels),
            Reading("system.network.errors", counters.errin + counters.errout, "packets", labels),
            Reading("system.network.dropped", counters.dropin + counters.dropout, "packets", labels),
        ]
    return readings


def processes() -> list[Reading]:
    return [Reading("system.processes", len(psutil.pids()), "processes")]


class OwnProcess:
    """This gateway process's CPU (since the previous call) and resident memory."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._labels = {"pid": str(self._process.pid)}
        self._process.cpu_percent(interval=None)  # else the first reading is 0

    def __call__(self) -> list[Reading]:
        with self._process.oneshot():
            cpu_percent = self._process.cpu_percent(interval=None)
            rss = self._process.memory_info().rss
        return [
            Reading("process.cpu.utilization", cpu_percent, "percent", self._labels),
            Reading("process.memory.rss", rss, "bytes", self._labels),
        ]


def default_sensors() -> dict[str, Sensor]:
    psutil.cpu_percent(interval=None, percpu=True)  # else the first reading is 0
    return {
        "cpu": cpu,
        "load": load,
        "memory": memory,
        "disk_usage": disk_usage,
        "disk_io": disk_io,
        "network": network,
        "processes": processes,
        "process": OwnProcess(),
    }


class Collector:
    """Samples the host every ``interval`` seconds into the infrastructure profile."""

    def __init__(
        self,
        profile: ProducerProfile,
        metrics: Metrics,
        *,
        interval: float,
        host: str = "",
        rate: float = 0.0,
        sensors: dict[str, Sensor] | None = None,
    ) -> None:
        self._profile = profile
        self._metrics = metrics
        self._interval = interval
        self._rate = rate
        self.host = host or socket.gethostname()
        self._sensors = sensors if sensors is not None else default_sensors()
        self._busy: set[str] = set()
        self._warned_at: dict[str, float] = {}
        self._latest: list[Reading] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._sample_loop)
            if self._rate > 0:
                await nursery.start(self._rate_loop)
            task_status.started()

    async def _sample_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        next_at = trio.current_time()
        while True:
            readings = await self.sample()
            self._latest = readings
            if self._rate <= 0:
                self._ship(readings)
            next_at += self._interval
            # After a long stall (a suspended process), start afresh instead of catching up.
            next_at = max(next_at, trio.current_time())
            await trio.sleep_until(next_at)

    async def _rate_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Re-emit the latest readings at ``rate`` events/s (load testing)."""
        task_status.started()
        started = trio.current_time()
        sent = 0
        position = 0
        while True:
            await trio.sleep(RATE_TICK_SECONDS)
            latest = self._latest
            if not latest:
                continue
            due = math.floor((trio.current_time() - started) * self._rate) - sent
            batch = [latest[(position + n) % len(latest)] for n in range(due)]
            position = (position + due) % len(latest)
            sent += due
            self._ship(batch)

    async def sample(self) -> list[Reading]:
        """One reading of every sensor that answers within the interval."""
        results: dict[str, list[Reading]] = {}
        async with trio.open_nursery() as nursery:
            for name, sensor in self._sensors.items():
                if name in self._busy:
                    self._warn(name, "is still busy from an earlier round; skipped")
                    continue
                nursery.start_soon(self._read, name, sensor, results)
        return [reading for name in self._sensors if name in results for reading in results[name]]

    async def _read(self, name: str, sensor: Sensor, results: dict[str, list[Reading]]) -> None:
        def call() -> list[Reading]:
            try:
                return sensor()
            finally:
                self._busy.discard(name)  # also when abandoned: the sensor may run again

        self._busy.add(name)
        try:
            with trio.move_on_after(self._interval) as deadline:
                results[name] = await trio.to_thread.run_sync(call, abandon_on_cancel=True)
        except Exception as error:  # a sensor's failure is reported and skipped, whatever it is
            self._metrics.collector_sensor_failures.labels(name).inc()
            self._warn(name, f"failed: {error!r}")
            return
        if deadline.cancelled_caught:
            self._metrics.collector_sensor_failures.labels(name).inc()
            self._warn(name, f"took longer than {self._interval:g} s; skipped")

    def _warn(self, name: str, message: str) -> None:
        now = trio.current_time()
        if now - self._warned_at.get(name, -math.inf) >= WARNING_EVERY_SECONDS:
            self._warned_at[name] = now
            log.warning("host sensor %s %s", name, message)

    def _ship(self, readings: list[Reading]) -> None:
        if not readings:
            return
        timestamp = dt.datetime.now(dt.timezone.utc)
        samples = [
            events.MetricIn(self.host, r.metric, float(r.value), r.unit, r.labels, timestamp) for r in readings
        ]
        records, _ = metric_records(samples, [])
        outcome = self._profile.submit(records, sum(record.size for record in records))
        if outcome is not Outcome.ACCEPTED:
            self._metrics.collector_dropped.labels(outcome.value).inc(len(records))
