// bridge.mjs - what page.test.mjs and client.test.mjs share: the JSON-lines
// protocol with their Python driver (tests/integration/test_browser.py and
// test_client_js.py), logging, and one Chromium for the whole session.
//
//   node -> py  {"type":"ready","chromium":"<version>"}
//   py -> node  {"type":"run","scenario":NAME,"base":"http://127.0.0.1:PORT","args":{...}}
//   node -> py  {"type":"ask","seq":N,"action":ACTION,"args":{...}}   (zero or more)
//   py -> node  {"type":"answer","seq":N,"ok":true,"value":...} | {"ok":false,"error":"..."}
//   node -> py  {"type":"result","scenario":NAME,"ok":BOOL,"error":"...","details":{...},"ms":N}
//   py -> node  {"type":"quit"}
// Logs go to stderr. Scenarios run one after the other.
//
// A script calls main({tag, script, scenarios, runs, before}) once:
// scenarios maps a name to async (browser, base, args) => details; runs is
// the script's list of the scenario's Run objects (emptied before each
// scenario; their consoleSeen arrays are reported); before() runs ahead of
// each scenario. With --serve it answers the driver; with --base URL
// --scenario NAME [--args JSON] it runs one scenario and exits 0 or 1.
//
// Environment: PW_CHROMIUM (default /usr/bin/chromium).

import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const CHROMIUM = process.env.PW_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];

const T0 = Date.now();
let TAG = 'browser';
export function log(...a) {
  process.stderr.write(`[${TAG} +${((Date.now() - T0) / 1000).toFixed(2)}s] ${a.join(' ')}\n`);
}
export function emit(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------ stdin / asks
const pending = new Map();      // seq -> {resolve, reject}
let seq = 0;
let onRun = null;               // set in --serve mode
let stdinClosed = false;

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  let m;
  try { m = JSON.parse(line); } catch (e) { log('bad input line:', line); return; }
  if (m.type === 'answer') {
    const p = pending.get(m.seq);
    if (!p) return;
    pending.delete(m.seq);
    if (m.ok) p.resolve(m.value); else p.reject(new Error(`harness action failed: ${m.error}`));
  } else if (m.type === 'run' && onRun) {
    onRun(m);
  } else if (m.type === 'quit') {
    quit(0);
  }
});
rl.on('close', () => {
  stdinClosed = true;
  for (const [, p] of pending) p.reject(new Error('stdin closed while waiting for the harness'));
  pending.clear();
  if (onRun) quit(0);
});

// Ask the Python side to do something only it can (publish, stop a process...).
export function ask(action, args = {}) {
  if (stdinClosed) return Promise.reject(new Error(`cannot ask the harness to ${action}: stdin closed`));
  const s = ++seq;
  return new Promise((resolve, reject) => {
    pending.set(s, { resolve, reject });
    emit({ type: 'ask', seq: s, action, args });
  });
}

// ------------------------------------------------------------------- main
let browser = null;
let quitting = false;
async function quit(code) {
  if (quitting) return;
  quitting = true;
  if (browser) await browser.close().catch(() => {});
  process.exit(code);
}
process.on('SIGTERM', () => quit(143));
process.on('SIGINT', () => quit(130));

async function runScenario(opts, name, base, args) {
  const t = Date.now();
  const fn = opts.scenarios[name];
  if (!fn) return { type: 'result', scenario: name, ok: false, error: `unknown scenario ${name}; known: ${Object.keys(opts.scenarios).join(', ')}`, ms: 0 };
  log(`scenario ${name} ${JSON.stringify(args)} on ${base}`);
  opts.runs.length = 0;
  const consoleErrors = () => opts.runs.flatMap((r) => r.consoleSeen);
  try {
    if (opts.before) await opts.before();
    const details = await fn(browser, base.replace(/\/+$/, ''), args || {});
    log(`scenario ${name} passed in ${Date.now() - t} ms`);
    return { type: 'result', scenario: name, ok: true, details, consoleErrors: consoleErrors(), ms: Date.now() - t };
  } catch (e) {
    log(`scenario ${name} FAILED: ${e.stack || e}`);
    for (const c of consoleErrors()) log(`  console error: ${c}`);
    return { type: 'result', scenario: name, ok: false, error: String(e && e.message || e), ms: Date.now() - t };
  }
}

function argv(name) {
  const i = process.argv.indexOf('--' + name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

async function start(opts) {
  TAG = opts.tag;
  const serve = process.argv.includes('--serve');
  const base = argv('base'), scenario = argv('scenario');
  if (!serve && (!base || !scenario)) {
    process.stderr.write(`usage: ${opts.script} --serve | --base URL --scenario NAME [--args JSON]\n` +
      `scenarios: ${Object.keys(opts.scenarios).join(', ')}\n`);
    return quit(2);
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 60000 });
  log(`chromium ${browser.version()} launched`);
  if (serve) {
    let chain = Promise.resolve();
    onRun = (m) => { chain = chain.then(async () => emit(await runScenario(opts, m.scenario, m.base, m.args))); };
    emit({ type: 'ready', chromium: browser.version() });
    return;
  }
  const r = await runScenario(opts, scenario, base, argv('args') ? JSON.parse(argv('args')) : {});
  emit(r);
  await quit(r.ok ? 0 : 1);
}

export function main(opts) {
  start(opts).catch((e) => { log(`fatal: ${e.stack || e}`); emit({ type: 'fatal', error: String(e && e.message || e) }); quit(1); });
}
