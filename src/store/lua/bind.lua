-- Attaches the upstream task id to a reservation and indexes it; the first bind wins, and
-- keeps the upstream's answer for idempotent retries.
-- KEYS[1] reservation hash, KEYS[2] task index. ARGV[1] task id as JSON, ARGV[2] reservation
-- id, ARGV[3] the upstream's answer as a JSON string value.
-- Replies {'not_found'}, {'bound'} when this call bound a hold still reserved (the caller
-- has the rest of the record), else {'current', HGETALL}.
local found = redis.call('HMGET', KEYS[1], 'task_id', 'state')
if not found[2] then
  return {'not_found'}
end
if found[1] == 'null' then
  redis.call('HSET', KEYS[1], 'task_id', ARGV[1], 'created_task', ARGV[3])
  redis.call('SET', KEYS[2], ARGV[2])
  if found[2] == '"reserved"' then
    return {'bound'}
  end
end
return {'current', redis.call('HGETALL', KEYS[1])}
