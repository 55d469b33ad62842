-- Stores new tasks and schedules them, each at most once per idempotency key.
-- KEYS: 1 schedule, 2 records, then one idempotency key per task that has one, in order.
-- ARGV: 1 idempotency TTL (s), then per task: id, due time, record, '1' if it has a key else '0'.
-- Returns, per task, the id that the submission stands for: its own when it was stored, the
-- first task's when its idempotency key was already taken.
local ttl = ARGV[1]
local out = {}
local next_key = 3
for i = 2, #ARGV, 4 do
  local id, due, record, keyed = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local existing = false
  if keyed == '1' then
    local key = KEYS[next_key]
    next_key = next_key + 1
    existing = redis.call('GET', key)
    if not existing then
      redis.call('SET', key, id, 'EX', ttl)
    end
  end
  if existing then
    out[#out + 1] = existing
  else
    redis.call('HSET', KEYS[2], id, record)
    redis.call('ZADD', KEYS[1], due, id)
    out[#out + 1] = id
  end
end
return out
