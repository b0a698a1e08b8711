// Server-Sent Events driver: `eventsource` package streams from
// /api/realtime/stream, opened and closed on command from the Go test
// (see lib.mjs).
//
// env: KH_URL  http://127.0.0.1:port
//
// commands:
//   {"op":"open","conn":"a","query":{"token":"...","event_types":"..."},
//    "lastEventId":"...",           sent as the Last-Event-ID header of the first request
//    "authorization":"Bearer ..."}  sent as the Authorization header
//   {"op":"close","conn":"a"}
//   {"op":"exit"}
// reports (every one names its conn):
//   {"ev":"open"}
//   {"ev":"message","type":"message","data":<parsed JSON>,"raw":"...","lastEventId":"..."}  onmessage
//   {"ev":"named","type":"connected","data":<parsed JSON>,"raw":"..."}                      addEventListener
//   {"ev":"error","code":401,"message":"...","readyState":2}
import {EventSource} from 'eventsource';
import {emit, fail, serveCommands, tryJSON} from './lib.mjs';

const base = process.env.KH_URL;
if (!base) fail('KH_URL is not set');
const conns = new Map();
// The control messages of SPEC §3, sent as named events.
const NAMED = ['connected', 'gap', 'token_expired'];

function open({conn, query = {}, lastEventId, authorization}) {
  if (conns.has(conn)) throw new Error(`conn ${conn} already exists`);
  const url = new URL('/api/realtime/stream', base);
  for (const [k, v] of Object.entries(query ?? {})) url.searchParams.set(k, v);
  const extra = {};
  if (lastEventId) extra['Last-Event-ID'] = lastEventId;
  if (authorization) extra.Authorization = authorization;
  // The package sets Last-Event-ID itself once it has seen an id: its
  // headers come last so they win over the initial one.
  const init = Object.keys(extra).length
    ? {fetch: (input, reqInit) => fetch(input, {...reqInit, headers: {...extra, ...reqInit.headers}})}
    : {};
  const es = new EventSource(url, init);
  conns.set(conn, es);
  es.onopen = () => emit({ev: 'open', conn});
  es.onmessage = (e) => emit({ev: 'message', conn, type: e.type, raw: e.data, data: tryJSON(e.data) ?? null, lastEventId: e.lastEventId});
  for (const name of NAMED) {
    es.addEventListener(name, (e) => emit({ev: 'named', conn, type: e.type, raw: e.data, data: tryJSON(e.data) ?? null}));
  }
  es.onerror = (e) => emit({ev: 'error', conn, code: e.code ?? null, message: e.message ?? '', readyState: es.readyState});
}

serveCommands(async (cmd) => {
  switch (cmd.op) {
    case 'open':
      open(cmd);
      return false;
    case 'close': {
      const es = conns.get(cmd.conn);
      if (!es) throw new Error(`no conn ${cmd.conn}`);
      es.close();
      emit({ev: 'closed', conn: cmd.conn});
      return false;
    }
    case 'exit':
      for (const es of conns.values()) es.close();
      emit({ev: 'exit'});
      process.exit(0);
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
});
