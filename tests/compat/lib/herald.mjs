// A harness that runs a real `herald` binary for the compatibility tests.
//
// startHerald() writes a throwaway TOML config (random HMAC secret and API
// key), spawns `herald serve` on a free port, and hands back what a test
// needs: the WebSocket URL, a token minter that shells out to
// `herald token`, a server API caller, and stop() for a graceful shutdown.

import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));

/**
 * The environment a herald process starts with: this one's, without
 * HERALD_BIN (herald reads every HERALD_* variable as configuration, and
 * would refuse a `bin` section).
 */
export function heraldEnv(extra = {}) {
  const { HERALD_BIN: _bin, ...inherited } = process.env;
  return { ...inherited, ...extra };
}

/** Where the herald binary is: HERALD_BIN, else the cargo debug build. */
export function heraldBinary() {
  if (process.env.HERALD_BIN) {
    return path.resolve(process.env.HERALD_BIN);
  }
  const targetDir = process.env.CARGO_TARGET_DIR
    ? path.resolve(process.env.CARGO_TARGET_DIR)
    : path.resolve(here, '..', '..', '..', 'target');
  return path.join(targetDir, 'debug', 'herald');
}

function requireBinary() {
  const bin = heraldBinary();
  if (!existsSync(bin)) {
    throw new Error(
      `herald binary not found at ${bin}: run \`cargo build -p herald-server\` first ` +
        '(or point HERALD_BIN at a built binary)',
    );
  }
  return bin;
}

/** The configuration every test server starts from. */
export function defaultConfig() {
  return {
    http: {
      // A stuck connection must not hold a test's shutdown for long.
      shutdown_timeout: '3s',
    },
    client: {
      token_hmac_secret: randomBytes(32).toString('hex'),
      expired_close_delay: '1s',
      expired_sub_close_delay: '1s',
    },
    api: {
      key: randomBytes(32).toString('hex'),
    },
    channel: {
      without_namespace: {
        subscribe: 'authenticated',
        publish: 'api',
      },
      namespaces: {
        chat: {
          subscribe: 'authenticated',
          publish: 'subscribers',
        },
        private: {
          subscribe: 'token',
          publish: 'subscribers',
        },
      },
    },
    log: {
      level: 'info',
    },
  };
}

function isTable(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Merges `overrides` into `base` (tables merge, everything else replaces). */
export function merge(base, overrides) {
  const out = { ...base };
  for (const [key, value] of Object.entries(overrides ?? {})) {
    out[key] = isTable(value) && isTable(out[key]) ? merge(out[key], value) : value;
  }
  return out;
}

function tomlValue(value) {
  if (typeof value === 'string') {
    // A JSON string of printable text is a valid TOML basic string.
    return JSON.stringify(value);
  }
  if (typeof value === 'number' || typeof value === 'boolean') {
    return String(value);
  }
  if (Array.isArray(value)) {
    return `[${value.map(tomlValue).join(', ')}]`;
  }
  throw new Error(`cannot write ${typeof value} as a TOML value`);
}

/** A non-empty array of objects: written as an array of tables, `[[name]]` once per element. */
function isTableArray(value) {
  return Array.isArray(value) && value.length > 0 && value.every(isTable);
}

/**
 * Writes a nested object as TOML: scalars first, then one [table] per
 * sub-object, then one [[table]] per element of an array of objects.
 * `header` is false for an element of an array of tables, whose [[name]]
 * line the caller has written.
 */
export function toToml(config, prefix = [], { header = true } = {}) {
  const lines = [];
  const entries = Object.entries(config);
  const scalars = entries.filter(([, v]) => !isTable(v) && !isTableArray(v));
  const tables = entries.filter(([, v]) => isTable(v));
  const tableArrays = entries.filter(([, v]) => isTableArray(v));
  if (header && prefix.length > 0 && scalars.length > 0) {
    lines.push(`[${prefix.join('.')}]`);
  }
  for (const [key, value] of scalars) {
    lines.push(`${key} = ${tomlValue(value)}`);
  }
  if (scalars.length > 0) {
    lines.push('');
  }
  for (const [key, value] of tables) {
    lines.push(toToml(value, [...prefix, key]));
  }
  // After every plain table: the sub-tables of an element of an array of
  // tables belong to the element most recently opened by its [[name]].
  for (const [key, elements] of tableArrays) {
    const name = [...prefix, key];
    for (const element of elements) {
      lines.push(`[[${name.join('.')}]]`);
      lines.push(toToml(element, name, { header: false }));
    }
  }
  return lines.join('\n');
}

// Every herald this process started, so none outlives a crashed test run.
const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    child.kill('SIGKILL');
  }
});

