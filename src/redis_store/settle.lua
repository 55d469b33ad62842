-- Records outcomes for tasks leased until ARGV[1]; a task whose lease is no longer that one is left
-- alone. Then ARGV holds, per task, either 'D', id (done: forget it) or 'R'|'B', id, score, record
-- (reschedule at score, or bury as dead at score).
-- KEYS: 1 schedule, 2 leases, 3 records, 4 dead.
-- One ZMSCORE, ZREM and HDEL serve the whole batch; batches stay below WORKER_BATCH_SIZE's
-- maximum of 3000, well inside what unpack() can spread.
local lease = tonumber(ARGV[1])
local ops, ids, positions = {}, {}, {}
local i = 2
while i <= #ARGV do
  ops[#ops + 1] = i
  ids[#ids + 1] = ARGV[i + 1]
  if ARGV[i] == 'D' then i = i + 2 else i = i + 4 end
end
if #ids == 0 then
  return 0
end

local scores = redis.call('ZMSCORE', KEYS[2], unpack(ids))
local owned, done = {}, {}
for n, at in ipairs(ops) do
  if scores[n] and tonumber(scores[n]) == lease then
    local op, id = ARGV[at], ARGV[at + 1]
    owned[#owned + 1] = id
    if op == 'D' then
      done[#done + 1] = id
    else
      redis.call('HSET', KEYS[3], id, ARGV[at + 3])
      if op == 'R' then
        redis.call('ZADD', KEYS[1], ARGV[at + 2], id)
      else
        redis.call('ZADD', KEYS[4], ARGV[at + 2], id)
      end
    end
  end
end
if #owned > 0 then
  redis.call('ZREM', KEYS[2], unpack(owned))
end
if #done > 0 then
  redis.call('HDEL', KEYS[3], unpack(done))
end
return #owned
