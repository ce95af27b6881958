"""Dead letters: list, show, redrive and purge the ids on a queue's dead-letter list.

The shim dead-letters a task (``--max-attempts`` spent, too old, not retryable,
poison): it gets an ``error`` status and one error reply, its id goes onto
``rhailambda:dlq:{rhailib:<worker>}`` (the queue's slot), and its hash is kept for
``RHAILAMBDA_DLQ_RETENTION_S`` (the finish's clean step, :mod:`rhailambda.taskstore`).

A redrive is three steps, each in one slot and each safe to repeat:

1. task slot (:data:`RESET_LUA`): the hash goes back to ``pending`` with fresh
   bookkeeping (every ``rhailambda*`` field: attempt, claim, staged reply, run token;
   and ``output`` / ``error``), loses its expiry, and its done marker is deleted
   (a signed task would otherwise be refused as a replay);
2. reply slot: the sent marker and any uncollected reply (the old error) are deleted,
   so the new run is answered once more and a client that waits from now on gets the
   new reply only;
3. queue slot (:data:`REQUEUE_LUA`): the id leaves the dead-letter list and is pushed
   onto the queue as a client submits (``LPUSH``), only if it was still listed: two
   redrives at once queue it once.

A crash between the steps leaves the id listed with its hash ``pending`` and no
attempt: redriving it again repeats the steps. Purging deletes a listed id's hash
(only a final one: never a task that is pending or running again) and unlists it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rhailambda import protocol as p
from rhailambda.resp import RespClient
from rhailambda.resp_wire import raise_error
from rhailambda.settings import ProtocolSettings

__all__ = ["DeadLetter", "DeadLetterList", "Outcome", "read_task"]

# KEYS: task, done. ARGV: now. 'ok', or why the task cannot be redriven.
RESET_LUA = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return 'its task hash is gone (kept only for the retention)' end
if t ~= 'hash' then return 'its task key holds a ' .. t .. ', not a task hash' end
local cur = redis.call('HMGET', KEYS[1], 'status', 'rhailambdaAttempt')
local final = cur[1] == 'completed' or cur[1] == 'error'
if not final and not (cur[1] == 'pending' and not cur[2]) then
  return 'its task is ' .. tostring(cur[1]) .. ' again (queued or running), not dead'
end
local drop = {'output', 'error'}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 10) == 'rhailambda' then drop[#drop + 1] = f end
end
redis.call('HDEL', KEYS[1], unpack(drop))
redis.call('HSET', KEYS[1], 'status', 'pending', 'updatedAt', ARGV[1])
redis.call('PERSIST', KEYS[1])
redis.call('DEL', KEYS[2])
return 'ok'
"""

# KEYS: dead-letter list, queue. ARGV: ids. Returns the ids moved onto the queue.
REQUEUE_LUA = """
local out = {}
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], 0, ARGV[i]) > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
return out
"""

# KEYS: task. Deletes the hash of a dead task (final), never one pending or running.
PURGE_TASK_LUA = """
local status = redis.pcall('HGET', KEYS[1], 'status')
if type(status) == 'table' then return 0 end
if status == 'completed' or status == 'error' then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: dead-letter list. ARGV: ids. Returns how many entries were removed.
UNLIST_LUA = """
local removed = 0
for i = 1, #ARGV do removed = removed + redis.call('LREM', KEYS[1], 0, ARGV[i]) end
return removed
"""

_CHUNK = 1000  # ids per script call (ElastiCache allows 3,999 arguments)
_HEAD_CHARS = 60


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One listed id and what its hash still says."""

    task_id: str
    fields: dict[str, str]  # the task hash, snake_case spellings folded in; {} when gone
    kept_s: int  # seconds its hash is still kept: -1 no expiry, -2 no hash
    problem: str = ""  # its task key is not a hash

    def summary(self) -> dict[str, Any]:
        f = self.fields
        head = " ".join(f.get(p.SCRIPT, "").split())
        attempts = f.get(p.ATTEMPT, "")
        return {
            "taskId": self.task_id,
            "deadLetteredAt": f.get(p.UPDATED_AT, ""),
            "attempts": int(attempts) if attempts.isdigit() else 0,
            "error": f.get(p.ERROR, "") or self.problem or ("" if f else "task hash gone"),
            "callerId": f.get(p.CALLER_ID, ""),
            "contextId": f.get(p.CONTEXT_ID, ""),
            "scriptHead": head[:_HEAD_CHARS] + ("…" if len(head) > _HEAD_CHARS else ""),
            "keptForS": self.kept_s,
        }


