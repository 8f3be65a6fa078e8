-- A late settlement, once: only an 'expired' record moves, or a 'refunded' one recovered
-- after its create was refused (their hold and slot went already). The charge goes to the
-- record's own period; the aggregates move the task from expired (refunded) to settled; the
-- ledger gets 'late_settle' and the 'anomaly' that flags it; the result expiry counts from
-- the release (see store::late_result_expiry).
-- Runs after keys.lua and completion.lua.
-- KEYS[1] reservation hash. ARGV[1] key prefix, ARGV[2] amount charged, ARGV[3] billed output
-- ms, ARGV[4] entry time ms, ARGV[5] anomaly note after an expiry, ARGV[6] result lifetime ms,
-- ARGV[7] anomaly note after a refusal, ARGV[8] retention ms, ARGV[9..] record fields and JSON
-- values to write.
-- Replies {'not_found'}, {'already_final', HGETALL} or {'applied', HGETALL}.
local current = redis.call('HMGET', KEYS[1], 'state', 'recovered')
local from = '"expired"'
if current[1] == '"refunded"' and current[2] == 'true' then
  from = '"refunded"'
end
local record, refusal = record_in_state(KEYS[1], from, {'tenant', 'user', 'period', 'periods', 'quality',
  'audio', 'billed_input_ms', 'reservation_id', 'task_id', 'model', 'currency', 'request_id', 'callback_url',
  'finished_ms', 'claim_expires_ms', 'period_end_ms'})
if not record then
  return refusal
end
local relays = record.callback_url ~= cjson.null and record.task_id ~= cjson.null
local keys = counter_keys(ARGV[1], record.tenant, record.user, record.period)
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('HSET', KEYS[1], 'result_expires_ms', string.format('%d', record.finished_ms + tonumber(ARGV[6])))
redis.call('INCRBY', keys.spent, ARGV[2])
redis.call('INCRBY', keys.user_spent, ARGV[2])

local periods = record.periods
aggregate(ARGV[1], record.tenant, record.user, record.quality, record.audio,
  {periods.day, periods.month},
  {spent = ARGV[2], input_ms = record.billed_input_ms, output_ms = ARGV[3], n_settled = 1,
   [from == '"expired"' and 'n_expired' or 'n_refunded'] = -1})
local entry = record_entry(record, 'late_settle', ARGV[4], record.billed_input_ms, tonumber(ARGV[3]),
  tonumber(ARGV[2]))
ledger_append(ARGV[1], record.tenant, ARGV[4], cjson.encode(entry))
entry.kind = 'anomaly'
entry.note = from == '"expired"' and ARGV[5] or ARGV[7]
ledger_append(ARGV[1], record.tenant, ARGV[4], cjson.encode(entry))
task_ended(ARGV[1], record.reservation_id, 'late_settle', ARGV[4], relays)
keep_for_retention(ARGV[1], KEYS[1], record, tonumber(ARGV[4]), tonumber(ARGV[8]))
expire_user_counters(keys, record.period_end_ms, tonumber(ARGV[4]), tonumber(ARGV[8]))
return {'applied', redis.call('HGETALL', KEYS[1])}
