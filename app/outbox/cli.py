"""``python -m app outbox status|replay``: operator commands on the outbox."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from app.config import Settings
from app.db import outbox as store
from app.db.database import DatabaseError, DatabaseUnavailable, apply_migrations


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outbox = subparsers.add_parser("outbox", help="inspect the transactional outbox or replay it")
    commands = outbox.add_subparsers(dest="outbox_command", required=True)
    commands.add_parser("status", help="pending and published counts, oldest pending, relay leader (JSON)")
    replay = commands.add_parser(
        "replay",
        help="publish again, with their original event ids, the transactions accepted since a time",
        description="Marks the published transactions accepted at or after --since as pending; the running "
        "relay then publishes them again with their original event ids (consumers see them twice, "
        "by request). Rows purged after OUTBOX_RETENTION_HOURS cannot be replayed.",
    )
    replay.add_argument("--since", required=True, type=_timestamp, help="ISO-8601 time, e.g. 2026-11-25T08:00:00Z")


def _timestamp(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def run(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.database_url:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    try:
        # A gateway may be migrating right now: its lock is waited for a while, not READY_TIMEOUT.
        apply_migrations(settings.database_url, timeout=max(settings.ready_timeout, 30.0))
        # An operator's replay may touch many rows: its statements are not cut short.
        with store.connect(settings.database_url, timeout=settings.ready_timeout, statement_timeout=0) as conn:
            if args.outbox_command == "status":
                print(json.dumps(store.summary(conn), indent=2))
            else:
                count = store.replay_since(conn, args.since)
                print(json.dumps({"replayed": count, "since": args.since.isoformat()}))
    except DatabaseUnavailable as error:
        print(f"database unavailable: {error}", file=sys.stderr)
        return 1
    except DatabaseError as error:
        print(f"database refused the command: {error}", file=sys.stderr)
        return 1
    return 0