@dataclass(slots=True)
class Outcome:
    """What a redrive or purge did: the ids it moved and why the others were left."""

    done: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def read_task(
    client: RespClient, protocol: ProtocolSettings, task_ids: Sequence[str]
) -> list[DeadLetter]:
    """Each id's hash and how long it is kept (one round trip, each id in its own slot)."""
    layout = protocol.layout
    commands: list[list[str | int]] = []
    for task_id in task_ids:
        commands += [["HGETALL", layout.task(task_id)], ["TTL", layout.task(task_id)]]
    replies = client.round_trip(commands, idempotent=True) if commands else []
    out: list[DeadLetter] = []
    for i, task_id in enumerate(task_ids):
        raw, ttl = replies[2 * i], replies[2 * i + 1]
        if isinstance(raw, Exception):
            out.append(DeadLetter(task_id, {}, int(raise_error(ttl)), f"not a task hash: {raw}"))
            continue
        flat = dict(zip(raw[::2], raw[1::2], strict=True))
        fields = dict(p.TaskFields.from_hash(task_id, flat).raw) if flat else {}
        out.append(DeadLetter(task_id, fields, int(raise_error(ttl))))
    return out


@dataclass(frozen=True, slots=True)
class DeadLetterList:
    """One queue's dead-letter list: what is on it, and the redrive and the purge."""

    client: RespClient
    protocol: ProtocolSettings
    worker_id: str

    def ids(self) -> list[str]:
        """The ids on the list, newest first."""
        key = self.protocol.layout.dead_letter(self.worker_id)
        return [str(i) for i in self.client.execute("LRANGE", key, 0, -1, idempotent=True)]

    def newest(self, limit: int = 0) -> tuple[list[DeadLetter], int]:
        """The newest ``limit`` dead letters (0: all) and how many there are."""
        shown = list(dict.fromkeys(self.ids()))  # an id dead-lettered twice is listed once
        letters = read_task(self.client, self.protocol, shown[:limit] if limit else shown)
        return letters, len(shown)

    def redrive(self, task_ids: Sequence[str] | None = None) -> Outcome:
        """Put dead letters back onto their queue with fresh attempts (``None``: all)."""
        ids, outcome = self._select(task_ids)
        if ids:
            self._redrive(ids, outcome)
        return outcome

    def purge(self, task_ids: Sequence[str] | None = None) -> Outcome:
        """Delete dead letters for good: their hash (if final) and their list entry."""
        ids, outcome = self._select(task_ids)
        if ids:
            self._purge(ids, outcome)
        return outcome

    def _select(self, task_ids: Sequence[str] | None) -> tuple[list[str], Outcome]:
        """The ids to act on (all listed ones for None); the asked-for ids not listed are
        the outcome's skipped ones."""
        present = list(dict.fromkeys(self.ids()))
        if task_ids is None:
            return present, Outcome()
        known = set(present)
        wanted = list(dict.fromkeys(task_ids))
        why = f"not on the dead-letter list of {self.worker_id}"
        absent = {t: why for t in wanted if t not in known}
        return [t for t in wanted if t in known], Outcome(skipped=absent)

    def _redrive(self, ids: list[str], outcome: Outcome) -> None:
        client, layout = self.client, self.protocol.layout
        now = p.now_rfc3339()
        reset = client.script(RESET_LUA, idempotent=True)
        verdicts = reset.many([([layout.task(t), layout.done(t)], [now]) for t in ids])
        ready: list[str] = []
        for task_id, verdict in zip(ids, verdicts, strict=True):
            verdict = raise_error(verdict)
            if verdict == "ok":
                ready.append(task_id)
            else:
                outcome.skipped[task_id] = str(verdict)
        cleared = [["DEL", layout.replied(t), layout.reply(t)] for t in ready]  # one slot each
        for reply in client.round_trip(cleared, idempotent=True) if cleared else []:
            raise_error(reply)
        requeue = client.script(REQUEUE_LUA, idempotent=True)
        keys = [layout.dead_letter(self.worker_id), layout.queue(self.worker_id)]
        for chunk in _chunks(ready):
            moved = {str(t) for t in requeue(keys, list(chunk))}
            outcome.done += [t for t in chunk if t in moved]
            for t in chunk:
                if t not in moved:
                    outcome.skipped[t] = "redriven meanwhile by someone else"

    def _purge(self, ids: list[str], outcome: Outcome) -> None:
        client, layout = self.client, self.protocol.layout
        script = client.script(PURGE_TASK_LUA, idempotent=True)
        for reply in script.many([([layout.task(t)], []) for t in ids]):
            raise_error(reply)
        unlist = client.script(UNLIST_LUA, idempotent=True)
        for chunk in _chunks(ids):
            unlist([layout.dead_letter(self.worker_id)], list(chunk))
        outcome.done += ids
