-- One page of a collection in id order, with the collection's stamp, atomically.
-- KEYS[1] stamps hash, KEYS[2] record hash, KEYS[3] id index (sorted set)
-- ARGV[1] stamp field, ARGV[2] offset, ARGV[3] limit
-- Returns {stamp, ids, values} (values are "<version>|<json>").
local stamp = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local offset, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
if limit <= 0 then
  return {stamp, {}, {}}
end
local ids = redis.call('ZRANGE', KEYS[3], offset, offset + limit - 1)
local values = {}
for first = 1, #ids, 1000 do
  local chunk = {}
  for j = first, math.min(first + 999, #ids) do
    chunk[#chunk + 1] = ids[j]
  end
  local got = redis.call('HMGET', KEYS[2], unpack(chunk))
  for j = 1, #chunk do
    values[#values + 1] = got[j] or ''
  end
end
return {stamp, ids, values}
