// A harness for the Pusher Channels compatibility tests.
//
// startHeraldWithPusher() starts, in this order: a webhook receiver (so its
// URL can go into the config), one or more herald nodes serving one Pusher
// app with client events on, and an auth server that signs channel and user
// authorizations with the official `pusher` server SDK. It hands back
// factories for the clients a test talks through, all unchanged npm
// packages: pusher-js (Node build), laravel-echo on top of pusher-js, the
// `pusher` server SDK for the HTTP API, and the webhook collector.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';

import Echo from 'laravel-echo';
import PusherSdk from 'pusher';
import PusherJs from 'pusher-js';

import { defaultConfig, merge, startHerald } from './herald.mjs';

// pusher-js logs nothing unless told to; keep its last lines for failure messages.
const pusherJsLog = [];
PusherJs.log = (message) => {
  pusherJsLog.push(message);
  if (pusherJsLog.length > 200) {
    pusherJsLog.shift();
  }
};

/** The last lines pusher-js logged, for a failure message. */
export function pusherJsLogTail(lines = 20) {
  return pusherJsLog.slice(-lines).join('\n');
}

let nameCounter = 0;

/** A channel name no other test of this process uses: `${prefix}-${n}`. */
export function uniqueName(prefix) {
  nameCounter += 1;
  return `${prefix}-${nameCounter}`;
}

/** Short JSON for failure messages. */
function show(value, limit = 4000) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch {
    text = String(value);
  }
  return text.length > limit ? `${text.slice(0, limit)}…` : text;
}

/**
 * Polls `check` every 20 ms until it returns something other than undefined,
 * false or null, and resolves with that. Rejects after `timeout` with
 * `what()`, called then, so the message shows the state at the deadline.
 */
