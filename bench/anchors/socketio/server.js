// The Socket.IO anchor: Socket.IO 4.8 with its Redis adapter, set up the way
// its documentation says to run it on several cores: Node's cluster module
// forks WORKERS processes that share the listening socket, and every worker's
// Socket.IO server reaches the others through Redis pub/sub
// (@socket.io/redis-adapter). Clients use the WebSocket transport only, so
// no sticky sessions are needed.
//   ws://HOST/socket.io/?EIO=4&transport=websocket&channel=C
//        joins room C (default "default"); every message is the event
//        "message" with {id, content}.
//   POST /chat?channel=C  {"content": ...}: the next id from Redis (INCR, as
//        pushwire's ids come from Redis), emitted to room C on every worker;
//        answered {"id": N} once the adapter handed it to Redis.
// Usage: node server.js LISTEN_PORT REDIS_PORT [WORKERS]
'use strict';
const cluster = require('cluster');
const http = require('http');

const port = +process.argv[2], redisPort = +process.argv[3], workers = +(process.argv[4] || 2);
const MAX_BODY = 1 << 20;

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('exit', (w, code, signal) => {
    console.error('worker %d exited (%s): stopping', w.process.pid, signal || code);
    process.exit(1);
  });
  const stop = () => { for (const id in cluster.workers) cluster.workers[id].kill(); process.exit(0); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const {Server} = require('socket.io');
  const {createAdapter} = require('@socket.io/redis-adapter');
  const {createClient} = require('redis');

  const url = 'redis://127.0.0.1:' + redisPort;
  const pub = createClient({url}), sub = pub.duplicate(), cmd = pub.duplicate();
  const json = (res, code, body) => {
    res.writeHead(code, {'Content-Type': 'application/json'});
    res.end(JSON.stringify(body) + '\n');
  };

  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    if (req.method !== 'POST' || u.pathname !== '/chat') return json(res, 404, {error: 'not found'});
    const room = u.searchParams.get('channel') || 'default';
    const chunks = [];
    let size = 0;
    req.on('data', d => { size += d.length; if (size <= MAX_BODY) chunks.push(d); });
    req.on('end', () => {
      if (size > MAX_BODY) return json(res, 413, {error: 'too large'});
      let content;
      try { content = JSON.parse(Buffer.concat(chunks).toString('utf8')).content; } catch (e) { /* below */ }
      if (typeof content !== 'string') return json(res, 400, {error: 'content must be a string'});
      cmd.incr('sio:' + room + ':seq').then(id => {
        io.to(room).emit('message', {id, content});
        json(res, 200, {id});
      }, () => json(res, 503, {error: 'redis'}));
    });
  });
  const io = new Server(server, {transports: ['websocket'], serveClient: false, maxHttpBufferSize: MAX_BODY});
  io.on('connection', socket => {
    const room = socket.handshake.query.channel;
    socket.join(typeof room === 'string' && room ? room : 'default');
  });
  Promise.all([pub.connect(), sub.connect(), cmd.connect()]).then(() => {
    io.adapter(createAdapter(pub, sub));
    server.listen(port, '127.0.0.1');
  }, e => { console.error('redis: %s', e.message); process.exit(1); });
}
