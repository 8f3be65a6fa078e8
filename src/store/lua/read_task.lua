-- A task query in one step: the rate limits, then the reservation bound to the task id.
-- Runs after gcra.lua. KEYS[1] task index. ARGV[1] key prefix, ARGV[2] rate checks JSON.
-- Replies {'rate_limited', rate}, {'not_found', rate} or {'found', rate, record}: the record
-- as one JSON object text (its hash values are JSON texts already), which the gateway parses
-- in one go rather than as a list of 50 bulk strings.
local decision = rate_limit(ARGV[1], ARGV[2])
local rate = rate_reply(decision)
if decision and not decision.allowed then
  return {'rate_limited', rate}
end
local reservation_id = redis.call('GET', KEYS[1])
if not reservation_id then
  return {'not_found', rate}
end
local fields = redis.call('HGETALL', ARGV[1] .. 'res:' .. reservation_id)
local parts = {}
for i = 1, #fields, 2 do
  parts[#parts + 1] = cjson.encode(fields[i]) .. ':' .. fields[i + 1]
end
return {'found', rate, '{' .. table.concat(parts, ',') .. '}'}
