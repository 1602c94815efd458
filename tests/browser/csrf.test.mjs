#!/usr/bin/env node
// Cross-origin checks of private channels and POST /chat in headless Chromium
// (npm playwright-core driving Debian's /usr/bin/chromium), against a real
// stack. Driven by tests/integration/test_auth.py, which starts the stack and
// the "other sites" (tiny HTTP servers on other origins), then runs:
//
//   node tests/browser/csrf.test.mjs '<json args>'
//
// args: {
//   base: "http://127.0.0.1:PORT",              the stack (nginx)
//   publicChannel, privateChannel,              channels to attack
//   cookieToken,                                a valid token (subscribe and publish grants on
//                                               privateChannel) the victim's browser holds as the
//                                               cookie pushwire_token for the stack
//   attackers: [{origin, contents: {formPublic, formPrivate, fetchNoCors, fetchCors}}],
//   same: {fetch, form}                         contents the stack's own page posts
// }
// Nothing here decides pass/fail: it records what the browser saw (statuses
// of the requests on the wire, what the pages could read) and prints one JSON
// line {"ok": true, "details": {...}} (or {"ok": false, "error": "..."}) on
// stdout; the Python side asserts. Logs go to stderr.

import { chromium } from 'playwright-core';

const CHROMIUM = process.env.PW_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];
const T0 = Date.now();
const log = (...a) => process.stderr.write(`[csrf +${((Date.now() - T0) / 1000).toFixed(2)}s] ${a.join(' ')}\n`);

// The response to the POST /chat whose body carries content (each request
// has its own distinctive content of [a-z0-9-], identical once form-encoded).
const chatResponse = (base, content) => (r) =>
  r.url().split('?')[0] === `${base}/chat` && r.request().method() === 'POST' &&
  (r.request().postData() || '').includes(content);

// Every request of a page as the DevTools protocol sees it: Playwright
// reports no response for one that CORS blocked (fetch() in cors mode, a
// cross-origin EventSource), but the network layer still saw its status.
async function netLog(ctx, page) {
  const reqs = new Map();
  const entry = (id) => { if (!reqs.has(id)) reqs.set(id, { url: '', method: '', postData: '', status: null }); return reqs.get(id); };
  const cdp = await ctx.newCDPSession(page);
  cdp.on('Network.requestWillBeSent', (e) => Object.assign(entry(e.requestId), { url: e.request.url, method: e.request.method, postData: e.request.postData || '' }));
  cdp.on('Network.responseReceivedExtraInfo', (e) => { entry(e.requestId).status = e.statusCode; });
  cdp.on('Network.responseReceived', (e) => { const r = entry(e.requestId); if (r.status == null) r.status = e.response.status; });
  await cdp.send('Network.enable');
  return reqs;
}

// The status of the first response that pred (a Playwright Response) or
// match (a netLog entry) accepts.
function statusOf(page, net, pred, match, timeout = 10000) {
  return new Promise((resolve) => {
    let done = false;
    const t0 = Date.now();
    const finish = (v) => { if (!done) { done = true; clearInterval(iv); resolve(v); } };
    const iv = setInterval(() => {
      for (const r of net.values()) if (r.status != null && match(r)) return finish(r.status);
      if (Date.now() - t0 > timeout) finish('no response within 10 s');
    }, 50);
    page.waitForResponse(pred, { timeout }).then((r) => finish(r.status()), () => {});
  });
}

const chatStatus = (page, net, base, content) => statusOf(page, net, chatResponse(base, content),
  (r) => r.url.split('?')[0] === `${base}/chat` && r.method === 'POST' && r.postData.includes(content));
const getStatus = (page, net, url) => statusOf(page, net, (r) => r.url() === url, (r) => r.url === url && r.method === 'GET');