const LISTENING = /ws:\/\/127\.0\.0\.1:(\d+)\/connection\/websocket/;

/**
 * Starts a herald node. `overrides` is merged into defaultConfig().
 * Resolves once herald logs its WebSocket address.
 */
export async function startHerald(overrides = {}, { startTimeout = 15000 } = {}) {
  const bin = requireBinary();
  const config = merge(defaultConfig(), overrides);
  const dir = mkdtempSync(path.join(tmpdir(), 'herald-compat-'));
  const configFile = path.join(dir, 'herald.toml');
  writeFileSync(configFile, toToml(config));

  const child = spawn(
    bin,
    ['serve', '--config', configFile, '--address', '127.0.0.1', '--port', '0'],
    {
      env: heraldEnv({ NO_COLOR: '1' }),
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  running.add(child);

  let output = '';
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    });
  });
  // Keep draining both pipes for the whole run, so herald never blocks on a full pipe.
  child.stdout.setEncoding('utf8').on('data', (chunk) => {
    output += chunk;
  });

  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new Error(
          `herald did not report its WebSocket address within ${startTimeout} ms; output so far:\n${output}`,
        ),
      );
    }, startTimeout);
    child.stderr.setEncoding('utf8').on('data', (chunk) => {
      output += chunk;
      const match = LISTENING.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${bin}: ${err.message}`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(
        new Error(
          `herald exited (code ${code}, signal ${signal}) before listening; output:\n${output}`,
        ),
      );
    });
  });

  let port;
  try {
    port = await listening;
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  const base = `127.0.0.1:${port}`;
  const apiKey = config.api.key;
  let stopped = null;

  return {
    port,
    url: `ws://${base}/connection/websocket`,
    apiUrl: `http://${base}/api`,
    config,
    configFile,
    /** Everything herald has written to stdout and stderr so far. */
    output: () => output,

    /**
     * Mints a token with `herald token`: a connection token, or with
     * `channel` a subscription token. `subscribe` lists server-side channels.
     */
    token({ user = '42', ttl, channel, subscribe = [], info } = {}) {
      const args = ['token', '--config', configFile, '--user', String(user)];
      if (ttl !== undefined) args.push('--ttl', ttl);
      if (channel !== undefined) args.push('--channel', channel);
      for (const ch of subscribe) args.push('--subscribe', ch);
      if (info !== undefined) args.push('--info', JSON.stringify(info));
      return execFileSync(bin, args, { encoding: 'utf8', env: heraldEnv({ NO_COLOR: '1' }) }).trim();
    },

    /** Calls the server API; returns the parsed JSON reply, whatever the HTTP status. */
    async api(method, params = {}) {
      const response = await fetch(`http://${base}/api/${method}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-API-Key': apiKey },
        body: JSON.stringify(params),
      });
      const text = await response.text();
      try {
        return JSON.parse(text);
      } catch {
        throw new Error(`/api/${method} answered ${response.status} with non-JSON: ${text}`);
      }
    },

    /** True until the herald process has exited. */
    isRunning() {
      return child.exitCode === null && child.signalCode === null;
    },

    /**
     * Sends `signal` (SIGKILL: a crash, no goodbye to anyone) and resolves
     * with {code, signal} once herald has exited. stop() still cleans up.
     */
    async kill(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
      }
      return exited;
    },

    /** Sends SIGTERM and resolves with {code, signal} once herald has exited. */
    stop({ timeout = 15000 } = {}) {
      if (!stopped) {
        stopped = (async () => {
          if (child.exitCode === null && child.signalCode === null) {
            child.kill('SIGTERM');
          }
          let timer;
          const result = await Promise.race([
            exited,
            new Promise((resolve) => {
              timer = setTimeout(() => resolve(null), timeout);
            }),
          ]);
          clearTimeout(timer);
          rmSync(dir, { recursive: true, force: true });
          if (result === null) {
            child.kill('SIGKILL');
            await exited;
            throw new Error(`herald did not exit within ${timeout} ms of SIGTERM; output:\n${output}`);
          }
          return result;
        })();
      }
      return stopped;
    },
  };
}

/** A Centrifuge client for `url` over the `ws` package (Node 20 has no global WebSocket). */
export function newClient(url, options = {}) {
  return new Centrifuge(url, { websocket: WebSocket, ...options });
}

/**
 * A WebSocket class for newClient's `websocket` option that stands in for a
 * load balancer: whatever URL centrifuge-js asks for, each new socket goes to
 * `pickUrl()`, asked afresh on every (re)connect. `opened` lists the URLs
 * chosen, in order.
 */
export function routedWebSocket(pickUrl) {
  const opened = [];
  class RoutedWebSocket extends WebSocket {
    constructor(_url, protocols) {
      const url = pickUrl();
      opened.push(url);
      super(url, protocols);
    }
  }
  return { WebSocket: RoutedWebSocket, opened };
}

/** Polls `predicate` every 20 ms until it returns truthy; rejects after `timeout`. */
export async function waitFor(predicate, { timeout = 5000, interval = 20, message } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) {
      return value;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${message ?? predicate.toString()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

/**
 * Resolves with the context of the next `event` that `emitter` (a Centrifuge
 * or a Subscription) emits and `filter` accepts; rejects after `timeout`.
 */
export function nextEvent(emitter, event, { timeout = 5000, filter = () => true } = {}) {
  return new Promise((resolve, reject) => {
    const onEvent = (ctx) => {
      if (!filter(ctx)) {
        return;
      }
      clearTimeout(timer);
      emitter.removeListener(event, onEvent);
      resolve(ctx);
    };
    const timer = setTimeout(() => {
      emitter.removeListener(event, onEvent);
      reject(new Error(`no '${event}' event within ${timeout} ms`));
    }, timeout);
    emitter.on(event, onEvent);
  });
}

/** Resolves after `ms`; only for waiting on the clock itself (token expiry). */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Kills the WebSocket under a connected Centrifuge client the way a network
 * failure would: no close frame, no disconnect command. The client only sees
 * its transport close and reconnects by itself. centrifuge-js keeps its
 * transport in `_transport`, and that transport keeps the `ws` socket in its
 * own `_transport`.
 */
export function dropTransport(client) {
  const socket = client._transport?._transport;
  if (!(socket instanceof WebSocket)) {
    throw new Error('no ws WebSocket found at client._transport._transport: is the client connected over websocket?');
  }
  socket.terminate();
}

/**
 * Holds a client's reconnects until the test lets them through. centrifuge-js
 * calls getData before every connect attempt and connects only once it
 * resolves, so while the gate is held the client stays in `connecting`.
 */
export function reconnectGate() {
  let opened = Promise.resolve(undefined);
  let open = () => {};
  return {
    getData: () => opened,
    hold() {
      opened = new Promise((resolve) => {
        open = () => resolve(undefined);
      });
    },
    release() {
      open();
    },
  };
}

/** Subscribes `c` to `channel`; resolves with the subscription and its 'subscribed' context. */
export async function subscribed(c, channel, options = {}) {
  const sub = c.newSubscription(channel, options);
  const done = nextEvent(sub, 'subscribed');
  sub.subscribe();
  return { sub, ctx: await done };
}
