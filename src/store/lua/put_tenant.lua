-- Writes a tenant record with its budget_change ledger entry, only if the stored record is
-- still the one the caller planned from (compare-and-set; the caller re-reads and retries).
-- Runs after keys.lua.
-- KEYS[1] tenant record, KEYS[2] tenant index set.
-- ARGV[1] key prefix, ARGV[2] tenant id, ARGV[3] the stored JSON read ('' for none),
-- ARGV[4] the new record JSON, ARGV[5] entry time ms, ARGV[6] entry JSON.
-- Replies 1 when written, 0 when the stored record changed meanwhile.
local stored = redis.call('GET', KEYS[1]) or ''
if stored ~= ARGV[3] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[2])
ledger_append(ARGV[1], ARGV[2], ARGV[5], ARGV[6])
return 1
