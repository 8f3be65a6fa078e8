-- Shared head of the scripts that end a task (after keys.lua): the task leaves the
-- reconciler's queue, and when its caller asked for a callback and a task exists to report
-- on, an event enters the outbox (id as store::event_id builds it, fields as OutboxEvent).
local function task_ended(prefix, reservation_id, kind, time_ms, relays)
  redis.call('ZREM', prefix .. 'pending', reservation_id)
  if relays then
    local id = 'msg_' .. reservation_id .. '_' .. kind
    redis.call('HSET', prefix .. 'evt:' .. id, 'id', cjson.encode(id), 'reservation_id', cjson.encode(reservation_id),
      'kind', cjson.encode(kind), 'created_ms', time_ms, 'attempts', 0)
    redis.call('ZADD', prefix .. 'outbox', time_ms, id)
  end
end
