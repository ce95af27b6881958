"""What :mod:`rhailambda.shim.redis_queue` asks of task slots: delivering ids, reading circles.

*Deliver* counts an attempt on each task's hash (the fencing token) and reads what
the drain loop needs (createdAt, the circle). On a cluster it runs once per slot, its
keys declared. On a standalone server, where a script may reach any key, the move of
a small read into an empty window also delivers in the same script
(:data:`MOVE_DELIVER_LUA`): the lone task's wake-up takes one round trip, not two.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from rhailambda.protocol import CONTEXT_ID, FIELD_ALIASES, KeyLayout
from rhailambda.shim.inflight_lua import MOVE_IDS

__all__ = [
    "CIRCLES_LUA",
    "DELIVER_LUA",
    "MOVE_DELIVER_LUA",
    "circle_from",
    "circle_read",
    "collision",
]

_CONTEXT_ALIAS = next(k for k, v in FIELD_ALIASES.items() if v == CONTEXT_ID)  # context_id


def circle_read(key: str) -> list[str | int]:
    """The read-only command giving a task's circle (both spellings of contextId)."""
    return ["HMGET", key, CONTEXT_ID, _CONTEXT_ALIAS]


def circle_from(reply: Any) -> str:
    """The circle in :func:`circle_read`'s reply; "" for none (or an error reply)."""
    values = reply if isinstance(reply, list) else []
    return next((str(v) for v in values if v), "")


# circle_of(task key): its circle (contextId, or context_id), or '' (none, or no hash)
_CIRCLE_OF = """
local function circle_of(key)
  local h = redis.pcall('HMGET', key, 'contextId', 'context_id')
  if h['err'] then return '' end
  local circle = h[1]
  if not circle or circle == '' then circle = h[2] or '' end
  return circle
end
"""

# deliver_one(task key, done key or nil): {'go', attempt, createdAt, circle}, {'drop'}
# (final and answered, or finished and cleaned up), {'poison', why}, or {'later'} (no
# done key given and something other than a task hash to look at: the caller delivers
# it again the long way). A final task that still holds its staged reply is not
# answered yet (its finish died after step 1, see rhailambda.taskstore): it goes, and
# the function completes the finish.
_DELIVER_ONE = """
local function deliver_one(key, done)
  local h = redis.pcall('HMGET', key, 'status', 'createdAt', 'created_at', 'rhailambdaReply',
                        'contextId', 'context_id')
  if h['err'] and not string.find(h['err'], '^WRONGTYPE') then return redis.error_reply(h['err'])
  elseif h['err'] then
    if not done then return {'later'} end
    return {'poison', 'holds a ' .. redis.call('TYPE', key)['ok'] .. ', not a task hash'}
  elseif (h[1] == 'completed' or h[1] == 'error') and not h[4] then
    return {'drop'}
  elseif h[1] or redis.call('EXISTS', key) == 1 then
    local attempt = redis.pcall('HINCRBY', key, 'rhailambdaAttempt', 1)
    if type(attempt) == 'table' and not string.find(attempt['err'], 'not an integer') then
      return redis.error_reply(attempt['err'])  -- OOM, READONLY...: Redis's, not the task's
    elseif type(attempt) == 'table' then
      if not done then return {'later'} end
      return {'poison', 'its rhailambdaAttempt field is not an integer'}
    end
    local circle = h[5]
    if not circle or circle == '' then circle = h[6] or '' end
    return {'go', attempt, h[2] or h[3] or '', circle}
  elseif not done then
    return {'later'}
  elseif redis.call('EXISTS', done) == 1 then
    return {'drop'}
  end
  return {'go', 1, '', ''}  -- no hash: the function answers "not found"
end
"""

# KEYS: task1, done1, task2, done2, ... (one slot). Per task: deliver_one's answer; a
# refusal by Redis (OOM, READONLY) fails the whole call.
DELIVER_LUA = (
    _DELIVER_ONE
    + """
local out = {}
for i = 1, #KEYS / 2 do
  local got = deliver_one(KEYS[2 * i - 1], KEYS[2 * i])
  if got['err'] then return got end
  out[i] = got
end
return out
"""
)

# Standalone only (it reaches task keys it is not given). Runs right behind
# ``BLMOVE queue stage RIGHT LEFT`` on the same connection. KEYS: queue, inflight,
# paused, stage. ARGV: n, task-key prefix, reply-key head, reply-key tail, the shim's
# queue keys joined by newlines, the read's room. The id the BLMOVE staged (if any) and
# up to n - 1 more move into the in-flight list, as MOVE_LUA's do; then deliver_one per
# id (no done key: what is not a plain task goes the long way). Returns {-1} when paused
# (the staged id back at the queue's old end), else {ids, answers}. An id whose key is
# not a task key of its own (empty, a reply key, a queue) is answered {'later'}
# untouched. A backlog (the queue not empty after n) is no lone wake-up: up to the room
# moves, nothing is delivered, and {ids, {}, circles} lets fair share pick among them.
MOVE_DELIVER_LUA = (
    MOVE_IDS
    + _CIRCLE_OF
    + _DELIVER_ONE
    + """
local queue, inflight, stage = KEYS[1], KEYS[2], KEYS[4]
local prefix, head, tail = ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', KEYS[3]) == 1 then
  while redis.call('LMOVE', stage, queue, 'LEFT', 'RIGHT') do end
  return {-1}
end
local n = tonumber(ARGV[1])
local ids = move_ids(queue, inflight, move_ids(stage, inflight, {}, n), n)
local backlog = redis.call('LLEN', queue) > 0
if backlog then ids = move_ids(queue, inflight, ids, tonumber(ARGV[6])) end
local queues = {}
for q in string.gmatch(ARGV[5], '[^\\n]+') do queues[q] = true end
local answers, circles = {}, {}
for i = 1, #ids do
  local key = prefix .. ids[i]
  local reply_key = #key > #head + #tail and key:sub(1, #head) == head
                    and (tail == '' or key:sub(-#tail) == tail)
  local odd = ids[i] == '' or reply_key or queues[key]
  if backlog then
    circles[i] = odd and '' or circle_of(key)
  elseif odd then
    answers[i] = {'later'}
  else
    local got = deliver_one(key, nil)
    if got['err'] then return got end
    answers[i] = got
  end
end
if backlog then return {ids, {}, circles} end
return {ids, answers}
"""
)

# KEYS: task keys (standalone: any number in one call). Per key: its circle, or ''
# (none, or not a hash). The same answer as circle_read + circle_from per key.
CIRCLES_LUA = (
    _CIRCLE_OF
    + """
local out = {}
for i = 1, #KEYS do out[i] = circle_of(KEYS[i]) end
return out
"""
)


def collision(layout: KeyLayout, queue_keys: Container[str], task_id: str) -> list[str] | None:
    """Why ``task_id``'s key is not a task key of its own (a poison verdict), or None.
    MOVE_DELIVER_LUA makes the same three checks."""
    key = layout.task(task_id)
    if not task_id:
        return ["poison", "is empty"]
    if layout.is_reply_key(key):
        return ["poison", f"{key!r} is a reply list (a task id may not start with 'reply:')"]
    if key in queue_keys:
        return ["poison", f"{key!r} is a worker's queue (a task id may not name a worker)"]
    return None
