-- wrk script: GET /v1/tasks/{id}, cycling through the task ids in BENCH_IDS (one a line),
-- with the bench token (BENCH_TOKEN).
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
local ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do
  ids[#ids + 1] = line
end
local next_id = 0
request = function()
  next_id = next_id % #ids + 1
  return wrk.format("GET", "/v1/tasks/" .. ids[next_id])
end
