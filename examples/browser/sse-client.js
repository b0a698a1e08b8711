/**
 * SSEClient: the JavaScript Server-Sent Events client of the KnowledgeHub
 * integration guide, made to work against the realtime gateway
 * (the wire contract, SPEC §3).
 *
 *   const sse = new SSEClient(token, ['CODE_CHANGE', 'DECISION_MADE']);
 *   sse.onEvent = (event) => console.log(event.type, event.data);
 *
 * It builds /api/realtime/stream?token=..&event_types=.. exactly like the
 * guide, and parses event.data as JSON in onmessage: events carry no
 * `event:` field, so onmessage gets them all. What changed, and why:
 * - the server is an option (default: the page's own origin, as in the
 *   guide); job ids can be given to receive those jobs' events too;
 * - every event is kept in `events` (in order) and handed to `onEvent`; the
 *   control messages, which the server sends as named events (`connected`,
 *   `gap`, `token_expired`), go to `controls` and `onControl`;
 * - the browser reconnects by itself (sending Last-Event-ID, so nothing is
 *   missed); when the server refuses the stream (400, 401, 429, 503) the
 *   browser gives up, and `onStatus` says so with state 'failed'.
 *
 * Options: {baseUrl, jobIds, onEvent, onControl, onStatus}.
 * Plain browser JavaScript, no build step: load it with a <script> tag.
 */
class SSEClient {
  constructor(token = null, eventTypes = [], options = {}) {
    const params = new URLSearchParams();
    if (token) params.append('token', token);
    if (eventTypes.length) params.append('event_types', eventTypes.join(','));
    if (options.jobIds && options.jobIds.length) params.append('job_ids', options.jobIds.join(','));

    this.onEvent = options.onEvent || null;
    this.onControl = options.onControl || null;
    this.onStatus = options.onStatus || null;
    this.events = [];     // every event received, in order
    this.controls = [];   // every control message received

    const base = options.baseUrl || '';
    const url = `${base}/api/realtime/stream${params.toString() ? '?' + params : ''}`;
    this.eventSource = new EventSource(url);

    this.eventSource.onopen = () => {
      console.log('SSE connected');
      this.status('open');
    };

    this.eventSource.onmessage = (event) => {
      const data = JSON.parse(event.data);
      this.events.push(data);
      if (this.onEvent) this.onEvent(data);
    };

    for (const name of ['connected', 'gap', 'token_expired']) {
      this.eventSource.addEventListener(name, (event) => {
        const data = JSON.parse(event.data);
        this.controls.push(data);
        if (this.onControl) this.onControl(data);
      });
    }

    this.eventSource.onerror = (error) => {
      console.error('SSE error:', error);
      // CONNECTING: the browser retries by itself; CLOSED: it gave up.
      this.status(this.eventSource.readyState === EventSource.CLOSED ? 'failed' : 'reconnecting');
    };
  }

  close() {
    this.eventSource.close();
    this.status('closed');
  }

  status(state) {
    if (this.onStatus) this.onStatus({state});
  }
}

globalThis.SSEClient = SSEClient;
