-- An upstream callback: the reservation becomes due at once (a released one too, when its
-- completion would be charged late), earlier than any due time a reconciler may have
-- claimed, so that its release sees the change and leaves the entry due. Runs after due.lua.
-- KEYS[1] reservation hash, KEYS[2] the reconciler's queue. ARGV[1] reservation id, ARGV[2] now ms.
-- Replies the state (JSON), or false for an unknown reservation.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return false
end
if awaits_ending(KEYS[1], state) then
  make_due(KEYS[2], ARGV[1], ARGV[2])
end
return state
