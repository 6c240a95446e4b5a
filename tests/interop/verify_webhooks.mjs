// Verifies webhook requests with the official Standard Webhooks library for Node.js.
//
//   node tests/interop/verify_webhooks.mjs requests.json
//
// requests.json: {"secret": "whsec_...", "requests": [{"headers": {...}, "body": "..."}]}.
// Prints a JSON list: for each request, the number of events in its verified body, or null
// when the library refuses it.
import { readFileSync } from "node:fs";
import { Webhook } from "standardwebhooks";

const { secret, requests } = JSON.parse(readFileSync(process.argv[2], "utf8"));
const webhook = new Webhook(secret);
const results = requests.map(({ headers, body }) => {
  try {
    return webhook.verify(body, headers).length;
  } catch {
    return null;
  }
});
console.log(JSON.stringify(results));
