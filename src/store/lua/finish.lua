-- Settle or refund, once: only a 'reserved' record moves; money moves in the record's own
-- period. Runs after keys.lua.
-- KEYS[1] reservation hash. ARGV[1] key prefix, ARGV[2] amount charged (added to spent),
-- ARGV[3..] record fields and JSON values to write.
-- Replies {'not_found'}, {'already_final', HGETALL} or {'applied', HGETALL}.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {'not_found'}
end
if state ~= '"reserved"' then
  return {'already_final', redis.call('HGETALL', KEYS[1])}
end

local record = redis.call('HMGET', KEYS[1], 'tenant', 'user', 'period', 'reserved')
local keys = counter_keys(ARGV[1], cjson.decode(record[1]), cjson.decode(record[2]), cjson.decode(record[3]))
local hold = record[4]
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('DECRBY', keys.reserved, hold)
redis.call('DECRBY', keys.user_reserved, hold)
redis.call('INCRBY', keys.spent, ARGV[2])
redis.call('INCRBY', keys.user_spent, ARGV[2])
redis.call('DECR', keys.in_flight)
return {'applied', redis.call('HGETALL', KEYS[1])}
