/*!
 * pushwire.js: the browser client of pushwire. Plain JavaScript, no
 * dependencies, no build step.
 *
 * Loading
 *   Classic script:  <script src="/pushwire.js"></script>   defines window.Pushwire
 *   ES module:       import { Pushwire } from "/pushwire.esm.js";
 *                    (pushwire.esm.js re-exports this file; a classic script
 *                    cannot contain `export`, and the module file ends in .js
 *                    so that any web server, nginx's default types included,
 *                    serves it with a JavaScript MIME type.)
 *
 * Connection
 *   const pw = new Pushwire({
 *     url: location.origin,        // the pushwire server (nginx); ws:// is derived from it
 *     token: "T",                  // optional connection token (JWT) for private channels
 *     getToken: async (channel) => "T",  // optional: a new token for channel, called when a
 *                                  // token expires (or is about to), or is refused with 401
 *     transports: ["websocket", "eventsource", "longpoll"],  // tried in this order
 *     maxBackoff: 10000,           // ms, cap of the reconnect delay
 *     minBackoff: 500,             // ms, first step of the reconnect delay
 *     upgradeInterval: 30000,      // ms between tries to return to a better transport
 *     openTimeout: 10000,          // ms a transport may take to open
 *     failuresBeforeFallback: 2,   // failed opens in a row before the next transport
 *     pollTimeout: 30,             // s, long-poll hold asked of the server
 *     credentials: "same-origin",  // fetch credentials (cookie pushwire_token); "include"
 *                                  // also makes EventSource send cookies cross-origin
 *     onStateChange(s) {},         // s = {state, transport, retryIn, reason}
 *     onError(err) {},             // errors of subscriptions without their own onError
 *   });
 *   pw.state        "idle" (no subscription) | "connecting" | "connected" |
 *                   "disconnected" (retrying: pw.retryIn ms; reason "offline" or
 *                   "paused") | "closed"
 *   pw.transport    "websocket" | "eventsource" | "longpoll": the current (or next) one
 *   pw.on("state" | "error", fn) returns a function that removes fn
 *   pw.disconnect() / pw.connect()   pause and resume (subscriptions and positions kept)
 *   pw.close()      ends everything; the object cannot be used again
 *   pw.stats        {received, duplicates, resets, gaps, reconnects, fallbacks, upgrades}
 *
 * Subscriptions (all share ONE connection: a WebSocket with in-band
 * subscribe/unsubscribe, or one EventSource / long-poll for the whole set)
 *   const sub = pw.subscribe(channel, {
 *     since: 12, epoch: "E",      // optional start: messages after id 12 of epoch E;
 *                                 // without since: messages published from now on
 *     token: "T",                 // optional token of this subscription only
 *     onMessage(msg) {},          // msg = {channel, epoch, id, content, time}
 *     onReset(info) {},           // info = {channel, epoch, previousEpoch, id, reason}: the
 *                                 // history could not be continued (new epoch, or since out
 *                                 // of range); the retained history follows as messages
 *     onError(err) {},            // err: PushwireError {status, channel, message}; 401/403/400
 *                                 // end the subscription (no retry loop)
 *   });
 *   sub.unsubscribe()  (or pw.unsubscribe(channel)); sub.state, sub.epoch, sub.lastId,
 *   sub.received, sub.duplicates, sub.resets
 *   One subscription per channel and Pushwire object; subscribing twice throws.
 *
 * Publishing
 *   await pw.publish(channel, content, {token, idempotencyKey, attempts: 4, timeout: 15000,
 *                                       onRetry({attempt, delay, error}) {}})
 *   POST /chat with a form body; resolves {id, channel, epoch}. A network error or a 503
 *   is retried (Retry-After honoured, up to 10 s) with the same Idempotency-Key (one is made
 *   up when none is given), so a retry never publishes twice. Rejects with a PushwireError
 *   carrying status (0: network), message (the server's "error"), body and retryAfter (ms).
 *   Only options.token is sent (a subscription token that does not grant publishing would
 *   make the server refuse even a public channel); on a 401 getToken(channel) is asked once.
 *
 * Guarantees and behaviour
 *   - Per channel the client remembers the epoch and the last id delivered and resumes from
 *     there on every reconnect and change of transport: a message with an id at or below the
 *     last one of the same epoch is dropped (stats.duplicates), so onMessage sees every
 *     message once and in order. A reset frame/event/answer or a message of a new epoch calls
 *     onReset and starts the channel over.
 *   - A new subscription (or one with a new token) is first checked with one long-poll
 *     request answered at once (timeout=0): it fixes the start position when no since is
 *     given (so a reconnect can never skip a message), and a 401 (getToken, then retried) or
 *     403 (onError) is seen there with its status, which a browser never shows for a refused
 *     WebSocket or EventSource.
 *   - A transport that fails to open failuresBeforeFallback times in a row is replaced by the
 *     next of `transports`; every upgradeInterval the better ones are tried again in the
 *     background and the connection moves back once one opens.
 *   - Reconnects wait a random time between 0 and min(maxBackoff, minBackoff * 2^n) (full
 *     jitter), or Retry-After when the server gave one (503, 429); "online" and the page
 *     becoming visible retry at once.
 *   - Token expiry: a WebSocket {"type":"expired"} frame or close 4401, an EventSource
 *     `event: expired`, or a 401 call getToken(channel) and resubscribe with the new token.
 *     When the token's exp is known (JWT payload, or the server's "refreshed" answer) the
 *     token is renewed shortly before it: in-band {"type":"refresh"} on a WebSocket, a
 *     reopened stream on EventSource, the next request on long-poll.
 */
