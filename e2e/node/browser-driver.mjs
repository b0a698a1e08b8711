// Browser driver: headless Chromium (the system one, driven by
// playwright-core) on command from the Go test (see lib.mjs).
//
// env: KH_CHROMIUM  the browser binary (default /usr/bin/chromium)
//
// The page reports what its clients receive by dispatching
//   window.dispatchEvent(new CustomEvent('kh:message', {detail}))
// (examples/browser/index.html does); an init script forwards every detail
// here, and it is printed as {"ev":"page","detail":{...}}.
//
// commands:
//   {"op":"goto","url":"..."}                   then {"ev":"loaded","url":"..."}
//   {"op":"fill","selector":"#token","value":"..."}
//   {"op":"click","selector":"#connect"}
//   {"op":"eval","id":"x","js":"expression"}   then {"ev":"result","id":"x","value":<JSON>}
//   {"op":"screenshot","path":"/tmp/x.png"}     then {"ev":"screenshot","path":"...","bytes":n}
//   {"op":"exit"}
// also reported: {"ev":"console","type":"error","text":"..."}, {"ev":"pageerror","message":"..."}
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
const context = await browser.newContext({viewport: {width: 1100, height: 800}});
context.setDefaultTimeout(ACTION_TIMEOUT);
await context.exposeBinding('__khForward', (_source, detail) => emit({ev: 'page', detail}));
await context.addInitScript(() => {
  window.addEventListener('kh:message', (e) => window.__khForward(e.detail));
});
const page = await context.newPage();
page.on('console', (m) => emit({ev: 'console', type: m.type(), text: m.text()}));
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
    case 'eval': {
      const value = await page.evaluate(cmd.js);
      emit({ev: 'result', id: cmd.id, value: value ?? null});
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
