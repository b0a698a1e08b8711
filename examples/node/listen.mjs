#!/usr/bin/env node
// listen.mjs: print the events of a KnowledgeHub Realtime gateway as they
// arrive, one JSON object a line on stdout (WebSocket /ws/notifications,
// SPEC §2). Control messages (connected, gap, ...) go to stderr.
//
//   node examples/node/listen.mjs                                  anonymous: public events
//   KH_TOKEN=eyJ... node examples/node/listen.mjs --jobs job-42    also alice's and job-42's
//   node examples/node/listen.mjs --types CODE_CHANGE,DECISION_MADE | jq .
//
// Options: --jobs a,b     jobs to subscribe to
//          --types A,B    only these event types
// Env:     KH_URL    the gateway (default http://localhost:3000)
//          KH_TOKEN  a token (`knowledgehub token --user alice` mints one for a local server)
//
// It reconnects as the close code says (SPEC §2: 40xx stop, 42xx at once,
// others after a pause), resuming with last_event_id so no event is missed;
// Ctrl-C (or SIGTERM) ends it.
//
// WebSocket is built into Node >= 22; on Node 20 run it with
// `node --experimental-websocket`, or `npm install ws` next to it.
import {parseArgs} from 'node:util';

const WebSocketImpl = globalThis.WebSocket ?? (await import('ws')).default;
const {values} = parseArgs({options: {jobs: {type: 'string'}, types: {type: 'string'}}});

const url = new URL('/ws/notifications', process.env.KH_URL || 'http://localhost:3000');
url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
if (process.env.KH_TOKEN) url.searchParams.set('token', process.env.KH_TOKEN);
if (values.jobs) url.searchParams.set('job_ids', values.jobs);
if (values.types) url.searchParams.set('event_types', values.types);

let ws;
let lastEventId;
let stopping = false;

function connect() {
  if (lastEventId) url.searchParams.set('last_event_id', lastEventId);
  ws = new WebSocketImpl(url);
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (/^[A-Z]/.test(msg.type)) {
      lastEventId = msg.id; // an event: upper-case type
      console.log(JSON.stringify(msg));
    } else {
      console.error(JSON.stringify(msg));
    }
  };
  ws.onclose = (e) => {
    if (stopping || e.code === 1000 || (e.code >= 4000 && e.code < 4100)) {
      console.error(`closed: ${e.code} ${e.reason}`);
      process.exit(stopping || e.code === 1000 ? 0 : 1);
    }
    const delay = e.code >= 4200 && e.code < 4300 ? 0 : 1000 + Math.random() * 2000;
    console.error(`closed: ${e.code} ${e.reason}; reconnecting in ${Math.round(delay)} ms`);
    setTimeout(connect, delay);
  };
}

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    stopping = true;
    setTimeout(() => process.exit(0), 2000).unref(); // in case the server never answers
    if (ws.readyState === WebSocketImpl.OPEN) ws.close(1000);
    else process.exit(0);
  });
}
connect();
