// Validates an AsyncAPI document with the official parser (@asyncapi/parser) and prints what it
// read: the channels with their addresses and messages, as JSON on stdout. Exits 1 with the
// parser's diagnostics on stderr when the document has an error.
//
//   node tests/interop/validate_asyncapi.mjs catalog.json
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const path = process.argv[2];
if (!path) {
  console.error("usage: node validate_asyncapi.mjs <asyncapi document>");
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(path, "utf8"));
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  console.error(`${["error", "warning", "info", "hint"][d.severity]}: ${d.message} at ${d.path.join(".")}`);
}
if (!document || errors.length > 0) {
  process.exit(1);
}
const channels = document.channels().all().map((channel) => ({
  id: channel.id(),
  address: channel.address(),
  parameters: channel.parameters().all().map((p) => p.id()),
  messages: channel.messages().all().map((m) => ({
    name: m.name(),
    payload: m.payload()?.json() ?? null,
    headers: Object.keys(m.headers()?.properties() ?? {}),
  })),
}));
const operations = document.operations().all().map((op) => ({ id: op.id(), action: op.action() }));
console.log(JSON.stringify({ version: document.version(), channels, operations }));
