-- A task query in one step: the rate limits, then the reservation bound to the task id.
-- Runs after gcra.lua. KEYS[1] task index. ARGV[1] key prefix, ARGV[2] rate checks JSON.
-- Replies {'rate_limited', rate}, {'not_found', rate} or {'found', rate, HGETALL}.
local decision = rate_limit(ARGV[1], ARGV[2])
local rate = rate_reply(decision)
if decision and not decision.allowed then
  return {'rate_limited', rate}
end
local reservation_id = redis.call('GET', KEYS[1])
if not reservation_id then
  return {'not_found', rate}
end
return {'found', rate, redis.call('HGETALL', ARGV[1] .. 'res:' .. reservation_id)}
