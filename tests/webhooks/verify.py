"""Verifies relayed callbacks with the reference Standard Webhooks library, as a receiving
team would. Reads a JSON array of {"secret", "headers", "body"} on stdin; prints a JSON array
with, for each, "ok" or "rejected: <reason>"."""

import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

results = []
for case in json.load(sys.stdin):
    try:
        Webhook(case["secret"]).verify(case["body"], case["headers"])
        results.append("ok")
    except WebhookVerificationError as error:
        results.append(f"rejected: {error}")
print(json.dumps(results))
