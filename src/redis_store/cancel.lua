-- Cancels a task unless it is being published right now.
-- KEYS: 1 schedule, 2 leases, 3 records, 4 dead. ARGV: 1 id.
-- Returns 'in_flight', 'removed' or 'not_found'.
local id = ARGV[1]
if redis.call('ZSCORE', KEYS[2], id) then
  return 'in_flight'
end
redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[4], id)
if redis.call('HDEL', KEYS[3], id) == 1 then
  return 'removed'
end
return 'not_found'
