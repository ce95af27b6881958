"""The Lua of :mod:`rhailambda.taskstore`: the claim, and the finish's three steps
(stage, push, clean) as one script each and all three in one (standalone).

Why the steps are safe to stop between, and to send again, is argued in the
docstring of :mod:`rhailambda.taskstore`.
"""

__all__ = ["CLAIM_LUA", "CLEAN_LUA", "FINISH_LUA", "PUSH_LUA", "STAGE_LUA"]

# KEYS: task1..taskN, done1..doneN (one slot). ARGV: now, attempt1..attemptN
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
    out[i] = {'poison', redis.call('TYPE', key)['ok']}
  elseif #h == 0 then
    if redis.call('EXISTS', KEYS[n + i]) == 1 then out[i] = {'skip', 'done'}
    else out[i] = {'missing'} end
  else
    local status, claim, staged = nil, 0, nil
    for j = 1, #h, 2 do
      if h[j] == 'status' then status = h[j + 1]
      elseif h[j] == 'rhailambdaClaim' then claim = tonumber(h[j + 1]) or 0
      elseif h[j] == 'rhailambdaReply' then staged = h[j + 1] end
    end
    local final = status == 'completed' or status == 'error'
    if final and staged then
      out[i] = {'finishing', staged}
    elseif not final and (status ~= 'processing' or claim < attempt) then
      if status ~= 'processing' then  -- a new run of this id (also a reused id): a new token
        local t = redis.call('TIME')
        redis.call('HSET', key, 'status', 'processing', 'rhailambdaClaim', attempt,
                   'updatedAt', now, 'rhailambdaRun', t[1] .. '.' .. t[2] .. ':' .. attempt)
      else
        redis.call('HSET', key, 'status', 'processing', 'rhailambdaClaim', attempt,
                   'updatedAt', now)
      end
      out[i] = {'claimed', h, redis.call('EXISTS', KEYS[n + i])}
    else
      out[i] = {'skip', status}
    end
  end
  seen[key] = true
end
return out
"""

# The three steps as Lua functions: each script below runs one of them per task, and
# FINISH_LUA (standalone) runs all three per task in one script.
_STEPS_LUA = """
local function is_final(s) return s == 'completed' or s == 'error' end

-- 1. stage: {reply, run token} to push, or false when this finish is not ours to make.
-- The run token names this run of the id (set at claim), so a reused id is answered
-- again while a finish sent twice is not; '' (no hash) pushes only if nothing was.
local function stage(tkey, mode, attempt, status, field, value, now, reply)
  if mode == 'missing' or mode == 'poison' then
    local t = redis.call('TYPE', tkey)['ok']
    if mode == 'missing' and t == 'none' then return {reply, ''} end
    if mode == 'poison' and t ~= 'none' and t ~= 'hash' then return {reply, ''} end
    return false
  end
  -- one read tells a hash (the usual case) from anything else: no TYPE call
  local cur = redis.pcall('HMGET', tkey, 'status', 'rhailambdaClaim', 'rhailambdaReply',
                          'rhailambdaRun')
  if cur['err'] then return false end  -- not a hash
  if not cur[1] and redis.call('EXISTS', tkey) == 0 then return false end  -- no hash
  local run = cur[4] or ('claim:' .. tostring(cur[2]))
  if is_final(cur[1]) then
    if cur[3] and (mode ~= 'claim' or cur[2] == attempt) then return {cur[3], run} end
    return false
  end
  if mode == 'finishing' then return false end
  if mode == 'claim' and not (cur[1] == 'processing' and cur[2] == attempt) then
    return false
  end
  redis.call('HSET', tkey, 'status', status, field, value, 'updatedAt', now,
             'rhailambdaReply', reply)
  return {reply, run}
end

-- 2. push: 1 pushed now, 0 pushed before, -1 the reply key is not a list
local function push(rkey, mkey, ttl, reply, run)
  local token = run == '' and '-' or run
  -- the usual case in one call: no marker yet, so set it (SET NX GET: the old one if any)
  local sent = redis.call('SET', mkey, token, 'NX', 'GET', 'EX', ttl)
  if sent and (run == '' or sent == run) then return 0 end
  if sent then  -- another run's marker (a reused id): this run is answered too
    local t = redis.call('TYPE', rkey)['ok']
    if t ~= 'none' and t ~= 'list' then return -1 end
    redis.call('SET', mkey, token, 'EX', ttl)
  end
  if type(redis.pcall('LPUSH', rkey, reply)) == 'table' then  -- not a list: no reply possible
    if not sent then redis.call('DEL', mkey) end
    return -1
  end
  redis.call('EXPIRE', rkey, ttl)
  return 1