async function newPage(browser, base, cookieToken, name, notes) {
  const ctx = await browser.newContext();
  if (cookieToken) await ctx.addCookies([{ name: 'pushwire_token', value: cookieToken, url: base }]);
  const page = await ctx.newPage();
  page.net = await netLog(ctx, page);
  page.on('pageerror', (e) => notes.push(`${name}: page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') notes.push(`${name}: console: ${m.text().slice(0, 300)}`); });
  page.on('requestfailed', (r) => notes.push(`${name}: request failed: ${r.method()} ${r.url().slice(0, 120)} ${r.failure() && r.failure().errorText}`));
  return { ctx, page };
}

// In the page: a form POST (application/x-www-form-urlencoded) into an iframe.
function submitForm({ action, fields, name }) {
  const ifr = document.createElement('iframe');
  ifr.name = name;
  document.body.appendChild(ifr);
  const f = document.createElement('form');
  f.method = 'POST';
  f.action = action;
  f.target = name;
  for (const [k, v] of Object.entries(fields)) {
    const i = document.createElement('input');
    i.type = 'hidden';
    i.name = k;
    i.value = v;
    f.appendChild(i);
  }
  document.body.appendChild(f);
  f.submit();
}

// In the page: an EventSource; what it could read before it failed (or 6 s).
function openEventSource({ url, withCredentials, wantMessages }) {
  return new Promise((resolve) => {
    const es = new EventSource(url, { withCredentials: !!withCredentials });
    const got = [];
    let opened = false;
    let settled = false;
    const done = (why) => {
      if (settled) return;
      settled = true;
      const readyState = es.readyState;
      es.close();
      resolve({ why, readyState, opened, got });
    };
    es.onopen = () => { opened = true; };
    es.onmessage = (e) => { got.push(e.data); if (wantMessages && got.length >= wantMessages) done('messages'); };
    es.onerror = () => setTimeout(() => done('error'), 500);
    setTimeout(() => done('timeout'), 6000);
  });
}

// In the page: a WebSocket; what it could read before it closed (or 5 s).
function openWebSocket({ url, wantMessages }) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    const got = [];
    let opened = false;
    let settled = false;
    const done = (why, code) => {
      if (settled) return;
      settled = true;
      try { ws.close(); } catch (e) { /* already closed */ }
      resolve({ why, code, opened, got });
    };
    ws.onopen = () => { opened = true; };
    ws.onmessage = (e) => { got.push(e.data); if (wantMessages && got.length >= wantMessages) done('messages'); };
    ws.onclose = (e) => done('close', e.code);
    setTimeout(() => done('timeout'), 5000);
  });
}

async function attacker(browser, a, at) {
  const notes = [];
  const { ctx, page } = await newPage(browser, a.base, a.cookieToken, at.origin, notes);
  const out = { origin: at.origin, notes };
  try {
    const res = await page.goto(`${at.origin}/attack.html`, { waitUntil: 'domcontentloaded' });
    out.pageStatus = res && res.status();
    out.pageOrigin = await page.evaluate(() => location.origin);

    // Form POSTs (what a CSRF page does): to a public channel, and to the
    // private one (the victim's cookie grants publishing there).
    for (const [key, channel] of [['formPublic', a.publicChannel], ['formPrivate', a.privateChannel]]) {
      const content = at.contents[key];
      const st = chatStatus(page, page.net, a.base, content);
      await page.evaluate(submitForm, { action: `${a.base}/chat`, fields: { content, channel }, name: `sink-${key}` });
      out[key] = await st;
    }
    // fetch(): no-cors (a "simple" request, sent; the answer is opaque) and
    // cors with credentials (sent too, the answer unreadable without CORS
    // headers): either way the POST reaches the server, which must refuse it.
    for (const [key, mode, channel] of [['fetchNoCors', 'no-cors', a.publicChannel], ['fetchCors', 'cors', a.privateChannel]]) {
      const content = at.contents[key];
      const st = chatStatus(page, page.net, a.base, content);
      out[key + 'Result'] = await page.evaluate(({ url, mode, content, channel }) =>
        fetch(url, { method: 'POST', mode, credentials: 'include', body: new URLSearchParams({ content, channel }) })
          .then((r) => ({ type: r.type, status: r.status }), (e) => ({ error: String(e) })),
      { url: `${a.base}/chat`, mode, content, channel });
      out[key] = await st;
    }
    // Reading the private channel (it holds a message) without a token.
    const esUrl = `${a.base}/status?channel=${a.privateChannel}&since=0`;
    const esSt = getStatus(page, page.net, esUrl);
    out.eventSource = await page.evaluate(openEventSource, { url: esUrl, withCredentials: false, wantMessages: 1 });
    out.eventSourceStatus = await esSt;
    // A WebSocket carries the cookie whenever the browser sends it to that
    // site (same-site pages); the relay must still refuse the foreign Origin.
    const wsUrl = `${a.base.replace(/^http/, 'ws')}/status?channel=${a.privateChannel}&since=0`;
    out.webSocket = await page.evaluate(openWebSocket, { url: wsUrl, wantMessages: 1 });
  } finally {
    await ctx.close().catch(() => {});
  }
  return out;
}

async function sameOrigin(browser, a) {
  const notes = [];
  const out = { notes };
  {
    const { ctx, page } = await newPage(browser, a.base, a.cookieToken, 'same-origin', notes);
    try {
      const res = await page.goto(`${a.base}/healthz`, { waitUntil: 'domcontentloaded' });
      out.pageStatus = res && res.status();
      out.pageOrigin = await page.evaluate(() => location.origin);
      const fst = chatStatus(page, page.net, a.base, a.same.fetch);
      out.fetchResult = await page.evaluate(({ content, channel }) =>
        fetch('/chat', { method: 'POST', body: new URLSearchParams({ content, channel }) })
          .then(async (r) => ({ status: r.status, body: await r.text() }), (e) => ({ error: String(e) })),
      { content: a.same.fetch, channel: a.publicChannel });
      out.fetch = await fst;
      const st = chatStatus(page, page.net, a.base, a.same.form);
      await page.evaluate(submitForm, { action: '/chat', fields: { content: a.same.form, channel: a.publicChannel }, name: 'sink' });
      out.form = await st;
      // The cookie opens the private channel for the stack's own page.
      const esUrl = `/status?channel=${a.privateChannel}&since=0`;
      const esSt = getStatus(page, page.net, a.base + esUrl);
      out.eventSource = await page.evaluate(openEventSource, { url: esUrl, withCredentials: false, wantMessages: 1 });
      out.eventSourceStatus = await esSt;
      const wsUrl = `${a.base.replace(/^http/, 'ws')}/status?channel=${a.privateChannel}&since=0`;
      out.webSocket = await page.evaluate(openWebSocket, { url: wsUrl, wantMessages: 1 });
    } finally {
      await ctx.close().catch(() => {});
    }
  }
  {
    // The stack's own page without the cookie: the private channel is closed.
    const { ctx, page } = await newPage(browser, a.base, null, 'same-origin, no cookie', notes);
    try {
      await page.goto(`${a.base}/healthz`, { waitUntil: 'domcontentloaded' });
      const esUrl = `/status?channel=${a.privateChannel}&since=0`;
      const esSt = getStatus(page, page.net, a.base + esUrl);
      out.eventSourceNoToken = await page.evaluate(openEventSource, { url: esUrl, withCredentials: false, wantMessages: 1 });
      out.eventSourceNoTokenStatus = await esSt;
    } finally {
      await ctx.close().catch(() => {});
    }
  }
  return out;
}

async function main() {
  const a = JSON.parse(process.argv[2] || '{}');
  if (!a.base || !a.attackers) {
    process.stderr.write("usage: csrf.test.mjs '{\"base\": ..., \"attackers\": [...], ...}'\n");
    process.exit(2);
  }
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 60000 });
  log(`chromium ${browser.version()} launched`);
  try {
    const details = { chromium: browser.version(), attackers: [] };
    for (const at of a.attackers) {
      log(`attacker page on ${at.origin}`);
      details.attackers.push(await attacker(browser, a, at));
    }
    log('the stack\'s own page');
    details.same = await sameOrigin(browser, a);
    process.stdout.write(JSON.stringify({ ok: true, details }) + '\n');
  } catch (e) {
    log(`failed: ${e.stack || e}`);
    process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.stack || e) }) + '\n');
    process.exitCode = 1;
  } finally {
    await browser.close().catch(() => {});
  }
}

main().catch((e) => { log(`fatal: ${e.stack || e}`); process.exit(1); });
