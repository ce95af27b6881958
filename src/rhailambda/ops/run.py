"""``rhailambda run FILE.rhai``: one script on the engine, as the function would run it.

The function's own batch runner (:class:`~rhailambda.functions.runner.BatchRunner`)
runs the script, with the function's settings (``RHAILAMBDA_*`` limits, script and
output caps, signature policy) and extensions (``RHAILAMBDA_EXTENSIONS``, loaded by
:func:`~rhailambda.functions.bootstrap.load_extensions`). Only the task store is
different: the one task lives in memory, its finish is printed instead of pushed.
The circle's ``db::`` / ``circle::`` data is in process (``--store memory``: nothing
but the engine starts, no Redis connection) or the configured Redis
(``--store redis``: the writes are applied there, as the function would).

Exit codes as ``submit --wait``: 0 the script completed, 1 it failed (the error, with
line and column, on stderr), 2 a usage error or bad setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rhailambda import protocol as p
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.extension import Extension, ScriptContext
from rhailambda.ops.script_file import read_script
from rhailambda.settings import Env
from rhailambda.taskstore import REPLIED, Claim, Finish, TaskStore

if TYPE_CHECKING:
    from rhailambda.functions.settings import FunctionSettings

__all__ = ["configure", "run_script"]


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    env = Env(os.environ)
    workers = env.list("RHAILAMBDA_WORKERS")
    sub = subparsers.add_parser(
        "run",
        help="run one script locally with the function's limits and extensions",
        description="Run a Rhai script on the engine as the function would; print its "
        "output (print/debug go to stderr). Exit 0 completed, 1 script error.",
    )
    sub.add_argument("file", metavar="FILE", help="the .rhai file, or - for stdin")
    sub.add_argument(
        "--context",
        default=env.optional_str("RHAILAMBDA_CONTEXT_ID") or "local",
        help="circle (context) id [RHAILAMBDA_CONTEXT_ID] (default local)",
    )
    sub.add_argument("--caller", default=env.optional_str("RHAILAMBDA_CALLER_ID"),
                     help="caller id [RHAILAMBDA_CALLER_ID] (default: the context, "
                     "its owner)")  # fmt: skip
    sub.add_argument(
        "--worker",
        default=env.optional_str("RHAILAMBDA_WORKER") or (workers[0] if workers else "local"),
        help="WORKER_ID the script sees [RHAILAMBDA_WORKER]",
    )
    sub.add_argument("--task-id", default=None, help="TASK_ID the script sees (default: a UUID)")
    sub.add_argument(
        "--store",
        choices=("memory", "redis"),
        default="memory",
        help="circle data in process (default) or in the configured Redis",
    )
    sub.add_argument("--json", action="store_true", help="print the reply JSON (as submit --wait)")
    sub.set_defaults(func=_run)


class _OneTask:
    """The task store of a local run: one task in memory; its finish is kept, not pushed."""

    def __init__(self, raw: dict[str, str]) -> None:
        self._raw = raw
        self.finished: list[Finish] = []

    def claim(self, tasks: Sequence[TaskRef]) -> list[Claim]:
        return [
            Claim(ref, "claimed", p.TaskFields.from_hash(ref.task_id, self._raw)) for ref in tasks
        ]

    def finish(self, finishes: Sequence[Finish]) -> list[int]:
        self.finished += finishes
        return [REPLIED] * len(finishes)


def _extensions(settings: FunctionSettings, store: str, env: Env) -> list[Extension]:
    from rhailambda.circle import CircleExtension, CircleSettings
    from rhailambda.functions.bootstrap import load_extensions

    own = load_extensions(dataclasses.replace(settings, circle_enabled=False), env)
    if not settings.circle_enabled:
        return own
    if store == "memory":
        from rhailambda.circle.memory_store import MemoryCircleStore
        from rhailambda.circle.settings import Limits

        return [CircleExtension(MemoryCircleStore(), Limits.from_env(env)), *own]
    circle = dataclasses.replace(CircleSettings.from_env(env), backend="redis")
    return [CircleExtension.from_settings(circle), *own]


def run_script(
    script: str, *, context_id: str, caller_id: str, worker_id: str, task_id: str,
    store: str = "memory", env: Env | None = None,
) -> Finish | str:  # fmt: skip
    """Run ``script`` through the function's runner: its finish, or why it did not finish."""
    from rhailambda.functions.runner import BatchRunner
    from rhailambda.functions.settings import FunctionSettings

    env = env or Env(os.environ)
    settings = FunctionSettings.from_env(env)
    now = p.now_rfc3339()
    tasks = _OneTask({
        p.TASK_ID: task_id, p.SCRIPT: script, p.CALLER_ID: caller_id, p.CONTEXT_ID: context_id,
        p.WORKER_ID: worker_id, p.STATUS: p.STATUS_PENDING, p.CREATED_AT: now, p.UPDATED_AT: now,
    })  # fmt: skip
    runner = BatchRunner(
        settings, cast(TaskStore, tasks), _extensions(settings, store, env),
        on_print=_print, on_debug=_debug,
    )  # fmt: skip
    budget_s = settings.limits.timeout_s + settings.reserve_s + 1.0
    response = runner.run(InvocationEvent(worker_id, (TaskRef(task_id),)), budget_s)
    if tasks.finished:
        return tasks.finished[-1]
    return response.reasons.get(task_id) or f"not finished ({response.outcomes.get(task_id)})"


def _print(ctx: ScriptContext, text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _debug(
    ctx: ScriptContext, text: str, source: str | None, line: int | None, column: int | None
) -> None:
    where = f" line {line}, position {column or 0}" if line is not None else ""
    print(f"[debug{where}] {text}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    script = read_script(Path(args.file))
    task_id = args.task_id or str(uuid.uuid4())
    result = run_script(
        script, context_id=args.context, caller_id=args.caller or args.context,
        worker_id=args.worker, task_id=task_id, store=args.store,
    )  # fmt: skip
    if isinstance(result, str):  # infrastructure (a store down): the function would retry
        print(f"rhailambda run: {result}", file=sys.stderr)
        return 1
    if args.json:
        reply = p.build_reply(result.fields, status=result.status, output=result.output,
                              error=result.error, updated_at=p.now_rfc3339())  # fmt: skip
        print(json.dumps(json.loads(reply), ensure_ascii=False))
    elif result.status == p.STATUS_COMPLETED:
        print(result.output or "")
    else:
        print(f"rhailambda run: {result.error}", file=sys.stderr)
    return 0 if result.status == p.STATUS_COMPLETED else 1
