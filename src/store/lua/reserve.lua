-- One atomic hold: tenant, idempotency, quality, concurrency cap, tenant and user budgets,
-- then the record, the counters, the aggregates and the `reserve` ledger entry. Runs after
-- keys.lua.
-- KEYS[1] tenant record, KEYS[2] reservation hash.
-- ARGV[1] key prefix, ARGV[2] tenant, ARGV[3] user, ARGV[4] quality, ARGV[5] amount,
-- ARGV[6..8] month, week and day period keys, ARGV[9] audio ('1'/'0'), ARGV[10] entry time
-- ms, ARGV[11] entry JSON, ARGV[12..] record fields and JSON values.
-- Replies {status, ...}: 'reserved' + HGETALL, 'unknown_tenant', 'quality_not_allowed',
-- 'concurrency_limited' + max, 'budget_exceeded' + remaining + user scope (0/1).
local tenant_json = redis.call('GET', KEYS[1])
if not tenant_json then
  return {'unknown_tenant'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'reserved', redis.call('HGETALL', KEYS[2])}
end

local settings = cjson.decode(tenant_json).settings
local quality_allowed = false
for _, quality in ipairs(settings.allowed_qualities) do
  if quality == ARGV[4] then
    quality_allowed = true
  end
end
if not quality_allowed then
  return {'quality_not_allowed'}
end

local periods = {month = ARGV[6], week = ARGV[7], day = ARGV[8], total = 'total'}
local period = periods[settings.period]
local keys = counter_keys(ARGV[1], ARGV[2], ARGV[3], period)
if counter(keys.in_flight) >= settings.max_concurrent_tasks then
  return {'concurrency_limited', settings.max_concurrent_tasks}
end

-- Remaining budget when the amount does not fit, nil when it does (or there is no budget).
local amount = tonumber(ARGV[5])
local function shortfall(budget, spent_key, reserved_key)
  if type(budget) ~= 'number' then
    return nil
  end
  local used = counter(spent_key) + counter(reserved_key)
  if used + amount > budget then
    return math.max(budget - used, 0)
  end
  return nil
end
local remaining = shortfall(settings.budget, keys.spent, keys.reserved)
if remaining then
  return {'budget_exceeded', remaining, 0}
end
remaining = shortfall(settings.user_budget, keys.user_spent, keys.user_reserved)
if remaining then
  return {'budget_exceeded', remaining, 1}
end

redis.call('HSET', KEYS[2], unpack(ARGV, 12))
-- The caller cannot know the tenant's period kind; the script books the hold to it.
redis.call('HSET', KEYS[2], 'period', cjson.encode(period))
redis.call('INCRBY', keys.reserved, ARGV[5])
redis.call('INCRBY', keys.user_reserved, ARGV[5])
redis.call('INCR', keys.in_flight)
aggregate(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[9] == '1', {ARGV[8], ARGV[7], ARGV[6], 'total'},
  {reserved = ARGV[5], n_reserved = 1})
redis.call('SADD', ARGV[1] .. 'days:' .. ARGV[2], ARGV[8])
ledger_append(ARGV[1], ARGV[2], ARGV[10], ARGV[11])
-- completion: every hold enters the reconciler's queue, due for a first look at once.
redis.call('ZADD', ARGV[1] .. 'pending', ARGV[10], cjson.decode(redis.call('HGET', KEYS[2], 'reservation_id')))
return {'reserved', redis.call('HGETALL', KEYS[2])}
