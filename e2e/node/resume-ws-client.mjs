// A WebSocket client that reconnects by itself: a real `ws` connection to
// /ws/notifications which, whenever it closes (server killed, network
// error, any close code), connects again after a short delay with
// last_event_id set to the id of the last event it received. Used by
// e2e/durability_test.go to check that a client resuming across server
// restarts receives every event exactly once.
//
// env: KH_WS_URL  ws://127.0.0.1:port/ws/notifications
//      KH_RETRY_MS reconnect delay (default 300)
//
// commands:
//   {"op":"start"}   connect (once; reconnects follow by themselves)
//   {"op":"exit"}
// reports (conn is always "ws"):
//   {"ev":"connecting","attempt":n,"last_event_id":"..."|null}
//   {"ev":"open","attempt":n}
//   {"ev":"message","text":"...","msg":<parsed JSON or null>}
//   {"ev":"close","code":1006,"reason":"..."}  {"ev":"error","message":"..."}
import WebSocket from 'ws';
import {emit, fail, serveCommands, tryJSON} from './lib.mjs';

const base = process.env.KH_WS_URL;
if (!base) fail('KH_WS_URL is not set');
const retryMs = Number(process.env.KH_RETRY_MS || 300);
const conn = 'ws';

let lastEventId = null;
let attempt = 0;
let socket = null;
let stopped = false;

function connect() {
  if (stopped) return;
  attempt++;
  const url = new URL(base);
  if (lastEventId) url.searchParams.set('last_event_id', lastEventId);
  emit({ev: 'connecting', conn, attempt, last_event_id: lastEventId});
  const ws = new WebSocket(url, {handshakeTimeout: 5000, maxPayload: 1 << 20});
  socket = ws;
  const n = attempt;
  ws.on('open', () => emit({ev: 'open', conn, attempt: n}));
  ws.on('message', (data, isBinary) => {
    const text = data.toString('utf8');
    const msg = tryJSON(text) ?? null;
    // Event types are upper case (SPEC §1); only events move the resume id.
    if (msg && typeof msg.type === 'string' && /^[A-Z]/.test(msg.type) && typeof msg.id === 'string') {
      lastEventId = msg.id;
    }
    emit({ev: 'message', conn, binary: isBinary, text, msg});
  });
  ws.on('error', (err) => emit({ev: 'error', conn, message: err.message}));
  ws.on('close', (code, reason) => {
    emit({ev: 'close', conn, code, reason: reason.toString('utf8')});
    if (!stopped) setTimeout(connect, retryMs);
  });
}

serveCommands(async (cmd) => {
  switch (cmd.op) {
    case 'start':
      if (socket) throw new Error('already started');
      connect();
      return false;
    case 'exit':
      stopped = true;
      if (socket) socket.terminate();
      emit({ev: 'exit'});
      process.exit(0);
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
});
