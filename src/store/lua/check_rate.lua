-- The rate limits of a call that touches nothing else. Runs after gcra.lua.
-- ARGV[1] key prefix, ARGV[2] rate checks JSON. Replies the decision ({} for none).
return rate_reply(rate_limit(ARGV[1], ARGV[2]))
