-- Binds a task found after its create (the upstream's callback named it), once: unless the
-- reservation has a task id already, another reservation owns the task, or the caller refused
-- it (model or creation time wrong). A refusal writes one `anomaly` entry per task; a bind
-- marks the record `recovered` and makes it due for the reconciler at once.
-- Runs after keys.lua, completion.lua and due.lua.
-- KEYS[1] reservation hash, KEYS[2] task index, KEYS[3] the reconciler's queue.
-- ARGV[1] key prefix, ARGV[2] reservation id, ARGV[3] task id as JSON, ARGV[4] task id,
-- ARGV[5] the re-fetched task as a JSON string value, ARGV[6] now ms, ARGV[7] refusal ('' none).
-- Replies {'not_found'}, {'already_bound', HGETALL}, {'refused', note} or {'bound', HGETALL}.
local found = redis.call('HMGET', KEYS[1], 'state', 'task_id', 'refused_task')
if not found[1] then
  return {'not_found'}
end
if found[2] ~= 'null' then
  return {'already_bound', redis.call('HGETALL', KEYS[1])}
end
local note = ARGV[7]
if note == '' then
  local owner = redis.call('GET', KEYS[2])
  if owner and owner ~= ARGV[2] then
    note = "the upstream's callback named task " .. ARGV[4] .. ', which belongs to reservation ' .. owner
  end
end
if note ~= '' then
  if found[3] ~= ARGV[3] then
    local record = record_in_state(KEYS[1], found[1], {'tenant', 'user', 'reservation_id', 'task_id', 'model',
      'quality', 'audio', 'currency', 'request_id'})
    local entry = record_entry(record, 'anomaly', ARGV[6], 0, 0, 0)
    entry.task_id = ARGV[4]
    entry.note = note
    redis.call('HSET', KEYS[1], 'refused_task', ARGV[3])
    ledger_append(ARGV[1], record.tenant, ARGV[6], cjson.encode(entry))
  end
  return {'refused', note}
end
redis.call('HSET', KEYS[1], 'task_id', ARGV[3], 'created_task', ARGV[5], 'recovered', 'true')
redis.call('SET', KEYS[2], ARGV[2])
-- A released record already counts down its retention: its task index entry goes with it.
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
make_due(KEYS[3], ARGV[2], ARGV[6])
return {'bound', redis.call('HGETALL', KEYS[1])}
