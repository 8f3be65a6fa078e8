-- One atomic hold: tenant, idempotency key, rate limits, quality, concurrency cap, tenant
-- and user budgets, then the record, the counters, the aggregates and the `reserve` ledger
-- entry. Runs after keys.lua and gcra.lua.
-- Every check comes before the first write, and no write after it can fail (the idempotency
-- TTL is validated at startup, Redis >= 7.0 is checked for XADD's `<ms>-*` ids), so the
-- step applies whole or not at all.
-- KEYS[1] tenant record, KEYS[2] reservation hash (ARGV[1] .. 'res:' .. reservation id),
-- KEYS[3] idempotency key (unused when ARGV[12] is empty), KEYS[4] the reservation's
-- release mark (see release_unsent in redis.rs).
-- ARGV[1] key prefix, ARGV[2] tenant, ARGV[3] user, ARGV[4] quality, ARGV[5] amount,
-- ARGV[6..8] month, week and day period keys, ARGV[9] audio ('1'/'0'), ARGV[10] entry time
-- ms, ARGV[11] entry JSON, ARGV[12] body hash for the idempotency key ('' for none),
-- ARGV[13] its TTL ms, ARGV[14] rate checks JSON, ARGV[15..#ARGV-1] record fields and JSON
-- values, ARGV[#ARGV] retention JSON: {"retention_ms", "ends": {month, week, day: period end ms}}.
-- Replies {status, ...}: 'held' + the period booked + rate + budget use ({spent, reserved}
-- of the period after the hold, then the budget when there is one) for a new hold (the
-- record is the caller's fields plus that period: no need to send it back), 'reserved' +
-- HGETALL for an existing one, 'replay' + HGETALL, 'unknown_tenant',
-- 'idempotency_key_reused', 'request_in_progress' + outcome unknown (0/1), 'rate_limited' + rate,
-- 'quality_not_allowed', 'concurrency_limited' + max, 'budget_exceeded' + remaining + user
-- scope (0/1), 'released' (its caller gave up on this step and released it). `rate` is
-- gcra.lua's reply array.
local tenant_json = redis.call('GET', KEYS[1])
if not tenant_json then
  return {'unknown_tenant'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'reserved', redis.call('HGETALL', KEYS[2]), {}}
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {'released'}
end

-- The key's first request decides: same body and a task → replay it; still running → in
-- progress; released with its outcome unknown (expired unbound) → in progress for the key's
-- lifetime; refused before creating a task → this one runs anew.
if ARGV[12] ~= '' then
  local claim = redis.call('GET', KEYS[3])
  if claim then
    claim = cjson.decode(claim)
    if claim.hash ~= ARGV[12] then
      return {'idempotency_key_reused'}
    end
    local first = ARGV[1] .. 'res:' .. claim.rid
    local task_id = redis.call('HGET', first, 'task_id')
    if task_id and task_id ~= 'null' then
      return {'replay', redis.call('HGETALL', first)}
    end
    local state = redis.call('HGET', first, 'state')
    if state == '"reserved"' then
      return {'request_in_progress', 0}
    end
    if state == '"expired"' then
      return {'request_in_progress', 1}
    end
  end
end

local decision = rate_limit(ARGV[1], ARGV[14])
if decision and not decision.allowed then
  return {'rate_limited', rate_reply(decision)}
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
local counters = redis.call('MGET', keys.in_flight, keys.spent, keys.reserved, keys.user_spent, keys.user_reserved)
for i = 1, 5 do
  counters[i] = tonumber(counters[i] or '0')
end
local in_flight, spent, reserved, user_spent, user_reserved = unpack(counters)
if in_flight >= settings.max_concurrent_tasks then
  return {'concurrency_limited', settings.max_concurrent_tasks}
end

-- Remaining budget when the amount does not fit, nil when it does (or there is no budget).
local amount = tonumber(ARGV[5])
local function shortfall(budget, used)
  if type(budget) ~= 'number' then
    return nil
  end
  if used + amount > budget then
    return math.max(budget - used, 0)
  end
  return nil
end
local remaining = shortfall(settings.budget, spent + reserved)
if remaining then
  return {'budget_exceeded', remaining, 0}
end
remaining = shortfall(settings.user_budget, user_spent + user_reserved)
if remaining then
  return {'budget_exceeded', remaining, 1}
end

-- The caller cannot know the tenant's period kind; the script books the hold to it (the
-- caller's empty `period` field comes first: the later value of a field wins).
local fields = {KEYS[2]}
for i = 15, #ARGV - 1 do
  fields[#fields + 1] = ARGV[i]
end
fields[#fields + 1] = 'period'
fields[#fields + 1] = cjson.encode(period)
local retention = cjson.decode(ARGV[#ARGV])
local period_end = retention.ends[settings.period]
if period_end and period_end ~= cjson.null then
  fields[#fields + 1] = 'period_end_ms'
  fields[#fields + 1] = string.format('%d', period_end)
end
redis.call('HSET', unpack(fields))
reserved = redis.call('INCRBY', keys.reserved, ARGV[5])
redis.call('INCRBY', keys.user_reserved, ARGV[5])
expire_user_counters(keys, period_end, tonumber(ARGV[10]), retention.retention_ms)
redis.call('INCR', keys.in_flight)
aggregate(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[9] == '1', {ARGV[8], ARGV[6]},
  {reserved = ARGV[5], n_reserved = 1})
redis.call('SADD', ARGV[1] .. 'days:' .. ARGV[2], ARGV[8])
ledger_append(ARGV[1], ARGV[2], ARGV[10], ARGV[11])
-- completion: every hold enters the reconciler's queue, due for a first look at once.
local rid = string.sub(KEYS[2], #ARGV[1] + #'res:' + 1)
redis.call('ZADD', ARGV[1] .. 'pending', ARGV[10], rid)
-- task list: the tenant's index by creation time (TaskIndexEntry::member: the ms padded so
-- members sort as text).
redis.call('ZADD', ARGV[1] .. 'tasklist:' .. ARGV[2], 0, string.format('%015d', tonumber(ARGV[10])) .. ':' .. rid)
if ARGV[12] ~= '' then
  redis.call('SET', KEYS[3], cjson.encode({rid = rid, hash = ARGV[12]}), 'PX', ARGV[13])
end
local budget_use = {spent, reserved}
if type(settings.budget) == 'number' then
  budget_use[3] = settings.budget
end
return {'held', period, rate_reply(decision), budget_use}
