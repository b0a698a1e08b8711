// Console driver: headless Chromium (the system one, driven by
// playwright-core) looking at the gateway's own live console ("/"), on
// command from the Go test e2e/console_test.go (protocol: see lib.mjs).
//
// env: KH_CHROMIUM  the browser binary (default /usr/bin/chromium)
//
// Reported without being asked:
//   {"ev":"request","url":"...","method":"GET","type":"document|script|eventsource|fetch|..."}
//       every request the page (or a worker of it) makes, so that the test
//       can check that the console talks to its own origin only
//   {"ev":"row","id":"...","type":"...","job":"...","user":"...","at":<ms since epoch>}
//       an .event-row added to #event-list (a MutationObserver installed
//       before the console's script runs), in the order the page received
//       the events; "at" is the browser's clock
//   {"ev":"console","type":"error","text":"...","url":"..."}, {"ev":"pageerror","message":"..."}
//
// commands:
//   {"op":"goto","url":"..."}                        then {"ev":"loaded","url":"...","status":200}
//   {"op":"fill","selector":"#x","value":"..."}
//   {"op":"click","selector":"#x"}
//   {"op":"check","selector":"#x"}, {"op":"uncheck","selector":"#x"}
//   {"op":"select","selector":"#x","value":"..."}
//   {"op":"eval","id":"x","js":"expression"}        then {"ev":"result","id":"x","value":<JSON>}
//   {"op":"waitfor","id":"x","js":"expression","timeout":ms}
//       polls the expression (every 15 ms) until it is truthy, then
//       {"ev":"waited","id":"x","ok":true,"ms":<elapsed>,"value":<JSON>};
//       on timeout {"ev":"waited","id":"x","ok":false,"ms":...,"value":<last value>}
//   {"op":"screenshot","path":"/tmp/x.png"}          then {"ev":"screenshot","path":"...","bytes":n}
//   {"op":"exit"}
import {statSync} from 'node:fs';
import {chromium} from 'playwright-core';
import {emit, serveCommands} from './lib.mjs';

const ACTION_TIMEOUT = 10000;

const browser = await chromium.launch({
  executablePath: process.env.KH_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  timeout: 30000,
});
const context = await browser.newContext({viewport: {width: 1280, height: 900}});
context.setDefaultTimeout(ACTION_TIMEOUT);
context.on('request', (r) => emit({ev: 'request', url: r.url(), method: r.method(), type: r.resourceType()}));
await context.exposeBinding('__khRow', (_source, row) => emit({ev: 'row', ...row}));
await context.addInitScript(() => {
  const watch = () => {
    const list = document.getElementById('event-list');
    if (!list) return;
    new MutationObserver((records) => {
      const at = Date.now();
      // The console inserts each batch of rows newest first: report them
      // oldest first, the order in which the page received them.
      for (const rec of records) {
        for (const n of [...rec.addedNodes].reverse()) {
          if (n.nodeType !== 1 || !n.classList.contains('event-row')) continue;
          const text = (cls) => (n.querySelector('.' + cls) || {}).textContent || '';
          window.__khRow({id: n.getAttribute('data-id'), type: n.getAttribute('data-type'),
            job: text('job'), user: text('user'), at});
        }
      }
    }).observe(list, {childList: true});
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', watch);
  else watch();
});
const page = await context.newPage();
page.on('console', (m) => emit({ev: 'console', type: m.type(), text: m.text(), url: m.location()?.url || ''}));
page.on('pageerror', (err) => emit({ev: 'pageerror', message: err.message}));
emit({ev: 'ready', version: browser.version()});

serveCommands(async (cmd) => {
  switch (cmd.op) {
    case 'goto': {
      const res = await page.goto(cmd.url, {waitUntil: 'load'});
      emit({ev: 'loaded', url: cmd.url, status: res ? res.status() : null});
      return false;
    }
    case 'fill':
      await page.fill(cmd.selector, cmd.value);
      return false;
    case 'click':
      await page.click(cmd.selector);
      return false;
    case 'check':
      await page.check(cmd.selector);
      return false;
    case 'uncheck':
      await page.uncheck(cmd.selector);
      return false;
    case 'select':
      await page.selectOption(cmd.selector, cmd.value);
      return false;
    case 'eval': {
      const value = await page.evaluate(cmd.js);
      emit({ev: 'result', id: cmd.id, value: value ?? null});
      return false;
    }
    case 'waitfor': {
      // Polled from here with page.evaluate (which the console's strict
      // Content Security Policy allows, unlike page.waitForFunction with a
      // string, which needs 'unsafe-eval').
      const start = Date.now();
      const timeout = cmd.timeout || ACTION_TIMEOUT;
      for (;;) {
        const value = await page.evaluate(cmd.js);
        if (value) {
          emit({ev: 'waited', id: cmd.id, ok: true, ms: Date.now() - start, value});
          break;
        }
        if (Date.now() - start >= timeout) {
          emit({ev: 'waited', id: cmd.id, ok: false, ms: Date.now() - start, value: value ?? null});
          break;
        }
        await new Promise((resolve) => setTimeout(resolve, 15));
      }
      return false;
    }
    case 'screenshot':
      await page.screenshot({path: cmd.path, fullPage: true});
      emit({ev: 'screenshot', path: cmd.path, bytes: statSync(cmd.path).size});
      return false;
    case 'exit':
      await browser.close();
      emit({ev: 'exit'});
      process.exit(0);
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
});
