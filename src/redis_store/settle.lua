-- Records outcomes for tasks leased until ARGV[1]; a task whose lease is no longer that one is left
-- alone. Then ARGV holds, per task, either 'D', id (done: forget it) or 'R'|'B', id, score, record
-- (reschedule at score, or bury as dead at score).
-- KEYS: 1 schedule, 2 leases, 3 records, 4 dead.
local lease = tonumber(ARGV[1])
local i = 2
while i <= #ARGV do
  local op, id = ARGV[i], ARGV[i + 1]
  local owned = tonumber(redis.call('ZSCORE', KEYS[2], id)) == lease
  if op == 'D' then
    if owned then
      redis.call('ZREM', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
    end
    i = i + 2
  else
    if owned then
      redis.call('ZREM', KEYS[2], id)
      redis.call('HSET', KEYS[3], id, ARGV[i + 3])
      if op == 'R' then
        redis.call('ZADD', KEYS[1], ARGV[i + 2], id)
      else
        redis.call('ZADD', KEYS[4], ARGV[i + 2], id)
      end
    end
    i = i + 4
  end
end
return 0
