#!/usr/bin/env node
// Headless-Chromium tests of html/index.html (the pushwire page).
//
// Driven by tests/integration/test_browser.py, which starts a real stack and
// this script once per session:
//
//   node tests/browser/page.test.mjs --serve
//
// Protocol: JSON lines (bridge.mjs, shared with client.test.mjs). stdout
// carries only protocol lines; logs go to stderr.
// ACTIONs are what only the harness can do: publish (through stack.publish),
// stop_relay / start_relay, stop_redis / start_redis.
//
// One scenario by hand (the asks then have to be answered on stdin):
//   node tests/browser/page.test.mjs --base http://127.0.0.1:8080 --scenario ws_two_pages
// prints the same lines and exits 1 when the scenario fails.
//
// Environment: PW_CHROMIUM (default /usr/bin/chromium), PW_SHOT_DIR (where
// the screenshot scenario writes, default <repo>/docs).

import { ask, log, main, sleep } from './bridge.mjs';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const rand = () => Math.random().toString(36).slice(2, 10);

// ---------------------------------------------------------------- harness
// Runs inside every page before its own script: records what the tests
// need to see afterwards (state/transport transitions, any element of a
// dangerous kind inserted anywhere, and whether the page ran a script we
// did not write).
function initScript() {
  const rec = { states: [], transports: [], inserted: [], titles: [] };
  Object.defineProperty(window, '__pwtest', { value: rec });
  const DANGER = 'img,script,iframe,svg,object,embed,video,audio,link,style,meta,a,form,input';
  document.addEventListener('DOMContentLoaded', () => {
    const st = document.getElementById('state');
    const tr = document.getElementById('transport');
    const push = (arr, v, text) => {
      const last = arr[arr.length - 1];
      if (!last || last.v !== v || last.text !== text) arr.push({ v, text, t: Date.now() });
    };
    push(rec.states, st.dataset.state, st.textContent);
    push(rec.transports, tr.dataset.transport);
    new MutationObserver(() => push(rec.states, st.dataset.state, st.textContent))
      .observe(st, { attributes: true, attributeFilter: ['data-state'], childList: true, characterData: true, subtree: true });
    new MutationObserver(() => push(rec.transports, tr.dataset.transport))
      .observe(tr, { attributes: true, attributeFilter: ['data-transport'] });
    new MutationObserver((muts) => {
      for (const m of muts) {
        for (const n of m.addedNodes) {
          if (n.nodeType !== 1) continue;
          if (n.matches(DANGER)) rec.inserted.push(n.outerHTML.slice(0, 200));
          for (const d of n.querySelectorAll(DANGER)) rec.inserted.push(d.outerHTML.slice(0, 200));
        }
      }
    }).observe(document.documentElement, { childList: true, subtree: true });
    const title = document.querySelector('title');
    new MutationObserver(() => rec.titles.push(document.title))
      .observe(title, { childList: true, characterData: true, subtree: true });
  });
}

const runs = [];   // every Run of the scenario in progress (for its report)

class Run {
  // allow: regexps of console errors this scenario expects (network failures
  // it causes on purpose). Anything else logged as an error fails it.
  constructor(browser, base, allow = []) {
    this.browser = browser;
    this.base = base;
    this.allow = allow;
    this.contexts = [];
    this.problems = [];
    this.consoleSeen = [];
    runs.push(this);
  }

