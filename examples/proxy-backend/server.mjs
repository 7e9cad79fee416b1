// A small, stateless application backend for Herald's proxy (the same
// requests and answers as Centrifugo's HTTP proxy), with node's standard
// library only:
//
//   - connect:   authenticates a browser by its signed `session` cookie
//                (no JWT): the user id, display info and a welcome;
//   - subscribe: anyone signed in may join `chat:*`, only admins
//                `chat:admins` (others get the custom error 1403);
//   - publish:   moderates chat messages: too long is refused (1400),
//                words on the list are masked, and the message is marked;
//   - rpc:       `time` and `roll` (a die), anything else 1404;
//   - GET /login?user=ada sets the signed cookie, for trying it in a
//     browser.
//
// Run: SESSION_SECRET=change-me PORT=3000 node server.mjs
// It keeps no state: the cookie carries the user, signed with the secret.

import { createHmac, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { pathToFileURL } from 'node:url';

const ADMINS = new Set(['ada']);
const MASKED = ['darn', 'heck'];
const MAX_TEXT = 280;
/** The largest request body read. */
const MAX_BODY = 64 * 1024;

/** The cookie value that proves `user` signed in: `user.signature`. */
export function signSession(user, secret) {
  const signature = createHmac('sha256', secret).update(user).digest('base64url');
  return `${user}.${signature}`;
}

/** The user a cookie value proves, or null. */
function verifySession(value, secret) {
  const dot = value.lastIndexOf('.');
  if (dot <= 0) return null;
  const user = value.slice(0, dot);
  const expected = Buffer.from(signSession(user, secret));
  const given = Buffer.from(value);
  return expected.length === given.length && timingSafeEqual(expected, given) ? user : null;
}

function cookie(request, name) {
  for (const pair of (request.headers.cookie ?? '').split(';')) {
    const [key, ...rest] = pair.trim().split('=');
    if (key === name) return rest.join('=');
  }
  return null;
}

/** The answer to one proxied event, given its body and the signed-in user. */
function answer(event, body, user) {
  switch (event) {
    case 'connect':
      if (!user) return { disconnect: { code: 4501, reason: 'sign in first' } };
      return {
        result: {
          user,
          info: { name: user[0].toUpperCase() + user.slice(1), admin: ADMINS.has(user) },
          data: { welcome: `hello, ${user}` },
          channels: [`personal:${user}`],
        },
      };
    case 'subscribe':
      if (body.channel === 'chat:admins' && !ADMINS.has(body.user)) {
        return { error: { code: 1403, message: 'admins only' } };
      }
      return { result: { info: { joined_at: Date.now() } } };
    case 'publish': {
      const text = body.data?.text;
      if (typeof text !== 'string') return { error: { code: 1400, message: 'a chat message needs text' } };
      if (text.length > MAX_TEXT) return { error: { code: 1400, message: `at most ${MAX_TEXT} characters` } };
      let clean = text;
      for (const word of MASKED) clean = clean.replaceAll(new RegExp(word, 'gi'), '*'.repeat(word.length));
      return { result: { data: { ...body.data, text: clean, moderated: clean !== text } } };
    }
    case 'rpc':
      if (body.method === 'time') return { result: { data: { now: new Date().toISOString() } } };
      if (body.method === 'roll') return { result: { data: { die: 1 + Math.floor(Math.random() * 6) } } };
      return { error: { code: 1404, message: `no method ${body.method}` } };
    default:
      return { error: { code: 1000, message: `no handler for ${event}` } };
  }
}

/** Reads a JSON body of at most MAX_BODY bytes. */
function readJson(request) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    request.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error('body too large'));
        request.destroy();
        return;
      }
      chunks.push(chunk);
    });
    request.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (error) {
        reject(error);
      }
    });
    request.on('error', reject);
  });
}

/** The backend as an HTTP server (not yet listening). */
export function createBackend({ secret }) {
  return http.createServer(async (request, response) => {
    const url = new URL(request.url, 'http://backend');
    if (request.method === 'GET' && url.pathname === '/login') {
      const user = url.searchParams.get('user') ?? '';
      if (!/^[a-z0-9_-]{1,32}$/.test(user)) {
        response.writeHead(400).end('user: 1 to 32 of a-z, 0-9, _ and -\n');
        return;
      }
      const value = signSession(user, secret);
      response.writeHead(204, { 'set-cookie': `session=${value}; Path=/; HttpOnly; SameSite=Lax` }).end();
      return;
    }
    const event = url.pathname.match(/^\/centrifugo\/(connect|subscribe|publish|rpc)$/)?.[1];
    if (request.method !== 'POST' || !event) {
      response.writeHead(404).end();
      return;
    }
    let body;
    try {
      body = await readJson(request);
    } catch {
      response.writeHead(400).end();
      return;
    }
    const session = cookie(request, 'session');
    const user = session ? verifySession(session, secret) : null;
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer(event, body, user)));
  });
}

// Run directly: listen on $PORT.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const secret = process.env.SESSION_SECRET;
  if (!secret) {
    console.error('set SESSION_SECRET to the secret that signs session cookies');
    process.exit(2);
  }
  const port = Number(process.env.PORT ?? 3000);
  createBackend({ secret }).listen(port, '127.0.0.1', () => {
    console.log(`proxy backend on http://127.0.0.1:${port} (POST /centrifugo/<event>, GET /login?user=…)`);
  });
}
