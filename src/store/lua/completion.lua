-- Shared head of the scripts that end a task (after keys.lua).

-- The record's `names` fields, decoded, when its state is `state` (a JSON text); else nil and
-- the script's reply: {'not_found'} or {'already_final', HGETALL}.
local function record_in_state(key, state, names)
  local current = redis.call('HGET', key, 'state')
  if not current then
    return nil, {'not_found'}
  end
  if current ~= state then
    return nil, {'already_final', redis.call('HGETALL', key)}
  end
  local values = redis.call('HMGET', key, unpack(names))
  local record = {}
  for i, name in ipairs(names) do
    -- Optional fields are left out of the hash when empty.
    if values[i] then
      record[name] = cjson.decode(values[i])
    end
  end
  return record
end

-- Retention: a final record and its task index entry expire `retention_ms` after `now_ms`,
-- or when the idempotency claim naming the record does, whichever is later.
local function keep_for_retention(prefix, key, record, now_ms, retention_ms)
  local keep = retention_ms
  if record.claim_expires_ms then
    keep = math.max(keep, record.claim_expires_ms - now_ms)
  end
  redis.call('PEXPIRE', key, string.format('%d', keep))
  if record.task_id ~= cjson.null then
    redis.call('PEXPIRE', prefix .. 'task:' .. record.task_id, string.format('%d', keep))
  end
end

-- A ledger entry for the record, built as LedgerEntry::for_reservation does.
local function record_entry(record, kind, time_ms, billed_input_ms, billed_output_ms, amount)
  local task_id = record.task_id
  if task_id == cjson.null then
    task_id = ''
  end
  return {
    time_ms = tonumber(time_ms), kind = kind, tenant = record.tenant, user = record.user,
    reservation_id = record.reservation_id, task_id = task_id, model = record.model,
    quality = record.quality, audio = record.audio, billed_input_ms = billed_input_ms,
    billed_output_ms = billed_output_ms, amount = amount, currency = record.currency,
    request_id = record.request_id, actor = '', note = '',
  }
end

-- The task leaves the reconciler's queue, and when its caller asked for a callback and a
-- task exists to report on, an event enters the outbox (id as store::event_id builds it,
-- fields as OutboxEvent).
local function task_ended(prefix, reservation_id, kind, time_ms, relays)
  redis.call('ZREM', prefix .. 'pending', reservation_id)
  if relays then
    local id = 'msg_' .. reservation_id .. '_' .. kind
    redis.call('HSET', prefix .. 'evt:' .. id, 'id', cjson.encode(id), 'reservation_id', cjson.encode(reservation_id),
      'kind', cjson.encode(kind), 'created_ms', time_ms, 'attempts', 0)
    redis.call('ZADD', prefix .. 'outbox', time_ms, id)
  end
end
