#!/usr/bin/env node
// Headless-Chromium tests of html/pushwire.js (the browser client library).
//
// Driven by tests/integration/test_client_js.py, which starts a real stack
// (private channels p:*, HS256 tokens) and this script once per session:
//
//   node tests/browser/client.test.mjs --serve
//
// The protocol (JSON lines on stdin/stdout, logs on stderr) and the
// session's Chromium are bridge.mjs's, shared with page.test.mjs.
// ACTIONs (the Harness in test_client_js.py): install_pages, publish, mint, publisher_start /
// publisher_stop / publisher_count (a background publisher), stop_relay /
// start_relay, history, other_origin_page (serve HTML on another origin).
//
// The pages (PAGES: /__pwtest/classic.html, module.html, both.html) are
// written by the harness (install_pages) into the stack's copy of html/, so
// nginx serves them next to /pushwire.js and /pushwire.esm.js, same-origin
// with the stack. The library is driven through window.__t (initScript).
//
// Environment: PW_CHROMIUM (default /usr/bin/chromium).

import { ask, log, main, sleep } from './bridge.mjs';

// ------------------------------------------------------------------ pages
const PAGES = {
  'classic.html': `<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>pushwire classic</title></head><body>
<script src="/pushwire.js"></script>
<script>window.__lib = window.Pushwire; window.loaded = typeof Pushwire === "function" && typeof Pushwire.PushwireError === "function" ? "classic" : "broken";</script>
</body></html>`,
  'module.html': `<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>pushwire module</title></head><body>
<script type="module">
import { Pushwire, PushwireError } from "/pushwire.esm.js";
import Default from "/pushwire.esm.js";
window.__lib = Pushwire;
window.loaded = typeof Pushwire === "function" && typeof PushwireError === "function" && Default === Pushwire ? "module" : "broken";
</script>
<script>window.addEventListener("error", (e) => { window.loaded = "error: " + e.message; });</script>
</body></html>`,
  // Both ways in one page: one copy of the library serves both.
  'both.html': `<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>pushwire both</title></head><body>
<script src="/pushwire.js"></script>
<script type="module">
import { Pushwire } from "/pushwire.esm.js";
window.__lib = Pushwire;
window.loaded = Pushwire === window.Pushwire ? "both" : "two copies";
</script>
</body></html>`,
};

// Runs in every page before its scripts: window.__t drives Pushwire
// objects and records what they deliver.
function initScript() {
  const T = { clients: {}, subs: {}, log: {}, resets: [], errors: [], states: [], tokenCalls: 0, publishErrors: [] };
  Object.defineProperty(window, '__t', { value: T });
  T.lib = () => window.__lib || window.Pushwire;
  T.start = (name, opts, subs) => {
    const o = Object.assign({}, opts || {});
    if (o.getTokenVia) {
      delete o.getTokenVia;
      o.getToken = async (ch) => { T.tokenCalls++; return window.pwToken(name, ch); };
    }
    o.onStateChange = (s) => T.states.push({ name, state: s.state, transport: s.transport, retryIn: s.retryIn, t: Date.now() });
    const P = T.lib();
    T.clients[name] = new P(o);
    for (const [ch, so] of Object.entries(subs || {})) T.sub(name, ch, so);
    return true;
  };
  T.sub = (name, ch, so) => {
    const key = name + '/' + ch;
    T.log[key] = T.log[key] || [];
    const pw = T.clients[name];
    T.subs[key] = pw.subscribe(ch, Object.assign({}, so || {}, {
      onMessage: (m) => T.log[key].push([m.id, m.content, m.epoch, pw.transport]),
      onReset: (i) => T.resets.push(Object.assign({ key }, i)),
      onError: (e) => T.errors.push({ key, status: e.status, message: e.message, t: Date.now() }),
    }));
    return true;
  };
  T.subState = (key) => (T.subs[key] ? T.subs[key].state : null);
  T.publish = async (name, ch, content, o) => {
    try {
      const r = await T.clients[name].publish(ch, content, o || {});
      return { ok: true, r };
    } catch (e) {
      T.publishErrors.push({ ch, status: e.status, message: e.message });
      return { ok: false, status: e.status, message: e.message, name: e.name };
    }
  };
  T.info = (name) => {
    const pw = T.clients[name];
    if (!pw) return null;
    return {
      state: pw.state, transport: pw.transport, stats: pw.stats,
      subs: pw.subscriptions.map((s) => ({ channel: s.channel, state: s.state, epoch: s.epoch, lastId: s.lastId, received: s.received, duplicates: s.duplicates, resets: s.resets, gaps: s.gaps })),
    };
  };
}

