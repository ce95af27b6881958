"""The ops subcommands: ``dlq list|show|redrive|purge``, ``task show`` and ``run``.

:func:`configure` adds them to the top-level ``rhailambda`` parser. Exit codes: 0
done, 1 some id could not be acted on (named on stderr) or an unknown task, 2 a
usage error or bad setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from rhailambda.errors import SettingError
from rhailambda.ops.connect import add_redis, connect
from rhailambda.protocol import normalize_worker_id

__all__ = ["configure"]

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def configure(subparsers: Subparsers) -> None:
    """Add ``dlq``, ``task`` and ``run`` to the ``rhailambda`` command."""
    dlq = subparsers.add_parser("dlq", help="list, show, redrive or purge dead-lettered tasks")
    verbs = dlq.add_subparsers(dest="dlq_command", metavar="COMMAND", required=True)
    listing = verbs.add_parser("list", help="the dead letters of a queue, newest first")
    _worker(listing, required=True)
    listing.add_argument("--limit", type=int, default=1000, help="show at most N (0: all)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=_list)
    show = verbs.add_parser("show", help="one dead-lettered task: its hash and error")
    show.add_argument("task_id", metavar="ID")
    _worker(show, required=False)
    show.set_defaults(func=_show)
    for name, helptext in (
        ("redrive", "put dead letters back onto their queue with fresh attempts"),
        ("purge", "delete dead letters (their task hash and list entry)"),
    ):
        sub = verbs.add_parser(name, help=helptext)
        _worker(sub, required=True)
        which = sub.add_mutually_exclusive_group(required=True)
        which.add_argument("task_ids", metavar="ID", nargs="*", default=[])
        which.add_argument("--all", action="store_true", help="every dead letter of the queue")
        sub.set_defaults(func=_redrive if name == "redrive" else _purge)

    task = subparsers.add_parser("task", help="inspect a task")
    task_verbs = task.add_subparsers(dest="task_command", metavar="COMMAND", required=True)
    where = task_verbs.add_parser(
        "show", help="a task's hash, where its id is, and its uncollected reply"
    )
    where.add_argument("task_id", metavar="ID")
    where.add_argument("--worker", action="append", default=[],
                       help="also search this queue (repeat)")  # fmt: skip
    where.add_argument("--json", action="store_true", help="print JSON")
    add_redis(where)
    where.set_defaults(func=_task_show)

    from rhailambda.ops.run import configure as configure_run

    configure_run(subparsers)


def _worker(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--worker", required=required, help="the worker queue id")
    add_redis(parser)


def _list(args: argparse.Namespace) -> int:
    from rhailambda.ops.dlq import DeadLetterList

    worker = normalize_worker_id(args.worker)
    if args.limit < 0:
        raise SettingError("--limit", f"must be at least 0, got {args.limit}")
    with connect(args) as (client, protocol):
        letters, total = DeadLetterList(client, protocol, worker).newest(args.limit)
    rows = [d.summary() for d in letters]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dead letters of {worker} ({total})")
    for column in ("id", "dead-lettered at", "attempts", "last error", "caller", "context",
                   "script"):  # fmt: skip
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["taskId"], r["deadLetteredAt"], str(r["attempts"]), r["error"],
                      r["callerId"], r["contextId"], r["scriptHead"])  # fmt: skip
    Console().print(table)
    if total > len(rows):
        print(f"... and {total - len(rows)} more (--limit 0 shows all)")
    return 0


def _show(args: argparse.Namespace) -> int:
    from rhailambda.ops.dlq import DeadLetterList, read_task

    with connect(args) as (client, protocol):
        (task,) = read_task(client, protocol, [args.task_id])
        worker = args.worker or task.fields.get("workerId", "")
        worker = normalize_worker_id(worker) if worker else ""
        on_list = bool(worker) and args.task_id in DeadLetterList(client, protocol, worker).ids()
    out: dict[str, Any] = {**task.summary(), "workerId": worker, "deadLettered": on_list,
                           "hash": task.fields}  # fmt: skip
    print(json.dumps(out, indent=2, ensure_ascii=False))
    if not task.fields and not on_list:
        print(f"rhailambda: no task {args.task_id} (no hash, not dead-lettered)", file=sys.stderr)
        return 1
    return 0


def _act(args: argparse.Namespace, verb: str) -> int:
    from rhailambda.ops.dlq import DeadLetterList

    worker = normalize_worker_id(args.worker)
    with connect(args) as (client, protocol):
        letters = DeadLetterList(client, protocol, worker)
        action = letters.redrive if verb == "redriven" else letters.purge
        outcome = action(None if args.all else args.task_ids)
    print(f"{verb}: {len(outcome.done)}" + "".join(f"\n  {t}" for t in outcome.done))
    for task_id, why in outcome.skipped.items():
        print(f"rhailambda dlq: {task_id}: {why}", file=sys.stderr)
    return 1 if outcome.skipped else 0


def _redrive(args: argparse.Namespace) -> int:
    return _act(args, "redriven")


def _purge(args: argparse.Namespace) -> int:
    return _act(args, "purged")


def _task_show(args: argparse.Namespace) -> int:
    from rhailambda.ops.inspect import locate

    workers = [normalize_worker_id(w) for w in args.worker]
    with connect(args) as (client, protocol):
        report = locate(client, protocol, args.task_id, workers)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(f"task {report.task_id}")
        for place in report.places or ():
            print(f"  where: {place.describe()}")
        if not report.places:
            print(f"  where: in no queue, in-flight or dead-letter list of "
                  f"{', '.join(report.searched) or 'any known queue'}, no done marker")  # fmt: skip
        if report.problem:
            print(f"  task key: {report.problem}")
        kept = {-1: "no expiry", -2: "none"}.get(report.hash_kept_s, f"{report.hash_kept_s} s")
        print(f"  hash ({kept}):" if report.fields else "  hash: none")
        for name, value in report.fields.items():
            print(f"    {name}: {value}")
        for reply in report.replies:
            print(f"  reply (uncollected): {json.dumps(reply, ensure_ascii=False)}")
    if not report.known:
        print(f"rhailambda: task {args.task_id} is unknown", file=sys.stderr)
        return 1
    return 0
