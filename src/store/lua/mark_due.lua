-- An upstream callback: the reservation becomes due at once (an 'expired' one too: a
-- completion is then charged late), earlier than any due time a reconciler may have claimed,
-- so that its release sees the change and leaves the entry due.
-- KEYS[1] reservation hash, KEYS[2] the reconciler's queue. ARGV[1] reservation id, ARGV[2] now ms.
-- Replies the state (JSON), or false for an unknown reservation.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return false
end
if state == '"reserved"' or state == '"expired"' then
  local due = tonumber(ARGV[2])
  local queued = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if queued then
    due = math.min(tonumber(queued), due) - 1
  end
  redis.call('ZADD', KEYS[2], string.format('%d', due), ARGV[1])
end
return state