const runs = [];

class Run {
  // allow: regexps of console errors expected in every page of the
  // scenario; anyAllowed: names of pages whose console errors are all expected.
  constructor(browser, base, allow = [], anyAllowed = []) {
    this.browser = browser;
    this.base = base;
    this.allow = allow;
    this.anyAllowed = anyAllowed;
    this.contexts = [];
    this.problems = [];
    this.consoleSeen = [];
    runs.push(this);
  }

  async open(pageName, name, { tokenFor = null, url = null } = {}) {
    const ctx = await this.browser.newContext({ locale: 'en-US', timezoneId: 'UTC' });
    this.contexts.push(ctx);
    ctx.setDefaultTimeout(15000);
    await ctx.addInitScript(initScript);
    const page = await ctx.newPage();
    page.pwName = name;
    page.sockets = [];
    page.sent = [];
    page.recv = [];
    page.responses = [];
    page.requests = [];
    await page.exposeFunction('pwToken', async (client, ch) => {
      if (!tokenFor) throw new Error('no getToken in this scenario');
      return tokenFor(client, ch);
    });
    page.on('pageerror', (e) => this.problems.push(`${name}: page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      const text = m.text();
      this.consoleSeen.push(`${name}: ${text.replace(/token=[^&'\s]+/g, 'token=[redacted]')}`);
      if (!this.anyAllowed.includes(name) && !this.allow.some((re) => re.test(text))) this.problems.push(`${name}: console error: ${text}`);
    });
    page.on('websocket', (ws) => {
      page.sockets.push(ws.url());
      ws.on('framesent', (f) => page.sent.push(String(f.payload)));
      ws.on('framereceived', (f) => page.recv.push(String(f.payload)));
    });
    page.on('request', (r) => page.requests.push({ method: r.method(), url: r.url(), t: Date.now() }));
    page.on('response', (r) => page.responses.push({ url: r.url(), status: r.status(), type: r.headers()['content-type'] || '', method: r.request().method() }));
    const target = url || `${this.base}/__pwtest/${pageName}`;
    const res = await page.goto(target, { waitUntil: 'domcontentloaded' });
    if (!res || res.status() !== 200) throw new Error(`${name}: GET ${target} answered ${res && res.status()}`);
    await waitFor(page, 'the library to load', () => !!window.loaded, null, 10000);
    const loaded = await page.evaluate(() => window.loaded);
    if (!/^(classic|module|both|other)$/.test(loaded)) throw new Error(`${name}: the library did not load: ${loaded}`);
    return page;
  }

  check() {
    if (this.problems.length) throw new Error('unexpected errors in the page:\n  ' + this.problems.join('\n  '));
  }

  async close() {
    for (const c of this.contexts) await c.close().catch(() => {});
    this.contexts = [];
  }
}

async function dump(page) {
  try {
    return await page.evaluate(() => ({
      clients: Object.fromEntries(Object.keys(window.__t.clients).map((n) => [n, window.__t.info(n)])),
      counts: Object.fromEntries(Object.entries(window.__t.log).map(([k, v]) => [k, v.length])),
      errors: window.__t.errors, resets: window.__t.resets,
      states: window.__t.states.slice(-12).map((s) => `${s.name}:${s.transport}:${s.state}`),
    }));
  } catch (e) { return { dumpError: String(e) }; }
}

async function waitFor(page, what, fn, arg, timeout = 10000) {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (e) {
    const d = await dump(page);
    throw new Error(`${page.pwName}: timed out after ${timeout} ms waiting for ${what}; page: ${JSON.stringify(d).slice(0, 3000)}`);
  }
}

// Wait for a condition on this side (e.g. on the WebSocket frames seen).
async function waitNode(fn, what, timeout = 10000) {
  const end = Date.now() + timeout;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(50);
  }
}

function assert(cond, msg) { if (!cond) throw new Error(msg); }
function assertEq(a, b, msg) {
  const ja = JSON.stringify(a), jb = JSON.stringify(b);
  if (ja !== jb) throw new Error(`${msg}: got ${ja.slice(0, 1500)}, want ${jb.slice(0, 1500)}`);
}

const WS_FAIL = /^WebSocket connection to 'ws:\/\/[^']*\/status\?channel=[^']*' failed/;
const HTTP_FAIL = (codes) => new RegExp(`^Failed to load resource: the server responded with a status of (${codes.join('|')})\\b`);

// Wait until the client follows every subscription over transport.
const waitActive = (page, name, transport, timeout = 15000) => waitFor(page,
  `${name}: connected over ${transport} with every subscription active`,
  ([n, t]) => {
    const i = window.__t.info(n);
    return i && i.state === 'connected' && i.transport === t && i.subs.length > 0 && i.subs.every((s) => s.state === 'active');
  }, [name, transport], timeout);

// What was published on channel (from [channel, id, content] items), by id.
function expected(published, channel) {
  return published.filter((p) => p[0] === channel).map((p) => [p[1], p[2]]).sort((a, b) => a[0] - b[0]);
}

// Wait until every key has at least its expected count, then check it got
// exactly the expected messages in order, each once.
async function assertDelivered(page, want, timeout = 20000) {
  const counts = Object.fromEntries(Object.entries(want).map(([k, v]) => [k, v.length]));
  await waitFor(page, `all messages: ${JSON.stringify(counts)}`,
    (c) => Object.entries(c).every(([k, n]) => (window.__t.log[k] || []).length >= n), counts, timeout);
  await sleep(300);   // anything extra (a duplicate) would arrive now
  for (const [key, list] of Object.entries(want)) {
    const have = await page.evaluate((k) => window.__t.log[k].map((x) => [x[0], x[1]]), key);
    assertEq(have, list, `${page.pwName} ${key}: (id, content) delivered`);
  }
}

async function noErrors(page, what) {
  const e = await page.evaluate(() => ({ errors: window.__t.errors, resets: window.__t.resets }));
  assertEq(e.errors, [], `${page.pwName}: onError calls ${what || ''}`);
  assertEq(e.resets, [], `${page.pwName}: onReset calls ${what || ''}`);
}

const controlFrames = (list, type) => list.map((f) => { try { return JSON.parse(f); } catch (e) { return null; } })
  .filter((f) => f && f.type === type);

// -------------------------------------------------------------- scenarios
const SCENARIOS = {
  // Two pages, three channels each (one private), one WebSocket per page.
  // A: the connection token; pub2 subscribed once connected (in-band).
  // B: no connection token; the private channel with its own short-lived
  // token, renewed by getToken before it expires (in-band refresh).
  // README's pushwire.js example page, as test_client_js.py took it from
  // README.md (with a token pasted in): installed next to the library,
  // opened as a user would, its list read. After `expect` (lines) is on the
  // list, the harness publishes `publish` and waits for `expectAfter`
  // (regexps).
  async readme(browser, base, { html, expect, publish, expectAfter, allow }) {
    const run = new Run(browser, base, (allow || []).map((a) => new RegExp(a)));
    try {
      await ask('install_pages', { pages: { 'readme.html': html } });
      const ctx = await browser.newContext({ locale: 'en-US', timezoneId: 'UTC' });
      run.contexts.push(ctx);
      const page = await ctx.newPage();
      page.pwName = 'readme';
      const refused = [];
      page.on('response', (r) => { if (r.status() >= 400) refused.push(`${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`); });
      page.on('pageerror', (e) => run.problems.push(`readme: page error: ${e.message}`));
      page.on('console', (m) => {
        if (m.type() === 'error' && !run.allow.some((re) => re.test(m.text()))) run.problems.push(`readme: console error: ${m.text()}`);
      });
      const res = await page.goto(`${base}/__pwtest/readme.html`, { waitUntil: 'domcontentloaded' });
      assertEq(res && res.status(), 200, 'status of the example page');
      const lines = () => page.evaluate(() => [...document.querySelectorAll('#log li')].map((li) => li.textContent));
      // want: exact lines, or regexps (source strings) with re set.
      const until = async (want, what, re = false) => {
        const end = Date.now() + 15000;
        const has = (have, w) => (re ? have.some((l) => new RegExp(w).test(l)) : have.includes(w));
        for (;;) {
          const have = await lines();
          if (want.every((w) => has(have, w))) return have;
          if (Date.now() > end) throw new Error(`timed out waiting for ${what}: the list is ${JSON.stringify(have)}, want ${JSON.stringify(want)}`);
          await sleep(100);
        }
      };
      const first = await until(expect, 'the example\'s first lines');
      for (const p of publish || []) {
        const r = await ask('publish', p);
        assertEq(r.status, 200, `publish on ${p.channel}`);
      }
      await until(expectAfter || [], 'the messages published after it', true);
      await sleep(300);   // a duplicate would arrive now
      run.check();
      return { first, lines: await lines(), refused };
    } finally { await run.close(); }
  },

  async multi(browser, base, { pub1, pub2, priv }) {
    const run = new Run(browser, base);
    try {
      const tA = await ask('mint', { subscribe: [priv], publish: [priv], ttl: 600 });
      const tBshort = await ask('mint', { subscribe: [priv], ttl: 7 });
      const tBpub = await ask('mint', { publish: [priv], ttl: 600 });
      const a = await run.open('classic.html', 'A');
      const b = await run.open('module.html', 'B', {
        tokenFor: () => ask('mint', { subscribe: [priv], ttl: 600 }),
      });
      await a.evaluate(([t, p1, pv]) => window.__t.start('A', { token: t }, { [p1]: {}, [pv]: {} }), [tA, pub1, priv]);
      await b.evaluate(([t, p1, p2, pv]) => window.__t.start('B', { getTokenVia: true }, { [p1]: {}, [p2]: {}, [pv]: { token: t } }), [tBshort, pub1, pub2, priv]);
      await waitActive(a, 'A', 'websocket');
      await a.evaluate((p2) => window.__t.sub('A', p2), pub2);
      await Promise.all([waitActive(a, 'A', 'websocket'), waitActive(b, 'B', 'websocket')]);

      const published = [];
      const pub = async (ch, content) => {
        const r = await ask('publish', { channel: ch, content });
        assertEq(r.status, 200, `publish on ${ch}`);
        published.push([ch, r.body.id, content]);
      };
      const t0 = Date.now();
      for (let round = 0; round < 20; round++) {
        await pub(pub1, `r${round} harness pub1`);
        await pub(pub2, `r${round} harness pub2 <b>not html</b>`);
        await pub(priv, `r${round} harness private ✓`);
        const ra = await a.evaluate(([ch, c]) => window.__t.publish('A', ch, c), [pub1, `r${round} from A`]);
        assert(ra.ok, `A publishes on ${pub1}: ${JSON.stringify(ra)}`);
        published.push([pub1, ra.r.id, `r${round} from A`]);
        const rb = await b.evaluate(([ch, c, t]) => window.__t.publish('B', ch, c, { token: t }), [priv, `r${round} from B`, tBpub]);
        assert(rb.ok, `B publishes on ${priv}: ${JSON.stringify(rb)}`);
        published.push([priv, rb.r.id, `r${round} from B`]);
        await sleep(450);
      }
      const elapsed = Date.now() - t0;
      const want = (name) => Object.fromEntries([pub1, pub2, priv].map((ch) => [`${name}/${ch}`, expected(published, ch)]));
      await assertDelivered(a, want('A'));
      await assertDelivered(b, want('B'));

      // Unsubscribing stops that channel only.
      await a.evaluate((p2) => window.__t.subs['A/' + p2].unsubscribe(), pub2);
      await waitNode(() => controlFrames(a.recv, 'unsubscribed').some((f) => f.channel === pub2), `A: {"type":"unsubscribed"} for ${pub2}`);
      const before = await a.evaluate((k) => window.__t.log[k].length, `A/${pub2}`);
      for (let i = 0; i < 3; i++) await pub(pub2, `after A left ${i}`);
      await pub(pub1, 'last on pub1');
      await assertDelivered(b, want('B'));
      await assertDelivered(a, { [`A/${pub1}`]: expected(published, pub1) });
      assertEq(await a.evaluate((k) => window.__t.log[k].length, `A/${pub2}`), before, `A: messages of ${pub2} after unsubscribe`);
      assertEq(controlFrames(a.sent, 'unsubscribe').map((f) => f.channel), [pub2], 'A: unsubscribe frames');

      const out = {};
      for (const p of [a, b]) {
        await noErrors(p);
        const info = await p.evaluate((n) => window.__t.info(n), p.pwName);
        assertEq(info.stats.gaps, 0, `${p.pwName}: gaps`);
        assertEq(info.stats.duplicates, 0, `${p.pwName}: duplicates dropped`);
        assert(info.transport === 'websocket' && info.state === 'connected', `${p.pwName}: ${JSON.stringify(info)}`);
        const transports = await p.evaluate((n) => Object.values(window.__t.log).flat().map((x) => x[3]), p.pwName);
        assert(transports.every((t) => t === 'websocket'), `${p.pwName}: a message came over another transport`);
        out[p.pwName] = {
          sockets: p.sockets.length, urls: p.sockets.map((u) => u.replace(/token=[^&]*/, 'token=…')),
          subscribeFrames: controlFrames(p.sent, 'subscribe').map((f) => f.channel),
          refreshFrames: controlFrames(p.sent, 'refresh').length,
          refreshed: controlFrames(p.recv, 'refreshed').length,
          tokenCalls: await p.evaluate(() => window.__t.tokenCalls),
        };
      }
      // A's pub2 came in-band; B's private channel (its own token) too.
      assert(out.A.subscribeFrames.includes(pub2), `A: no in-band subscribe of ${pub2}: ${JSON.stringify(out.A)}`);
      assert(out.B.subscribeFrames.includes(priv), `B: no in-band subscribe of ${priv}: ${JSON.stringify(out.B)}`);
      assert(elapsed > 7000, `the rounds took ${elapsed} ms, less than B's token lifetime`);
      assert(out.B.refreshFrames >= 1 && out.B.refreshed >= 1, `B: token not renewed in-band: ${JSON.stringify(out.B)}`);
      assert(!b.sent.some((f) => f.includes(tBpub)), 'B sent its publish token on the WebSocket');
      run.check();
      return { ...out, messages: published.length, elapsed };
    } finally { await run.close(); }
  },

  // The relay stops while a background publisher goes on, then comes back.
  // ES: transports by default (websocket, eventsource, longpoll);
  // LP: websocket then longpoll.
  async fallback(browser, base, { pub1, pub2, priv }) {
    const run = new Run(browser, base, [WS_FAIL]);
    try {
      const tok = await ask('mint', { subscribe: [priv], ttl: 600 });
      const es = await run.open('classic.html', 'ES');
      const lp = await run.open('module.html', 'LP');
      // WS: the WebSocket only; it keeps retrying and must resume every
      // channel from its position when the relay is back.
      const wso = await run.open('classic.html', 'WS');
      const common = { token: tok, upgradeInterval: 2000, maxBackoff: 1500 };
      const subs = { [pub1]: {}, [pub2]: {}, [priv]: {} };
      await es.evaluate(([o, s]) => window.__t.start('ES', o, s), [common, subs]);
      await lp.evaluate(([o, s]) => window.__t.start('LP', Object.assign({ transports: ['websocket', 'longpoll'] }, o), s), [common, subs]);
      await wso.evaluate(([o, s]) => window.__t.start('WS', Object.assign({ transports: ['websocket'] }, o), s), [common, subs]);
      await Promise.all([waitActive(es, 'ES', 'websocket'), waitActive(lp, 'LP', 'websocket'), waitActive(wso, 'WS', 'websocket')]);

      await ask('publisher_start', { channels: [pub1, pub2, priv], interval: 0.04, prefix: 'outage' });
      await sleep(1000);
      await ask('stop_relay', { i: 0 });
      const [esT, lpT] = await Promise.all([
        waitFor(es, 'ES: connected over eventsource', () => { const i = window.__t.info('ES'); return i.state === 'connected' && i.transport === 'eventsource'; }, null, 20000),
        waitFor(lp, 'LP: connected over longpoll', () => { const i = window.__t.info('LP'); return i.state === 'connected' && i.transport === 'longpoll'; }, null, 20000),
      ]);
      void esT; void lpT;
      const duringCount = await ask('publisher_count');
      await sleep(2500);   // messages published while on the fallback
      // Delivered meanwhile, over the fallback.
      const viaFallback = async (p, t) => p.evaluate((tr) => Object.values(window.__t.log).flat().filter((x) => x[3] === tr).length, t);
      const esFallback = await viaFallback(es, 'eventsource');
      const lpFallback = await viaFallback(lp, 'longpoll');
      assert(esFallback > 0 && lpFallback > 0, `nothing arrived over the fallbacks: ES ${esFallback}, LP ${lpFallback}`);
      const wsDown = await wso.evaluate(() => ({ info: window.__t.info('WS'), n: Object.values(window.__t.log).flat().length }));
      assert(wsDown.info.state !== 'connected' && wsDown.info.transport === 'websocket', `WS during the outage: ${JSON.stringify(wsDown.info)}`);
      await ask('start_relay', { i: 0 });
      await Promise.all([waitActive(es, 'ES', 'websocket', 20000), waitActive(lp, 'LP', 'websocket', 20000), waitActive(wso, 'WS', 'websocket', 20000)]);
      await sleep(1000);   // messages published after the return
      const { published, failures } = await ask('publisher_stop');
      assertEq(failures, [], 'background publishes that failed');
      const want = (name) => Object.fromEntries([pub1, pub2, priv].map((ch) => [`${name}/${ch}`, expected(published, ch)]));
      await assertDelivered(es, want('ES'));
      await assertDelivered(lp, want('LP'));
      await assertDelivered(wso, want('WS'));
      const out = { published: published.length, publishedBeforeFallback: duringCount, wsDeliveredBeforeTheRelayCameBack: wsDown.n };
      // Every reconnect of WS named each channel's position.
      const resumed = wso.sockets.slice(1);
      assert(resumed.length >= 1 && resumed.every((u) => [pub1, pub2, priv].every((ch) => new RegExp(`[?&,]since=(?:[^&]*,)?${ch.replace(/[.:-]/g, '\\$&')}=[0-9a-f]+:\\d+`).test(u))),
        `WS reconnects without every position: ${JSON.stringify(resumed.map((u) => u.replace(/token=[^&]*/, 'token=…')))}`);
      for (const p of [es, lp, wso]) {
        await noErrors(p);
        const info = await p.evaluate((n) => window.__t.info(n), p.pwName);
        assertEq(info.stats.gaps, 0, `${p.pwName}: gaps`);
        const tr = await p.evaluate((n) => {
          const seen = [];
          for (const s of window.__t.states) if (s.name === n && s.state === 'connected' && seen[seen.length - 1] !== s.transport) seen.push(s.transport);
          return seen;
        }, p.pwName);
        const byTransport = await p.evaluate(() => {
          const c = {};
          for (const x of Object.values(window.__t.log).flat()) c[x[3]] = (c[x[3]] || 0) + 1;
          return c;
        });
        out[p.pwName] = { transports: tr, stats: info.stats, byTransport, sockets: p.sockets.length };
      }
      run.check();
      return out;
    } finally { await run.close(); }
  },

  // ES module and classic script, each alone, and both in one page.
  async modules(browser, base, { pub1 }) {
    const run = new Run(browser, base);
    try {
      const out = {};
      for (const [file, name] of [['module.html', 'module'], ['classic.html', 'classic'], ['both.html', 'both']]) {
        const p = await run.open(file, name);
        await p.evaluate(([n, ch]) => window.__t.start(n, {}, { [ch]: {} }), [name, pub1]);
        await waitActive(p, name, 'websocket');
        const content = `hello from the ${name} page`;
        const r = await p.evaluate(([n, ch, c]) => window.__t.publish(n, ch, c), [name, pub1, content]);
        assert(r.ok && r.r.channel === pub1 && Number.isSafeInteger(r.r.id) && typeof r.r.epoch === 'string', `${name}: publish answer ${JSON.stringify(r)}`);
        await waitFor(p, 'its own message', ([k, c]) => (window.__t.log[k] || []).some((x) => x[1] === c), [`${name}/${pub1}`, content]);
        const js = p.responses.filter((x) => /\/pushwire(\.esm)?\.js$/.test(new URL(x.url).pathname));
        for (const x of js) {
          assertEq(x.status, 200, `${name}: ${x.url}`);
          assert(/javascript/.test(x.type), `${name}: ${x.url} served as ${x.type}`);
        }
        out[name] = { received: true, loaded: await p.evaluate(() => window.loaded), scripts: js.map((x) => `${new URL(x.url).pathname} ${x.type}`), version: await p.evaluate(() => window.__t.lib().version) };
      }
      run.check();
      return out;
    } finally { await run.close(); }
  },

  // A token ends (getToken's first answer is the same token, so it is not
  // renewed in advance): the server ends the private subscription; the
  // client asks getToken again and resumes, losing nothing.
  // proactive: getToken hands a new token at once, so it is renewed before
  // its exp (WebSocket refresh frame, reopened EventSource, next poll) and
  // the server never ends the subscription.
  async expiry(browser, base, { pub1, priv, transport, proactive }) {
    const codes = transport === 'longpoll' && !proactive ? [401] : [];
    const run = new Run(browser, base, codes.length ? [HTTP_FAIL(codes)] : []);
    try {
      const short = await ask('mint', { subscribe: [priv], ttl: 4 });
      let calls = 0;
      const p = await run.open('classic.html', 'X', {
        tokenFor: async () => (++calls === 1 && !proactive ? short : ask('mint', { subscribe: [priv], ttl: 600 })),
      });
      await p.evaluate(([t, o, p1, pv, tok]) => window.__t.start('X', { transports: [t], getTokenVia: true }, { [p1]: {}, [pv]: { token: tok } }),
        [transport, {}, pub1, priv, short]);
      await waitActive(p, 'X', transport);
      await ask('publisher_start', { channels: [pub1, priv], interval: 0.1, prefix: 'expiry-' + transport });
      // Past the expiry and the renewal.
      await waitFor(p, 'getToken asked', (n) => window.__t.tokenCalls >= n, proactive ? 1 : 2, 15000);
      await sleep(proactive ? 3500 : 2000);
      await waitActive(p, 'X', transport);
      await sleep(500);
      const { published, failures } = await ask('publisher_stop');
      assertEq(failures, [], 'background publishes that failed');
      await assertDelivered(p, { [`X/${pub1}`]: expected(published, pub1), [`X/${priv}`]: expected(published, priv) });
      await noErrors(p);
      const info = await p.evaluate(() => window.__t.info('X'));
      assertEq(info.stats.gaps, 0, 'gaps');
      const out = { tokenCalls: await p.evaluate(() => window.__t.tokenCalls), stats: info.stats, published: published.length };
      if (proactive) {
        assertEq(out.tokenCalls, 1, 'getToken calls');
        assertEq(run.consoleSeen, [], 'console errors (a refused request)');
        if (transport === 'websocket') {
          assertEq(controlFrames(p.recv, 'expired'), [], 'expired frames');
          assertEq(controlFrames(p.sent, 'refresh').length, 1, 'refresh frames');
          assertEq(controlFrames(p.recv, 'refreshed').length, 1, 'refreshed answers');
        }
        if (transport === 'eventsource') {
          const streams = p.requests.filter((x) => x.url.includes('/status?') && x.url.includes(priv) && !x.url.includes('timeout='));
          assertEq(streams.length, 2, 'EventSource streams of the private channel (the first, then the renewed one)');
        }
      } else if (transport === 'websocket') {
        out.expiredFrames = controlFrames(p.recv, 'expired').map((f) => f.channel);
        out.resubscribes = controlFrames(p.sent, 'subscribe').map((f) => `${f.channel} since=${f.since}`);
        out.sockets = p.sockets.length;
        assertEq(out.expiredFrames, [priv], 'expired frames');
        assert(out.resubscribes.some((s) => s.startsWith(priv + ' since=')), `no resubscribe of ${priv}: ${JSON.stringify(out)}`);
      }
      run.check();
      return out;
    } finally { await run.close(); }
  },

  // 401 without a token, 403 with one that does not grant, each reported
  // once through onError (no retry loop) while a public subscription of the
  // same client works on; a page on another origin can neither publish nor
  // read the private channel.
  async auth(browser, base, { pub1, priv }) {
    const run = new Run(browser, base, [HTTP_FAIL([401, 403])], ['other']);
    try {
      const wrong = await ask('mint', { subscribe: ['p:someone-else'], ttl: 600 });
      const p = await run.open('classic.html', 'S', { tokenFor: async () => wrong });
      // S1: no token at all; S2: a token that does not grant; S3: getToken
      // hands a token that does not grant either.
      await p.evaluate(([p1, pv, w]) => {
        window.__t.start('S1', {}, { [p1]: {}, [pv]: {} });
        window.__t.start('S2', { token: w }, { [pv]: {} });
        window.__t.start('S3', { getTokenVia: true }, { [pv]: {} });
        return true;
      }, [pub1, priv, wrong]);
      await waitFor(p, 'three onError calls', () => window.__t.errors.length >= 3, null, 10000);
      await waitActive(p, 'S1', 'websocket');
      const r = await ask('publish', { channel: pub1, content: 'public still works' });
      assertEq(r.status, 200, 'publish');
      await waitFor(p, 'the public message', (k) => (window.__t.log[k] || []).length === 1, `S1/${pub1}`);
      const n0 = p.requests.filter((x) => x.url.includes(encodeURIComponent(priv)) || x.url.includes(priv)).length;
      await sleep(3000);
      const n1 = p.requests.filter((x) => x.url.includes(encodeURIComponent(priv)) || x.url.includes(priv)).length;
      const errs = await p.evaluate(() => window.__t.errors.map((e) => `${e.key} ${e.status}`).sort());
      assertEq(errs, [`S1/${priv} 401`, `S2/${priv} 403`, `S3/${priv} 403`], 'onError calls');
      assertEq(n1, n0, `requests for ${priv} after the errors (a retry loop)`);
      const states = await p.evaluate((pv) => ['S1', 'S2', 'S3'].map((n) => window.__t.subState(n + '/' + pv)), priv);
      assertEq(states, ['failed', 'failed', 'failed'], 'states of the refused subscriptions');
      assertEq(await p.evaluate(() => window.__t.tokenCalls), 1, 'getToken calls of S3');
      assertEq(p.sockets.filter((u) => u.includes(priv)).length, 0, 'WebSockets opened for the refused channel');
      const sameOrigin = { errors: errs, privateRequests: n1 };

      // R: a short token on the connection; getToken renews it with one that
      // does not grant the private channel. The refresh is refused (403 for
      // the private channel, 400 for the public one whose token the server
      // ignores) and never sent again; at the expiry the private
      // subscription ends with onError 403, the public one goes on.
      const short = await ask('mint', { subscribe: [priv], ttl: 4 });
      const r2 = await run.open('classic.html', 'R', { tokenFor: async () => wrong });
      await r2.evaluate(([t, p1, pv]) => window.__t.start('R', { token: t, getTokenVia: true }, { [p1]: {}, [pv]: {} }), [short, pub1, priv]);
      await waitActive(r2, 'R', 'websocket');
      await waitFor(r2, 'onError for the private channel after the expiry', () => window.__t.errors.length >= 1, null, 15000);
      await sleep(1000);
      const rr = await ask('publish', { channel: pub1, content: 'after the expiry' });
      assertEq(rr.status, 200, 'publish');
      await waitFor(r2, 'the public channel still followed', (k) => (window.__t.log[k] || []).some((x) => x[1] === 'after the expiry'), `R/${pub1}`);
      const rErrors = await r2.evaluate(() => window.__t.errors.map((e) => `${e.key} ${e.status}`));
      assertEq(rErrors, [`R/${priv} 403`], 'R: onError calls');
      const refreshes = controlFrames(r2.sent, 'refresh').map((f) => f.channel).sort();
      assertEq(refreshes, [pub1, priv].sort(), 'R: refresh frames (one per channel, not repeated)');
      const refusals = controlFrames(r2.recv, 'error').map((f) => `${f.channel} ${f.status}`).sort();
      assertEq(refusals, [`${pub1} 400`, `${priv} 403`].sort(), 'R: refused refreshes');
      assertEq(controlFrames(r2.recv, 'expired').map((f) => f.channel), [priv], 'R: expired frames');
      assertEq(r2.sockets.length, 1, 'R: WebSockets');
      sameOrigin.refusedRefresh = { refreshes, refusals, tokenCalls: await r2.evaluate(() => window.__t.tokenCalls) };

      // Another origin: a page served by the harness loads the library from
      // the stack and tries.
      const html = `<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>elsewhere</title></head><body>
<script src="${base}/pushwire.js"></script><script>window.loaded = typeof Pushwire === "function" ? "other" : "broken";</script></body></html>`;
      const url = await ask('other_origin_page', { path: '/evil.html', html });
      const o = await run.open(null, 'other', { url });
      await o.evaluate(([b, p1, pv]) => window.__t.start('O', { url: b, maxBackoff: 1000 }, { [p1]: {}, [pv]: {} }), [base, pub1, priv]);
      const viaLib = await o.evaluate(([ch]) => window.__t.publish('O', ch, 'cross-origin via the library', { attempts: 1 }), [pub1]);
      const viaLibPriv = await o.evaluate(([ch]) => window.__t.publish('O', ch, 'cross-origin private via the library', { attempts: 1 }), [priv]);
      assert(!viaLib.ok && !viaLibPriv.ok, `a cross-origin publish succeeded: ${JSON.stringify([viaLib, viaLibPriv])}`);
      // A form-like POST the browser sends without asking (no preflight):
      // the server itself must refuse it.
      const formStatus = async (ch, content) => {
        const wait = o.waitForResponse((x) => x.url() === `${base}/chat` && x.request().method() === 'POST' && (x.request().postData() || '').includes(encodeURIComponent(content).replace(/%20/g, '+')), { timeout: 10000 });
        await o.evaluate(([b, c, t]) => fetch(b + '/chat', {
          method: 'POST', mode: 'no-cors', credentials: 'include',
          headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({ content: t, channel: c }).toString(),
        }).then(() => 'sent', (e) => String(e)), [base, ch, content]);
        return (await wait).status();
      };
      const formPub = await formStatus(pub1, 'cross-origin form post');
      const formPriv = await formStatus(priv, 'cross-origin form post private');
      assertEq([formPub, formPriv], [403, 403], 'statuses of the cross-origin form posts');
      // The private channel gets a message; the other page must not see it.
      for (let i = 0; i < 3; i++) {
        const rr = await ask('publish', { channel: priv, content: `secret ${i}` });
        assertEq(rr.status, 200, 'publish on the private channel');
        await sleep(700);
      }
      await sleep(1500);
      const other = await o.evaluate((pv) => ({ privateMessages: window.__t.log['O/' + pv] || [], info: window.__t.info('O'), errors: window.__t.errors }), priv);
      other.viaLib = [viaLib, viaLibPriv];
      other.formStatuses = [formPub, formPriv];
      run.check();
      return { sameOrigin, other };
    } finally { await run.close(); }
  },
};

// ------------------------------------------------------------------- main
main({ tag: 'client', script: 'client.test.mjs', scenarios: SCENARIOS, runs, before: () => ask('install_pages', { pages: PAGES }) });
