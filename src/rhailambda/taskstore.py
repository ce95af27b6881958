"""Claiming and finishing tasks in Redis: the two atomic steps of the protocol.

Both the function (claim a batch, then finish it) and the shim (dead-letter) go
through here, so "exactly one reply per task" is enforced in one place:

* :data:`CLAIM_LUA` claims a batch in one round trip. A task is claimed when its
  status is ``pending`` (or missing or unknown: a malformed hash still deserves an
  error reply), or ``processing`` under an OLDER delivery (the previous invocation
  died; ``rhailambdaClaim`` holds the attempt that claimed it). Final tasks and
  tasks a newer delivery holds are skipped: a duplicate delivery never runs a task
  twice at once nor replies twice.
* :data:`FINISH_LUA` finishes a batch in one round trip: for each task it checks
  that the caller still holds the claim (or, for dead-lettering, that the task is
  not final yet), writes status / output / error / updatedAt, pushes the reply with
  an expiry and deletes the hash unless tasks are preserved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from rhailambda import protocol as p
from rhailambda.event import TaskRef
from rhailambda.resp import RespClient
from rhailambda.settings import ProtocolSettings

if TYPE_CHECKING:  # the shim's asyncio client; the function never imports redis-py
    import redis.asyncio as aioredis

__all__ = [
    "CLAIM_LUA",
    "FINISH_LUA",
    "Claim",
    "Finish",
    "TaskStore",
    "fail_tasks_async",
]

# KEYS: task1..taskN, done1..doneN. ARGV: now, attempt1..attemptN
CLAIM_LUA = """
local out = {}
local now = ARGV[1]
local n = #KEYS / 2
local seen = {}
for i = 1, n do
  local key = KEYS[i]
  local attempt = tonumber(ARGV[i + 1])
  local h = redis.pcall('HGETALL', key)
  if seen[key] then
    out[i] = {'skip', 'duplicate'}
  elseif h['err'] then
    out[i] = {'skip', 'not a hash'}
  elseif #h == 0 then
    if redis.call('EXISTS', KEYS[n + i]) == 1 then out[i] = {'skip', 'done'}
    else out[i] = {'missing'} end
  else
    local status, claim = nil, 0
    for j = 1, #h, 2 do
      if h[j] == 'status' then status = h[j + 1]
      elseif h[j] == 'rhailambdaClaim' then claim = tonumber(h[j + 1]) or 0 end
    end
    local final = status == 'completed' or status == 'error'
    if not final and (status ~= 'processing' or claim < attempt) then
      redis.call('HSET', key, 'status', 'processing', 'rhailambdaClaim', attempt,
                 'updatedAt', now)
      out[i] = {'claimed', h}
    else
      out[i] = {'skip', status}
    end
  end
  seen[key] = true
