"""A `vidgate store import` dump with N tenants and M ledger entries (settlements spread over
the tenants and the current month), with the month's usage aggregates to match: the store the
console's first-paint figure is measured on. Usage: big_store.py TENANTS ENTRIES > dump.jsonl"""
import json
import sys
import time

tenants, entries = int(sys.argv[1]), int(sys.argv[2])
now_ms = int(time.time() * 1000)
month = time.strftime("%Y-%m", time.gmtime())
out = sys.stdout
spent = {}
for t in range(tenants):
    tid = f"team-{t:02d}"
    out.write(json.dumps({"kind": "tenant", "id": tid, "config_hash": "", "settings": {
        "budget": 500_000_000, "period": "month", "creates_per_minute": 60, "creates_burst": 10,
        "reads_per_minute": 600, "reads_burst": 100, "max_concurrent_tasks": 5, "user_budget": None,
        "user_creates_per_minute": 0, "allowed_qualities": ["720p", "1080p"]}}) + "\n")
for i in range(entries):
    tid = f"team-{i % tenants:02d}"
    amount = 250_000 + (i % 7) * 1_000
    spent[tid] = spent.get(tid, 0) + amount
    # Spread over the last few days of this month, oldest first per tenant.
    ms = now_ms - (entries - i) * 20
    out.write(json.dumps({"kind": "ledger", "tenant": tid, "ms": ms, "seq": 0, "entry": {
        "time_ms": ms, "kind": "settle", "tenant": tid, "user": f"user-{i % 13}",
        "reservation_id": f"rsv_{i:08d}", "task_id": f"task-{i:08d}", "model": "wan2.6-reference-video-flash",
        "quality": "720p", "audio": True, "billed_input_ms": 4000, "billed_output_ms": 5000,
        "amount": amount, "currency": "USD", "request_id": f"req_{i:08d}", "actor": "", "note": ""}}) + "\n")
for tid, total in spent.items():
    for field, value in (("spent|720p|1", total), ("n_settled|720p|1", entries // tenants)):
        out.write(json.dumps({"kind": "aggregate", "bucket": month, "tenant": tid, "user": False,
                              "field": field, "value": value}) + "\n")
