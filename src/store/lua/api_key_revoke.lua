-- Deletes a tenant API key, if the tenant's name still points at that key.
-- KEYS[1] the tenant's names (hash name -> key hash), KEYS[2] the key record (by hash).
-- ARGV[1] name, ARGV[2] key hash. Replies 1 when deleted, 0 when it was gone already.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
