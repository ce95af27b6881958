"""Running one batch of tasks: claim, run each script, finish. No Lambda, no logging setup.

Redis round trips per batch: one to claim, one to finish on a standalone server,
three on a cluster (see :mod:`rhailambda.taskstore`), plus what the scripts' own
data functions do. Each task gets a fresh engine with ``CALLER_ID``,
``CONTEXT_ID``, ``WORKER_ID`` and ``TASK_ID`` as constants, ``CALLER_VERIFIED``
(a bool: the task's signature proved ``CALLER_ID``) and the modules of every
extension; compiled scripts are cached per process.

Signed tasks (:mod:`rhailambda.signing`): before any script runs, the signature
policy judges each claimed task; a refused one gets an error reply and runs
nothing. Batches holding signed tasks take one more round trip (their done markers:
a finished task id coming back is a replay).

Tasks delivered again (attempt > 1: an earlier invocation died or timed out) may
have had their writes committed already. Before any script of the batch runs, each
receipt-keeping extension is asked once for the receipts of those tasks (for the
circle store: one more round trip, only in batches holding such tasks); a task
with a receipt is finished with the recorded output instead of running again.

Tenant isolation: a claimed task whose circle is not the invocation's
``context.tenant_id`` is refused with an error reply before anything touches its
circle's data (:func:`rhailambda.tenancy.other_tenant`); its neighbours run.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Protocol, cast

import rhai_py

from rhailambda import protocol as p
from rhailambda.event import BatchResponse, InvocationEvent, Outcome
from rhailambda.extension import (
    AlreadyCommitted,
    CommitConflict,
    Extension,
    Receipt,
    ReceiptKeeper,
    ReceiptSession,
    ScriptContext,
    Session,
    task_fingerprint,
)
from rhailambda.functions.settings import FunctionSettings
from rhailambda.functions.signatures import batch_verdicts
from rhailambda.signing import Verdict
from rhailambda.taskstore import REPLIED, REPLY_KEY_UNUSABLE, Claim, Finish, TaskStore
from rhailambda.tenancy import other_tenant

__all__ = ["BatchRunner", "DebugHook", "PrintHook", "TaskObserver", "TaskResult"]

#: ``print(text)`` from a script, told which task printed
PrintHook = Callable[[ScriptContext, str], None]
#: ``debug(text)`` from a script: (task, text, source, line, column)
DebugHook = Callable[[ScriptContext, str, str | None, int | None, int | None], None]

#: below this much budget left, a task is handed back instead of started
_MIN_TASK_BUDGET_S = 0.05
_MAX_CACHED_SCRIPT_CHARS = 16 * 1024
#: outputs and errors a batch holds before it writes the finished tasks' replies
_MAX_HELD_CHARS = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What happened to one task of the batch (for logs and metrics)."""

    task_id: str
    fields: p.TaskFields | None
    outcome: Outcome
    error: str | None
    duration_s: float
    runs: int = 0


class TaskObserver(Protocol):
    """Told about every task (logging, metrics); must not raise."""

    def task_done(self, result: TaskResult) -> None: ...


def _validate(fields: p.TaskFields, max_script_bytes: int) -> str | None:
    """Why a claimed task cannot run, or None."""
    if fields.script is None:
        return "malformed task: the task hash has no 'script' field"
    if not fields.script or fields.script.isspace():
        return "malformed task: the script is empty"
    if fields.status not in ("", p.STATUS_PENDING, p.STATUS_PROCESSING):
        return f"malformed task: unknown status {fields.status!r}"
    if len(fields.script) * 4 > max_script_bytes:  # UTF-8: at most 4 bytes a character
        size = len(fields.script.encode())
        if size > max_script_bytes:
            return f"script too large: {size} bytes, the limit is {max_script_bytes}"
    if not fields.context_id:
        return "malformed task: the task hash has no 'contextId' field"
    if not fields.caller_id:
        return "malformed task: the task hash has no 'callerId' field"
    return None


