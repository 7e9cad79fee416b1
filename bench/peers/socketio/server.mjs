// A minimal Socket.IO 4 server to benchmark Herald against, side by side.
//
//   node server.mjs --port 9100 [--host 127.0.0.1] [--redis redis://127.0.0.1:6379]
//
// With --redis, rooms are shared through @socket.io/redis-adapter, so several
// of these processes on different ports form one cluster. Without it, a
// single node.
//
// Clients connect with the WebSocket transport only:
//   ws://HOST:PORT/socket.io/?EIO=4&transport=websocket
// and may send
//   subscribe (channels: string[], ack)   joins each room, then ack(true)
//   publish   ({channel, data}, ack?)     emits to the room
// Everyone in a room (the sender too, like Centrifuge) receives
//   publication (channel, data)
//
// HTTP on the same port:
//   POST /publish  {"channel": "...", "data": ...}  -> the same emit, 200 {}
//   GET  /health                                     -> 200
//   anything else outside /socket.io/                -> 404
//
// Prints exactly `listening on <port>` on stdout once it accepts clients (and,
// with --redis, once its Redis subscriptions are in place). --port 0 picks a
// free port, and the line names it.

import http from 'node:http';
import process from 'node:process';
import { Server } from 'socket.io';

const MAX_BODY_BYTES = 1024 * 1024;

function usage(message) {
  if (message) process.stderr.write(`server.mjs: ${message}\n`);
  process.stderr.write('usage: node server.mjs --port PORT [--host ADDRESS] [--redis redis://HOST:PORT]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const options = { port: 9100, host: '127.0.0.1', redis: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = () => {
      if (inline !== undefined) return inline;
      if (i + 1 >= argv.length) usage(`${flag} needs a value`);
      return argv[++i];
    };
    switch (flag) {
      case '--port': {
        const port = Number(value());
        if (!Number.isInteger(port) || port < 0 || port > 65535) usage('--port must be 0..65535');
        options.port = port;
        break;
      }
      case '--host':
        options.host = value();
        break;
      case '--redis':
        options.redis = value();
        break;
      case '-h':
      case '--help':
        usage();
        break;
      default:
        usage(`unknown argument ${arg}`);
    }
  }
  return options;
}

function logError(context, error) {
  const text = error && error.stack ? error.stack : String(error);
  process.stderr.write(`${new Date().toISOString()} ${context}: ${text}\n`);
}

function isChannel(value) {
  return typeof value === 'string' && value.length > 0;
}

const options = parseArgs(process.argv.slice(2));
let io = null;
let redisClients = [];

function publish(channel, data) {
  io.to(channel).emit('publication', channel, data);
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

// Requests that are not Socket.IO's: engine.io hands them on to this handler.
function handleRequest(req, res) {
  const path = (req.url || '/').split('?')[0];
  if (path === '/health') {
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(res, 405, { error: 'use GET' });
    return reply(res, 200, { status: 'ok' });
  }
  if (path !== '/publish') return reply(res, 404, { error: 'not found' });
  if (req.method !== 'POST') return reply(res, 405, { error: 'use POST' });

  const chunks = [];
  let size = 0;
  let tooLarge = false;
  req.on('data', (chunk) => {
    if (tooLarge) return;
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      tooLarge = true;
      return;
    }
    chunks.push(chunk);
  });
  req.on('error', (error) => logError('publish request', error));
  req.on('end', () => {
    if (tooLarge) return reply(res, 413, { error: `body over ${MAX_BODY_BYTES} bytes` });
    let message;
    try {
      message = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (error) {
      return reply(res, 400, { error: `invalid JSON: ${error.message}` });
    }
    if (!message || typeof message !== 'object' || !isChannel(message.channel)) {
      return reply(res, 400, { error: 'expected {"channel": "<name>", "data": ...}' });
    }
    try {
      publish(message.channel, message.data);
    } catch (error) {
      logError('publish', error);
      return reply(res, 500, { error: 'publish failed' });
    }
    return reply(res, 200, {});
  });
}

function onConnection(socket) {
  socket.on('subscribe', (channels, ack) => {
    const list = Array.isArray(channels) ? channels : [channels];
    if (!list.every(isChannel)) {
      if (typeof ack === 'function') ack(false);
      return;
    }
    socket.join(list);
    if (typeof ack === 'function') ack(true);
  });
  socket.on('publish', (message, ack) => {
    if (!message || typeof message !== 'object' || !isChannel(message.channel)) {
      if (typeof ack === 'function') ack(false);
      return;
    }
    publish(message.channel, message.data);
    if (typeof ack === 'function') ack(true);
  });
  socket.on('error', (error) => logError(`socket ${socket.id}`, error));
}

async function redisAdapter(url) {
  const [{ createClient }, { createAdapter }] = await Promise.all([
    import('redis'),
    import('@socket.io/redis-adapter'),
  ]);
  const pub = createClient({ url });
  const sub = pub.duplicate();
  pub.on('error', (error) => logError('redis (publish client)', error));
  sub.on('error', (error) => logError('redis (subscribe client)', error));
  redisClients = [pub, sub];
  await Promise.all([pub.connect(), sub.connect()]);
  return createAdapter(pub, sub);
}

// The adapter subscribes without waiting for Redis to confirm; it is ready
// once Redis counts this node among the subscribers of its request channel.
async function waitForAdapter(timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const count = await io.of('/').adapter.serverCount();
    if (count >= 1) return;
    if (Date.now() > deadline) throw new Error('the Redis adapter did not subscribe in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

let stopping = false;
async function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  const force = setTimeout(() => {
    process.stderr.write(`server.mjs: still closing 5s after ${signal}, exiting\n`);
    process.exit(1);
  }, 5000);
  force.unref();
  try {
    if (io) await new Promise((resolve) => io.close(() => resolve()));
    await Promise.allSettled(redisClients.map((client) => client.quit()));
  } catch (error) {
    logError('shutdown', error);
  }
  process.exit(0);
}

async function main() {
  const httpServer = http.createServer(handleRequest);
  // The bench publishes over one keep-alive connection; do not drop it
  // between slow publications.
  httpServer.keepAliveTimeout = 65_000;
  httpServer.headersTimeout = 66_000;

  const adapter = options.redis ? await redisAdapter(options.redis) : undefined;
  io = new Server(httpServer, {
    serveClient: false,
    transports: ['websocket'],
    maxHttpBufferSize: MAX_BODY_BYTES,
    perMessageDeflate: false,
    httpCompression: false,
    cors: { origin: '*' },
    ...(adapter ? { adapter } : {}),
  });
  io.on('connection', onConnection);
  io.engine.on('connection_error', (error) => {
    logError('engine.io connection', `${error.code} ${error.message}`);
  });

  await new Promise((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(options.port, options.host, () => {
      httpServer.off('error', reject);
      resolve();
    });
  });
  httpServer.on('error', (error) => logError('http server', error));
  if (adapter) await waitForAdapter(10_000);
  process.stdout.write(`listening on ${httpServer.address().port}\n`);
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('unhandledRejection', (error) => logError('unhandled rejection', error));

main().catch((error) => {
  logError('startup', error);
  process.exit(1);
});
