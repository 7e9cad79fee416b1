// A private nats-server (with JetStream) for the cluster tests, and the
// backplanes those tests run over.
//
// startNats() runs `nats-server -js` on a free port of 127.0.0.1 with a
// store directory of its own, and resolves once the server greets a client.
// backplane(kind) starts a Redis or a NATS and gives the `[engine]` table
// of the nodes that share it. Tests never touch a server they did not start.

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { serverBinary, startServer } from './process.mjs';
import { freePort, startRedis } from './redis.mjs';

/** Resolves true if a NATS server on `port` greets with INFO, false otherwise. */
function greets(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const done = (answer) => {
      socket.destroy();
      resolve(answer);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('error', () => done(false));
    socket.setEncoding('utf8').once('data', (chunk) => done(chunk.startsWith('INFO ')));
  });
}

/** Starts nats-server with JetStream on a free port; resolves once it greets. */
export async function startNats({ startTimeout = 10000 } = {}) {
  const port = await freePort();
  const store = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-compat-nats-'));
  const server = await startServer({
    bin: serverBinary('nats-server', 'NATS_SERVER'),
    args: ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', store],
    what: `nats-server on port ${port}`,
    answers: () => greets(port),
    startTimeout,
  });
  return {
    port,
    url: `nats://127.0.0.1:${port}`,
    output: server.output,
    /** Kills nats-server, removes its store, and resolves once it has exited. */
    async stop() {
      const exit = await server.stop();
      fs.rmSync(store, { recursive: true, force: true });
      return exit;
    },
  };
}

/** The backplanes the cluster suites run over. */
export const BACKPLANES = ['redis', 'nats'];

/**
 * Starts a `kind` backplane ('redis' or 'nats'). Resolves to the
 * `[engine]` table for nodes sharing it under `prefix`, and stop().
 */
export async function backplane(kind, prefix) {
  if (kind === 'redis') {
    const redis = await startRedis();
    return { engine: { type: 'redis', address: redis.url, prefix }, stop: () => redis.stop() };
  }
  if (kind === 'nats') {
    const nats = await startNats();
    return { engine: { type: 'nats', addresses: [nats.url], prefix }, stop: () => nats.stop() };
  }
  throw new Error(`unknown backplane ${kind}`);
}
