-- Puts tasks whose budget ran out back in the schedule with the records given (a fresh budget):
-- a dead task, or one still waiting for its dead-letter publish, as long as no worker holds it.
-- KEYS: 1 schedule, 2 leases, 3 records, 4 dead.
-- ARGV: per task: id, due time, record, 'dead' or 'scheduled' (where the caller found it).
-- Returns, per task, 1 if it was revived, 0 if it had moved meanwhile.
local out = {}
for i = 1, #ARGV, 4 do
  local id, due, record, found = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local still_there
  if found == 'dead' then
    still_there = redis.call('ZREM', KEYS[4], id) == 1
  else
    still_there = redis.call('ZSCORE', KEYS[1], id) and not redis.call('ZSCORE', KEYS[2], id)
  end
  if still_there then
    redis.call('HSET', KEYS[3], id, record)
    redis.call('ZADD', KEYS[1], due, id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
