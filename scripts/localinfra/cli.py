"""The command line of scripts/infra.py: ``KEY=value`` lines on stdout, progress on stderr, errors as exit 1."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import jars, stack
from .process import log
from .settings import KAFKA_MODES, InfraError


def _cmd_fetch(args: argparse.Namespace) -> int:
    lib = jars.fetch(force=args.force)
    log(f"jars ready in {lib}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    if args.no_kafka and args.no_postgres and args.no_prometheus:
        raise InfraError("nothing to do with --no-kafka, --no-postgres and --no-prometheus")
    started = time.monotonic()
    env = stack.up(
        kafka_nodes=args.kafka_nodes,
        postgres=not args.no_postgres,
        kafka=not args.no_kafka,
        prometheus=not args.no_prometheus,
    )
    log(f"up in {time.monotonic() - started:.1f}s")
    for key, value in env.items():
        print(f"{key}={value}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    stack.down(
        args.kafka_nodes, postgres=not args.no_postgres, kafka=not args.no_kafka, prometheus=not args.no_prometheus
    )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    ok, lines = stack.status()
    for line in lines:
        print(line)
    return 0 if ok else 1


def _cmd_kill_broker(args: argparse.Namespace) -> int:
    stack.kill_broker(args.node, mode=args.kafka_nodes)
    return 0


def _cmd_start_broker(args: argparse.Namespace) -> int:
    stack.start_broker(args.node, mode=args.kafka_nodes)
    return 0


def _cmd_reset(args: argparse.Namespace) -> int:
    stack.reset()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="infra.py",
        description="Local Kafka (KRaft), PostgreSQL and Prometheus for development and tests. "
        "State lives in $INFRA_DIR (default <repo>/.local).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fetch", help="download the Kafka jars with Maven (no-op when up to date)")
    p.add_argument("--force", action="store_true", help="fetch again even when the jars are complete")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser(
        "up", help="start Kafka, PostgreSQL and Prometheus (idempotent); prints KEY=value lines on stdout"
    )
    p.add_argument(
        "--kafka-nodes",
        type=int,
        choices=KAFKA_MODES,
        default=1,
        help="1: combined single node; 3: three-node cluster (stops the other mode first)",
    )
    p.add_argument("--no-postgres", action="store_true", help="do not start PostgreSQL")
    p.add_argument("--no-kafka", action="store_true", help="do not start Kafka")
    p.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("down", help="stop brokers, PostgreSQL and Prometheus (idempotent)")
    p.add_argument("--kafka-nodes", choices=("1", "3", "all"), default="all", help="which Kafka mode to stop")
    p.add_argument("--no-postgres", action="store_true", help="leave PostgreSQL running")
    p.add_argument("--no-kafka", action="store_true", help="leave Kafka running")
    p.add_argument("--no-prometheus", action="store_true", help="leave Prometheus running")
    p.set_defaults(func=_cmd_down)

    p = sub.add_parser("status", help="one line per component; exit 0 when everything expected is up")
    p.set_defaults(func=_cmd_status)

    for name, text in (
        ("kill-broker", "SIGKILL one broker of the running cluster (fault tests)"),
        ("start-broker", "start one broker again and wait until it serves"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("node", type=int, help="node id (1..3)")
        p.add_argument(
            "--kafka-nodes",
            type=int,
            choices=KAFKA_MODES,
            default=None,
            help="mode of the cluster (default: the running one; 3 when N > 1)",
        )
        p.set_defaults(func=_cmd_kill_broker if name == "kill-broker" else _cmd_start_broker)

    p = sub.add_parser("reset", help="down, then delete all Kafka, PostgreSQL and Prometheus data (keeps the jars)")
    p.set_defaults(func=_cmd_reset)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except InfraError as exc:
        print(f"infra.py {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
