"""The client: the Python counterpart of the Rust ``rhai_dispatcher``.

It writes the task hash and pushes the id on the worker queue (one round trip per
submit, pipelined), then waits for the reply list with ``BLPOP``. It talks to
Redis through :mod:`rhailambda.resp` (the function's small client): a fraction of
redis-py's per-command cost, which is most of a light-load round trip::

    client = Client("redis://127.0.0.1:6379/0")
    task_id = client.submit("let x = 10; x * 2", worker_id="worker1",
                            context_id="alice", caller_id="alice")
    reply = client.wait(task_id, timeout_s=5)   # Reply(status="completed", output="20")

With ``signing_key`` (a :class:`rhailambda.signing.SigningKey`) every task is signed
(PROTOCOL.md, "Signed tasks"): its caller id is the key's public key.

Task ids it makes up on a Redis Cluster carry their worker as a hash tag
(``{worker1}6f1c...``, ``slot_tagged_ids``): every key of every task of one worker
then lives in one slot, so the shim delivers, and the function claims and finishes,
a whole batch per script call, as on a standalone server. Ids a caller gives (and
ids other clients make, such as the Rust dispatcher's plain UUIDs) work as they are:
each of their tasks is a slot of its own, and takes a call per task and step.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from rhailambda import protocol as p
from rhailambda.errors import InvalidIdError, ReplyTimeoutError
from rhailambda.resp import Arg, RespClient, parse_url, raise_error
from rhailambda.wake import Waker

if TYPE_CHECKING:
    from rhailambda.signing import SigningKey

__all__ = ["MAX_ID_BYTES", "Client", "Reply", "Submission", "check_ids", "new_task_id"]

# BLPOP takes many keys: waiting on a chunk wakes on whichever reply comes first.
_WAIT_CHUNK = 128
_MAX_BLOCK_S = 5.0
_BLOCK_MARGIN_S = 5.0  # the socket timeout exceeds the longest BLPOP by this much
_SUBMIT_CHUNK = 1000
# LPOP each key; a missing reply comes back as nil, in place.
_POP_MANY_LUA = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('LPOP', key) end
return out
"""


@dataclass(frozen=True, slots=True)
class Reply:
    """A task's reply as the worker pushed it."""

    task_id: str
    status: str
    output: str | None
    error: str | None
    raw: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == p.STATUS_COMPLETED

    @classmethod
    def parse(cls, task_id: str, payload: str) -> Reply:
        try:
            raw = json.loads(payload)
        except json.JSONDecodeError:
            raw = {}
        if not isinstance(raw, dict):
            raw = {}
        return cls(
            task_id=str(raw.get("taskId") or task_id),
            status=str(raw.get("status", p.STATUS_ERROR)),
            output=raw.get("output"),
            error=raw.get("error") if raw else f"unreadable reply: {payload[:200]!r}",
            raw=raw,
        )


class Submission(NamedTuple):
    script: str
    worker_id: str
    context_id: str
    caller_id: str
    task_id: str | None = None


#: the longest task or worker id accepted, in UTF-8 bytes
MAX_ID_BYTES = 512


def check_ids(
    task_id: str, worker_id: str, context_id: str, caller_id: str, layout: p.KeyLayout
) -> None:
    """Refuse a submission whose ids would break or collide with a protocol key.

    The rule, for the task id and the (normalised) worker id: 1 to
    :data:`MAX_ID_BYTES` bytes of UTF-8, printable, no whitespace; neither may name a
    reply list (``rhailib:reply:<x>`` in the default layout: its task hash or its
    queue would BE task x's reply list), and a task id may not equal the worker id
    it is queued for (its hash would be that queue). Context and caller ids must be
    non-empty UTF-8. Raises :class:`InvalidIdError` saying why.
    """
    worker = p.normalize_worker_id(worker_id)
    # the worker id first: a bad one is named, not the task id made up with it as a tag
    for what, value, key in (
        ("worker id", worker, layout.queue(worker)),
        ("task id", task_id, layout.task(task_id)),
    ):
        _check_text(what, value)
        if len(value.encode()) > MAX_ID_BYTES:
            raise InvalidIdError(what, value[:40], f"longer than {MAX_ID_BYTES} bytes")
        if not value.isprintable() or any(c.isspace() for c in value):
            raise InvalidIdError(what, value, "holds whitespace or control characters")
        if layout.is_reply_key(key):
            raise InvalidIdError(what, value, f"its key {key!r} would be a task's reply list")
    if layout.task(task_id) == layout.queue(worker):
        raise InvalidIdError("task id", task_id, "equals the worker queue it goes to")
    _check_text("context id", context_id)
    _check_text("caller id", caller_id)


def _check_text(what: str, value: str) -> None:
    if not value:
        raise InvalidIdError(what, value, "is empty")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidIdError(what, value, "is not valid UTF-8") from None