  async open(pathAndQuery, ctxOptions = {}, name = 'page') {
    const ctx = await this.browser.newContext({
      viewport: { width: 1000, height: 760 },
      locale: 'en-US',
      timezoneId: 'UTC',
      colorScheme: 'light',
      reducedMotion: 'reduce',
      ...ctxOptions,
    });
    this.contexts.push(ctx);
    ctx.setDefaultTimeout(15000);
    await ctx.addInitScript(initScript);
    const page = await ctx.newPage();
    page.pwName = name;
    page.sockets = [];
    page.on('pageerror', (e) => this.problems.push(`${name}: page error: ${e.message}`));
    page.on('dialog', (d) => { this.problems.push(`${name}: unexpected dialog: ${d.type()} ${d.message()}`); d.dismiss().catch(() => {}); });
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      const text = m.text();
      this.consoleSeen.push(`${name}: ${text}`);
      if (!this.allow.some((re) => re.test(text))) this.problems.push(`${name}: console error: ${text}`);
    });
    page.on('websocket', (ws) => page.sockets.push(ws.url()));
    const res = await page.goto(this.base + pathAndQuery, { waitUntil: 'domcontentloaded' });
    if (!res || res.status() !== 200) throw new Error(`${name}: GET ${pathAndQuery} answered ${res && res.status()}`);
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
      state: window.pushwire && window.pushwire.state,
      shownState: document.getElementById('state').textContent,
      error: document.getElementById('error').textContent,
      items: Array.from(document.querySelectorAll('#messages > li'), (li) =>
        li.dataset.id ? `${li.dataset.id}:${JSON.stringify(li.querySelector('.content').textContent.slice(0, 60))}` : `[${li.dataset.notice}]`),
      states: window.__pwtest.states.map((s) => s.v),
      transports: window.__pwtest.transports.map((s) => s.v),
    }));
  } catch (e) { return { dumpError: String(e) }; }
}

// page.waitForFunction with a message that says what was awaited and shows
// the page's state when it did not happen.
async function waitFor(page, what, fn, arg, timeout = 10000) {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (e) {
    const d = await dump(page);
    throw new Error(`${page.pwName}: timed out after ${timeout} ms waiting for ${what}; page: ${JSON.stringify(d)}`);
  }
}

const waitConnected = (page, transport, timeout = 10000) => waitFor(page,
  `transport=${transport} and state=connected`,
  (t) => document.getElementById('transport').dataset.transport === t &&
         document.getElementById('state').dataset.state === 'connected' &&
         window.pushwire.transport === t && window.pushwire.connection === 'connected',
  transport, timeout);

const waitContents = (page, contents, timeout = 10000) => waitFor(page,
  `messages ${JSON.stringify(contents.map((c) => c.slice(0, 40)))} in #messages`,
  (want) => {
    const have = Array.from(document.querySelectorAll('#messages li[data-id] .content'), (e) => e.textContent);
    return want.every((w) => have.includes(w));
  }, contents, timeout);

// The relay answers the handshake only once the subscriber's start point is
// fixed, so a message sent the moment the page shows "connected" must
// arrive: no settling time before the first message.
const settle = () => Promise.resolve();

function items(page) {
  return page.evaluate(() => Array.from(document.querySelectorAll('#messages li[data-id]'), (li) => ({
    id: Number(li.dataset.id),
    content: li.querySelector('.content').textContent,
    mine: li.classList.contains('mine'),
  })));
}

function assert(cond, msg) { if (!cond) throw new Error(msg); }
function assertEq(a, b, msg) {
  const ja = JSON.stringify(a), jb = JSON.stringify(b);
  if (ja !== jb) throw new Error(`${msg}: got ${ja}, want ${jb}`);
}

function assertIdsSane(list, name) {
  const ids = list.map((x) => x.id);
  for (let i = 1; i < ids.length; i++) {
    assert(ids[i] > ids[i - 1], `${name}: ids not strictly increasing: ${JSON.stringify(ids)}`);
  }
  assert(ids.every((x) => Number.isSafeInteger(x) && x > 0), `${name}: bad ids ${JSON.stringify(ids)}`);
}

// Exactly the expected messages, in order, once each.
async function assertExactly(page, contents) {
  const list = await items(page);
  assertIdsSane(list, page.pwName);
  assertEq(list.map((x) => x.content), contents, `${page.pwName}: #messages`);
  const dup = await page.evaluate(() => window.pushwire.duplicates);
  assertEq(dup, 0, `${page.pwName}: window.pushwire.duplicates`);
  return list;
}

async function typeAndSend(page, text, how) {
  const box = page.locator('#message');
  await box.click();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (i) await page.keyboard.press('Shift+Enter');
    if (lines[i]) await box.pressSequentially(lines[i]);
  }
  assertEq(await box.inputValue(), text, `${page.pwName}: the box after typing`);
  if (how === 'enter') await page.keyboard.press('Enter');
  else await page.click('#send');
}

