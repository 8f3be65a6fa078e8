"""Schemathesis hooks: every URL field a generated request carries is pinned to the loopback
fixture server (the mock upstream's file host), so no generated URL ever leaves the machine."""

import os

import schemathesis

REFERENCE = os.environ["VIDGATE_ST_REFERENCE_URL"]
RECEIVER = os.environ["VIDGATE_ST_RECEIVER_URL"]


def _pin(body):
    if not isinstance(body, dict):
        return body
    urls = body.get("video_urls")
    if isinstance(urls, list):
        body["video_urls"] = [REFERENCE if isinstance(u, str) else u for u in urls]
    if isinstance(body.get("callback_url"), str):
        body["callback_url"] = RECEIVER
    if isinstance(body.get("file_url"), str):
        body["file_url"] = REFERENCE
    return body


@schemathesis.hook
def map_case(context, case):
    case.body = _pin(case.body)
    return case
