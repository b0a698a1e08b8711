#!/usr/bin/env node
// publish.mjs: publish one event to a KnowledgeHub Realtime gateway
// (POST /api/realtime/events, SPEC §4). Node >= 18, no dependencies: it uses
// the built-in fetch.
//
//   KH_PUBLISH_KEY=pk_... node examples/node/publish.mjs CODE_CHANGE '{"file":"api/app.py","lines":12}'
//   KH_PUBLISH_KEY=pk_... node examples/node/publish.mjs DECISION_MADE '"use Redis"' --user alice --job job-42
//
// Arguments: the event type, then its data as JSON (default null).
// Options:   --user ID  make the event private to that user
//            --job ID   the event belongs to that job (only its subscribers get it)
// Env:       KH_URL          the gateway (default http://localhost:3000)
//            KH_PUBLISH_KEY  one of the server's publish_keys; a local development
//                            server keeps its own in ./data/dev-credentials.json ("publish_key")
//
// Prints the server's answer, {"id":"..."}, and exits 0 once the event is
// stored (201); otherwise prints the error to stderr and exits 1.
import {parseArgs} from 'node:util';

const {values, positionals} = parseArgs({
  allowPositionals: true,
  options: {user: {type: 'string'}, job: {type: 'string'}},
});
const [type, data = 'null'] = positionals;
const key = process.env.KH_PUBLISH_KEY;
if (!type || !key) {
  console.error('usage: KH_PUBLISH_KEY=... node publish.mjs TYPE [DATA_JSON] [--user ID] [--job ID]');
  process.exit(2);
}

const event = {type, data: JSON.parse(data)};
if (values.user) event.user_id = values.user;
if (values.job) event.job_id = values.job;

const base = process.env.KH_URL || 'http://localhost:3000';
const res = await fetch(new URL('/api/realtime/events', base), {
  method: 'POST',
  headers: {'Content-Type': 'application/json', Authorization: `Bearer ${key}`},
  body: JSON.stringify(event),
  signal: AbortSignal.timeout(10000),
});
const body = await res.text();
if (res.status !== 201) {
  console.error(`publish failed: HTTP ${res.status} ${body}`);
  process.exit(1);
}
console.log(body.trim());
