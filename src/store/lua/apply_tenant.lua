-- Seeds a tenant from config, or re-applies it when the config entry changed; settings an
-- admin changed later survive as long as the config hash stays the same.
-- KEYS[1] tenant record. ARGV[1] the new TenantRecord as JSON, ARGV[2] its config hash.
local stored = redis.call('GET', KEYS[1])
if stored and cjson.decode(stored).config_hash == ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