const noErrorShown = async (page) => {
  const e = await page.evaluate(() => document.getElementById('error').textContent);
  assertEq(e, '', `${page.pwName}: #error`);
};

// -------------------------------------------------------------- scenarios
// Two pages exchange messages typed into the box (button, Enter,
// Shift+Enter for a line break); each appears once in both lists.
async function chatBetweenTwoPages(run, query, transport, { expectSockets }) {
  const a = await run.open(query, {}, 'A');
  const b = await run.open(query, {}, 'B');
  await Promise.all([waitConnected(a, transport, 15000), waitConnected(b, transport, 15000)]);
  await settle();
  for (const p of [a, b]) {
    const ch = new URLSearchParams(query.split('?')[1]).get('channel');
    assertEq(await p.textContent('#channel'), ch, `${p.pwName}: #channel`);
    assertEq(await p.title(), `pushwire · #${ch}`, `${p.pwName}: title`);
  }
  const sent = [];
  const steps = [
    [a, `hello from A by button ${rand()}`, 'button'],
    [a, `from A with Enter ${rand()}`, 'enter'],
    [b, `B: line one ${rand()}\nline two <i>not html</i> & "quotes"`, 'enter'],
    [b, `unicode ✓ héllo 👋 日本語 ${rand()}`, 'button'],
  ];
  for (const [p, text, how] of steps) {
    await typeAndSend(p, text, how);
    sent.push(text);
    await Promise.all([waitContents(a, [text]), waitContents(b, [text])]);
    await waitFor(p, 'the box to be cleared after a send', () => document.getElementById('message').value === '', null, 5000);
    for (const q of [a, b]) {
      assertEq(await q.textContent('#latest'), text, `${q.pwName}: #latest`);
    }
  }
  // Enter in an empty box sends nothing.
  await a.locator('#message').click();
  await a.keyboard.press('Enter');
  await sleep(400);
  const la = await assertExactly(a, sent);
  const lb = await assertExactly(b, sent);
  assertEq(la.map((x) => x.id), lb.map((x) => x.id), 'ids in A and B');
  // Own messages are marked in the sender's page only.
  assertEq(la.map((x) => x.mine), [true, true, false, false], 'A: li.mine');
  assertEq(lb.map((x) => x.mine), [false, false, true, true], 'B: li.mine');
  for (const p of [a, b]) {
    await noErrorShown(p);
    assertEq(await p.getAttribute('#transport', 'data-transport'), transport, `${p.pwName}: still ${transport}`);
    assertEq(await p.getAttribute('#state', 'data-state'), 'connected', `${p.pwName}: still connected`);
    if (expectSockets === 0) assertEq(p.sockets, [], `${p.pwName}: WebSockets opened with ?transport=longpoll`);
    else assert(p.sockets.length >= expectSockets, `${p.pwName}: expected a WebSocket attempt, saw ${p.sockets.length}`);
  }
  return { ids: la.map((x) => x.id), sockets: a.sockets.length };
}

