// The Pushpin anchor's backend: GRIP (https://pushpin.org/docs/protocols/grip/)
// behind Pushpin 1.36, serving SPEC.md's endpoints the way a Pushpin user
// would build them, so that bench/loadgen drives it exactly as pushwire:
//   GET  /status?channel=C[&since=N]  long-poll: the messages after N at
//        once, else Grip-Hold: response on C (prev-id N: Pushpin retries
//        here when it sees a gap); Accept: text/event-stream: a stream hold
//        after the messages after N; a WebSocket (WebSocket-over-HTTP): OPEN,
//        then a GRIP subscribe to C.
//   POST /chat?channel=C  {"content": ...}: the next id, kept in a history
//        of 100 per channel, published to Pushpin's HTTP publish API (all
//        three formats in one item), answered once Pushpin accepted it.
// Usage: node backend.js LISTEN_PORT PUBLISH_PORT (Pushpin's push_in_http_port)
'use strict';
const http = require('http');

const listen = +process.argv[2], pubPort = +process.argv[3];
const HISTORY = 100;
const channels = new Map(); // name -> {seq, hist: [{id, content}]}
const agent = new http.Agent({keepAlive: true, maxSockets: 8});

function chan(name) {
  let c = channels.get(name);
  if (!c) channels.set(name, c = {seq: 0, hist: []});
  return c;
}
const after = (c, since) => c.hist.filter(m => m.id > since);
const lpBody = (msgs, id) => JSON.stringify({messages: msgs, id}) + '\n';
const sseEvent = m => 'id: ' + m.id + '\ndata: ' + JSON.stringify(m) + '\n\n';

function publishToPushpin(name, m, done) {
  const item = {channel: name, id: String(m.id), 'prev-id': String(m.id - 1), formats: {
    'http-response': {body: lpBody([m], m.id)},
    'http-stream': {content: sseEvent(m)},
    'ws-message': {content: JSON.stringify(m)},
  }};
  const body = JSON.stringify({items: [item]});
  const req = http.request({host: '127.0.0.1', port: pubPort, path: '/publish/', method: 'POST', agent,
                            headers: {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body)}},
                           res => { res.resume(); res.on('end', () => done(res.statusCode === 200)); });
  req.on('error', () => done(false));
  req.end(body);
}

function wsEvents(req, res, name, body) {
  // Events are "TYPE[ LEN-HEX]\r\n[CONTENT\r\n]"; answer OPEN with OPEN and a
  // subscribe control message, CLOSE with CLOSE, anything else with nothing.
  const out = [];
  if (body.startsWith('OPEN')) {
    out.push('OPEN\r\n');
    const ctl = 'c:' + JSON.stringify({type: 'subscribe', channel: name});
    out.push('TEXT ' + Buffer.byteLength(ctl).toString(16) + '\r\n' + ctl + '\r\n');
  } else if (body.startsWith('CLOSE') || body.includes('\r\nCLOSE')) {
    out.push('CLOSE\r\n');
  }
  res.writeHead(200, {'Content-Type': 'application/websocket-events', 'Sec-WebSocket-Extensions': 'grip'});
  res.end(out.join(''));
}

http.createServer((req, res) => {
  const u = new URL(req.url, 'http://x');
  const name = u.searchParams.get('channel') || 'default';
  let body = '';
  req.setEncoding('utf8');
  req.on('data', d => { if (body.length < 1 << 20) body += d; });
  req.on('end', () => {
    if (req.method === 'POST' && (req.headers['content-type'] || '').startsWith('application/websocket-events'))
      return wsEvents(req, res, name, body);
    if (req.method === 'POST' && u.pathname === '/chat') {
      let content;
      try { content = JSON.parse(body).content; } catch (e) { /* below */ }
      if (typeof content !== 'string') { res.writeHead(400); return res.end('{"error":"content"}\n'); }
      const c = chan(name), m = {id: ++c.seq, content};
      c.hist.push(m);
      if (c.hist.length > HISTORY) c.hist.shift();
      return publishToPushpin(name, m, ok => {
        res.writeHead(ok ? 200 : 503, {'Content-Type': 'application/json'});
        res.end(ok ? JSON.stringify({id: m.id}) + '\n' : '{"error":"publish"}\n');
      });
    }
    if (req.method === 'GET' && u.pathname === '/status') {
      const c = chan(name);
      const since = u.searchParams.has('since') ? +u.searchParams.get('since') : c.seq;
      const msgs = after(c, since);
      if ((req.headers.accept || '').includes('text/event-stream')) {
        res.writeHead(200, {'Content-Type': 'text/event-stream', 'Grip-Hold': 'stream', 'Grip-Channel': name});
        return res.end(msgs.map(sseEvent).join(''));
      }
      if (msgs.length) {
        res.writeHead(200, {'Content-Type': 'application/json'});
        return res.end(lpBody(msgs, msgs[msgs.length - 1].id));
      }
      res.writeHead(200, {'Content-Type': 'application/json', 'Grip-Hold': 'response',
                          'Grip-Channel': name + '; prev-id=' + c.seq, 'Grip-Timeout': '55'});
      return res.end(lpBody([], c.seq));
    }
    res.writeHead(404);
    res.end();
  });
}).listen(listen, '127.0.0.1');
