-- Stores a new tenant API key unless the tenant already has one of that name.
-- KEYS[1] the tenant's names (hash name -> key hash), KEYS[2] the key record (by hash).
-- ARGV[1] name, ARGV[2] key hash, ARGV[3] the `ApiKeyRecord` JSON.
-- Replies 1 when stored, 0 when the name is taken.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[3])
return 1