end
return out
"""

# KEYS: task1, reply1, done1, task2, reply2, done2, ...
# ARGV: ttl, preserve, then 7 per task: mode, attempt, status, field, value, now, reply
#   mode 'claim'  : only while status == processing and rhailambdaClaim == attempt
#   mode 'force'  : only while the task exists and is not final (dead-lettering)
#   mode 'missing': only while the hash is absent, no reply waits and the task was not
#                   finished before (its done marker): an id with no task at all
# Every finish leaves the done marker (as long as the reply lives), so a late
# redelivery of a task whose hash is gone is recognised and never answered twice.
FINISH_LUA = """
local ttl = tonumber(ARGV[1])
local preserve = ARGV[2] == '1'
local out = {}
for i = 1, #KEYS / 3 do
  local tkey, rkey, dkey = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local b = 2 + (i - 1) * 7
  local mode, attempt, status = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local field, value, now, reply = ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
  local ok = false
  if mode == 'missing' then
    ok = redis.call('EXISTS', tkey) == 0 and redis.call('EXISTS', rkey) == 0
         and redis.call('EXISTS', dkey) == 0
  else
    local cur = redis.pcall('HMGET', tkey, 'status', 'rhailambdaClaim')
    if cur['err'] then
      ok = false  -- not a hash: nothing of ours to finish
    elseif mode == 'claim' then
      ok = cur[1] == 'processing' and cur[2] == attempt
    else
      ok = redis.call('EXISTS', tkey) == 1 and cur[1] ~= 'completed' and cur[1] ~= 'error'
    end
  end
  if ok then
    if preserve and mode ~= 'missing' then
      redis.call('HSET', tkey, 'status', status, field, value, 'updatedAt', now)
    else
      redis.call('DEL', tkey)
    end
    redis.call('LPUSH', rkey, reply)
    redis.call('EXPIRE', rkey, ttl)
    redis.call('SET', dkey, '1', 'EX', ttl)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of claiming one task."""

    ref: TaskRef
    state: Literal["claimed", "missing", "skip"]
    fields: p.TaskFields | None = None
    current_status: str = ""


@dataclass(frozen=True, slots=True)
class Finish:
    """How one claimed task ends: ``status`` is completed or error."""

    ref: TaskRef
    fields: p.TaskFields
    status: str
    output: str | None = None
    error: str | None = None
    mode: Literal["claim", "force", "missing"] = "claim"


def _parse_claims(tasks: Sequence[TaskRef], raw: list[Any]) -> list[Claim]:
    claims: list[Claim] = []
    for ref, item in zip(tasks, raw, strict=True):
        state = item[0]
        if state == "claimed":
            flat = item[1]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            claims.append(Claim(ref, "claimed", p.TaskFields.from_hash(ref.task_id, fields)))
        elif state == "missing":
            claims.append(Claim(ref, "missing"))
        else:
            claims.append(Claim(ref, "skip", current_status=str(item[1])))
    return claims


def _finish_args(
    protocol: ProtocolSettings, finishes: Sequence[Finish]
) -> tuple[list[str], list[str | int]]:
    layout = protocol.layout
    keys: list[str] = []
    args: list[str | int] = [protocol.reply_ttl_s, "1" if protocol.preserve_tasks else "0"]
    for f in finishes:
        now = p.now_rfc3339()
        keys += [
            layout.task(f.ref.task_id),
            layout.reply(f.ref.task_id),
            layout.done(f.ref.task_id),
        ]
        reply = p.build_reply(
            f.fields, status=f.status, output=f.output, error=f.error, updated_at=now
        )
        if f.status == p.STATUS_COMPLETED:
            field, value = p.OUTPUT, f.output or ""
        else:
            field, value = p.ERROR, f.error or ""
        args += [f.mode, str(f.ref.attempt), f.status, field, value, now, reply]
    return keys, args


class TaskStore:
    """Synchronous claim / finish of task batches (used by the function).

    A claim whose reply is lost is not re-sent (a second claim under the same
    attempt would skip the task): the batch fails and the shim delivers it again
    under a new attempt. A finish is safe to re-send (it checks the claim).
    """

    def __init__(self, client: RespClient, protocol: ProtocolSettings) -> None:
        self._client = client
        self._protocol = protocol
        self._claim = client.script(CLAIM_LUA)
        self._finish = client.script(FINISH_LUA, idempotent=True)

    def claim(self, tasks: Sequence[TaskRef]) -> list[Claim]:
        if not tasks:
            return []
        layout = self._protocol.layout
        keys = [layout.task(t.task_id) for t in tasks] + [layout.done(t.task_id) for t in tasks]
        args: list[str | int] = [p.now_rfc3339(), *(t.attempt for t in tasks)]
        return _parse_claims(tasks, self._claim(keys=keys, args=args))

    def finish(self, finishes: Sequence[Finish]) -> list[bool]:
        """Apply the finishes; True where this call wrote the reply."""
        if not finishes:
            return []
        keys, args = _finish_args(self._protocol, finishes)
        return [bool(x) for x in self._finish(keys=keys, args=args)]


def _failures(task_ids: Sequence[str], hashes: Sequence[Any], error: str) -> list[Finish]:
    out: list[Finish] = []
    for task_id, found in zip(task_ids, hashes, strict=True):
        raw = found if isinstance(found, dict) else {}  # an error: the key is not a hash
        fields = p.TaskFields.from_hash(task_id, raw)
        mode: Literal["force", "missing"] = "force" if raw else "missing"
        out.append(Finish(TaskRef(task_id), fields, p.STATUS_ERROR, error=error, mode=mode))
    return out


async def fail_tasks_async(
    client: aioredis.Redis, protocol: ProtocolSettings, task_ids: Sequence[str], error: str
) -> list[str]:
    """Give each task that is not final yet an ``error`` status and reply; return those ids.

    The shim's dead-letter path (one pipeline of HGETALL, then one FINISH call).
    """
    if not task_ids:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.hgetall(protocol.layout.task(task_id))
        hashes = await pipe.execute(raise_on_error=False)
    finishes = _failures(task_ids, hashes, error)
    keys, args = _finish_args(protocol, finishes)
    done = await client.register_script(FINISH_LUA)(keys=keys, args=args)
    return [t for t, ok in zip(task_ids, done, strict=True) if ok]
