-- One bounded slice of a collection in id order, with the collection's stamp.
-- KEYS[1] stamps hash, KEYS[2] record hash, KEYS[3] id index (sorted set)
-- ARGV[1] stamp field, ARGV[2] offset, ARGV[3] limit, ARGV[4] byte budget
-- Reads records from position offset until limit records are read, the collection
-- ends, or the budget of bytes is reached (at least one record is read), so one
-- call never holds Redis for long; the caller goes on from the returned position
-- and compares stamps.
-- Returns {stamp, ids, values, next position, 1 if the page is complete else 0}
-- (values are "<version>|<json>").
local stamp = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local offset, limit, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local last = offset + limit
local ids, values, bytes, pos = {}, {}, 0, offset
while pos < last do
  -- 16 ids at a time: 16 records of 64 KiB are 1 MiB, about a millisecond of Redis
  local asked = math.min(16, last - pos)
  local chunk = redis.call('ZRANGE', KEYS[3], pos, pos + asked - 1)
  local got = #chunk > 0 and redis.call('HMGET', KEYS[2], unpack(chunk)) or {}
  for j = 1, #chunk do
    ids[#ids + 1] = chunk[j]
    values[#values + 1] = got[j] or ''
    bytes = bytes + #(got[j] or '')
    pos = pos + 1
    if bytes >= budget then
      return {stamp, ids, values, pos, (pos >= last) and 1 or 0}
    end
  end
  if #chunk < asked then
    return {stamp, ids, values, pos, 1}  -- the collection ended
  end
end
return {stamp, ids, values, pos, 1}
