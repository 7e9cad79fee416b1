// Checks the Socket.IO peer end to end, then exits 0 (all good) or 1.
//
//   node check.mjs
//
// Starts its own redis-server on a free port, two clustered peers (A and B)
// on free ports, and one single-node peer (C), then asserts:
//   - GET /health answers 200 and an unknown path 404;
//   - a subscribe is acknowledged;
//   - a publish through B's HTTP API reaches a client of A, and one through
//     A reaches a client of B (both ways across Redis);
//   - a client `publish` event reaches the other node and the sender too;
//   - the single node delivers an HTTP publish to its own client.
// Needs redis-server on PATH and `npm install` done here.

import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { io as connect } from 'socket.io-client';

const here = path.dirname(fileURLToPath(import.meta.url));
const TIMEOUT_MS = 5000;
const children = [];
const sockets = [];
let failures = 0;
let passes = 0;

function pass(what) {
  passes++;
  process.stdout.write(`ok   ${what}\n`);
}

function fail(what, error) {
  failures++;
  process.stdout.write(`FAIL ${what}: ${error && error.message ? error.message : error}\n`);
}

async function check(what, body) {
  try {
    await body();
    pass(what);
  } catch (error) {
    fail(what, error);
  }
}

function withTimeout(promise, what, ms = TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function start(command, args, what) {
  const child = spawn(command, args, { cwd: here, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  child.on('exit', (code, signal) => {
    child.exited = { code, signal };
    if (!child.stopping && stderr.trim()) process.stderr.write(`${what} stderr:\n${stderr}`);
  });
  return child;
}

function redisPing(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let answer = '';
    socket.setTimeout(500);
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      answer += chunk;
      if (answer.includes('\r\n')) {
        socket.destroy();
        resolve(answer.startsWith('+PONG'));
      }
    });
    socket.on('timeout', () => {
      socket.destroy();
      resolve(false);
    });
    socket.on('error', () => resolve(false));
  });
}

async function startRedis() {
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const child = start('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], 'redis-server');
    for (let i = 0; i < 100 && !child.exited; i++) {
      if (await redisPing(port)) return port;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    child.stopping = true;
    child.kill('SIGTERM');
  }
  throw new Error('could not start redis-server (is it installed?)');
}

// Starts a peer on a port of its choosing and reads the port from its
// `listening on <port>` line.
function startPeer(name, redisUrl) {
  const args = ['server.mjs', '--port', '0', ...(redisUrl ? ['--redis', redisUrl] : [])];
  const child = start(process.execPath, args, `peer ${name}`);
  return withTimeout(
    new Promise((resolve, reject) => {
      let stdout = '';
      child.stdout.on('data', (chunk) => {
        stdout += chunk;
        const match = /^listening on (\d+)$/m.exec(stdout);
        if (match) resolve(Number(match[1]));
      });
      child.on('exit', (code) => reject(new Error(`peer ${name} exited with ${code} before listening`)));
    }),
    `peer ${name} to listen`,
    15000,
  );
}

function client(port) {
  const socket = connect(`http://127.0.0.1:${port}`, {
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
  });
  sockets.push(socket);
  socket.received = [];
  socket.on('publication', (channel, data) => socket.received.push({ channel, data }));
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.once('connect', () => resolve(socket));
      socket.once('connect_error', reject);
    }),
    `a connection to port ${port}`,
  );
}

function subscribe(socket, channels) {
  return withTimeout(
    new Promise((resolve) => socket.emit('subscribe', channels, resolve)),
    'the subscribe ack',
  );
}

// Resolves with the first publication on `channel` whose data has `id`.
function expectPublication(socket, channel, id) {
  return withTimeout(
    new Promise((resolve) => {
      const look = () => socket.received.find((p) => p.channel === channel && p.data && p.data.id === id);
      const found = look();
      if (found) return resolve(found);
      const listener = () => {
        const hit = look();
        if (hit) {
          socket.off('publication', listener);
          resolve(hit);
        }
      };
      socket.on('publication', listener);
    }),
    `publication ${id} on ${channel}`,
  );
}

