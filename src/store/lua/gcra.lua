-- Shared head of the scripts that limit request rates: GCRA over every check on the Redis
-- clock (replica clocks do not matter), all checks admitting before any is charged. The
-- arithmetic is `limits::gcra` in Rust.

-- The stricter of two decisions: a refusal wins (the longer wait), else fewer remaining.
local function tighter(a, b)
  if a == nil then return b end
  if a.allowed ~= b.allowed then
    if a.allowed then return b end
    return a
  end
  if not a.allowed then
    if b.retry_after > a.retry_after then return b end
    return a
  end
  if b.remaining < a.remaining then return b end
  return a
end

-- checks_json: [{key, interval, burst, per_minute}]. Returns the tightest decision, or nil
-- when there is nothing to check.
local function rate_limit(prefix, checks_json)
  local checks = cjson.decode(checks_json)
  if #checks == 0 then return nil end
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local decision, updates = nil, {}
  for _, check in ipairs(checks) do
    local key = prefix .. 'rate:' .. check.key
    local tolerance = check.interval * (check.burst - 1)
    local tat = math.max(tonumber(redis.call('GET', key) or now), now)
    local d
    if tat - now > tolerance then
      d = {allowed = false, remaining = 0, retry_after = tat - now - tolerance, reset = tat - now,
           per_minute = check.per_minute}
    else
      local new_tat = tat + check.interval
      local ahead = new_tat - now
      local remaining = 0
      if ahead <= tolerance + check.interval then
        remaining = math.floor((tolerance + check.interval - ahead) / check.interval)
      end
      d = {allowed = true, remaining = remaining, retry_after = 0, reset = ahead, per_minute = check.per_minute}
      table.insert(updates, {key, new_tat, ahead})
    end
    decision = tighter(decision, d)
  end
  if decision.allowed then
    for _, u in ipairs(updates) do
      redis.call('SET', u[1], string.format('%d', u[2]), 'PX', string.format('%d', u[3] + 1000))
    end
  end
  return decision
end

-- A decision as a reply array: {allowed 1/0, remaining, retry_after ms, reset ms, per_minute};
-- {} for none.
local function rate_reply(d)
  if d == nil then return {} end
  return {d.allowed and 1 or 0, d.remaining, d.retry_after, d.reset, d.per_minute}
end
