/**
 * WebSocketClient: the JavaScript WebSocket client of the KnowledgeHub
 * integration guide, made to work against the realtime gateway
 * (the wire contract, SPEC §2).
 *
 *   const ws = new WebSocketClient(token);             // token optional: anonymous without
 *   ws.subscribe('job-42');                            // events of that job too
 *   ws.onEvent = (event) => console.log(event.type, event.data);
 *
 * What changed from the guide, and why:
 * - the server URL is an option (default ws://localhost:3000/ws/notifications),
 *   and the token is URL-encoded;
 * - every received event is kept in `events` (in order) and handed to
 *   `onEvent`; control messages (`connected`, `subscribed`, `pong`, `error`,
 *   `gap`, ...: their `type` is lower case) go to `controls` and `onControl`;
 * - subscribe() before the socket is open no longer throws: the message is
 *   sent once it opens;
 * - the client reconnects the way the close codes say: 1000 and 40xx (bad or
 *   expired token) stop, 1001 (server restart) after a short random delay,
 *   42xx at once, anything else after a growing backoff; it resumes with
 *   `last_event_id` and the jobs it is subscribed to, so nothing is missed.
 *   An `invalid_token` error message also stops it, whatever close follows.
 *
 * Options: {url, onEvent, onControl, onStatus, reconnect (default true)}.
 * Plain browser JavaScript, no build step: load it with a <script> tag.
 */
class WebSocketClient {
  constructor(token = null, options = {}) {
    this.token = token;
    this.url = options.url || 'ws://localhost:3000/ws/notifications';
    this.onEvent = options.onEvent || null;
    this.onControl = options.onControl || null;
    this.onStatus = options.onStatus || null;
    this.reconnect = options.reconnect !== false;

    this.events = [];          // every event received, in order
    this.controls = [];        // every control message received
    this.jobs = new Set();     // jobs subscribed to (sent again on reconnect)
    this.lastEventId = null;   // id of the last event, to resume from
    this.pending = [];         // messages waiting for the socket to open
    this.attempts = 0;
    this.closed = false;
    this.tokenRejected = false; // the server said the token is not valid
    this.timer = null;
    this.connect();
  }

  connect() {
    const params = new URLSearchParams();
    if (this.token) params.set('token', this.token);
    if (this.jobs.size) params.set('job_ids', [...this.jobs].join(','));
    if (this.lastEventId) params.set('last_event_id', this.lastEventId);
    const url = `${this.url}${params.toString() ? '?' + params : ''}`;

    this.ws = new WebSocket(url);

    this.ws.onopen = () => {
      console.log('WebSocket connected');
      this.attempts = 0;
      this.status('open');
      for (const msg of this.pending.splice(0)) this.ws.send(msg);
    };

    this.ws.onmessage = (event) => {
      const data = JSON.parse(event.data);
      if (/^[A-Z]/.test(data.type)) {
        // An event (SPEC §1): event types are upper case.
        this.lastEventId = data.id;
        this.events.push(data);
        if (this.onEvent) this.onEvent(data);
      } else {
        if (data.type === 'error' && data.code === 'invalid_token') this.tokenRejected = true;
        this.controls.push(data);
        if (this.onControl) this.onControl(data);
      }
    };

    this.ws.onerror = (error) => {
      console.error('WebSocket error:', error);
    };

    this.ws.onclose = (event) => {
      const delay = this.retryDelay(event.code);
      this.status('closed', {code: event.code, reason: event.reason, retryInMs: delay});
      if (delay !== null) this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  // How long to wait before reconnecting after close code, null for never.
  retryDelay(code) {
    if (this.closed || !this.reconnect || this.tokenRejected) return null;
    if (code === 1000 || (code >= 4000 && code < 4100)) return null; // done, or the token is bad
    if (code >= 4200 && code < 4300) return 0;                       // resume at once
    if (code === 1001) return 500 + Math.random() * 1500;            // the server restarts
    this.attempts++;
    return Math.min(30000, 1000 * 2 ** (this.attempts - 1)) * (0.5 + Math.random() / 2);
  }

  subscribe(jobId) {
    this.jobs.add(jobId);
    this.send({type: 'subscribe', job_id: jobId});
  }

  unsubscribe(jobId) {
    this.jobs.delete(jobId);
    this.send({type: 'unsubscribe', job_id: jobId});
  }

  send(message) {
    const text = JSON.stringify(message);
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
    else this.pending.push(text);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.ws.close(1000);
  }

  status(state, detail = {}) {
    if (this.onStatus) this.onStatus({state, ...detail});
  }
}

globalThis.WebSocketClient = WebSocketClient;
