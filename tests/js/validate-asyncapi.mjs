// Validates an AsyncAPI document with the official parser (@asyncapi/parser).
// Usage: node validate-asyncapi.mjs FILE. Prints one JSON line: the document's channels and
// operations as the parser read them, and its diagnostics; exit status 1 on any error.
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const SEVERITY = ["error", "warning", "info", "hint"];
const file = process.argv[2];
const { document, diagnostics } = await new Parser().parse(await readFile(file, "utf8"));
const found = diagnostics.map((d) => ({
  severity: SEVERITY[d.severity] ?? String(d.severity), code: d.code, message: d.message,
  path: d.path.join("."),
}));
const errors = found.filter((d) => d.severity === "error");
process.stdout.write(JSON.stringify({
  valid: document !== undefined && errors.length === 0,
  version: document?.version() ?? null,
  channels: document ? document.channels().all().map((c) => c.address()) : [],
  operations: document ? document.operations().all().map((o) => o.id()) : [],
  messages: document ? document.components().messages().all().map((m) => m.id()) : [],
  diagnostics: found,
}) + "\n");
process.exit(errors.length === 0 && document !== undefined ? 0 : 1);