def new_task_id(worker_id: str, slot_tagged: bool) -> str:
    """A fresh task id: a UUID, after ``{worker_id}`` when ``slot_tagged`` (a hash tag:
    the keys of every such task of that worker hash to one slot) and the id stays within
    :data:`MAX_ID_BYTES`."""
    uid = str(uuid.uuid4())
    size = len(worker_id.encode("utf-8", "replace")) + 2 + len(uid)
    return f"{{{worker_id}}}{uid}" if slot_tagged and size <= MAX_ID_BYTES else uid


class Client:
    """Submit scripts, await replies, read task status. Thread-safe (a connection pool)."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        layout: p.KeyLayout | None = None,
        client: RespClient | None = None,
        signing_key: SigningKey | None = None,
        wake_function: str | None = None,
        slot_tagged_ids: bool | None = None,
    ) -> None:
        """``wake_function``: the poller to wake (else ``RHAILAMBDA_WAKE_FUNCTION``; "": none).
        ``slot_tagged_ids``: whether new task ids carry their worker as a hash tag
        (None: on a cluster, where it lets a batch share one slot)."""
        if client is None:
            if redis_url is None:
                raise ValueError("give redis_url or client")
            address = parse_url(redis_url)
            timeout_s = max(address.socket_timeout_s, _MAX_BLOCK_S + _BLOCK_MARGIN_S)
            address = dataclasses.replace(address, socket_timeout_s=timeout_s)
            client = RespClient(address, client_name="rhailambda-client")
        elif client.address.socket_timeout_s < _MAX_BLOCK_S + 1.0:
            # a BLPOP that times out on the socket may have popped a reply: lost
            raise ValueError(f"the client's socket timeout must be {_MAX_BLOCK_S + 1:g} s or more")
        self._redis = client
        self.layout = layout or p.KeyLayout()
        self._pop_many = client.script(_POP_MANY_LUA)
        self._signing_key = signing_key
        self._slot_tagged_ids = slot_tagged_ids
        self.waker = (
            Waker.default(self.layout)
            if wake_function is None
            else (Waker(wake_function, self.layout) if wake_function else None)
        )

    def close(self) -> None:
        if self.waker is not None:
            self.waker.flush()  # a short-lived process (rhailambda submit) still sends it
        self._redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- submitting -----------------------------------------------------------
    def submit(
        self,
        script: str,
        *,
        worker_id: str,
        context_id: str,
        caller_id: str,
        task_id: str | None = None,
    ) -> str:
        """Queue ``script`` for ``worker_id``; returns the task id.

        Ids follow :func:`check_ids` (else :class:`InvalidIdError`, nothing queued).
        """
        return self.submit_many([Submission(script, worker_id, context_id, caller_id, task_id)])[0]

    def submit_many(self, submissions: Iterable[Submission | Sequence[str]]) -> list[str]:
        """Queue many scripts, pipelined; returns their task ids in submission order.

        Per chunk of tasks: one HSET each, then one LPUSH per worker queue carrying
        all of that queue's ids in order (``LPUSH q a b c`` leaves ``a`` oldest, at
        the right end, exactly as three LPUSHes would). Hashes precede their ids.
        """
        ids: list[str] = []
        chunk: list[Submission] = []
        for item in submissions:
            chunk.append(item if isinstance(item, Submission) else Submission(*item))
            if len(chunk) == _SUBMIT_CHUNK:
                ids += self._submit_chunk(chunk)
                chunk = []
        if chunk:
            ids += self._submit_chunk(chunk)
        return ids

    def _submit_chunk(self, chunk: Sequence[Submission]) -> list[str]:
        now = p.now_rfc3339()
        commands: list[list[Arg]] = []
        ids: list[str] = []
        queues: dict[str, list[str]] = {}
        given = {sub.task_id for sub in chunk if sub.task_id}
        tagged = self._redis.cluster if self._slot_tagged_ids is None else self._slot_tagged_ids
        for sub in chunk:
            worker = p.normalize_worker_id(sub.worker_id)
            task_id = sub.task_id if sub.task_id is not None else new_task_id(worker, tagged)
            try:
                sub.script.encode()
            except UnicodeEncodeError as exc:
                raise InvalidIdError("script", "", f"is not valid UTF-8 (at {exc.start})") from None
            caller, signed = self._sign(task_id, sub, now)  # the key's caller id, if signing
            check_ids(task_id, worker, sub.context_id, caller, self.layout)
            if task_id in queues or worker in given:
                raise InvalidIdError("task id", task_id, "equals a worker queue of this submit")
            commands.append(
                [
                    "HSET",
                    self.layout.task(task_id),
                    p.TASK_ID, task_id,
                    p.SCRIPT, sub.script,
                    p.CALLER_ID, caller,
                    p.CONTEXT_ID, sub.context_id,
                    p.WORKER_ID, worker,
                    p.STATUS, p.STATUS_PENDING,
                    p.CREATED_AT, now,
                    p.UPDATED_AT, now,
                    *signed,
                ]
            )  # fmt: skip
            queues.setdefault(worker, []).append(task_id)
            ids.append(task_id)
        pushes: list[list[Arg]] = [
            ["LPUSH", self.layout.queue(worker), *queued] for worker, queued in queues.items()
        ]
        # One round trip on a standalone server (one node runs them in order). On a
        # cluster the hashes and the queues live on different nodes, which keep no
        # order between them: the ids go out only once every hash has landed.
        if self.waker is not None:  # rides with the pushes: the same round trip
            pushes.append(self.waker.lease_check())
        rounds = [commands, pushes] if self._redis.cluster else [commands + pushes]
        replies: list[Any] = []
        for batch in rounds:
            replies = self._redis.pipeline(batch)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        if self.waker is not None:
            self.waker.after_submit(replies[-1])
        return ids

    def _sign(self, task_id: str, sub: Submission, now: str) -> tuple[str, list[Arg]]:
        """(callerId, the signature field) of a task: none without a signing key."""
        key = self._signing_key
        if key is None:
            return sub.caller_id, []
        if sub.caller_id not in ("", key.public_key):
            raise ValueError(
                f"caller_id {sub.caller_id!r} is not the signing key's public key {key.public_key}"
            )
        signature = key.sign_task(task_id, sub.context_id, key.public_key, sub.script, now)
        return key.public_key, [p.SIGNATURE, signature]

    # --- waiting --------------------------------------------------------------
    def wait(self, task_id: str, timeout_s: float) -> Reply:
        """Block until the reply of ``task_id`` arrives; ReplyTimeoutError after ``timeout_s``."""
        return self.wait_many([task_id], timeout_s)[task_id]

    def wait_many(self, task_ids: Sequence[str], timeout_s: float) -> dict[str, Reply]:
        """Collect the replies of all ``task_ids``; ReplyTimeoutError names the first missing.

        Replies come roughly in submission order, so the client looks at a sliding
        window of the oldest pending keys: one pipelined LPOP round over the window,
        and when nothing is there, one BLPOP on the whole window (it wakes on
        whichever reply comes first; on a cluster, whose BLPOP keys must share a
        slot, on the keys in the oldest key's slot). Cost stays linear in the number of tasks. A
        single pending reply is a BLPOP alone: one round trip when it is there.
        """
        deadline = time.monotonic() + timeout_s
        pending = {self.layout.reply(t): t for t in task_ids}
        replies: dict[str, Reply] = {}
        while pending:
            window = list(itertools.islice(pending, _WAIT_CHUNK))
            left = deadline - time.monotonic()
            # One key left: BLPOP alone answers at once when the reply is there.
            if (len(window) > 1 or left <= 0) and self._pop_ready(window, pending, replies):
                continue
            if left <= 0:
                raise ReplyTimeoutError(next(iter(pending.values())), timeout_s)
            block_s = max(0.01, min(left, _MAX_BLOCK_S))
            # BLPOP's keys must share a slot on a cluster: there, the oldest key's slot.
            waited = window
            if self._redis.cluster:
                slot = self._redis.slot_group(window[0])
                waited = [k for k in window if self._redis.slot_group(k) == slot]
            got = self._redis.execute("BLPOP", *waited, round(block_s, 3))  # never re-sent: pops
            if got is not None:
                key, payload = str(got[0]), str(got[1])
                task_id = pending.pop(key)
                replies[task_id] = Reply.parse(task_id, payload)
        return replies

    def _pop_ready(
        self, keys: list[str], pending: dict[str, str], replies: dict[str, Reply]
    ) -> bool:
        """Pop the replies already there among ``keys`` (one round trip); True if any."""
        found = False
        if self._redis.cluster:  # one LPOP per key (they live in many slots), one write per node
            popped = [raise_error(r) for r in self._redis.round_trip([["LPOP", k] for k in keys])]
        else:
            popped = self._pop_many(keys=keys)
        for key, payload in zip(keys, popped, strict=True):
            if payload is not None:
                task_id = pending.pop(key)
                replies[task_id] = Reply.parse(task_id, str(payload))
                found = True
        return found

    def run(
        self, script: str, *, worker_id: str, context_id: str, caller_id: str, timeout_s: float
    ) -> Reply:
        """Submit and wait: the dispatcher's ``new_play_request ... await_response``."""
        task_id = self.submit(
            script, worker_id=worker_id, context_id=context_id, caller_id=caller_id
        )
        return self.wait(task_id, timeout_s)

    # --- reading --------------------------------------------------------------
    def status(self, task_id: str) -> str | None:
        """The task's current status, or None when its hash is gone (finished and cleaned up)."""
        value = self._redis.execute("HGET", self.layout.task(task_id), p.STATUS, idempotent=True)
        return str(value) if value is not None else None

    def task(self, task_id: str) -> dict[str, str]:
        """The whole task hash (empty once finished, unless tasks are preserved)."""
        flat = self._redis.execute("HGETALL", self.layout.task(task_id), idempotent=True)
        return {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
