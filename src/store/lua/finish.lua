-- Settle, refund or expire, once: only a 'reserved' record moves; money moves in the record's
-- own period, the aggregates in its reservation buckets; the ledger gets the step's entry (and
-- an 'anomaly' repeating a flagged settlement), built as LedgerEntry::for_reservation does;
-- the task leaves the reconciler's queue (and its callback enters the outbox).
-- Runs after keys.lua and completion.lua.
-- KEYS[1] reservation hash. ARGV[1] key prefix, ARGV[2] amount charged (added to spent),
-- ARGV[3] kind ('settle', 'refund' or 'expire'), ARGV[4] billed output ms, ARGV[5] entry time ms,
-- ARGV[6] anomaly note ('' when none), ARGV[7] retention ms, ARGV[8..] record fields and JSON
-- values to write.
-- Replies {'not_found'}, {'already_final', HGETALL} or {'applied', HGETALL}.
local record, refusal = record_in_state(KEYS[1], '"reserved"', {'tenant', 'user', 'period', 'reserved', 'periods',
  'quality', 'audio', 'billed_input_ms', 'reservation_id', 'task_id', 'model', 'currency', 'request_id',
  'callback_url', 'claim_expires_ms', 'period_end_ms'})
if not record then
  return refusal
end
local keys = counter_keys(ARGV[1], record.tenant, record.user, record.period)
local hold = record.reserved
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('DECRBY', keys.reserved, hold)
redis.call('DECRBY', keys.user_reserved, hold)
redis.call('INCRBY', keys.spent, ARGV[2])
redis.call('INCRBY', keys.user_spent, ARGV[2])
redis.call('DECR', keys.in_flight)

local relays = record.callback_url ~= cjson.null and record.task_id ~= cjson.null
local settle = ARGV[3] == 'settle'
local deltas = {reserved = -hold, n_reserved = -1}
local entry = record_entry(record, ARGV[3], ARGV[5], 0, 0, hold)
if settle then
  deltas.spent = ARGV[2]
  deltas.input_ms = record.billed_input_ms
  deltas.output_ms = ARGV[4]
  deltas.n_settled = 1
  entry.billed_input_ms = record.billed_input_ms
  entry.billed_output_ms = tonumber(ARGV[4])
  entry.amount = tonumber(ARGV[2])
elseif ARGV[3] == 'expire' then
  deltas.n_expired = 1
else
  deltas.n_refunded = 1
end
local periods = record.periods
aggregate(ARGV[1], record.tenant, record.user, record.quality, record.audio,
  {periods.day, periods.month}, deltas)
ledger_append(ARGV[1], record.tenant, ARGV[5], cjson.encode(entry))
if ARGV[6] ~= '' then
  entry.kind = 'anomaly'
  entry.note = ARGV[6]
  ledger_append(ARGV[1], record.tenant, ARGV[5], cjson.encode(entry))
end
task_ended(ARGV[1], record.reservation_id, ARGV[3], ARGV[5], relays)
keep_for_retention(ARGV[1], KEYS[1], record, tonumber(ARGV[5]), tonumber(ARGV[7]))
expire_user_counters(keys, record.period_end_ms, tonumber(ARGV[5]), tonumber(ARGV[7]))
return {'applied', redis.call('HGETALL', KEYS[1])}
