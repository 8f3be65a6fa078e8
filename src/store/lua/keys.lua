-- Shared head of the money scripts: counter key names (redis.rs names the same keys for
-- period_usage) and reading a counter.
local function counter_keys(prefix, tenant, user, period)
  return {
    spent = prefix .. 'spent:' .. tenant .. ':' .. period,
    reserved = prefix .. 'reserved:' .. tenant .. ':' .. period,
    user_spent = prefix .. 'uspent:' .. tenant .. ':' .. period .. ':' .. user,
    user_reserved = prefix .. 'ureserved:' .. tenant .. ':' .. period .. ':' .. user,
    in_flight = prefix .. 'inflight:' .. tenant,
  }
end

local function counter(key)
  return tonumber(redis.call('GET', key) or '0')
end
