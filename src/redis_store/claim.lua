-- Claims up to ARGV[2] tasks due at ARGV[1] (first those whose lease ran out, then the schedule's
-- earliest), leases them until ARGV[3], and returns {ids, records, next due time or false}.
-- KEYS: 1 schedule, 2 leases, 3 records.
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local lease_until = ARGV[3]

local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
if #ids < limit then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit - #ids)
  if #due > 0 then
    redis.call('ZREM', KEYS[1], unpack(due))
    for _, id in ipairs(due) do
      ids[#ids + 1] = id
    end
  end
end

local records = {}
if #ids > 0 then
  local leases = {}
  for _, id in ipairs(ids) do
    leases[#leases + 1] = lease_until
    leases[#leases + 1] = id
  end
  redis.call('ZADD', KEYS[2], unpack(leases))
  records = redis.call('HMGET', KEYS[3], unpack(ids))
end

local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or false
return {ids, records, next_due}
