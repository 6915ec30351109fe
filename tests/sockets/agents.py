"""The syslog daemons the tests run as clients, each with a folder of its own: rsyslog (Debian's
rsyslogd, rsyslog-gnutls for TLS) and syslog-ng (Debian's syslog-ng-core: installed, or unpacked
under .local/syslog-ng by .ci/install-system-deps.sh where rsyslog holds the system-log-daemon slot).

Both read local messages from a Unix socket of their own, written with util-linux ``logger -u``,
and forward them to the gateway as configured.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio

from tests.conftest import ROOT

SYSLOG_NG_ROOT = ROOT / ".local" / "syslog-ng"


def syslog_ng_command() -> tuple[list[str], dict[str, str]]:
    """How to start syslog-ng here: the system one, else the one unpacked under .local/syslog-ng."""
    system = shutil.which("syslog-ng")
    if system:
        return [system], {}
    unpacked = SYSLOG_NG_ROOT / "usr" / "sbin" / "syslog-ng"
    if not unpacked.exists():
        raise FileNotFoundError("no syslog-ng: run .ci/install-system-deps.sh")
    modules = SYSLOG_NG_ROOT / "usr" / "lib" / "syslog-ng"
    version = next(p.name for p in modules.iterdir() if p.is_dir() and p.name[0].isdigit())
    return [str(unpacked), f"--module-path={modules / version}"], {"LD_LIBRARY_PATH": str(modules)}


@contextlib.asynccontextmanager
async def daemon(command: Sequence[str], ready: Path, log: Path, env: dict[str, str] | None = None) -> AsyncIterator[trio.Process]:
    """Run a daemon in the foreground until the block ends; ``ready`` is the socket it creates."""
    with log.open("ab") as output:
        process = await trio.lowlevel.open_process(
            list(command), stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        with trio.fail_after(15):
            while not ready.exists():
                if process.returncode is not None:
                    raise RuntimeError(f"{command[0]} exited with {process.returncode}: {log.read_text()[-2000:]}")
                await trio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def log_lines(socket_path: Path, tag: str, lines: Sequence[str], *, priority: str = "user.notice") -> None:
    """util-linux logger, one message per line, into a daemon's local socket."""
    await trio.run_process(
        ["logger", "-u", str(socket_path), "-t", tag, "-p", priority],
        stdin=("\n".join(lines) + "\n").encode(),
    )


def rsyslog_config(directory: Path, action: str, *, tls_ca: Path | None = None) -> Path:
    """An rsyslogd configuration of its own: a work folder, a local socket, one forwarding action."""
    work = directory / "work"
    work.mkdir(parents=True, exist_ok=True)
    tls = f'global(DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{tls_ca}")\n' if tls_ca else ""
    config = directory / "rsyslog.conf"
    config.write_text(
        f'global(workDirectory="{work}")\n{tls}'
        'module(load="imuxsock" SysSock.Use="off")\n'
        f'input(type="imuxsock" Socket="{directory / "log.sock"}" CreatePath="on" RateLimit.Interval="0")\n'
        f"{action}\n"
    )
    return config


def rsyslogd(directory: Path, action: str, *, tls_ca: Path | None = None) -> contextlib.AbstractAsyncContextManager[trio.Process]:
    config = rsyslog_config(directory, action, tls_ca=tls_ca)
    command = ["rsyslogd", "-n", "-f", str(config), "-i", str(directory / "rsyslogd.pid")]
    return daemon(command, directory / "log.sock", directory / "rsyslogd.log")


def syslog_ng(directory: Path, destination: str) -> contextlib.AbstractAsyncContextManager[trio.Process]:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "syslog-ng.conf"
    config.write_text(
        "@version: 3.38\n"
        "options { keep-hostname(yes); stats-freq(0); };\n"
        f'source s_local {{ unix-dgram("{directory / "log.sock"}"); }};\n'
        f"destination d_gateway {{ {destination}; }};\n"
        "log { source(s_local); destination(d_gateway); };\n"
    )
    command, env = syslog_ng_command()
    command += [
        "-F", "-f", str(config), "-R", str(directory / "syslog-ng.persist"), "-p", str(directory / "syslog-ng.pid"),
        "-c", str(directory / "syslog-ng.ctl"), "--no-caps",
    ]
    return daemon(command, directory / "log.sock", directory / "syslog-ng.log", env)
