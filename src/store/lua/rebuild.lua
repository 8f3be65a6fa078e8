-- A reservation whose record was lost (a failover), rebuilt from its callback token and
-- bound to the task the upstream's callback named, once; see Store::rebuild. No budget,
-- cap or rate check: the task ran. Runs after keys.lua.
-- Every check comes before the first write.
-- KEYS[1] tenant record, KEYS[2] reservation hash, KEYS[3] task index, KEYS[4] the
-- reconciler's queue.
-- ARGV[1] key prefix, ARGV[2] tenant, ARGV[3] user, ARGV[4] quality, ARGV[5] amount,
-- ARGV[6..8] month, week and day period keys, ARGV[9] audio ('1'/'0'), ARGV[10] created ms,
-- ARGV[11] the `reserve` entry JSON, ARGV[12] reservation id, ARGV[13] task id, ARGV[14] now
-- ms, ARGV[15] refusal ('' none), ARGV[16] the `anomaly` entry JSON of a refusal (its note
-- set here), ARGV[17] retention JSON (as reserve.lua), ARGV[18] the tombstone's field count,
-- then the tombstone's fields and JSON values, then the record's.
-- Replies {'exists', HGETALL}, {'unknown_tenant'}, {'refused', note} or {'rebuilt', HGETALL}.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'exists', redis.call('HGETALL', KEYS[2])}
end
local tenant_json = redis.call('GET', KEYS[1])
if not tenant_json then
  return {'unknown_tenant'}
end
local note = ARGV[15]
if note == '' then
  local owner = redis.call('GET', KEYS[3])
  if owner and owner ~= ARGV[12] then
    note = "the upstream's callback named task " .. ARGV[13] .. ', which belongs to reservation ' .. owner
  end
end
local settings = cjson.decode(tenant_json).settings
local periods = {month = ARGV[6], week = ARGV[7], day = ARGV[8], total = 'total'}
local period = periods[settings.period]
local retention = cjson.decode(ARGV[17])
local period_end = retention.ends[settings.period]
local tombstone_fields = tonumber(ARGV[18])
local first, last = 19, 18 + tombstone_fields
if note == '' then
  first, last = 19 + tombstone_fields, #ARGV
end
local fields = {KEYS[2]}
for i = first, last do
  fields[#fields + 1] = ARGV[i]
end
fields[#fields + 1] = 'period'
fields[#fields + 1] = cjson.encode(period)
if period_end and period_end ~= cjson.null then
  fields[#fields + 1] = 'period_end_ms'
  fields[#fields + 1] = string.format('%d', period_end)
end
redis.call('HSET', unpack(fields))

if note ~= '' then
  redis.call('PEXPIRE', KEYS[2], string.format('%d', retention.retention_ms))
  local entry = cjson.decode(ARGV[16])
  entry.note = note
  ledger_append(ARGV[1], ARGV[2], ARGV[14], cjson.encode(entry))
  return {'refused', note}
end

local keys = counter_keys(ARGV[1], ARGV[2], ARGV[3], period)
redis.call('INCRBY', keys.reserved, ARGV[5])
redis.call('INCRBY', keys.user_reserved, ARGV[5])
expire_user_counters(keys, period_end, tonumber(ARGV[14]), retention.retention_ms)
redis.call('INCR', keys.in_flight)
aggregate(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[9] == '1', {ARGV[8], ARGV[6]},
  {reserved = ARGV[5], n_reserved = 1})
redis.call('SADD', ARGV[1] .. 'days:' .. ARGV[2], ARGV[8])
ledger_append(ARGV[1], ARGV[2], ARGV[10], ARGV[11])
redis.call('ZADD', KEYS[4], ARGV[14], ARGV[12])
redis.call('ZADD', ARGV[1] .. 'tasklist:' .. ARGV[2], 0, string.format('%015d', tonumber(ARGV[10])) .. ':' .. ARGV[12])
redis.call('SET', KEYS[3], ARGV[12])
return {'rebuilt', redis.call('HGETALL', KEYS[2])}