class BatchRunner:
    """Runs batches with one set of settings, a task store and the extensions."""

    def __init__(
        self,
        settings: FunctionSettings,
        store: TaskStore,
        extensions: Sequence[Extension] = (),
        *,
        on_print: PrintHook | None = None,
        on_debug: DebugHook | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._extensions = tuple(extensions)
        self._keeps_receipts = tuple(callable(getattr(e, "recall", None)) for e in self._extensions)
        self._engine_kwargs: dict[str, Any] = settings.limits.engine_kwargs()
        self._on_print = on_print
        self._on_debug = on_debug
        self._compiler = rhai_py.Engine(**settings.limits.engine_kwargs())
        self._compile_cached: Callable[[str], rhai_py.AST] = lru_cache(
            maxsize=settings.compile_cache_size
        )(self._compiler.compile)

    def run(
        self,
        event: InvocationEvent,
        budget_s: float,
        observer: TaskObserver | None = None,
        *,
        tenant_id: str | None = None,
    ) -> BatchResponse:
        """Run every task of ``event`` within ``budget_s`` s (``tenant_id``: its TenantId)."""
        deadline = time.monotonic() + budget_s - self._settings.reserve_s
        outcomes: dict[str, Outcome] = {}
        finishes: list[Finish] = []
        results: list[TaskResult] = []
        reasons: dict[str, str] = {}
        for task_id, why in event.invalid:  # alone: its neighbours run as if it were absent
            outcomes[task_id] = "rejected"
            reasons[task_id] = why
        claims = self._store.claim(event.tasks)
        problems = [self._problem(c, tenant_id) for c in claims]  # None: it may run
        runnable = [c for c, why in zip(claims, problems, strict=True) if why is None]
        verdicts = batch_verdicts(self._settings.signatures, runnable, event.worker_id, time.time())
        recalled = self._recall(runnable, event.worker_id)
        held_bytes = 0  # outputs and errors waiting in `finishes`
        for claim, problem in zip(claims, problems, strict=True):
            result, finish = self._run_one(
                claim, event.worker_id, deadline, recalled, verdicts, problem
            )
            outcomes.setdefault(claim.ref.task_id, result.outcome)  # an id twice: first wins
            results.append(result)
            if finish is not None:
                finishes.append(finish)
                held_bytes += len(finish.output or "") + len(finish.error or "")
            if held_bytes > _MAX_HELD_CHARS:  # bound the batch's memory: write these now
                self._finish(finishes, outcomes, reasons)
                finishes, held_bytes = [], 0
        self._finish(finishes, outcomes, reasons)
        if observer is not None:
            for result in results:
                observer.task_done(result)
        return BatchResponse(outcomes=outcomes, reasons=reasons)

    def _finish(
        self, finishes: list[Finish], outcomes: dict[str, Outcome], reasons: dict[str, str]
    ) -> None:
        for finish, written in zip(finishes, self._store.finish(finishes), strict=True):
            task_id = finish.ref.task_id
            if written == REPLY_KEY_UNUSABLE:  # its result stays in its hash, final
                outcomes[task_id] = "rejected"
                reply_key = self._settings.protocol.layout.reply(task_id)
                reasons[task_id] = f"the reply key {reply_key} is not a list: no reply possible"
            elif written != REPLIED and finish.mode != "finishing":
                outcomes[task_id] = "skipped"  # a newer delivery took over: its reply counts

    def _problem(self, claim: Claim, tenant_id: str | None) -> str | None:
        """Why a claimed task cannot run here, or None ("" for no claimed task)."""
        if claim.state != "claimed" or claim.fields is None:
            return ""
        why = _validate(claim.fields, self._settings.max_script_bytes)
        return why or other_tenant(claim.fields.context_id, tenant_id)

    def _recall(self, runnable: Sequence[Claim], worker_id: str) -> dict[str, Receipt] | str:
        """Receipts of the tasks delivered again that an earlier run committed, by task id.

        A string: why the extensions could not say (a store down); those tasks are
        handed back rather than risk applying their writes twice.
        """
        keepers = [
            cast(ReceiptKeeper, ext)
            for ext, keeps in zip(self._extensions, self._keeps_receipts, strict=True)
            if keeps
        ]
        # Only a task claimed before (status processing) can have an earlier run's
        # writes in: a fresh claim's task is new, whatever receipt its id has.
        again = [
            (c.ref.task_id, c.fields, c.ref.attempt)
            for c in runnable
            if c.fields is not None and c.ref.attempt > 1 and c.fields.status == p.STATUS_PROCESSING
        ]
        found: dict[str, Receipt] = {}
        if not keepers or not again:
            return found
        tasks = [_script_context(fields, worker_id) for _, fields, _ in again]
        try:
            for keeper in keepers:
                for (task_id, fields, attempt), receipt in zip(
                    again, keeper.recall(tasks), strict=True
                ):
                    if receipt is not None and receipt.covers(_receipt(fields, None, attempt)):
                        found.setdefault(task_id, receipt)
        except Exception as exc:  # infrastructure: retry later, keep the claims
            return f"receipt recall failed: {type(exc).__name__}: {exc}"
        return found

    def _run_one(
        self,
        claim: Claim,
        worker_id: str,
        deadline: float,
        recalled: dict[str, Receipt] | str,
        verdicts: Mapping[str, Verdict],
        problem: str | None,
    ) -> tuple[TaskResult, Finish | None]:
        task_id = claim.ref.task_id
        if claim.state == "skip":
            return TaskResult(task_id, None, "skipped", None, 0.0), None
        if claim.state == "finishing":  # an earlier finish died after staging its reply
            fields = p.TaskFields.from_hash(task_id, {}, worker_id)
            status = _staged_status(claim.staged_reply)
            finish = Finish(claim.ref, fields, status, mode="finishing")
            outcome: Outcome = "completed" if status == p.STATUS_COMPLETED else "error"
            return TaskResult(task_id, fields, outcome, None, 0.0), finish
        if claim.state == "poison":
            fields = p.TaskFields.from_hash(task_id, {}, worker_id)
            key = self._settings.protocol.layout.task(task_id)
            why = f"malformed task: {key} holds a {claim.current_status}, not a task hash"
            finish = Finish(claim.ref, fields, p.STATUS_ERROR, error=why, mode="poison")
            return TaskResult(task_id, fields, "error", why, 0.0), finish
        if claim.state == "missing" or claim.fields is None:
            fields = p.TaskFields.from_hash(task_id, {}, worker_id)
            missing = f"task {task_id} not found: no task hash (expired or never written)"
            finish = Finish(claim.ref, fields, p.STATUS_ERROR, error=missing, mode="missing")
            return TaskResult(task_id, fields, "error", missing, 0.0), finish
        fields = claim.fields
        if not fields.worker_id:
            fields = p.TaskFields.from_hash(task_id, fields.raw, worker_id)
        started = time.monotonic()
        left = deadline - started
        if left < _MIN_TASK_BUDGET_S:  # hand it back: the claim lets the next attempt in
            return TaskResult(task_id, fields, "failed", "no time left in batch", 0.0), None
        error = problem
        verdict = verdicts.get(task_id)
        verified = verdict is not None and verdict.verified
        if error is None and verdict is not None:
            error = verdict.error
        output: str | None = None
        runs = 0
        if error is None and claim.ref.attempt > 1:
            if isinstance(recalled, str):
                return TaskResult(task_id, fields, "failed", recalled, 0.0), None
            if task_id in recalled:  # an earlier run's writes are in: its reply, no re-run
                output, error = _replay(recalled[task_id])
                outcome = "completed" if error is None else "error"
                finish = Finish(claim.ref, fields, outcome, output=output, error=error)
                return TaskResult(task_id, fields, outcome, error, 0.0), finish
        if error is None:
            try:
                output, error, runs = self._execute(
                    fields, claim.ref.attempt, min(left, self._settings.limits.timeout_s), verified
                )
            except Exception as exc:  # infrastructure (a store down): retry, keep the claim
                reason = f"{type(exc).__name__}: {exc}"
                return TaskResult(task_id, fields, "failed", reason, 0.0), None
        duration = time.monotonic() - started
        outcome = "completed" if error is None else "error"
        finish = Finish(claim.ref, fields, outcome, output=output, error=error)
        return TaskResult(task_id, fields, outcome, error, duration, runs), finish

    def _execute(
        self, fields: p.TaskFields, attempt: int, timeout_s: float, verified: bool = False
    ) -> tuple[str | None, str | None, int]:
        """Run the script (again when its writes lost a race); (output, error, runs)."""
        assert fields.script is not None
        try:
            # Only small scripts are cached: 512 cached 1 MB scripts would eat a function.
            if len(fields.script) <= _MAX_CACHED_SCRIPT_CHARS:
                ast = self._compile_cached(fields.script)
            else:
                ast = self._compiler.compile(fields.script)
        except rhai_py.RhaiError as exc:
            return None, _describe(exc), 0
        ctx = _script_context(fields, fields.worker_id, None)
        constants = {
            "CALLER_ID": ctx.caller_id,
            "CONTEXT_ID": ctx.context_id,
            "WORKER_ID": ctx.worker_id,
            "TASK_ID": ctx.task_id,
            "CALLER_VERIFIED": verified,
        }
        engine_kwargs = self._engine_kwargs
        if self._on_print is not None or self._on_debug is not None:
            engine_kwargs = dict(engine_kwargs)  # hooks that know which task printed
            if self._on_print is not None:
                engine_kwargs["on_print"] = partial(self._on_print, ctx)
            if self._on_debug is not None:
                engine_kwargs["on_debug"] = partial(self._on_debug, ctx)
        runs = 0
        while True:
            runs += 1
            run_ctx = _script_context(fields, ctx.worker_id, time.monotonic() + timeout_s)
            sessions = [ext.open(run_ctx) for ext in self._extensions]
            engine = rhai_py.Engine(**engine_kwargs)
            for session in sessions:
                _register(engine, session.modules())
            try:
                output = engine.eval_text(ast, constants=constants, timeout_s=timeout_s)
            except rhai_py.RhaiError as exc:
                _discard(sessions)
                return None, _describe(exc), runs
            too_large = _output_too_large(output, self._settings.max_output_bytes)
            if too_large is not None:  # fails as a whole: no writes, no receipt
                _discard(sessions)
                return None, too_large, runs
            receipt = _receipt(fields, output, attempt)
            try:
                for session, keeps in zip(sessions, self._keeps_receipts, strict=True):
                    if keeps:
                        cast(ReceiptSession, session).commit(receipt)
                    else:
                        session.commit()
            except CommitConflict:
                _discard(sessions)
                if runs > self._settings.max_conflict_retries:
                    return None, "gave up: the circle's data kept changing under the script", runs
                time.sleep(random.uniform(0, min(0.05, 0.002 * 2**runs)))
                continue
            except AlreadyCommitted as done:  # an overlapping delivery committed first
                _discard(sessions)
                if receipt.first_claim:  # ... or an old task under this id, same fingerprint
                    return None, _reused(done.receipt), runs
                return *_replay(done.receipt), runs
            return output, None, runs


def _register(
    engine: rhai_py.Engine, modules: Mapping[str, Mapping[str, Callable[..., Any]]]
) -> None:
    for name, functions in modules.items():
        engine.register_module(name, functions)


def _script_context(
    fields: p.TaskFields, worker_id: str, deadline: float | None = None
) -> ScriptContext:
    return ScriptContext(
        fields.caller_id, fields.context_id, fields.worker_id or worker_id, fields.task_id, deadline
    )


def _staged_status(reply: str) -> str:
    """The status of a staged reply (JSON); error if it cannot be read."""
    try:
        status = json.loads(reply).get("status")
    except (ValueError, AttributeError):
        return p.STATUS_ERROR
    return p.STATUS_COMPLETED if status == p.STATUS_COMPLETED else p.STATUS_ERROR


def _output_too_large(output: str, max_bytes: int) -> str | None:
    """Why ``output`` cannot be the reply's: over ``max_bytes`` as it is encoded there."""
    if len(output) <= max_bytes // 6:  # JSON escapes a character into at most 6 bytes
        return None
    size = (
        len(output)
        if len(output) > max_bytes
        else len(json.dumps(output, ensure_ascii=False).encode())
    )
    if size <= max_bytes:
        return None
    more = "more than " if len(output) > max_bytes else ""
    return (
        f"output too large: {more}{size} bytes as JSON, the limit is {max_bytes} "
        "(RHAILAMBDA_MAX_OUTPUT_BYTES); the script's changes were not applied"
    )


def _receipt(fields: p.TaskFields, output: str | None, attempt: int) -> Receipt:
    """The receipt a run of this task at ``attempt`` commits with its writes."""
    fingerprint = task_fingerprint(
        fields.script or "", fields.caller_id, fields.context_id, fields.created_at
    )
    first = fields.status != p.STATUS_PROCESSING  # claimed for the first time
    return Receipt(fields.task_id, output, attempt, fingerprint, first)


def _reused(receipt: Receipt) -> str:
    """Why a freshly claimed task was not run (a newer delivery's reply wins if there is one)."""
    return (
        f"not run: attempt {receipt.attempt} of a task with this id, script, caller, context "
        "and createdAt already applied its changes; submit a new task under a fresh id"
    )


def _replay(receipt: Receipt) -> tuple[str | None, str | None]:
    """(output, error) of the reply an earlier, committed run of the task would have sent."""
    if receipt.output is None:
        return None, (
            f"the script's changes were applied by an earlier run (attempt {receipt.attempt}), "
            "but its output was too large to keep for this reply"
        )
    return receipt.output, None


def _discard(sessions: Sequence[Session]) -> None:
    for session in sessions:
        session.discard()


def _describe(exc: rhai_py.RhaiError) -> str:
    """The user-facing error text: what went wrong and where."""
    message = exc.message or str(exc)
    if exc.line is not None and f"line {exc.line}" not in message:
        message = f"{message} (line {exc.line}, position {exc.column or 0})"
    kind = {
        rhai_py.RhaiCompileError: "syntax error",
        rhai_py.RhaiLimitError: "limit exceeded",
    }.get(type(exc), "runtime error")
    return f"{kind}: {message}"