(function (root, factory) {
  "use strict";
  // Loaded twice (a classic script and the module entry): one copy serves both.
  const Pushwire = root.Pushwire && root.Pushwire.PushwireError ? root.Pushwire : factory(root);
  root.Pushwire = Pushwire;
  if (typeof module === "object" && module && module.exports) module.exports = Pushwire;
}(typeof globalThis !== "undefined" ? globalThis : (typeof self !== "undefined" ? self : this), function (root) {
  "use strict";

  const VERSION = "1.0.0";
  const CHANNEL_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
  const TRANSPORTS = ["websocket", "eventsource", "longpoll"];
  const PROBE_TIMEOUT_MS = 10000;
  const STABLE_MS = 5000;            // an open connection this old resets the backoff
  const MAX_RETRY_AFTER_MS = 300000;
  const PUBLISH_MAX_RETRY_AFTER_MS = 10000;
  const CLOSE_TOKEN_EXPIRED = 4401;

  // ------------------------------------------------------------- helpers
  const hasWindow = typeof root.addEventListener === "function" && typeof root.document === "object";
  const later = typeof root.queueMicrotask === "function" ? (f) => root.queueMicrotask(f) : (f) => Promise.resolve().then(f);

  function toId(v) {
    const n = typeof v === "string" && v.trim() !== "" ? Number(v) : v;
    return typeof n === "number" && Number.isSafeInteger(n) && n >= 0 ? n : null;
  }

  function randomKey() {
    const c = root.crypto;
    if (c && typeof c.randomUUID === "function") return c.randomUUID();
    const b = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (let i = 0; i < b.length; i++) b[i] = Math.floor(Math.random() * 256);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  // Retry-After: delta-seconds or an HTTP date; ms or null.
  function parseRetryAfter(h) {
    if (!h) return null;
    h = String(h).trim();
    let ms = null;
    if (/^\d+$/.test(h)) ms = Number(h) * 1000;
    else { const t = Date.parse(h); if (!Number.isNaN(t)) ms = Math.max(0, t - Date.now()); }
    return ms === null ? null : Math.min(ms, MAX_RETRY_AFTER_MS);
  }

  // The exp claim of a JWT (seconds), or null. Not verified: only used to
  // renew the token in time.
  function jwtExp(token) {
    try {
      const part = String(token).split(".")[1];
      if (!part) return null;
      let b64 = part.replace(/-/g, "+").replace(/_/g, "/");
      while (b64.length % 4) b64 += "=";
      const claims = JSON.parse(root.atob(b64));
      return claims && typeof claims.exp === "number" && Number.isFinite(claims.exp) ? claims.exp : null;
    } catch (e) { return null; }
  }

  function report(e) {       // an exception thrown by a user's callback
    if (typeof root.reportError === "function") root.reportError(e);
    else setTimeout(() => { throw e; }, 0);
  }

  function callSafely(fn, self, arg) {
    if (typeof fn !== "function") return;
    try { fn.call(self, arg); } catch (e) { report(e); }
  }

  // getToken(channel), or null when it fails, returns nothing usable or
  // takes longer than 15 s.
  function askToken(fn, channel) {
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(null), 15000);
      Promise.resolve().then(() => fn(channel)).then(
        (v) => { clearTimeout(t); resolve(typeof v === "string" && v ? v : null); },
        () => { clearTimeout(t); resolve(null); });
    });
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      if (signal) signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  class PushwireError extends Error {
    constructor(message, o) {
      super(message);
      this.name = "PushwireError";
      o = o || {};
      this.status = o.status === undefined ? 0 : o.status;
      this.channel = o.channel === undefined ? null : o.channel;
      this.code = o.code || null;
      this.body = o.body === undefined ? null : o.body;
      this.retryAfter = o.retryAfter === undefined ? null : o.retryAfter;
    }
  }

  const STATUS_TEXT = {
    400: "bad request", 401: "not authorized", 403: "forbidden", 404: "not found",
    405: "method not allowed", 409: "conflict", 413: "message too large", 415: "unsupported content type",
    429: "too many requests", 500: "server error", 502: "bad gateway", 503: "service unavailable",
    504: "gateway timeout"
  };

  // A PushwireError from a fetch Response that is not ok.
  async function responseError(res, channel) {
    let body = null, text = "";
    try {
      const raw = await res.text();
      try { body = JSON.parse(raw); } catch (e) { body = raw; }
      if (body && typeof body === "object" && typeof body.error === "string") text = body.error;
      else if (typeof body === "string" && body && !/html/i.test(res.headers.get("Content-Type") || "")) text = body.trim().slice(0, 200);
    } catch (e) { /* body unreadable */ }
    if (!text) text = STATUS_TEXT[res.status] || res.statusText || "request failed";
    const ch = body && typeof body === "object" && typeof body.channel === "string" ? body.channel : channel;
    return new PushwireError(text, {
      status: res.status, channel: ch === undefined ? null : ch, body: body,
      retryAfter: parseRetryAfter(res.headers.get("Retry-After"))
    });
  }

  // ---------------------------------------------------------- positions
  // Query of a set of subscriptions (SPEC.md and the multi-channel form):
  // one channel: channel=c&since=N&epoch=E; several:
  // channel=a,b&since=a=EPOCH:N,b=N (a channel without a position: live).
  function positionQuery(subs, withPositions) {
    const q = ["channel=" + subs.map((s) => s.channel).join(",")];
    if (!withPositions) return q;
    if (subs.length === 1) {
      const s = subs[0];
      if (s.lastId !== null) {
        q.push("since=" + s.lastId);
        if (s.epoch !== null) q.push("epoch=" + encodeURIComponent(s.epoch));
      }
    } else {
      const items = [];
      for (const s of subs) {
        if (s.lastId === null) continue;
        items.push(s.channel + "=" + (s.epoch !== null ? encodeURIComponent(s.epoch) + ":" : "") + s.lastId);
      }
      if (items.length) q.push("since=" + items.join(","));
    }
    return q;
  }

  // Subscriptions grouped by the token they use (ES and long-poll carry one
  // per request): [{token, subs}], biggest group first.
  function groupByToken(pw, subs) {
    const m = new Map();
    for (const s of subs) {
      const t = pw._tokenOf(s) || "";
      if (!m.has(t)) m.set(t, []);
      m.get(t).push(s);
    }
    const groups = Array.from(m, ([token, list]) => ({ token: token || null, subs: list }));
    const conn = pw._token || null;
    groups.sort((a, b) => (b.subs.length - a.subs.length) || ((b.token === conn) - (a.token === conn)));
    return groups;
  }

  const laneKey = (g) => (g.token || "") + "\n" + g.subs.map((s) => s.channel).sort().join(",");

  // ======================================================== Subscription
  class Subscription {
    constructor(pw, channel, o) {
      this._pw = pw;
      this.channel = channel;
      this.token = typeof o.token === "string" && o.token ? o.token : undefined;
      this.epoch = typeof o.epoch === "string" && o.epoch !== "" ? o.epoch : null;
      const since = o.since === undefined || o.since === null ? null : toId(o.since);
      if (o.since !== undefined && o.since !== null && since === null) throw new TypeError("since must be a non-negative integer");
      this.lastId = since;
      if (since === null) this.epoch = null;  // an epoch without since says nothing
      this.onMessage = o.onMessage;
      this.onReset = o.onReset;
      this.onError = o.onError;
      // pending: to be checked; checking; refreshing (awaiting getToken);
      // ready: may go on the connection; active: the connection follows it;
      // failed / closed: over.
      this.state = "pending";
      this.checkedToken = undefined;   // the token the last check accepted
      this.refreshTried = false;       // getToken already asked since the last success
      this.exp = this.token ? jwtExp(this.token) : null;
      this._refreshTimer = 0;
      this._refreshFor = null;
      this.received = 0;
      this.duplicates = 0;
      this.resets = 0;
      this.gaps = 0;
      this.noRefresh = false;          // a public channel: its token is not renewed
      this.refusedToken = null;        // {token, err} of a renewal the server refused
    }
    get live() { return this.state !== "failed" && this.state !== "closed"; }
    unsubscribe() { this._pw._remove(this, "closed"); }
  }

  // =========================================================== WebSocket
  // One socket: the subscriptions known when it opens go in its URL (those
  // using the most common token; the token in ?token=), the rest and every
  // later change in-band (mux-spec.md).
  class WSTransport {
    constructor(pw) {
      this.pw = pw;
      this.name = "websocket";
      this.alive = true;
      this.opened = false;
      this.ws = null;
      this.server = new Map();   // channel -> {state: "url"|"pending"|"active", token}
      this.urlToken = null;
      this.openTimer = 0;
      this.retryTimer = 0;
      this.expiredSeen = new Set();
    }
    isUp() { return this.opened; }

    start() {
      const pw = this.pw;
      const subs = pw._ready();
      const groups = groupByToken(pw, subs);
      const g = groups.length ? groups[0] : { token: pw._token || null, subs: [] };
      this.urlToken = g.token;
      const q = g.subs.length ? positionQuery(g.subs, true) : ["channel="];
      if (g.token) q.push("token=" + encodeURIComponent(g.token));
      for (const s of g.subs) this.server.set(s.channel, { state: "url", token: g.token });
      let ws;
      try { ws = new WebSocket(pw._wsBase + "/status?" + q.join("&")); }
      catch (e) { later(() => this.down({ opened: false, error: e })); return; }
      this.ws = ws;
      this.openTimer = setTimeout(() => { if (!this.opened) this.down({ opened: false, reason: "open timeout" }); }, pw._o.openTimeout);
      ws.onopen = () => {
        if (!this.alive) return;
        clearTimeout(this.openTimer);
        this.opened = true;
        for (const [ch, e] of this.server) {
          const s = pw._subs.get(ch);
          if (s && e.state === "url") { e.state = "active"; pw._activated(s); }
        }
        pw._tOpen(this);
        this.update();
      };
      ws.onmessage = (ev) => { if (this.alive) this.frame(ev.data); };
      ws.onerror = () => { /* the close event follows */ };
      ws.onclose = (ev) => {
        if (!this.alive) return;
        if (ev.code === CLOSE_TOKEN_EXPIRED) {
          // The token ended and no refresh came: every subscription the
          // socket followed with a token is renewed (those that had their
          // own "expired" frame already are).
          for (const [ch, e] of this.server) {
            const s = pw._subs.get(ch);
            if (s && (e.token || pw._tokenOf(s)) && !this.expiredSeen.has(ch)) pw._expired(s);
          }
          this.down({ opened: this.opened, immediate: true, reason: "token expired" });
          return;
        }
        this.down({ opened: this.opened, code: ev.code, reason: ev.reason });
      };
    }

    send(obj) {
      if (!this.ws || this.ws.readyState !== 1) return false;
      try { this.ws.send(JSON.stringify(obj)); return true; } catch (e) { return false; }
    }

    // Bring the server's set in line with the wanted one.
    update() {
      if (!this.alive || !this.opened) return;
      const pw = this.pw;
      const want = new Map(pw._ready().map((s) => [s.channel, s]));
      for (const [ch, e] of Array.from(this.server)) {
        const s = want.get(ch);
        if (!s) {
          this.send({ type: "unsubscribe", channel: ch });
          this.server.delete(ch);
        } else if (e.state === "active" && pw._tokenOf(s) && (pw._tokenOf(s) || null) !== e.token) {
          // A renewed token for a live subscription.
          const tok = pw._tokenOf(s);
          e.refreshing = e.token;
          e.token = tok;
          this.send({ type: "refresh", channel: ch, token: tok });
        }
      }
      for (const [ch, s] of want) {
        if (this.server.has(ch)) continue;
        const msg = { type: "subscribe", channel: ch };
        if (s.lastId !== null) {
          msg.since = s.lastId;
          if (s.epoch !== null) msg.epoch = s.epoch;
        }
        const tok = pw._tokenOf(s) || null;
        if (tok && tok !== this.urlToken) msg.token = tok;
        this.server.set(ch, { state: "pending", token: tok });
        this.send(msg);
      }
      pw._updateState();
    }

    frame(data) {
      if (typeof data !== "string") return;
      let f;
      try { f = JSON.parse(data); } catch (e) { return; }
      if (!f || typeof f !== "object") return;
      const pw = this.pw;
      let ch = typeof f.channel === "string" ? f.channel : null;
      if (ch === null && f.type === undefined && this.server.size === 1) ch = this.server.keys().next().value;
      const s = ch !== null ? pw._subs.get(ch) : null;
      const e = ch !== null ? this.server.get(ch) : null;
      if (typeof f.type === "string") { this.control(f, ch, s, e); return; }
      if (!s || !e) return;                         // not (or no longer) followed
      if (f.reset === true) { pw._reset(s, f.epoch, f.id, "reset"); return; }
      pw._deliver(s, f);
    }

    control(f, ch, s, e) {
      const pw = this.pw;
      switch (f.type) {
        case "subscribed":
          // (update: a token renewed while the subscribe was under way)
          if (s && e) { e.state = "active"; pw._activated(s); this.update(); }
          return;
        case "unsubscribed":
          return;
        case "refreshed":
          if (s && e) { delete e.refreshing; pw._setExp(s, toId(f.expires) || null); }
          return;
        case "expired":
          if (ch !== null) {
            this.expiredSeen.add(ch);
            this.server.delete(ch);
            if (s) pw._expired(s);
          }
          return;
        case "error": {
          const status = toId(f.status) || 0;
          const err = new PushwireError(typeof f.error === "string" ? f.error : (STATUS_TEXT[status] || "error"),
            { status: status, channel: ch, body: f });
          if (!e && ch === null) {
            // Not tied to a channel (a server that names none): a refresh
            // it refused keeps the old token until it expires (then the
            // "expired" path renews it); it is not sent again.
            for (const x of this.server.values()) delete x.refreshing;
            pw._emitError(err);
            return;
          }
          if (!s || !e) return;
          if (e.refreshing !== undefined) {   // a refused refresh: the old token lives on
            delete e.refreshing;
            // 400: a public channel, whose token the server ignores; no
            // more renewals for it. Else the refusal is what onError says
            // if the subscription ends with this token.
            if (status === 400) pw._noRefresh(s);
            else s.refusedToken = { token: e.token, err: err };
            return;
          }
          if (e.state !== "pending") return;  // e.g. 404 to an unsubscribe
          if (status === 409) { e.state = "active"; pw._activated(s); pw._updateState(); return; }
          this.server.delete(ch);
          if (status === 401) { pw._authFailed(s, err); return; }
          if (status === 400 || status === 403 || status === 404) { pw._fail(s, err); return; }
          // 503 and the like: ask again a little later.
          clearTimeout(this.retryTimer);
          this.retryTimer = setTimeout(() => this.update(), 500 + Math.random() * 1500);
          return;
        }
        default:
          return;
      }
    }

    down(info) {
      if (!this.alive) return;
      this.pw._tDown(this, info);
    }

    stop() {
      if (!this.alive) return;
      this.alive = false;
      clearTimeout(this.openTimer);
      clearTimeout(this.retryTimer);
      const ws = this.ws;
      this.ws = null;
      if (ws) {
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try { ws.close(1000); } catch (e) { /* ignore */ }
      }
    }
  }

  // ============================================================== lanes
  // EventSource and long-poll follow the subscriptions in lanes: one per
  // token in use (normally one), each carrying every channel of its group.
  // A subclass opens and closes a lane (openLane(key, group), closeLane(key,
  // lane)); a lane is {opened, ...}; the transport is up once it and every
  // lane have been answered.
  class LaneTransport {
    constructor(pw, name) {
      this.pw = pw;
      this.name = name;
      this.alive = true;
      this.opened = false;
      this.lanes = new Map();    // laneKey -> lane
    }
    isUp() {
      if (!this.opened) return false;
      for (const l of this.lanes.values()) if (!l.opened) return false;
      return true;
    }
    start() { this.update(); }

    // Lanes for the groups of the subscriptions ready now: new ones opened,
    // ones no group needs closed.
    update() {
      if (!this.alive) return;
      const pw = this.pw;
      const groups = groupByToken(pw, pw._ready());
      const keys = new Set(groups.map(laneKey));
      for (const [k, l] of Array.from(this.lanes)) if (!keys.has(k)) this.closeLane(k, l);
      for (const g of groups) {
        const k = laneKey(g);
        if (!this.lanes.has(k)) this.openLane(k, g);
      }
      pw._updateState();
    }

    down(info) {
      if (!this.alive) return;
      this.pw._tDown(this, info);
    }

    stop() {
      if (!this.alive) return;
      this.alive = false;
      for (const [k, l] of Array.from(this.lanes)) this.closeLane(k, l);
    }
  }

  // ========================================================= EventSource
  // One stream per token in use (normally one), reopened with every
  // channel's position when the set changes.
  class ESTransport extends LaneTransport {
    constructor(pw) { super(pw, "eventsource"); }

    openLane(key, g) {
      const pw = this.pw;
      const q = positionQuery(g.subs, true);
      if (g.token) q.push("token=" + encodeURIComponent(g.token));
      const lane = { es: null, opened: false, channels: g.subs.map((s) => s.channel), timer: 0 };
      let es;
      try { es = new EventSource(pw._url + "/status?" + q.join("&"), { withCredentials: pw._o.credentials === "include" }); }
      catch (e) { later(() => this.down({ opened: this.opened, error: e })); return; }
      lane.es = es;
      this.lanes.set(key, lane);
      lane.timer = setTimeout(() => { if (!lane.opened) this.down({ opened: this.opened, reason: "open timeout" }); }, pw._o.openTimeout);
      const mine = () => this.alive && this.lanes.get(key) === lane;
      es.onopen = () => {
        if (!mine()) return;
        clearTimeout(lane.timer);
        lane.opened = true;
        for (const ch of lane.channels) { const s = pw._subs.get(ch); if (s) pw._activated(s); }
        if (!this.opened) { this.opened = true; pw._tOpen(this); }
        pw._updateState();
      };
      const parse = (ev) => { try { return JSON.parse(ev.data); } catch (e) { return null; } };
      const subOf = (d) => {
        let ch = d && typeof d.channel === "string" ? d.channel : null;
        if (ch === null && lane.channels.length === 1) ch = lane.channels[0];
        return ch !== null && lane.channels.indexOf(ch) >= 0 ? pw._subs.get(ch) : null;
      };
      es.onmessage = (ev) => {
        if (!mine()) return;
        const d = parse(ev);
        const s = subOf(d);
        if (s && d) pw._deliver(s, d);
      };
      es.addEventListener("reset", (ev) => {
        if (!mine()) return;
        const d = parse(ev);
        const s = subOf(d);
        if (s && d) pw._reset(s, d.epoch, d.id, "reset");
      });
      // The stream ends after its expired events (one per channel): renew
      // those channels and reopen the rest at once, never letting the
      // browser reconnect with the dead token.
      const endExpired = () => {
        if (!mine()) return;
        this.closeLane(key, lane);
        this.update();
      };
      es.addEventListener("expired", (ev) => {
        if (!mine()) return;
        const d = parse(ev);
        const s = subOf(d);
        if (s) pw._expired(s);
        if (!lane.expiring) lane.expiring = setTimeout(endExpired, 50);
      });
      es.onerror = () => {
        if (!mine()) return;
        if (lane.expiring) { clearTimeout(lane.expiring); endExpired(); return; }
        // Reconnects are ours (with every position), not the browser's.
        this.down({ opened: lane.opened || this.opened, laneOpened: lane.opened });
      };
    }

    closeLane(key, lane) {
      clearTimeout(lane.timer);
      clearTimeout(lane.expiring);
      if (this.lanes.get(key) === lane) this.lanes.delete(key);
      if (lane.es) {
        lane.es.onopen = lane.es.onmessage = lane.es.onerror = null;
        try { lane.es.close(); } catch (e) { /* ignore */ }
      }
    }

  }

  // =========================================================== long-poll
  // One polling loop per token in use (normally one); a change of the set
  // aborts the held poll and asks again with every position.
  class LPTransport extends LaneTransport {
    constructor(pw) { super(pw, "longpoll"); }

    openLane(key, g) {
      const lane = { ctrl: null, opened: false, channels: g.subs.map((s) => s.channel), token: g.token, stopped: false };
      this.lanes.set(key, lane);
      // Once the server has answered this transport, a new set of channels
      // (positions known) is followed from its first request.
      if (this.opened) this.laneUp(lane, g.subs);
      this.loop(key, lane);
    }

    closeLane(key, lane) {
      lane.stopped = true;
      if (this.lanes.get(key) === lane) this.lanes.delete(key);
      if (lane.ctrl) { try { lane.ctrl.abort(); } catch (e) { /* ignore */ } lane.ctrl = null; }
    }

    async loop(key, lane) {
      const pw = this.pw;
      const mine = () => this.alive && !lane.stopped && this.lanes.get(key) === lane;
      let fastEmpty = 0;
      while (mine()) {
        const subs = lane.channels.map((ch) => pw._subs.get(ch)).filter((s) => s && s.live);
        if (!subs.length) return;
        const q = positionQuery(subs, true);
        q.push("timeout=" + pw._o.pollTimeout);
        const ctrl = new AbortController();
        lane.ctrl = ctrl;
        const hard = setTimeout(() => ctrl.abort(), (pw._o.pollTimeout + 20) * 1000);
        // A poll still held after a moment has been accepted: the server
        // answers at once when anything is due (positions are known).
        const soon = lane.opened ? 0 : setTimeout(() => { if (mine()) this.laneUp(lane, subs); }, 1000);
        const started = Date.now();
        let res = null, a = null, err = null;
        try {
          res = await fetch(pw._url + "/status?" + q.join("&"), {
            method: "GET", cache: "no-store", credentials: pw._o.credentials, signal: ctrl.signal,
            headers: pw._authHeaders(lane.token, { "Accept": "application/json" })
          });
          if (res.ok) a = await res.json();
          else err = await responseError(res, subs.length === 1 ? subs[0].channel : null);
        } catch (e) {
          err = e;
        } finally {
          clearTimeout(hard);
          clearTimeout(soon);
          if (lane.ctrl === ctrl) lane.ctrl = null;
        }
        if (!mine()) return;
        if (err) {
          const st = err instanceof PushwireError ? err.status : 0;
          if (st === 401 || st === 403 || st === 400) { this.refused(key, lane, subs, err); return; }
          this.down({ opened: this.opened, retryAfter: err.retryAfter || null, error: err });
          return;
        }
        const statuses = a && Array.isArray(a.channels) ? a.channels : (a && typeof a === "object" ? [a] : null);
        if (!statuses || statuses.some((st) => !st || typeof st !== "object" || st.epoch === undefined || st.epoch === null)) {
          this.down({ opened: this.opened, error: new Error("bad long-poll answer") });
          return;
        }
        this.laneUp(lane, subs);
        let more = false, added = 0, reset = false;
        for (const st of statuses) {
          let ch = typeof st.channel === "string" ? st.channel : (subs.length === 1 ? subs[0].channel : null);
          const s = ch !== null && lane.channels.indexOf(ch) >= 0 ? pw._subs.get(ch) : null;
          if (!s || !s.live) continue;
          const r = pw._pollStatus(s, st);
          added += r.added;
          if (st.more === true) more = true;
          if (st.reset === true) reset = true;
          if (!this.alive || lane.stopped) return;
        }
        if (more) { fastEmpty = 0; continue; }
        // Guard against a hot loop if something answers empty at once, repeatedly.
        if (added === 0 && !reset && Date.now() - started < 250) {
          if (++fastEmpty >= 3) await sleep(Math.min(5, fastEmpty - 2) * 1000);
        } else fastEmpty = 0;
      }
    }

    laneUp(lane, subs) {
      const pw = this.pw;
      if (lane.opened) return;
      lane.opened = true;
      for (const s of subs) if (s.live) pw._activated(s);
      if (!this.opened) { this.opened = true; pw._tOpen(this); }
      pw._updateState();
    }

    // 401/403/400: the server says what, not always for which channel.
    refused(key, lane, subs, err) {
      const pw = this.pw;
      this.closeLane(key, lane);
      const named = err.channel !== null ? subs.filter((s) => s.channel === err.channel) : (subs.length === 1 ? subs : []);
      if (named.length) {
        if (err.status === 401) pw._authFailed(named[0], err);
        else pw._fail(named[0], err);
      } else {
        for (const s of subs) pw._recheck(s);  // the checks find which
      }
      pw._kick();
    }

  }

  const CLASSES = { websocket: WSTransport, eventsource: ESTransport, longpoll: LPTransport };

  function supported(name) {
    if (name === "websocket") return typeof root.WebSocket === "function";
    if (name === "eventsource") return typeof root.EventSource === "function";
    if (name === "longpoll") return typeof root.fetch === "function" && typeof root.AbortController === "function";
    return false;
  }

  // ============================================================ Pushwire
  class Pushwire {
    constructor(options) {
      const o = Object.assign({}, options || {});
      const loc = root.location;
      let url = typeof o.url === "string" && o.url ? o.url : (loc && loc.origin && loc.origin !== "null" ? loc.origin : "");
      if (!/^https?:\/\//i.test(url)) throw new TypeError("Pushwire: url must be an http(s) URL (got " + JSON.stringify(url) + ")");
      this._url = url.replace(/\/+$/, "");
      this._wsBase = this._url.replace(/^http/i, "ws");
      this._token = typeof o.token === "string" && o.token ? o.token : null;
      this._getToken = typeof o.getToken === "function" ? o.getToken : null;
      const want = Array.isArray(o.transports) && o.transports.length ? o.transports : TRANSPORTS;
      for (const t of want) if (TRANSPORTS.indexOf(t) < 0) throw new TypeError("Pushwire: unknown transport " + JSON.stringify(t));
      this._order = want.filter((t, i) => want.indexOf(t) === i && supported(t));
      if (!this._order.length) throw new Error("Pushwire: none of the transports " + want.join(", ") + " is available here");
      const num = (v, d, min) => (typeof v === "number" && Number.isFinite(v) && v >= min ? v : d);
      this._o = {
        maxBackoff: num(o.maxBackoff, 10000, 100),
        minBackoff: num(o.minBackoff, 500, 10),
        upgradeInterval: num(o.upgradeInterval, 30000, 100),
        openTimeout: num(o.openTimeout, 10000, 100),
        failuresBeforeFallback: Math.floor(num(o.failuresBeforeFallback, 2, 1)),
        pollTimeout: Math.floor(num(o.pollTimeout, 30, 1)),
        credentials: typeof o.credentials === "string" ? o.credentials : "same-origin"
      };
      this.onStateChange = typeof o.onStateChange === "function" ? o.onStateChange : null;
      this.onError = typeof o.onError === "function" ? o.onError : null;
      this._subs = new Map();
      this._listeners = { state: new Set(), error: new Set() };
      this._t = null;           // the current transport
      this._cand = null;        // a better one being tried
      this._ti = 0;             // index of the current kind in _order
      this._fails = 0;          // failed opens in a row
      this._backoffN = 0;
      this._retryTimer = 0;
      this._retryAt = 0;
      this._upgradeTimer = 0;
      this._stableTimer = 0;
      this._kickQueued = false;
      this._closed = false;
      this._paused = false;
      this._state = "idle";
      this._reason = null;
      this._last = "";
      this.stats = { received: 0, duplicates: 0, resets: 0, gaps: 0, reconnects: 0, fallbacks: 0, upgrades: 0 };
      if (hasWindow) {
        this._onOnline = () => this._nudge();
        this._onOffline = () => this._updateState();
        this._onVisible = () => { if (root.document.visibilityState === "visible") this._nudge(); };
        root.addEventListener("online", this._onOnline);
        root.addEventListener("offline", this._onOffline);
        root.document.addEventListener("visibilitychange", this._onVisible);
      }
    }

    // ------------------------------------------------------- public API
    get state() { return this._state; }
    get transport() { return this._t ? this._t.name : this._order[this._ti]; }
    get transports() { return this._order.slice(); }
    get retryIn() { return this._retryTimer ? Math.max(0, this._retryAt - Date.now()) : null; }
    get subscriptions() { return Array.from(this._subs.values()); }
    get token() { return this._token; }
    set token(t) {
      this._token = typeof t === "string" && t ? t : null;
      for (const s of this._subs.values()) {
        if (s.token !== undefined) continue;
        this._setExp(s, jwtExp(this._token));
        this._recheck(s);
      }
      if (this._t) this._t.update();
      this._kick();
    }

    subscribe(channel, options) {
      if (this._closed) throw new Error("Pushwire: closed");
      if (typeof channel !== "string" || !CHANNEL_RE.test(channel)) throw new TypeError("Pushwire: invalid channel name " + JSON.stringify(channel) + " (allowed: A-Z a-z 0-9 _ . : -, 1 to 64)");
      if (this._subs.has(channel)) throw new Error("Pushwire: already subscribed to " + channel);
      const s = new Subscription(this, channel, options || {});
      this._subs.set(channel, s);
      this._setExp(s, jwtExp(this._tokenOf(s)));
      this._kick();
      return s;
    }

    unsubscribe(channel) {
      const s = this._subs.get(channel);
      if (s) this._remove(s, "closed");
    }

    async publish(channel, content, options) {
      const o = options || {};
      if (typeof channel !== "string" || !CHANNEL_RE.test(channel)) throw new TypeError("Pushwire: invalid channel name " + JSON.stringify(channel));
      if (typeof content !== "string") content = content == null ? "" : String(content);
      const key = typeof o.idempotencyKey === "string" && o.idempotencyKey ? o.idempotencyKey : randomKey();
      let token = typeof o.token === "string" && o.token ? o.token : null;
      const attempts = Math.max(1, Math.floor(typeof o.attempts === "number" ? o.attempts : 4));
      const timeout = typeof o.timeout === "number" && o.timeout > 0 ? o.timeout : 15000;
      const body = new URLSearchParams({ content: content, channel: channel }).toString();
      let refreshed = false;
      for (let attempt = 1; ; attempt++) {
        let res = null, netErr = null;
        const ctrl = new AbortController();
        const timer = setTimeout(() => ctrl.abort(), timeout);
        try {
          res = await fetch(this._url + "/chat", {
            method: "POST", body: body, cache: "no-store", credentials: this._o.credentials, signal: ctrl.signal,
            headers: this._authHeaders(token, {
              "Content-Type": "application/x-www-form-urlencoded",
              "Accept": "application/json",
              "Idempotency-Key": key
            })
          });
        } catch (e) { netErr = e; }
        finally { clearTimeout(timer); }
        if (res && res.ok) {
          let r = null;
          try { r = await res.json(); } catch (e) { /* stored anyway */ }
          return {
            id: r && toId(r.id) !== null ? toId(r.id) : null,
            channel: r && typeof r.channel === "string" ? r.channel : channel,
            epoch: r && r.epoch != null ? String(r.epoch) : null
          };
        }
        const err = res ? await responseError(res, channel)
          : new PushwireError(netErr && netErr.name === "AbortError" ? "request timed out" : "network error", { status: 0, channel: channel });
        if (res && res.status === 401 && this._getToken && !refreshed) {
          refreshed = true;
          const t = await askToken(this._getToken, channel);
          if (t && t !== token) { token = t; attempt--; continue; }
        }
        const retryable = !res || res.status === 503 || res.status === 502 || res.status === 504;
        if (retryable && attempt < attempts && (err.retryAfter === null || err.retryAfter <= PUBLISH_MAX_RETRY_AFTER_MS)) {
          let d = Math.max(200, Math.random() * 500 * Math.pow(2, attempt));
          if (err.retryAfter !== null) d = err.retryAfter + Math.random() * 300;
          callSafely(o.onRetry, null, { attempt: attempt, delay: d, error: err });
          await sleep(d);
          continue;
        }
        throw err;
      }
    }

    on(type, fn) {
      const set = this._listeners[type];
      if (!set) throw new TypeError("Pushwire: unknown event " + JSON.stringify(type));
      set.add(fn);
      return () => set.delete(fn);
    }

    disconnect() {
      if (this._closed || this._paused) return;
      this._paused = true;
      this._stopAll();
      this._updateState();
    }

    connect() {
      if (this._closed || !this._paused) return;
      this._paused = false;
      this._fails = 0;
      this._kick();
    }

    close() {
      if (this._closed) return;
      this._stopAll();
      for (const s of Array.from(this._subs.values())) this._remove(s, "closed", true);
      this._closed = true;
      if (hasWindow) {
        root.removeEventListener("online", this._onOnline);
        root.removeEventListener("offline", this._onOffline);
        root.document.removeEventListener("visibilitychange", this._onVisible);
      }
      this._updateState();
    }

    // -------------------------------------------------------- internals
    _tokenOf(s) { return s.token !== undefined ? s.token : this._token; }

    _authHeaders(token, h) {
      if (token) h["Authorization"] = "Bearer " + token;
      return h;
    }

    _ready() {
      const out = [];
      for (const s of this._subs.values()) if (s.state === "ready" || s.state === "active") out.push(s);
      return out;
    }

    _kick() {
      if (this._kickQueued) return;
      this._kickQueued = true;
      later(() => { this._kickQueued = false; this._sync(); });
    }

    _sync() {
      if (this._closed || this._paused) { this._updateState(); return; }
      let waiting = false;
      for (const s of Array.from(this._subs.values())) {
        if (s.state === "pending") this._check(s);
        if (s.state === "checking" || s.state === "refreshing") waiting = true;
      }
      const ready = this._ready();
      if (!ready.length && !waiting) {
        this._stopAll();
      } else if (this._t) {
        this._t.update();
      } else if (!this._retryTimer && ready.length && !waiting) {
        this._start();
      }
      this._updateState();
    }

    _start() {
      const name = this._order[this._ti];
      const t = new CLASSES[name](this);
      this._t = t;
      t.start();
      this._updateState();
    }

    _stopAll() {
      for (const t of [this._t, this._cand]) if (t) t.stop();
      this._t = this._cand = null;
      clearTimeout(this._retryTimer); this._retryTimer = 0;
      clearTimeout(this._upgradeTimer); this._upgradeTimer = 0;
      clearTimeout(this._stableTimer); this._stableTimer = 0;
      for (const s of this._subs.values()) if (s.state === "active") s.state = "ready";
    }

    // A transport opened.
    _tOpen(t) {
      if (t === this._cand) {                  // back to a better transport
        const old = this._t;
        this._t = t;
        this._cand = null;
        this._ti = this._order.indexOf(t.name);
        if (old) old.stop();
        this.stats.upgrades++;
        for (const s of this._subs.values()) if (s.state === "active" && !this._followedBy(t, s)) s.state = "ready";
        t.update();
      }
      if (t !== this._t) return;
      this._fails = 0;
      clearTimeout(this._stableTimer);
      this._stableTimer = setTimeout(() => { this._backoffN = 0; }, STABLE_MS);
      this._scheduleUpgrade();
      this._updateState();
    }

    _followedBy(t, s) {
      if (t.server) { const e = t.server.get(s.channel); return !!e && e.state === "active"; }
      for (const l of t.lanes.values()) if (l.opened && l.channels.indexOf(s.channel) >= 0) return true;
      return false;
    }

    // A transport failed (info.opened: after it had opened).
    _tDown(t, info) {
      if (t === this._cand) {
        t.stop();
        this._cand = null;
        this._tryUpgrade(this._order.indexOf(t.name) + 1);
        return;
      }
      if (t !== this._t) return;
      t.stop();
      this._t = null;
      clearTimeout(this._stableTimer); this._stableTimer = 0;
      if (this._cand) { this._cand.stop(); this._cand = null; }
      clearTimeout(this._upgradeTimer); this._upgradeTimer = 0;
      for (const s of this._subs.values()) if (s.state === "active") s.state = "ready";
      if (this._closed || this._paused) return;
      this.stats.reconnects++;
      const offline = hasWindow && root.navigator && root.navigator.onLine === false;
      if (!info.opened && !offline) {
        this._fails++;
        // A refused handshake looks like any failure to the page: check the
        // subscriptions again, which sees a 401/403 with its status.
        if (this._fails === 1) for (const s of this._ready()) this._recheck(s);
        if (this._fails >= this._o.failuresBeforeFallback && this._ti < this._order.length - 1) {
          this._ti++;
          this._fails = 0;
          this.stats.fallbacks++;
          this._kick();
          return;
        }
      }
      let d;
      if (info.immediate) d = 50;
      else if (offline) d = 30000;    // the "online" event usually comes first
      else d = this._backoff(info.retryAfter);
      this._retryAt = Date.now() + d;
      this._retryTimer = setTimeout(() => { this._retryTimer = 0; this._sync(); }, d);
      this._updateState();
    }

    _backoff(retryAfter) {
      const ceil = Math.min(this._o.maxBackoff, this._o.minBackoff * Math.pow(2, this._backoffN));
      this._backoffN = Math.min(this._backoffN + 1, 30);
      if (typeof retryAfter === "number" && retryAfter >= 0) return Math.round(retryAfter + Math.random() * Math.min(1000, retryAfter * 0.2 + 100));
      return Math.max(100, Math.round(Math.random() * ceil));
    }

    _nudge() {
      if (this._closed || this._paused) return;
      if (this._retryTimer) {
        clearTimeout(this._retryTimer);
        this._retryTimer = 0;
        this._sync();
      }
      this._updateState();
    }

    _scheduleUpgrade() {
      if (this._ti === 0 || this._upgradeTimer || this._cand || this._closed || this._paused) return;
      const d = this._o.upgradeInterval * (0.85 + Math.random() * 0.3);
      this._upgradeTimer = setTimeout(() => { this._upgradeTimer = 0; this._tryUpgrade(0); }, d);
    }

    // Try the transport at index i (and, if it fails, the next better ones).
    _tryUpgrade(i) {
      if (this._closed || this._paused || !this._t || this._cand) return;
      if (i >= this._ti) { this._scheduleUpgrade(); return; }
      if (hasWindow && root.navigator && root.navigator.onLine === false) { this._scheduleUpgrade(); return; }
      const c = new CLASSES[this._order[i]](this);
      this._cand = c;
      c.start();
    }

    // ------------------------------------------------ subscription checks
    // One long-poll answered at once (timeout=0): the start position when
    // none is known, and a 401/403 seen with its status.
    async _check(s) {
      s.state = "checking";
      const token = this._tokenOf(s) || null;
      const ctrl = new AbortController();
      const timer = setTimeout(() => ctrl.abort(), PROBE_TIMEOUT_MS);
      let res = null, a = null, err = null;
      try {
        res = await fetch(this._url + "/status?channel=" + s.channel + "&timeout=0", {
          method: "GET", cache: "no-store", credentials: this._o.credentials, signal: ctrl.signal,
          headers: this._authHeaders(token, { "Accept": "application/json" })
        });
        if (res.ok) a = await res.json();
        else err = await responseError(res, s.channel);
      } catch (e) { err = e; }
      finally { clearTimeout(timer); }
      if (this._subs.get(s.channel) !== s || s.state !== "checking") return;
      if ((this._tokenOf(s) || null) !== token) { s.state = "pending"; this._kick(); return; }
      const st = err instanceof PushwireError ? err.status : 0;
      if (a && typeof a === "object" && a.epoch != null) {
        s.checkedToken = token;
        if (token) s.refreshTried = false;
        if (s.lastId === null) {       // start from the channel's newest message
          s.epoch = String(a.epoch);
          s.lastId = toId(a.id) === null ? 0 : toId(a.id);
        }
        s.state = "ready";
      } else if (st === 401) {
        this._authFailed(s, err);
        return;
      } else if (st === 403 || st === 400 || st === 404) {
        this._fail(s, err);
        return;
      } else {
        // Network, 429, 5xx: no verdict; the connection itself will tell.
        s.state = "ready";
      }
      this._kick();
    }

    _recheck(s) {
      if (s.live && s.state !== "checking" && s.state !== "refreshing") s.state = "pending";
    }

    _activated(s) {
      if (!s.live || this._subs.get(s.channel) !== s) return;
      if (s.state === "ready" || s.state === "active") {
        s.state = "active";
        if (this._tokenOf(s)) s.refreshTried = false;
      }
    }

    // The server refused a token (401): ask getToken once, else give up.
    async _authFailed(s, err) {
      if (!s.live) return;
      if (this._getToken && !s.refreshTried) {
        s.refreshTried = true;
        s.state = "refreshing";
        this._kick();
        const t = await askToken(this._getToken, s.channel);
        if (!s.live || this._subs.get(s.channel) !== s || s.state !== "refreshing") return;
        if (!t || t === this._tokenOf(s)) {
          const r = s.refusedToken;
          if (r && r.token === this._tokenOf(s)) err = r.err;   // why that token is no good
        } else {
          s.refusedToken = null;
          s.token = t;
          this._setExp(s, jwtExp(t));
          s.state = "pending";
          this._kick();
          return;
        }
      }
      this._fail(s, err);
    }

    // A token ended (expired frame/event, close 4401).
    _expired(s) {
      if (!s.live || this._subs.get(s.channel) !== s) return;
      if (s.state === "refreshing" || s.state === "checking") return;
      s.refreshTried = false;
      s.state = "ready";   // so _authFailed may proceed
      this._authFailed(s, new PushwireError("token expired", { status: 401, channel: s.channel, code: "expired" }));
    }

    _noRefresh(s) {
      s.noRefresh = true;
      clearTimeout(s._refreshTimer);
      s._refreshTimer = 0;
    }

    _setExp(s, exp) {
      s.exp = exp;
      this._scheduleRefresh(s);
    }

    // Renew the token shortly before its exp (only with getToken).
    _scheduleRefresh(s) {
      clearTimeout(s._refreshTimer);
      s._refreshTimer = 0;
      if (!this._getToken || !s.exp || !s.live || s.noRefresh) return;
      const left = s.exp * 1000 - Date.now();
      const margin = Math.min(30000, Math.max(2000, left / 5));
      const d = Math.max(0, left - margin);
      const exp = s.exp;
      s._refreshTimer = setTimeout(async () => {
        s._refreshTimer = 0;
        if (!s.live || s.exp !== exp || this._closed) return;
        const t = await askToken(this._getToken, s.channel);
        if (!s.live || s.exp !== exp || !t || t === this._tokenOf(s)) return;
        s.token = t;
        s.checkedToken = undefined;
        this._setExp(s, jwtExp(t));
        if (this._t) this._t.update();
        this._updateState();
      }, Math.min(d, 2147483647));
    }

    _fail(s, err) {
      if (!s.live) return;
      this._remove(s, "failed", true);
      if (typeof s.onError === "function") callSafely(s.onError, s, err);
      else this._emitError(err);
    }

    _remove(s, state, quiet) {
      if (!s.live) return;
      s.state = state;
      clearTimeout(s._refreshTimer);
      if (this._subs.get(s.channel) === s) this._subs.delete(s.channel);
      if (!quiet || state === "failed") this._kick();
    }

    _emitError(err) {
      callSafely(this.onError, this, err);
      for (const fn of Array.from(this._listeners.error)) callSafely(fn, this, err);
    }

    // ------------------------------------------------ delivery and resets
    _deliver(s, m) {
      if (!s.live || this._subs.get(s.channel) !== s) return;
      const id = toId(m.id);
      if (id === null) return;
      const epoch = m.epoch === undefined || m.epoch === null ? s.epoch : String(m.epoch);
      if (epoch !== null && s.epoch !== null && epoch !== s.epoch) this._reset(s, epoch, id, "epoch");
      else if (s.epoch === null && epoch !== null) s.epoch = epoch;
      if (s.lastId !== null && id <= s.lastId) {
        s.duplicates++;
        this.stats.duplicates++;
        return;
      }
      if (s.lastId !== null && s.lastId > 0 && id > s.lastId + 1) { s.gaps++; this.stats.gaps++; }
      s.lastId = id;
      s.received++;
      this.stats.received++;
      const content = typeof m.content === "string" ? m.content : (m.content == null ? "" : String(m.content));
      const time = typeof m.time === "number" ? m.time : (toId(m.time) === null ? null : toId(m.time));
      callSafely(s.onMessage, s, { channel: s.channel, epoch: s.epoch, id: id, content: content, time: time });
    }

    _reset(s, epoch, newest, reason) {
      if (!s.live || this._subs.get(s.channel) !== s) return;
      const prev = s.epoch;
      s.epoch = epoch === undefined || epoch === null ? prev : String(epoch);
      s.lastId = 0;
      s.resets++;
      this.stats.resets++;
      callSafely(s.onReset, s, {
        channel: s.channel, epoch: s.epoch, previousEpoch: prev,
        id: toId(newest), reason: reason
      });
    }

    // One channel's part of a long-poll answer.
    _pollStatus(s, st) {
      const epoch = String(st.epoch);
      const msgs = Array.isArray(st.messages) ? st.messages : [];
      let added = 0, reset = false;
      if (st.reset === true) { this._reset(s, epoch, st.id, "reset"); reset = true; }
      else if (s.epoch !== null && epoch !== s.epoch) { this._reset(s, epoch, st.id, "epoch"); reset = true; }
      else if (s.epoch === null) s.epoch = epoch;
      if (!s.live) return { added: 0 };
      for (const m of msgs) {
        if (!m || typeof m !== "object") continue;
        const before = s.received;
        this._deliver(s, { channel: s.channel, epoch: epoch, id: m.id, content: m.content, time: m.time });
        if (!s.live) return { added: added };
        if (s.received > before) added++;
      }
      // The position moves with the messages delivered (with "more" too).
      // The answer's id (the channel's newest) is taken only where no
      // position is known: at the start, or after a reset with nothing
      // retained. An id beyond the last message on any other answer is not
      // trusted: the next poll (since = last delivered) fetches the rest.
      const newest = toId(st.id);
      if (newest !== null && s.epoch === epoch && (s.lastId === null || (reset && !msgs.length))) s.lastId = newest;
      return { added: added };
    }

    // ---------------------------------------------------------- state
    _updateState() {
      let state, reason = null;
      const offline = hasWindow && root.navigator && root.navigator.onLine === false;
      if (this._closed) state = "closed";
      else if (this._paused) { state = "disconnected"; reason = "paused"; }
      else if (!this._subs.size) state = "idle";
      else if (this._t && this._t.isUp()) state = "connected";
      else if (offline) { state = "disconnected"; reason = "offline"; }
      else if (this._retryTimer) state = "disconnected";
      else state = "connecting";
      this._state = state;
      this._reason = reason;
      const retryIn = state === "disconnected" && this._retryTimer ? Math.max(0, this._retryAt - Date.now()) : null;
      const key = state + "|" + this.transport + "|" + reason + "|" + (retryIn === null ? "" : this._retryAt);
      if (key === this._last) return;
      this._last = key;
      const ev = { state: state, transport: this.transport, retryIn: retryIn, reason: reason };
      callSafely(this.onStateChange, this, ev);
      for (const fn of Array.from(this._listeners.state)) callSafely(fn, this, ev);
    }
  }

  Pushwire.version = VERSION;
  Pushwire.PushwireError = PushwireError;
  Pushwire.Subscription = Subscription;
  return Pushwire;
}));
