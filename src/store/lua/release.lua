-- Ends a claim: the entry gets its next due time, or leaves the queue (with its outbox event,
-- KEYS[3]), unless its due time changed since the claim (a callback asked for a look
-- meanwhile: that wins); then the lease goes if it is still ours.
-- KEYS[1] queue, KEYS[2] lease, KEYS[3] (outbox only) event hash.
-- ARGV[1] id, ARGV[2] owner, ARGV[3] due ms at the claim, ARGV[4] next due ms ('' = leave).
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if due and tonumber(due) == tonumber(ARGV[3]) then
  if ARGV[4] == '' then
    redis.call('ZREM', KEYS[1], ARGV[1])
    if KEYS[3] then
      redis.call('DEL', KEYS[3])
    end
  else
    redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  end
end
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return 1
