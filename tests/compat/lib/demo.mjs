// A harness for the demo apps' browser tests: `herald demo` nodes, a
// headless chromium with one browser context per person, and a network
// between a person and a node that a test can cut and restore.

import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { after, before } from 'node:test';

import puppeteer from 'puppeteer-core';

import { heraldBinary, heraldEnv } from './herald.mjs';
import { startServer } from './process.mjs';
import { freePort } from './redis.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
export const DEMOS_DIR = path.resolve(here, '..', '..', '..', 'examples', 'demos');
export const WAIT = { timeout: 15000 };
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** Where a test saves the screenshots the README shows, when SCREENSHOTS_DIR is set. */
export function screenshotPath(name) {
  const dir = process.env.SCREENSHOTS_DIR;
  if (!dir) return null;
  mkdirSync(dir, { recursive: true });
  return path.join(dir, name);
}

/** Secrets a demo cluster's nodes share (each node would make up its own). */
export function demoSecrets() {
  return {
    'client.token_hmac_secret': randomBytes(32).toString('hex'),
    'api.key': randomBytes(32).toString('hex'),
    'pusher.apps.0.secret': randomBytes(32).toString('hex'),
  };
}

/**
 * Runs `herald demo` on a free port with `secrets`, and `redis` (a URL) as
 * its engine when given; `feeds: false` passes --no-feeds. Resolves once
 * its sign-in answers.
 */
export async function startDemo({ secrets = demoSecrets(), redis, feeds = true } = {}) {
  const bin = heraldBinary();
  if (!existsSync(bin)) throw new Error(`herald binary not found at ${bin}: run \`cargo build -p herald-server\` first`);
  if (!existsSync(path.join(DEMOS_DIR, 'node_modules', 'yjs'))) {
    throw new Error(`the demos' npm packages are missing: run \`npm ci --prefix examples/demos\``);
  }
  const port = await freePort();
  const settings = { ...secrets, ...(redis ? { 'engine.type': 'redis', 'engine.address': redis } : {}) };
  const args = ['demo', '--dir', DEMOS_DIR, '--port', String(port)];
  for (const [key, value] of Object.entries(settings)) args.push('--set', `${key}=${JSON.stringify(value)}`);
  if (!feeds) args.push('--no-feeds');
  const url = `http://127.0.0.1:${port}`;
  const server = await startServer({
    bin,
    args,
    env: heraldEnv(),
    what: 'herald demo',
    answers: () => fetch(`${url}/demos/token?user=probe`).then((response) => response.ok, () => false),
    startTimeout: 15000,
  });
  return {
    port,
    url,
    output: server.output,
    /** Calls the server API as the demos' backend would. */
    async api(method, params) {
      const response = await fetch(`${url}/api/${method}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-API-Key': secrets['api.key'] },
        body: JSON.stringify(params),
      });
      return response.json();
    },
    stop: () => server.stop(),
  };
}

/**
 * A network between browsers and the node on `port`: a TCP relay that a
 * test can cut (open connections die, new ones are refused) and restore.
 */
export async function cuttableNetwork(port) {
  const sockets = new Set();
  let up = true;
  const relay = net.createServer((inbound) => {
    if (!up) return inbound.destroy();
    const outbound = net.connect(port, '127.0.0.1');
    for (const [from, to] of [[inbound, outbound], [outbound, inbound]]) {
      sockets.add(from);
      from.on('error', () => to.destroy());
      from.on('close', () => {
        sockets.delete(from);
        to.destroy();
      });
      from.pipe(to);
    }
  });
  await new Promise((resolve) => relay.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${relay.address().port}`,
    cut() {
      up = false;
      sockets.forEach((socket) => socket.destroy());
    },
    restore() {
      up = true;
    },
    close: () => new Promise((resolve) => {
      sockets.forEach((socket) => socket.destroy());
      relay.close(resolve);
    }),
  };
}

/** Headless chromium (Debian's package; puppeteer-core downloads none). */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)`);
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
}

/**
 * A person: a browser context of their own (own storage and connections)
 * with one page open at `url`. Errors the page throws are kept in
 * `page.errors`, for the test to check there were none.
 */
export async function person(browser, url, { width = 1100, height = 640 } = {}) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (error) => page.errors.push(error.message));
  await page.setViewport({ width, height });
  await page.goto(url);
  return page;
}

/** The text of the element `selector` on `page`. */
export function textOf(page, selector) {
  return page.$eval(selector, (element) => element.textContent);
}

/**
 * For a test suite on one demo node: registers hooks that start the node
 * (`feeds` as startDemo's), a cuttable network to it when `network`, and
 * a browser, and stop them afterwards. The returned object holds them once
 * started: `{ node, network, browser }`.
 */
export function oneNode({ feeds = false, network = false } = {}) {
  const world = {};
  before(async () => {
    world.node = await startDemo({ feeds });
    if (network) world.network = await cuttableNetwork(world.node.port);
    world.browser = await launchBrowser();
  });
  after(async () => {
    await world.browser?.close();
    await world.network?.close();
    await world.node?.stop();
  });
  return world;
}