const WS_FAIL = /^WebSocket connection to 'ws:\/\/[^']*\/status\?channel=[^']*' failed/;
const HTTP_FAIL = (codes) => new RegExp(`^Failed to load resource: the server responded with a status of (${codes.join('|')})\\b`);

const SCENARIOS = {
  // 1. WebSocket, two browser contexts on one channel.
  async ws_two_pages(browser, base) {
    const run = new Run(browser, base);
    try {
      const ch = 'bws-' + rand();
      const r = await chatBetweenTwoPages(run, `/?channel=${ch}`, 'websocket', { expectSockets: 1 });
      run.check();
      return r;
    } finally { await run.close(); }
  },

  // 2a. Long-poll forced by the URL: no WebSocket is even tried.
  async longpoll_forced(browser, base) {
    const run = new Run(browser, base);
    try {
      const ch = 'blp-' + rand();
      const r = await chatBetweenTwoPages(run, `/?transport=longpoll&channel=${ch}`, 'longpoll', { expectSockets: 0 });
      run.check();
      return r;
    } finally { await run.close(); }
  },

  // 2b. No relay behind nginx: the upgrade fails and the page falls back
  // to long-poll by itself.
  async longpoll_fallback(browser, base) {
    const run = new Run(browser, base, [WS_FAIL]);
    try {
      const ch = 'bfb-' + rand();
      const r = await chatBetweenTwoPages(run, `/?channel=${ch}`, 'longpoll', { expectSockets: 1 });
      run.check();
      return r;
    } finally { await run.close(); }
  },

  // 3. The relay goes away and comes back while a page is open. mode
  // "auto": the page falls back to long-poll and gets the messages
  // published meanwhile at once; mode "websocket" (?transport=websocket):
  // it keeps retrying the WebSocket and resumes with since= when the relay
  // is back. Either way: every message once, in order.
  async relay_restart(browser, base, args) {
    const mode = args.mode || 'auto';
    const run = new Run(browser, base, [WS_FAIL]);
    try {
      const ch = 'brr-' + rand();
      const q = `/?channel=${ch}` + (mode === 'websocket' ? '&transport=websocket' : '');
      const p = await run.open(q, {}, 'P');
      await waitConnected(p, 'websocket');
      await settle();
      const published = [];
      const pub = async (content) => {
        const r = await ask('publish', { content, channel: ch });
        assertEq(r.status, 200, `publish ${content}`);
        published.push({ id: r.body.id, content });
      };
      await pub('before the relay stops');
      await waitContents(p, ['before the relay stops']);
      const nStates = await p.evaluate(() => window.__pwtest.states.length);

      await ask('stop_relay', { i: 0 });
      await waitFor(p, 'the page to show it lost the WebSocket',
        (n) => window.__pwtest.states.slice(n).some((s) => s.v !== 'connected') &&
               document.getElementById('state').dataset.state !== 'connected' ||
               window.__pwtest.transports.some((s) => s.v === 'longpoll'),
        nStates, 10000);
      for (let i = 1; i <= 3; i++) await pub(`during the outage ${i}`);
      const during = published.slice(1).map((x) => x.content);

      let fellBack = false;
      if (mode === 'auto') {
        // The fallback carries them while the relay is still down.
        await waitConnected(p, 'longpoll', 15000);
        await waitContents(p, during, 10000);
        fellBack = true;
      } else {
        await sleep(500);
        const l = await items(p);
        assertEq(l.length, 1, 'forced WebSocket: messages shown while the relay is down');
        assertEq(await p.getAttribute('#transport', 'data-transport'), 'websocket', 'forced WebSocket: transport');
      }

      await ask('start_relay', { i: 0 });
      if (mode === 'websocket') {
        await waitConnected(p, 'websocket', 20000);
        await waitContents(p, during, 10000);
        const resumed = p.sockets.slice(1).filter((u) => /[?&]since=\d+/.test(u) && /[?&]epoch=/.test(u));
        assert(resumed.length >= 1, `forced WebSocket: no reconnect with since/epoch: ${JSON.stringify(p.sockets)}`);
      }
      await pub('after the relay is back');
      await waitContents(p, ['after the relay is back'], 15000);
      await sleep(500);

      const list = await items(p);
      assertIdsSane(list, 'P');
      assertEq(list.map((x) => [x.id, x.content]), published.map((x) => [x.id, x.content]),
        'P: messages (id, content) after the outage');
      const st = await p.evaluate(() => ({ s: window.pushwire.state, notices: document.querySelectorAll('#messages li.notice').length }));
      assertEq(st.notices, 0, 'reset notices after a relay restart');
      assertEq(st.s.resets, 0, 'window.pushwire.resets after a relay restart');
      // While the relay was away the page said so: "reconnecting in Ns".
      const shown = await p.evaluate((n) => window.__pwtest.states.slice(n).map((s) => `${s.v}: ${s.text}`), nStates);
      assert(shown.some((s) => /^disconnected: reconnecting in \d+s$/.test(s)),
        `the page never showed it was reconnecting: ${JSON.stringify(shown)}`);
      assertEq(await p.getAttribute('#status', 'data-state'), 'connected', '#status[data-state] at the end');
      await noErrorShown(p);
      run.check();
      return { mode, fellBack, states: shown, transports: await p.evaluate(() => window.__pwtest.transports.map((s) => s.v)), sockets: p.sockets.length, ids: list.map((x) => x.id), duplicatesDropped: st.s.duplicates };
    } finally { await run.close(); }
  },

  // 4. Message text is never HTML, on either transport and in #latest.
  async xss(browser, base) {
    const run = new Run(browser, base);
    try {
      const ch = 'bx-' + rand();
      const w = await run.open(`/?channel=${ch}`, {}, 'WS');
      const l = await run.open(`/?channel=${ch}&transport=longpoll`, {}, 'LP');
      await Promise.all([waitConnected(w, 'websocket'), waitConnected(l, 'longpoll')]);
      await settle();
      const title = `pushwire · #${ch}`;
      const payloads = [
        `<img src=x onerror="document.title='pwned'">`,
        `<script>document.title='pwned2'</script>`,
        `<svg onload="document.title='pwned3'"></svg><iframe src="javascript:parent.document.title='pwned4'"></iframe>`,
        `</li><li data-id="999999"><b>fake</b>`,
      ];
      for (const c of payloads) {
        const r = await ask('publish', { content: c, channel: ch });
        assertEq(r.status, 200, `publish ${c}`);
      }
      const typed = `<img src=y onerror="document.title='pwned5'"> typed`;
      await typeAndSend(w, typed, 'enter');
      const all = [...payloads, typed];
      for (const p of [w, l]) {
        await waitContents(p, all, 10000);
        await sleep(300);   // give any injected handler the chance to run
        const res = await p.evaluate(() => ({
          title: document.title,
          titles: window.__pwtest.titles,
          inserted: window.__pwtest.inserted,
          bad: document.querySelectorAll('#messages img, #messages script, #messages iframe, #messages svg, #messages b, #latest *').length,
          latestText: document.getElementById('latest').textContent,
          latestHTMLHasTag: /<[a-z]/i.test(document.getElementById('latest').innerHTML),
        }));
        assertEq(res.title, title, `${p.pwName}: document.title`);
        assertEq(res.titles, [], `${p.pwName}: title changes`);
        assertEq(res.inserted, [], `${p.pwName}: elements inserted into the document`);
        assertEq(res.bad, 0, `${p.pwName}: markup elements inside #messages/#latest`);
        assertEq(res.latestText, typed, `${p.pwName}: #latest text`);
        assertEq(res.latestHTMLHasTag, false, `${p.pwName}: #latest innerHTML has a tag`);
        await assertExactly(p, all);
      }
      run.check();
      return { payloads: all.length };
    } finally { await run.close(); }
  },

  // 5. Errors are shown: 413 for a message over 65536 bytes (the text stays
  // in the box), 503 while Redis is down (after the page's own retries);
  // the page recovers when Redis is back.
  async errors(browser, base) {
    const run = new Run(browser, base, [HTTP_FAIL([413, 503])]);
    try {
      const ch = 'be-' + rand();
      const p = await run.open(`/?channel=${ch}`, {}, 'P');
      await waitConnected(p, 'websocket');
      await settle();
      const box = p.locator('#message');

      // Exactly the limit in bytes (2-byte characters) goes through.
      const max = 'é'.repeat(32768);
      await box.fill(max);
      assert(!(await p.locator('#counter').evaluate((e) => e.classList.contains('over'))), 'counter says over at exactly 65536 bytes');
      await p.click('#send');
      await waitContents(p, [max], 15000);
      await waitFor(p, 'the box to be cleared', () => document.getElementById('message').value === '', null, 5000);
      await noErrorShown(p);

      // One byte more is refused with 413 and the text stays.
      const over = max + 'x';
      await box.fill(over);
      await waitFor(p, 'the counter to say the text is too long',
        () => document.getElementById('counter').classList.contains('over') && /too long/.test(document.getElementById('counter').textContent));
      await p.click('#send');
      await waitFor(p, '#error[data-status="413"]',
        () => { const e = document.getElementById('error'); return e.dataset.status === '413' && e.textContent !== ''; }, null, 10000);
      const e413 = await p.textContent('#error');
      assert(/413/.test(e413), `#error text for 413: ${e413}`);
      assert(await p.locator('#error').isVisible(), '#error is not visible');
      assertEq((await box.inputValue()) === over, true, 'the box keeps the refused text');
      assertEq((await items(p)).length, 1, 'messages after a 413');

      // Redis down: 503 after the page's retries; the text stays.
      await box.fill('');
      await ask('stop_redis');
      const text = 'sent while Redis is down';
      await typeAndSend(p, text, 'button');
      const t503 = Date.now();
      await waitFor(p, 'the page to retry', () => /Retrying/.test(document.getElementById('send').textContent) ||
        document.getElementById('error').dataset.status === '503', null, 15000);
      await waitFor(p, '#error[data-status="503"]',
        () => { const e = document.getElementById('error'); return e.dataset.status === '503' && e.textContent !== ''; }, null, 45000);
      const waited503 = Date.now() - t503;
      const e503 = await p.textContent('#error');
      assert(/503/.test(e503), `#error text for 503: ${e503}`);
      assertEq(await box.inputValue(), text, 'the box keeps the text after a 503');
      assertEq(await p.textContent('#send'), 'Send', 'the button after giving up');

      // Redis back (empty: a new epoch): sending again works, the error
      // goes away and the message arrives (after a reset notice).
      await ask('start_redis');
      let sentAgain = false;
      for (let i = 0; i < 10 && !sentAgain; i++) {
        await p.click('#send');
        await waitFor(p, 'the send to finish', () => document.getElementById('send').getAttribute('aria-busy') !== 'true', null, 45000);
        sentAgain = (await box.inputValue()) === '';
        if (!sentAgain) await sleep(1000);
      }
      assert(sentAgain, `could not send after Redis came back: ${await p.textContent('#error')}`);
      await noErrorShown(p);
      await waitContents(p, [text], 30000);
      const list = await items(p);
      assertEq(list.map((x) => x.content), [text], 'the list after Redis came back empty');
      const resets = await p.evaluate(() => window.pushwire.resets);
      run.check();
      return { e413, e503, waited503ms: waited503, resets };
    } finally { await run.close(); }
  },

  // 6. Screenshots for the README: desktop and phone.
  async screenshot(browser, base, args) {
    const run = new Run(browser, base);
    try {
      const dir = args.dir || process.env.PW_SHOT_DIR || path.join(ROOT, 'docs');
      mkdirSync(dir, { recursive: true });
      const ch = args.channel || 'lobby';
      const desk = await run.open(`/?channel=${ch}`, { viewport: { width: 1280, height: 800 } }, 'desktop');
      const phone = await run.open(`/?channel=${ch}`, {
        viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
      }, 'phone');
      await Promise.all([waitConnected(desk, 'websocket'), waitConnected(phone, 'websocket')]);
      await settle();
      const msgs = [
        'Hi all, the deploy of build 2417 is starting now.',
        'Database migrations done ✓',
        'Cache warm-up: 62% … this takes about a minute.',
        'Can someone check the staging dashboard? Latency looks fine from here.',
      ];
      for (const c of msgs) {
        const r = await ask('publish', { content: c, channel: ch });
        assertEq(r.status, 200, 'publish');
      }
      await waitContents(desk, msgs);
      const mine = 'Looks good here. Rolling out to the second region.';
      await typeAndSend(desk, mine, 'enter');
      await Promise.all([waitContents(desk, [mine]), waitContents(phone, [mine])]);
      await waitFor(desk, 'own message marked', () => !!document.querySelector('#messages li.mine'));
      const last = 'Deploy finished. Thanks everyone!';
      await ask('publish', { content: last, channel: ch });
      await Promise.all([waitContents(desk, [last]), waitContents(phone, [last])]);
      await desk.locator('#message').fill('Typing a reply…');
      await desk.locator('#message').blur();
      await sleep(300);
      const files = [path.join(dir, 'screenshot.png'), path.join(dir, 'screenshot-phone.png')];
      await desk.screenshot({ path: files[0] });
      await phone.screenshot({ path: files[1] });
      // The layout must fit the phone: nothing scrolls sideways.
      const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert(overflow <= 0, `phone page is ${overflow}px wider than the viewport`);
      run.check();
      return { files };
    } finally { await run.close(); }
  },
};

// ------------------------------------------------------------------- main
main({ tag: 'browser', script: 'page.test.mjs', scenarios: SCENARIOS, runs });
