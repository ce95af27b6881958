"""The queue-slot Lua scripts of :mod:`rhailambda.shim.redis_queue`: the in-flight list.

Each touches one queue's keys only (its queue, this shim's in-flight list, its
dead letters, its pause switch: one slot, see ``KeyLayout``). The task-slot
*deliver* script stays beside its caller in ``redis_queue``.
"""

from __future__ import annotations

__all__ = [
    "DEAD_LETTER_LUA",
    "FORGET_LUA",
    "HAND_BACK_LUA",
    "HELD_LUA",
    "MOVE_IDS",
    "MOVE_LUA",
]

# move_ids(from, to, ids, n): LMOVE ids from the old end of `from` onto `to` until
# `ids` holds n (or `from` is empty); returns ids
MOVE_IDS = """
local function move_ids(from, to, ids, n)
  while #ids < n do
    local id = redis.call('LMOVE', from, to, 'RIGHT', 'LEFT')
    if not id then break end
    ids[#ids + 1] = id
  end
  return ids
end
"""

# KEYS: queue, inflight, paused. ARGV: n, [first id (moved by BLMOVE)]
MOVE_LUA = (
    MOVE_IDS
    + """
local queue, inflight = KEYS[1], KEYS[2]
local ids = {}
if ARGV[2] then ids[1] = ARGV[2] end
if redis.call('EXISTS', KEYS[3]) == 1 then
  for i = #ids, 1, -1 do
    if redis.call('LREM', inflight, 1, ids[i]) == 1 then redis.call('RPUSH', queue, ids[i]) end
  end
  return {-1}
end
return move_ids(queue, inflight, ids, tonumber(ARGV[1]))
"""
)

# KEYS: inflight. ARGV: ids to forget (one entry each). Returns how many were removed.
# From the right (old end): an id acked was read ahead before the window behind it.
FORGET_LUA = """
local removed = 0
for i = 1, #ARGV do removed = removed + redis.call('LREM', KEYS[1], -1, ARGV[i]) end
return removed
"""

# KEYS: inflight. ARGV: ids. Returns the ids still in flight (for a retry).
HELD_LUA = """
local out = {}
for i = 1, #ARGV do
  if redis.call('LPOS', KEYS[1], ARGV[i], 'RANK', -1) then out[#out + 1] = ARGV[i] end
end
return out
"""

# KEYS: inflight, dead-letter list. ARGV: ids.
DEAD_LETTER_LUA = """
-- Only ids still in flight move: a retry after a lost reply pushes nothing twice.
local moved = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then  -- from the old end, as an ack
    redis.call('LPUSH', KEYS[2], ARGV[i])
    moved = moved + 1
  end
end
return moved
"""

# KEYS: inflight, queue. ARGV: ids (newest first), or none for all.
# The in-flight list holds the newest on the left; pushing left-to-right onto the
# queue's right end leaves the oldest at the very right: taken next, oldest first.
HAND_BACK_LUA = """
local inflight, queue = KEYS[1], KEYS[2]
local moved = 0
if #ARGV == 0 then
  local items = redis.call('LRANGE', inflight, 0, -1)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', queue, unpack(items, i, math.min(i + 999, #items)))
  end
  redis.call('DEL', inflight)
  return #items
end
for i = 1, #ARGV do
  if redis.call('LREM', inflight, 1, ARGV[i]) == 1 then
    redis.call('RPUSH', queue, ARGV[i])
    moved = moved + 1
  end
end
return moved
"""
