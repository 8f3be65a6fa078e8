-- Takes the lease on a due queue entry, so one replica at a time works on it; a dead
-- replica's lease runs out by itself (PX).
-- KEYS[1] queue (sorted set, score = due ms), KEYS[2] lease.
-- ARGV[1] id, ARGV[2] now ms, ARGV[3] owner, ARGV[4] lease ms.
-- Replies the entry's due ms, or false when it is not due, gone, or leased.
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then
  return false
end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then
  return false
end
return due