end

-- 3. clean: drop the hash (or its staged reply), leave the done marker. A dead letter
-- keeps its hash, without the staged reply, for keep_s seconds ('0': not a dead letter).
local function clean(tkey, dkey, ttl, preserve, keep_s)
  local cur = redis.pcall('HMGET', tkey, 'status', 'rhailambdaReply')
  if not cur['err'] and (cur[1] or cur[2] or redis.call('EXISTS', tkey) == 1) then  -- a hash
    if not (is_final(cur[1]) and cur[2]) then return 0 end
    local keep = keep_s ~= '0'
    if preserve or keep then redis.call('HDEL', tkey, 'rhailambdaReply')
    else redis.call('DEL', tkey) end
    if keep and not preserve then redis.call('EXPIRE', tkey, keep_s) end
  end
  redis.call('SET', dkey, '1', 'EX', ttl)
  return 1
end
"""

# KEYS: task per finish. ARGV: 7 per finish (mode, attempt, status, field, value, now,
# reply). Returns {reply to push, run token} (or false) per finish; the reply is 0 when
# it is the one passed in (the usual case: it does not travel back).
STAGE_LUA = (
    _STEPS_LUA
    + """
local out = {}
for i = 1, #KEYS do
  local b = (i - 1) * 7
  local staged = stage(KEYS[i], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4],
                       ARGV[b + 5], ARGV[b + 6], ARGV[b + 7])
  if staged and staged[1] == ARGV[b + 7] then staged[1] = 0 end
  out[i] = staged
end
return out
"""
)

# KEYS: reply1, sent1, reply2, sent2, ... ARGV: ttl, then (reply, run token) per pair.
PUSH_LUA = (
    _STEPS_LUA
    + """
local out = {}
for i = 1, #KEYS / 2 do
  out[i] = push(KEYS[2 * i - 1], KEYS[2 * i], ARGV[1], ARGV[2 * i], ARGV[2 * i + 1])
end
return out
"""
)

# KEYS: task1, done1, task2, done2, ... ARGV: reply ttl, preserve, done-marker ttl,
# then how long each finish keeps its hash ('0': deleted).
CLEAN_LUA = (
    _STEPS_LUA
    + """
local out = {}
for i = 1, #KEYS / 2 do
  out[i] = clean(KEYS[2 * i - 1], KEYS[2 * i], ARGV[3], ARGV[2] == '1', ARGV[3 + i])
end
return out
"""
)

# Standalone: all three steps per task in one script. The usual finish (a claim held by
# this attempt, nothing staged) goes the short way: no script can run between its
# steps, so nothing is staged and no sent marker is needed (5 calls instead of 12);
# anything else takes the three steps as on a cluster.
# KEYS: task, reply, done, sent per finish. ARGV: reply ttl, preserve, done-marker ttl,
# then 8 per finish (the 7 of STAGE_LUA, then how long it keeps its hash).
FINISH_LUA = (
    _STEPS_LUA
    + """
local ttl, preserve, done_ttl = ARGV[1], ARGV[2] == '1', ARGV[3]

-- 1 done the short way, false: take the three steps
local function short(tkey, rkey, dkey, mode, attempt, status, field, value, now, reply)
  if mode ~= 'claim' then return false end
  local cur = redis.pcall('HMGET', tkey, 'status', 'rhailambdaClaim', 'rhailambdaReply')
  if cur['err'] or cur[1] ~= 'processing' or cur[2] ~= attempt or cur[3] then return false end
  if type(redis.pcall('LPUSH', rkey, reply)) == 'table' then return false end  -- not a list
  redis.call('EXPIRE', rkey, ttl)
  if preserve then redis.call('HSET', tkey, 'status', status, field, value, 'updatedAt', now)
  else redis.call('DEL', tkey) end
  redis.call('SET', dkey, '1', 'EX', done_ttl)
  return 1
end

local out = {}
for i = 1, #KEYS / 4 do
  local k, b = 4 * (i - 1), 3 + (i - 1) * 8
  out[i] = short(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3],
                 ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7])
  if not out[i] then
    out[i] = 0
    local staged = stage(KEYS[k + 1], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4],
                         ARGV[b + 5], ARGV[b + 6], ARGV[b + 7])
    if staged then
      out[i] = push(KEYS[k + 2], KEYS[k + 4], ttl, staged[1], staged[2])
      if out[i] >= 0 then
        clean(KEYS[k + 1], KEYS[k + 3], done_ttl, preserve, ARGV[b + 8])
      end
    end
  end
end
return out
"""
)
