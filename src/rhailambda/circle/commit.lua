-- Apply a circle commit atomically, only if every expectation still holds.
-- KEYS[1] stamps hash (field "col:<collection>" and "members" -> token)
-- KEYS[2] member set
-- KEYS[1 + 2i], KEYS[2 + 2i]: record hash (id -> "<version>|<json>") and id index
--   (sorted set, all scores 0, so ordered by id) of collection plan.colls[i]
-- KEYS[#KEYS], only when plan.receipt is set: the task's receipt (JSON string)
-- ARGV[1] the plan (JSON): token, colls, stamps [[i, stamp]], records [[i, id, version]],
--   check_members, members_stamp, writes [[i, id, json or ""]], member_writes [[id, 0|1]],
--   receipt (optional): {body = receipt JSON, fingerprint, attempt, first (bool), ttl = seconds}
-- Returns {"ok"}, {"conflict", what} or {"committed", stored receipt JSON} (another run
-- of the same task committed first). All checks come before the first write.
local plan = cjson.decode(ARGV[1])

if plan.receipt then
  -- the stored receipt is this task's (Receipt.covers): same fingerprint, another
  -- attempt, and a later one when this run's claim was the task's first
  local stored = redis.call('GET', KEYS[#KEYS])
  if stored then
    local r, mine = cjson.decode(stored), plan.receipt
    local m = tonumber(r.attempt)
    if r.fingerprint == mine.fingerprint and m ~= mine.attempt
       and (m > mine.attempt or not mine.first) then
      return {'committed', stored}
    end
  end
end

local function version_of(value)
  if not value then return '' end
  local bar = string.find(value, '|', 1, true)
  return string.sub(value, 1, bar - 1)
end

for _, c in ipairs(plan.stamps) do
  local current = redis.call('HGET', KEYS[1], 'col:' .. plan.colls[c[1]]) or ''
  if current ~= c[2] then
    return {'conflict', 'collection ' .. plan.colls[c[1]]}
  end
end
for _, r in ipairs(plan.records) do
  if version_of(redis.call('HGET', KEYS[1 + 2 * r[1]], r[2])) ~= r[3] then
    return {'conflict', 'record ' .. plan.colls[r[1]] .. '/' .. r[2]}
  end
end
if plan.check_members then
  local current = redis.call('HGET', KEYS[1], 'members') or ''
  if current ~= plan.members_stamp then
    return {'conflict', 'the member set'}
  end
end

local touched = {}
for _, w in ipairs(plan.writes) do
  local i, id, data = w[1], w[2], w[3]
  if data == '' then
    redis.call('HDEL', KEYS[1 + 2 * i], id)
    redis.call('ZREM', KEYS[2 + 2 * i], id)
  else
    redis.call('HSET', KEYS[1 + 2 * i], id, plan.token .. '|' .. data)
    redis.call('ZADD', KEYS[2 + 2 * i], 0, id)
  end
  touched[i] = true
end
for i, _ in pairs(touched) do
  redis.call('HSET', KEYS[1], 'col:' .. plan.colls[i], plan.token)
end
if #plan.member_writes > 0 then
  for _, m in ipairs(plan.member_writes) do
    if m[2] == 1 then
      redis.call('SADD', KEYS[2], m[1])
    else
      redis.call('SREM', KEYS[2], m[1])
    end
  end
  redis.call('HSET', KEYS[1], 'members', plan.token)
end
if plan.receipt then
  redis.call('SET', KEYS[#KEYS], plan.receipt.body, 'EX', plan.receipt.ttl)
end
return {'ok'}
