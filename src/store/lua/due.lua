-- Shared head of the scripts that make a reservation due for the reconciler at once.

-- Due now, and earlier than any due time a reconciler may have claimed, so that its
-- release sees the change and leaves the entry due.
local function make_due(queue, reservation_id, now_ms)
  local due = tonumber(now_ms)
  local queued = redis.call('ZSCORE', queue, reservation_id)
  if queued then
    due = math.min(tonumber(queued), due) - 1
  end
  redis.call('ZADD', queue, string.format('%d', due), reservation_id)
end

-- Whether a reservation in `state` (JSON text) still has money to move when its task ends:
-- a hold, or a hold released before the task was known to exist (expired, or refunded as
-- refused and then recovered), whose completion is charged late.
local function awaits_ending(key, state)
  if state == '"reserved"' or state == '"expired"' then
    return true
  end
  return state == '"refunded"' and redis.call('HGET', key, 'recovered') == 'true'
end