export async function until(check, { timeout = 5000, what = () => check.toString() } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false && value !== null) {
      return value;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Resolves with {data, metadata} of the next `event` a pusher-js emitter (a
 * channel, `pusher.connection`, `pusher.user`) emits and `filter` accepts.
 */
export function nextPusherEvent(emitter, event, { timeout = 5000, filter = () => true } = {}) {
  return new Promise((resolve, reject) => {
    const onEvent = (data, metadata) => {
      if (!filter(data, metadata)) {
        return;
      }
      clearTimeout(timer);
      emitter.unbind(event, onEvent);
      resolve({ data, metadata });
    };
    const timer = setTimeout(() => {
      emitter.unbind(event, onEvent);
      reject(new Error(`no '${event}' event within ${timeout} ms`));
    }, timeout);
    emitter.bind(event, onEvent);
  });
}

/**
 * A pusher-js client under test, with a record of everything herald sent it.
 * `frames` holds every Pusher message received after the handshake, decoded
 * the way pusher-js decodes them ({event, channel, data, user_id?}).
 */
export class PusherClient {
  constructor(pusher, label) {
    this.pusher = pusher;
    this.label = label;
    this.frames = [];
    this.errors = [];
    this.states = [];
    pusher.connection.bind('message', (frame) => this.frames.push(frame));
    pusher.connection.bind('error', (error) => this.errors.push(error));
    pusher.connection.bind('state_change', ({ current }) => this.states.push(current));
  }

  get socketId() {
    return this.pusher.connection.socket_id;
  }

  get state() {
    return this.pusher.connection.state;
  }

  /**
   * The Pusher error codes among the connection's errors. pusher-js reports
   * a refusal during the handshake wrapped, as {type: 'WebSocketError',
   * error: {type: 'PusherError', data: {code}}}.
   */
  errorCodes() {
    const codes = [];
    for (let error of this.errors) {
      while (error) {
        if (typeof error.data?.code === 'number') codes.push(error.data.code);
        error = error.error;
      }
    }
    return codes;
  }

  /** The position in `frames` now, to look only at what arrives after it. */
  mark() {
    return this.frames.length;
  }

  /** Frames of `event` (on `channel`, if given) received since `since`. */
  framesOf(event, { channel, since = 0 } = {}) {
    return this.frames
      .slice(since)
      .filter((f) => f.event === event && (channel === undefined || f.channel === channel));
  }

  /** Waits for a frame since `since` that `predicate` accepts; resolves with it. */
  frame(predicate, { since = 0, timeout = 5000, what = 'a matching frame' } = {}) {
    return until(() => this.frames.slice(since).find(predicate), {
      timeout,
      what: () => `${what} at ${this.label}; frames since ${since}: ${show(this.frames.slice(since))}`,
    });
  }

  /** Waits until the connection is in `state`. */
  async reach(state, { timeout = 5000 } = {}) {
    await until(() => this.state === state, {
      timeout,
      what: () =>
        `${this.label} to be ${state} (is ${this.state}; states ${show(this.states)}; ` +
        `errors ${show(this.errors)})\npusher-js log:\n${pusherJsLogTail()}`,
    });
  }

  /**
   * Subscribes through pusher-js and waits for the outcome: resolves with
   * {ok: true, channel, data} on pusher:subscription_succeeded (data is the
   * members object on a presence channel), or {ok: false, channel, via,
   * data} on pusher:subscription_error, or on a pusher:error frame for this
   * channel or for no channel.
   */
  async subscription(name, { timeout = 5000 } = {}) {
    const since = this.mark();
    const channel = this.pusher.subscribe(name);
    // The channel is not enumerable, so an outcome prints as JSON (a channel is circular).
    const result = (fields) => Object.defineProperty({ ...fields, name }, 'channel', { value: channel });
    let outcome = null;
    const onSucceeded = (data) => {
      outcome ??= result({ ok: true, data });
    };
    const onError = (data) => {
      outcome ??= result({ ok: false, via: 'pusher:subscription_error', data });
    };
    channel.bind('pusher:subscription_succeeded', onSucceeded);
    channel.bind('pusher:subscription_error', onError);
    try {
      return await until(
        () => {
          if (outcome) {
            return outcome;
          }
          const error = this.framesOf('pusher:error', { since }).find(
            (f) => f.channel === undefined || f.channel === name,
          );
          return error ? result({ ok: false, via: 'pusher:error', data: error.data }) : undefined;
        },
        {
          timeout,
          what: () =>
            `the outcome of subscribing ${this.label} to ${name}; frames since: ` +
            `${show(this.frames.slice(since))}\npusher-js log:\n${pusherJsLogTail()}`,
        },
      );
    } finally {
      channel.unbind('pusher:subscription_succeeded', onSucceeded);
      channel.unbind('pusher:subscription_error', onError);
    }
  }

  /** Subscribes to `name` and resolves with the pusher-js channel once subscribed; throws if refused. */
  async subscribe(name, options) {
    const outcome = await this.subscription(name, options);
    if (!outcome.ok) {
      throw new Error(
        `${this.label} could not subscribe to ${name}: ${outcome.via} ${show(outcome.data)}\n` +
          `pusher-js log:\n${pusherJsLogTail()}`,
      );
    }
    return outcome.channel;
  }

  /**
   * Records what pusher-js hands to callbacks bound to `event` on channel
   * `name` (subscribed or not yet): a live array of {data, metadata}.
   */
  record(name, event) {
    const received = [];
    const channel = this.pusher.channel(name) ?? this.pusher.subscribe(name);
    channel.bind(event, (data, metadata) => received.push({ data, metadata }));
    return received;
  }

  /** Signs in through the user authentication endpoint; resolves once the server-to-user channel is subscribed. */
  async signin({ timeout = 5000 } = {}) {
    const since = this.mark();
    let signinError = null;
    this.pusher.user.bind('pusher:signin_error', (error) => {
      signinError = error;
    });
    this.pusher.signin();
    await until(
      () => {
        if (signinError) {
          throw new Error(`${this.label}: signin failed: ${show(signinError)}`);
        }
        return this.pusher.user.serverToUserChannel?.subscribed;
      },
      {
        timeout,
        what: () =>
          `${this.label} to be signed in and subscribed to its server-to-user channel; frames since: ` +
          `${show(this.frames.slice(since))}\npusher-js log:\n${pusherJsLogTail()}`,
      },
    );
    return this.framesOf('pusher:signin_success', { since })[0];
  }

  disconnect() {
    this.pusher.disconnect();
  }
}

/**
 * An HTTP server collecting Pusher webhooks. A request counts only if the
 * `pusher` SDK's own WebHook check accepts it (key, Content-Type, JSON body,
 * signature) and X-Pusher-Signature is the hex HMAC-SHA256 of the raw body
 * under the app secret; anything else is answered 401 and kept in
 * `rejected` with the reason.
 */
export async function startWebhookReceiver({ appId, key, secret, path: hookPath = '/hooks' }) {
  const verifier = new PusherSdk({ appId, key, secret });
  const events = [];
  const requests = [];
  const rejected = [];

  function problemWith(req, rawBody) {
    if (req.method !== 'POST') return `method ${req.method}, not POST`;
    if (req.url !== hookPath) return `path ${req.url}, not ${hookPath}`;
    if (req.headers['x-pusher-key'] !== key) return `X-Pusher-Key ${show(req.headers['x-pusher-key'])}, not ${key}`;
    const signature = req.headers['x-pusher-signature'];
    const expected = createHmac('sha256', secret).update(rawBody).digest('hex');
    if (
      typeof signature !== 'string' ||
      signature.length !== expected.length ||
      !timingSafeEqual(Buffer.from(signature), Buffer.from(expected))
    ) {
      return `X-Pusher-Signature ${show(signature)}, expected ${expected}`;
    }
    if (!verifier.webhook({ headers: req.headers, rawBody }).isValid()) {
      return `the pusher SDK's WebHook.isValid() refused it (Content-Type ${show(req.headers['content-type'])})`;
    }
    const body = JSON.parse(rawBody);
    if (typeof body.time_ms !== 'number' || !Array.isArray(body.events)) {
      return 'the body has no numeric time_ms and events array';
    }
    return null;
  }

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const rawBody = Buffer.concat(chunks).toString('utf8');
      let problem;
      try {
        problem = problemWith(req, rawBody);
      } catch (err) {
        problem = `cannot check it: ${err.message}`;
      }
      if (problem) {
        rejected.push({ reason: problem, url: req.url, headers: req.headers, body: rawBody });
        res.writeHead(401, { 'Content-Type': 'text/plain' });
        res.end(problem);
        return;
      }
      const body = JSON.parse(rawBody);
      requests.push({ headers: req.headers, body });
      for (const event of body.events) {
        events.push({ ...event, time_ms: body.time_ms });
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();

  return {
    url: `http://127.0.0.1:${port}${hookPath}`,
    events,
    requests,
    rejected,
    /** Accepted events about `channel` (of `name`, if given), in arrival order. */
    eventsFor(channel, name) {
      return events.filter((e) => e.channel === channel && (name === undefined || e.name === name));
    },
    /** Waits until `predicate(events)` is truthy; resolves with its value. */
    waitFor(predicate, { timeout = 10000, message = predicate.toString() } = {}) {
      return until(() => predicate(events), {
        timeout,
        what: () =>
          `webhooks: ${message}; accepted events: ${show(events.slice(-40))}; ` +
          `rejected requests: ${show(rejected.slice(-5))}`,
      });
    },
    async stop() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * The application's auth endpoints, signing with the `pusher` SDK as a real
 * backend would. Who asks is the `user_id` parameter, else the bearer token
 * of the Authorization header; `user_info` (JSON) is the presence info,
 * else {name: 'user <id>'}. `auth_mode` chooses a misbehaving backend:
 * `deny` answers 403, `forge` signs with a secret that is not the app's;
 * or `signed_in_member`, which authorizes presence channels without naming
 * the member (a signed-in user is then the one its sign-in named).
 */
export async function startAuthServer({ sdk, forger }) {
  const requests = [];

  function identity(params, headers) {
    const bearer = /^Bearer (.+)$/.exec(headers.authorization ?? '');
    const id = params.get('user_id') ?? bearer?.[1];
    const info = params.has('user_info') ? JSON.parse(params.get('user_info')) : { name: `user ${id}` };
    return { id, info };
  }

  function answer(req, params) {
    const mode = params.get('auth_mode') ?? 'ok';
    const socketId = params.get('socket_id');
    const user = identity(params, req.headers);
    if (mode === 'deny') {
      return [403, { error: 'forbidden by the test' }];
    }
    const signer = mode === 'forge' ? forger : sdk;
    if (req.url === '/channel-auth') {
      const channel = params.get('channel_name');
      if (channel.startsWith('presence-')) {
        // A backend that lets a signed-in user be the member its sign-in named.
        if (mode === 'signed_in_member') return [200, signer.authorizeChannel(socketId, channel)];
        if (!user.id) return [403, { error: 'a presence channel needs a user' }];
        return [200, signer.authorizeChannel(socketId, channel, { user_id: user.id, user_info: user.info })];
      }
      return [200, signer.authorizeChannel(socketId, channel)];
    }
    if (req.url === '/user-auth') {
      if (!user.id) return [403, { error: 'signin needs a user' }];
      return [200, signer.authenticateUser(socketId, { id: user.id, user_info: user.info })];
    }
    return [404, { error: `no ${req.url}` }];
  }

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const params = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
      let status;
      let body;
      try {
        [status, body] = answer(req, params);
      } catch (err) {
        [status, body] = [500, { error: err.message }];
      }
      requests.push({ path: req.url, params: Object.fromEntries(params), headers: req.headers, status, body });
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(body));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    channelUrl: `http://127.0.0.1:${port}/channel-auth`,
    userUrl: `http://127.0.0.1:${port}/user-auth`,
    requests,
    async stop() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** The Pusher app every test server serves, unless a test overrides parts of it. */
export function pusherApp(overrides = {}) {
  return {
    id: 'app-1',
    key: 'app-key',
    secret: randomBytes(16).toString('hex'),
    client_events: true,
    max_connections: 0,
    max_event_size: 10240,
    client_event_rate: 10,
    ...overrides,
  };
}

/**
 * Starts `nodes` herald nodes (all with the same config: one token secret,
 * one API key, one Pusher app whose webhooks go to a receiver started first)
 * plus an auth server. `overrides` merges into the herald config (an
 * `engine` section for a cluster); `app` into the Pusher app; `webhook`
 * into its one webhook target (`batch`, `events`).
 */
export async function startHeraldWithPusher(
  overrides = {},
  { nodes: nodeCount = 1, app: appOverrides = {}, webhook = {} } = {},
) {
  const app = pusherApp(appOverrides);
  const encryptionMasterKeyBase64 = randomBytes(32).toString('base64');
  const webhooks = await startWebhookReceiver({ appId: app.id, key: app.key, secret: app.secret });

  const { client, api } = defaultConfig();
  const config = merge(
    {
      client,
      api,
      pusher: {
        activity_timeout: '120s',
        apps: [{ ...app, webhooks: [{ url: webhooks.url, ...webhook }] }],
      },
    },
    overrides,
  );

  const started = await Promise.allSettled(Array.from({ length: nodeCount }, () => startHerald(config)));
  const failed = started.find((s) => s.status === 'rejected');
  if (failed) {
    await Promise.allSettled(started.filter((s) => s.status === 'fulfilled').map((s) => s.value.stop()));
    await webhooks.stop();
    throw failed.reason;
  }
  const nodes = started.map((s) => s.value);

  /** The `pusher` server SDK pointed at herald `node`; `secret` replaces the app secret. */
  function sdk({ node = 0, secret = app.secret } = {}) {
    return new PusherSdk({
      appId: app.id,
      key: app.key,
      secret,
      host: '127.0.0.1',
      port: String(nodes[node].port),
      useTLS: false,
      encryptionMasterKeyBase64,
    });
  }

  const auth = await startAuthServer({
    sdk: sdk(),
    forger: new PusherSdk({ appId: app.id, key: app.key, secret: `${app.secret}-not`, encryptionMasterKeyBase64 }),
  });

  // Every client a factory made, so closeClients() can end them all.
  const open = [];

  /** Where pusher-js (alone or inside Echo) connects: herald `node`, plain ws. */
  function socketOptions(node) {
    return {
      cluster: 'herald',
      wsHost: '127.0.0.1',
      wsPort: nodes[node].port,
      forceTLS: false,
      enabledTransports: ['ws'],
      disableStats: true,
    };
  }

  /** The pusher-js options a browser app would use against herald `node`. */
  function pusherJsOptions(node, { user, info, authMode } = {}) {
    const params = {};
    if (user !== undefined) params.user_id = String(user);
    if (info !== undefined) params.user_info = JSON.stringify(info);
    if (authMode !== undefined) params.auth_mode = authMode;
    return {
      ...socketOptions(node),
      channelAuthorization: { endpoint: auth.channelUrl, transport: 'ajax', params },
      userAuthentication: { endpoint: auth.userUrl, transport: 'ajax', params },
    };
  }

  return {
    app,
    nodes,
    herald: nodes[0],
    webhooks,
    auth,
    sdk,
    pusherJsOptions,

    /**
     * A pusher-js client of herald `node`, connected. `user` and `info` are
     * what the auth endpoint signs for it; `key` replaces the app key.
     */
    async client({ node = 0, user, info, authMode, key = app.key, label, connect = true, options = {} } = {}) {
      const pusher = new PusherJs(key, { ...pusherJsOptions(node, { user, info, authMode }), ...options });
      const c = new PusherClient(pusher, label ?? `pusher-js(${user ?? 'anonymous'}@node${node})`);
      open.push(c);
      if (connect) {
        await c.reach('connected');
      }
      return c;
    },

    /**
     * A Laravel Echo (broadcaster 'pusher') of herald `node`, configured the
     * Laravel way: authEndpoint plus a bearer token identifying `user`.
     * Resolves with {echo, client} once connected; `client` records frames.
     */
    async echo({ node = 0, user, info, label } = {}) {
      const echo = new Echo({
        broadcaster: 'pusher',
        Pusher: PusherJs,
        key: app.key,
        ...socketOptions(node),
        authEndpoint: auth.channelUrl,
        bearerToken: user === undefined ? null : String(user),
        auth: { headers: {}, params: info === undefined ? {} : { user_info: JSON.stringify(info) } },
        userAuthentication: { endpoint: auth.userUrl, transport: 'ajax', headers: {} },
      });
      const c = new PusherClient(echo.connector.pusher, label ?? `echo(${user ?? 'anonymous'}@node${node})`);
      open.push(c);
      await c.reach('connected');
      return { echo, client: c };
    },

    /** Disconnects every client made so far. */
    closeClients() {
      while (open.length > 0) {
        open.pop().disconnect();
      }
    },

    async stop() {
      this.closeClients();
      await Promise.allSettled(nodes.map((node) => node.stop()));
      await Promise.allSettled([auth.stop(), webhooks.stop()]);
    },
  };
}

/**
 * The parsed JSON body of a `pusher` SDK request. A refusal (the SDK's
 * RequestError) is rethrown with its status, URL and body in the message.
 */
export async function json(responsePromise) {
  let response;
  try {
    response = await responsePromise;
  } catch (err) {
    if (err.name !== 'PusherRequestError') {
      throw err;
    }
    throw new Error(
      err.status !== undefined
        ? `the Pusher HTTP API answered ${err.status} to ${err.url}: ${err.body}`
        : `the Pusher HTTP API request ${err.url} failed: ${err.error?.message}`,
    );
  }
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`the Pusher HTTP API answered ${response.status} with non-JSON: ${text}`);
  }
}

/** Resolves like `promise`, or rejects after `timeout` naming `what`. */
export function within(promise, what, timeout = 5000) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeout} ms waiting for ${what}`)), timeout);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * The status and body of a refused `pusher` SDK request: the SDK rejects
 * with a RequestError carrying both. Fails if the request succeeded.
 */
export async function refusal(requestPromise) {
  try {
    const response = await requestPromise;
    throw new Error(`expected a refusal, got HTTP ${response.status}: ${await response.text()}`);
  } catch (err) {
    if (err.name !== 'PusherRequestError' || err.status === undefined) {
      throw err;
    }
    return { status: err.status, body: err.body };
  }
}
