// A private redis-server for the cluster tests.
//
// startRedis() runs `redis-server` on a free port of 127.0.0.1, with nothing
// persisted, and resolves once it answers PING. Tests never touch a Redis
// they did not start.

import net from 'node:net';

import { serverBinary, startServer } from './process.mjs';

/** A TCP port of 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves true if a Redis on `port` answers PING with +PONG, false otherwise. */
function pings(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let reply = '';
    const done = (answer) => {
      socket.destroy();
      resolve(answer);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.setEncoding('utf8').on('data', (chunk) => {
      reply += chunk;
      if (reply.includes('\r\n')) {
        done(reply.startsWith('+PONG'));
      }
    });
  });
}

/** Starts redis-server on a free port and resolves once it answers PING. */
export async function startRedis({ startTimeout = 10000 } = {}) {
  const port = await freePort();
  const server = await startServer({
    bin: serverBinary('redis-server', 'REDIS_SERVER'),
    args: ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    what: `redis-server on port ${port}`,
    answers: () => pings(port),
    startTimeout,
  });
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    output: server.output,
    /** Kills redis-server and resolves once it has exited. */
    stop: () => server.stop(),
  };
}
