-- Sets KEYS[1] to ARGV[2] only if it still holds ARGV[1] ('' for no value): the caller read,
-- planned and retries on a concurrent change. Replies 1 when written, 0 otherwise.
local stored = redis.call('GET', KEYS[1]) or ''
if stored ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
