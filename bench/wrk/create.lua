-- wrk script: POST one create per request, with the bench token and the cached reference
-- video (BENCH_TOKEN, BENCH_BODY from bench/run.sh).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
