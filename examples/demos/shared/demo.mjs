// What every demo page shares: who you are, a connection to Herald with a
// banner while it is down, and building the page from text (never HTML:
// whatever another user sends is shown as text, not run).

/** Your demo name: ?name=… in the address, else the last one used here, else a guest name. */
export function userName() {
  const given = new URLSearchParams(location.search).get('name');
  const name = given || localStorage.getItem('herald-demo-name') || `guest-${Math.floor(1000 + Math.random() * 9000)}`;
  localStorage.setItem('herald-demo-name', name);
  return name;
}

/**
 * A centrifuge-js client for `name`, connecting to the Herald that served
 * this page. Its tokens come from the demos' sign-in, which stands in for
 * your application's login: your backend would mint them.
 */
export function connect(name) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const client = new Centrifuge(`${scheme}://${location.host}/connection/websocket`, {
    getToken: async () => {
      const response = await fetch(`/demos/token?user=${encodeURIComponent(name)}`);
      if (!response.ok) throw new Error(`sign-in refused: ${response.status}`);
      return (await response.json()).token;
    },
    minReconnectDelay: 300,
    maxReconnectDelay: 3000,
  });
  client.on('connecting', (ctx) => setBanner(ctx.code === 0 ? 'Connecting…' : 'Connection lost: reconnecting…'));
  client.on('connected', () => setBanner(null));
  client.on('disconnected', (ctx) => setBanner(`Disconnected: ${ctx.reason}`));
  client.connect();
  return client;
}

/** Shows `text` in the page's connection banner, or hides it for null. */
export function setBanner(text) {
  let banner = document.getElementById('banner');
  if (!banner) {
    banner = el('div', { id: 'banner', role: 'status' });
    document.body.prepend(banner);
  }
  banner.hidden = text === null;
  banner.textContent = text ?? '';
}

/**
 * An element with attributes and children; a string child becomes a text
 * node, so names and messages from other users can never be markup.
 */
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else if (value !== false && value !== undefined) element.setAttribute(name, value === true ? '' : value);
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

/** A stable colour for a user's name. */
export function colorOf(name) {
  let hash = 0;
  for (const char of String(name)) hash = (hash * 31 + char.codePointAt(0)) % 360;
  return `hsl(${hash} 65% 45%)`;
}
