-- Shared head of the money scripts: counter key names (redis.rs names the same keys for
-- period_usage), appending to a tenant's ledger stream and updating the
-- usage aggregates (field names as in usage.rs).
local function counter_keys(prefix, tenant, user, period)
  return {
    spent = prefix .. 'spent:' .. tenant .. ':' .. period,
    reserved = prefix .. 'reserved:' .. tenant .. ':' .. period,
    user_spent = prefix .. 'uspent:' .. tenant .. ':' .. period .. ':' .. user,
    user_reserved = prefix .. 'ureserved:' .. tenant .. ':' .. period .. ':' .. user,
    in_flight = prefix .. 'inflight:' .. tenant,
  }
end

-- XADD at the entry's ms, or at the stream's last ms if that is later (stream ids must
-- grow; a replica whose clock is behind must not fail the step). Redis numbers the entries
-- within one ms. The entry is one field `e`: the LedgerEntry JSON. The common case is one
-- call: Redis refuses an id below the stream's last without writing, and only then is the
-- last id read.
local function ledger_append(prefix, tenant, time_ms, entry_json)
  local stream = prefix .. 'ledger:' .. tenant
  local ms = math.max(tonumber(time_ms), 0)
  local added = redis.pcall('XADD', stream, string.format('%d-*', ms), 'e', entry_json)
  if type(added) ~= 'table' or not added.err then
    return
  end
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  ms = math.max(ms, tonumber(string.match(last[1], '^(%d+)-')))
  redis.call('XADD', stream, string.format('%d-*', ms), 'e', entry_json)
end

-- Adds {metric = delta} to the task's buckets (its reservation day and month: weeks and the
-- total are summed from them when read, see RedisStore::usage), by quality/audio (`agg:`)
-- and by user (`aggu:`).
local function aggregate(prefix, tenant, user, quality, audio, buckets, deltas)
  local kind = '|' .. quality .. '|' .. (audio and '1' or '0')
  for _, bucket in ipairs(buckets) do
    local by_kind = prefix .. 'agg:' .. bucket .. ':' .. tenant
    local by_user = prefix .. 'aggu:' .. bucket .. ':' .. tenant
    for metric, delta in pairs(deltas) do
      redis.call('HINCRBY', by_kind, metric .. kind, delta)
      redis.call('HINCRBY', by_user, metric .. kind .. '|' .. user, delta)
    end
  end
end

-- The user counters of a period expire `retention_ms` after the period ends ('total' ones
-- are kept).
local function expire_user_counters(keys, period_end_ms, now_ms, retention_ms)
  if period_end_ms and period_end_ms ~= cjson.null then
    local ttl = string.format('%d', math.max(period_end_ms + retention_ms - now_ms, 1))
    redis.call('PEXPIRE', keys.user_spent, ttl)
    redis.call('PEXPIRE', keys.user_reserved, ttl)
  end
end
