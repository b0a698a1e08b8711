// WebSocket driver: real `ws` client connections to /ws/notifications,
// opened, fed and closed on command from the Go test (see lib.mjs).
//
// env: KH_WS_URL  ws://127.0.0.1:port/ws/notifications
//
// commands:
//   {"op":"open","conn":"a","query":{"token":"..."},"headers":{...},"origin":"http://x"}
//   {"op":"send","conn":"a","text":"..."}        a text message, sent as is
//   {"op":"close","conn":"a"}                    close 1000
//   {"op":"exit"}
// reports (every one names its conn):
//   {"ev":"open"}  {"ev":"message","text":"...","msg":<parsed JSON or null>,"binary":false}
//   {"ev":"close","code":4001,"reason":"..."}  {"ev":"error","message":"..."}
//   {"ev":"unexpected-response","status":403,"headers":{...},"body":"..."}
import WebSocket from 'ws';
import {emit, fail, serveCommands, tryJSON} from './lib.mjs';

const base = process.env.KH_WS_URL;
if (!base) fail('KH_WS_URL is not set');
const conns = new Map();

function open({conn, query = {}, headers = {}, origin}) {
  if (conns.has(conn)) throw new Error(`conn ${conn} already exists`);
  const url = new URL(base);
  for (const [k, v] of Object.entries(query ?? {})) url.searchParams.set(k, v);
  const opts = {headers: headers ?? {}, handshakeTimeout: 5000, maxPayload: 1 << 20};
  if (origin) opts.origin = origin;
  const ws = new WebSocket(url, opts);
  conns.set(conn, ws);
  ws.on('open', () => emit({ev: 'open', conn}));
  ws.on('message', (data, isBinary) => {
    const text = data.toString('utf8');
    emit({ev: 'message', conn, binary: isBinary, text, msg: tryJSON(text) ?? null});
  });
  ws.on('close', (code, reason) => emit({ev: 'close', conn, code, reason: reason.toString('utf8')}));
  ws.on('error', (err) => emit({ev: 'error', conn, message: err.message}));
  // With this listener, ws leaves a refused handshake to us: report the
  // status and the body, then drop the request.
  ws.on('unexpected-response', (req, res) => {
    const chunks = [];
    let size = 0;
    res.on('data', (c) => {
      size += c.length;
      if (size <= 64 << 10) chunks.push(c);
    });
    res.on('end', () => {
      emit({
        ev: 'unexpected-response', conn, status: res.statusCode, headers: res.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      });
      req.destroy();
    });
  });
}

serveCommands(async (cmd) => {
  switch (cmd.op) {
    case 'open':
      open(cmd);
      return false;
    case 'send': {
      const ws = conns.get(cmd.conn);
      if (!ws) throw new Error(`no conn ${cmd.conn}`);
      await new Promise((resolve, reject) => ws.send(cmd.text, (err) => (err ? reject(err) : resolve())));
      return false;
    }
    case 'close': {
      const ws = conns.get(cmd.conn);
      if (!ws) throw new Error(`no conn ${cmd.conn}`);
      ws.close(1000, 'done');
      return false;
    }
    case 'exit':
      for (const ws of conns.values()) ws.terminate();
      emit({ev: 'exit'});
      process.exit(0);
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
});
