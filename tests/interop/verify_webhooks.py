"""Verifies webhook requests with the official Standard Webhooks library for Python.

    PYTHONPATH=tests/interop/python python3 tests/interop/verify_webhooks.py requests.json

requests.json: {"secret": "whsec_...", "requests": [{"headers": {...}, "body": "..."}]}.
Prints a JSON list: for each request, the number of events in its verified body, or null when
the library refuses it.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook

with open(sys.argv[1], encoding="utf-8") as file:
    case = json.load(file)
webhook = Webhook(case["secret"])
results = []
for request in case["requests"]:
    try:
        events = webhook.verify(request["body"], request["headers"])
        results.append(len(events))
    except Exception:  # the library raises WebhookVerificationError (or a decoding error)
        results.append(None)
print(json.dumps(results))