async function httpPublish(port, channel, data) {
  const response = await fetch(`http://127.0.0.1:${port}/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  const body = await response.text();
  if (response.status !== 200) throw new Error(`POST /publish answered ${response.status} ${body}`);
  if (body.trim() !== '{}') throw new Error(`POST /publish answered ${body}, expected {}`);
}

async function expectStatus(port, method, urlPath, status) {
  const response = await fetch(`http://127.0.0.1:${port}${urlPath}`, { method });
  await response.arrayBuffer();
  if (response.status !== status) throw new Error(`${method} ${urlPath} answered ${response.status}, expected ${status}`);
}

async function stopAll() {
  for (const socket of sockets) socket.close();
  await Promise.all(
    children.map(
      (child) =>
        new Promise((resolve) => {
          if (child.exited) return resolve();
          child.stopping = true;
          const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
          child.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
          child.kill('SIGTERM');
        }),
    ),
  );
}

async function main() {
  const redisPort = await startRedis();
  const redisUrl = `redis://127.0.0.1:${redisPort}`;
  process.stdout.write(`redis-server on ${redisPort}\n`);
  const [portA, portB, portC] = await Promise.all([startPeer('A', redisUrl), startPeer('B', redisUrl), startPeer('C', null)]);
  process.stdout.write(`peers: A ${portA}, B ${portB} (clustered), C ${portC} (single node)\n`);

  await check('GET /health answers 200', () => expectStatus(portA, 'GET', '/health', 200));
  await check('an unknown path answers 404', () => expectStatus(portA, 'GET', '/nothing-here', 404));
  await check('GET /publish answers 405', () => expectStatus(portA, 'GET', '/publish', 405));

  const [onA, onB, onC] = await Promise.all([client(portA), client(portB), client(portC)]);
  await check('subscribe is acknowledged with true', async () => {
    const acks = await Promise.all([subscribe(onA, ['room1', 'room2']), subscribe(onB, ['room1']), subscribe(onC, ['room1'])]);
    if (!acks.every((ack) => ack === true)) throw new Error(`acks were ${JSON.stringify(acks)}`);
  });

  await check('HTTP publish to B reaches a client of A (and of B)', async () => {
    await httpPublish(portB, 'room1', { id: 'b-to-a', pad: 'x'.repeat(64) });
    await Promise.all([expectPublication(onA, 'room1', 'b-to-a'), expectPublication(onB, 'room1', 'b-to-a')]);
  });
  await check('HTTP publish to A reaches a client of B (and of A)', async () => {
    await httpPublish(portA, 'room1', { id: 'a-to-b' });
    await Promise.all([expectPublication(onB, 'room1', 'a-to-b'), expectPublication(onA, 'room1', 'a-to-b')]);
  });
  await check('a client publish event reaches the other node and the sender', async () => {
    const ack = await withTimeout(
      new Promise((resolve) => onB.emit('publish', { channel: 'room1', data: { id: 'client-event' } }, resolve)),
      'the publish ack',
    );
    if (ack !== true) throw new Error(`publish ack was ${JSON.stringify(ack)}`);
    await Promise.all([expectPublication(onA, 'room1', 'client-event'), expectPublication(onB, 'room1', 'client-event')]);
  });
  await check('a room only reaches its members', async () => {
    await httpPublish(portB, 'room2', { id: 'only-a' });
    await expectPublication(onA, 'room2', 'only-a');
    // B is not in room2; give a stray delivery time to show up.
    await new Promise((resolve) => setTimeout(resolve, 200));
    if (onB.received.some((p) => p.channel === 'room2')) throw new Error('a client outside room2 received it');
  });
  await check('the single node delivers an HTTP publish to its client, not across nodes', async () => {
    await httpPublish(portC, 'room1', { id: 'single' });
    await expectPublication(onC, 'room1', 'single');
    await new Promise((resolve) => setTimeout(resolve, 200));
    if (onA.received.some((p) => p.data && p.data.id === 'single')) throw new Error('the single node leaked into the cluster');
  });
  await check('the same publication arrives once', async () => {
    const count = onA.received.filter((p) => p.data && p.data.id === 'b-to-a').length;
    if (count !== 1) throw new Error(`A received b-to-a ${count} times`);
  });
  await check('an invalid publish body answers 400', async () => {
    const response = await fetch(`http://127.0.0.1:${portA}/publish`, { method: 'POST', body: 'not json' });
    await response.arrayBuffer();
    if (response.status !== 400) throw new Error(`answered ${response.status}`);
  });

  await stopAll();
  await check('the peers exited cleanly on SIGTERM', async () => {
    const peers = children.filter((child) => child.spawnargs.includes('server.mjs'));
    const unclean = peers.filter((child) => !child.exited || child.exited.code !== 0);
    if (unclean.length) throw new Error(`exits: ${JSON.stringify(unclean.map((child) => child.exited))}`);
  });
}

const overall = setTimeout(() => {
  fail('the whole check', new Error('took over 60 s'));
  for (const child of children) child.kill('SIGKILL');
  process.exit(1);
}, 60000);

main()
  .catch(async (error) => {
    fail('setup', error);
    await stopAll().catch(() => {});
  })
  .finally(() => {
    clearTimeout(overall);
    process.stdout.write(`${passes} passed, ${failures} failed\n`);
    process.exit(failures === 0 ? 0 : 1);
  });
