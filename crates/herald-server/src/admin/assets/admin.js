// Herald's admin UI. Everything shown comes from the server API, called as
// POST /admin/api/<method> with the session cookie; the charts from
// /admin/series and a channel's live tail from /admin/tail (server-sent
// events). Text from the server is only ever set as textContent.
'use strict';

const REFRESH_MS = 2000;
const HISTORY_SHOWN = 20;
const TAIL_KEPT = 100;

const $ = (id) => document.getElementById(id);

/** An element with optional class and text. */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

class LoggedOut extends Error {}

async function post(path, body) {
  const response = await fetch(path, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'content-type': 'application/json', 'x-herald-admin': '1' },
    body: JSON.stringify(body ?? {}),
  });
  return response;
}

/** Calls a server API method; resolves to its result, or throws its error. */
async function api(method, params) {
  const response = await post(`/admin/api/${method}`, params);
  if (response.status === 401) throw new LoggedOut();
  const body = await response.json().catch(() => ({}));
  if (body.error) throw new Error(`${body.error.message} (code ${body.error.code})`);
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return body.result;
}

async function getJson(path) {
  const response = await fetch(path, { credentials: 'same-origin' });
  if (response.status === 401) throw new LoggedOut();
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

// ---- login -----------------------------------------------------------------

function showLogin() {
  stopRefreshing();
  closeInspector();
  $('app').hidden = true;
  $('logout').hidden = true;
  $('whoami').hidden = true;
  $('login-view').hidden = false;
  $('password').focus();
}

async function showApp() {
  let session;
  try {
    session = await getJson('/admin/session');
  } catch (error) {
    if (error instanceof LoggedOut) return showLogin();
    $('problem').hidden = false;
    $('problem').textContent = `The node did not answer: ${error.message}. Reload the page to try again.`;
    return;
  }
  $('login-view').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  $('whoami').hidden = false;
  $('whoami').textContent = `node ${session.node} · ${session.engine} engine · v${session.version}`;
  startRefreshing();
}

$('login').addEventListener('submit', async (event) => {
  event.preventDefault();
  const response = await post('/admin/login', { password: $('password').value });
  if (response.ok) {
    $('password').value = '';
    $('login-error').textContent = '';
    return showApp();
  }
  const body = await response.json().catch(() => ({}));
  $('login-error').textContent = body.error?.message ?? `HTTP ${response.status}`;
});

$('logout').addEventListener('click', async () => {
  await post('/admin/logout');
  showLogin();
});

// ---- refreshing ------------------------------------------------------------

let timer = null;
let refreshing = false;

function startRefreshing() {
  stopRefreshing();
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

function stopRefreshing() {
  if (timer) clearInterval(timer);
  timer = null;
}

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const [info, series] = await Promise.all([api('info'), getJson('/admin/series')]);
    renderNodes(info, series);
    renderCharts(series);
    await refreshChannels();
    if (inspected) await refreshInspector();
    $('problem').hidden = true;
  } catch (error) {
    if (error instanceof LoggedOut) return showLogin();
    $('problem').hidden = false;
    $('problem').textContent = `Could not refresh: ${error.message}`;
  } finally {
    refreshing = false;
  }
}

// ---- nodes -----------------------------------------------------------------

function rate(value) {
  if (value === undefined) return '–';
  return value >= 100 ? Math.round(value).toLocaleString() : value.toFixed(1);
}

function duration(seconds) {
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d ${Math.floor((seconds % 86400) / 3600)}h`;
}

function renderNodes(info, series) {
  $('engine').textContent = `${info.nodes.length} live · ${info.engine} engine`;
  const rows = info.nodes.map((node) => {
    const rates = series.nodes[node.uid] ?? {};
    const row = el('tr');
    const name = el('td');
    name.append(el('strong', null, node.name), el('small', null, ` ${node.uid.slice(0, 8)}`));
    row.append(
      name,
      el('td', null, node.version),
      el('td', 'n', node.num_clients.toLocaleString()),
      el('td', 'n', node.num_users.toLocaleString()),
      el('td', 'n', node.num_subs.toLocaleString()),
      el('td', 'n', node.num_channels.toLocaleString()),
      el('td', 'n', rate(rates.published)),
      el('td', 'n', rate(rates.delivered)),
      el('td', 'n', duration(node.uptime)),
      el('td', 'n', `${(node.age_ms / 1000).toFixed(1)} s ago`),
    );
    row.dataset.node = node.name;
    return row;
  });
  $('nodes').tBodies[0].replaceChildren(...rows);
}

// ---- charts ----------------------------------------------------------------

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 600;
const HEIGHT = 200;
const PAD = 28;

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

/** Draws `lines` ({key, className}) of `samples` over the window, with a scale. */
function drawChart(target, samples, lines, windowMs) {
  const end = samples.length ? samples[samples.length - 1].t : Date.now();
  const start = end - windowMs;
  const top = Math.max(1, ...samples.flatMap((s) => lines.map((line) => s[line.key])));
  const scale = niceCeiling(top);
  const x = (t) => PAD + ((t - start) / windowMs) * (WIDTH - PAD - 4);
  const y = (v) => HEIGHT - 16 - (v / scale) * (HEIGHT - 24);
  const parts = [];
  for (const fraction of [0, 0.5, 1]) {
    const value = scale * fraction;
    parts.push(svg('line', { x1: PAD, x2: WIDTH - 4, y1: y(value), y2: y(value), class: 'grid' }));
    const label = svg('text', { x: 2, y: y(value) + 4, class: 'label' });
    label.textContent = value >= 1000 ? `${(value / 1000).toFixed(value >= 10000 ? 0 : 1)}k` : `${+value.toFixed(1)}`;
    parts.push(label);
  }
  const minutes = Math.round(windowMs / 60000);
  const caption = svg('text', { x: PAD, y: HEIGHT - 2, class: 'label' });
  caption.textContent = `last ${minutes} min`;
  parts.push(caption);
  for (const line of lines) {
    const points = samples.map((s) => `${x(s.t).toFixed(1)},${y(s[line.key]).toFixed(1)}`).join(' ');
    parts.push(svg('polyline', { points, class: line.className }));
  }
  target.replaceChildren(...parts);
}

function niceCeiling(value) {
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * magnitude) return step * magnitude;
  }
  return 10 * magnitude;
}

function renderCharts(series) {
  const windowMs = Math.max(series.every_ms * 120, 60000);
  // Published is drawn last, dashed: with one subscriber per channel the
  // two lines coincide.
  drawChart($('chart-messages'), series.samples, [
    { key: 'delivered', className: 'delivered' },
    { key: 'published', className: 'published' },
  ], windowMs);
  drawChart($('chart-connections'), series.samples, [
    { key: 'connections', className: 'connections' },
    { key: 'subscriptions', className: 'subscriptions' },
  ], windowMs);
}

// ---- channels --------------------------------------------------------------

function searchPattern() {
  const term = $('channel-search').value.trim();
  if (!term) return undefined;
  return term.includes('*') ? term : `*${term}*`;
}

// Refreshes and searches may overlap: only the latest one's answer is shown.
let channelsAsked = 0;

async function refreshChannels() {
  channelsAsked += 1;
  const asked = channelsAsked;
  const result = await api('channels', { pattern: searchPattern() });
  if (asked !== channelsAsked) return;
  const names = Object.keys(result.channels).sort();
  const rows = names.map((name) => {
    const row = el('tr');
    row.append(el('td', null, name), el('td', 'n', result.channels[name].num_clients.toLocaleString()));
    row.dataset.channel = name;
    if (name === inspected) row.classList.add('selected');
    row.addEventListener('click', () => inspect(name));
    return row;
  });
  $('channels').tBodies[0].replaceChildren(...rows);
  const notes = [];
  if (names.length === 0) notes.push('No channel has a subscriber right now.');
  if (result.incomplete) notes.push('Some nodes did not answer in time: the list may miss channels.');
  $('channels-note').textContent = notes.join(' ');
}

let searchTimer = null;
$('channel-search').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => refreshChannels().catch(report), 250);
});

// ---- inspector -------------------------------------------------------------

let inspected = null;
let tail = null;

function inspect(channel) {
  closeInspector();
  inspected = channel;
  $('inspector').hidden = false;
  $('inspected').textContent = channel;
  $('publish-channel').value = channel;
  $('tail').replaceChildren();
  for (const row of $('channels').tBodies[0].rows) {
    row.classList.toggle('selected', row.dataset.channel === channel);
  }
  openTail(channel);
  refreshInspector().catch(report);
}

function closeInspector() {
  if (tail) tail.close();
  tail = null;
  inspected = null;
  $('inspector').hidden = true;
}

$('inspector-close').addEventListener('click', closeInspector);

/** A list item: a muted prefix, then the text. */
function item(meta, text) {
  const li = el('li');
  li.append(el('span', 'meta', meta), document.createTextNode(text));
  return li;
}

function unavailable(list, error) {
  list.replaceChildren(el('li', 'note', error.message));
}

async function refreshInspector() {
  const channel = inspected;
  const [presence, history] = await Promise.allSettled([
    api('presence', { channel }),
    api('history', { channel, limit: HISTORY_SHOWN, reverse: true }),
  ]);
  if (channel !== inspected) return;
  for (const outcome of [presence, history]) {
    if (outcome.status === 'rejected' && outcome.reason instanceof LoggedOut) throw outcome.reason;
  }
  if (presence.status === 'fulfilled') {
    const present = Object.values(presence.value.presence);
    $('presence-count').textContent = `(${present.length})`;
    $('presence').replaceChildren(...present.map((info) => item(info.client.slice(0, 8), info.user || '(anonymous)')));
  } else {
    $('presence-count').textContent = '';
    unavailable($('presence'), presence.reason);
  }
  if (history.status === 'fulfilled') {
    const publications = history.value.publications;
    $('history').replaceChildren(...publications.map((p) => item(`#${p.offset ?? '–'}`, JSON.stringify(p.data))));
    if (publications.length === 0) $('history').replaceChildren(el('li', 'note', 'Nothing in history.'));
  } else {
    unavailable($('history'), history.reason);
  }
}

const TAIL_RETRY_MAX_MS = 30000;

function openTail(channel, retryMs = 1000) {
  const source = new EventSource(`/admin/tail?channel=${encodeURIComponent(channel)}`);
  tail = source;
  $('tail-state').textContent = '(connecting)';
  source.addEventListener('open', () => {
    $('tail-state').textContent = '(live)';
    retryMs = 1000;
  });
  source.addEventListener('publication', (event) => {
    const publication = JSON.parse(event.data);
    const from = publication.info ? ` from ${publication.info.user || 'anonymous'}` : '';
    const li = item(`${new Date().toLocaleTimeString()} #${publication.offset || '–'}${from}`,
      JSON.stringify(publication.data));
    li.classList.add('fresh');
    $('tail').prepend(li);
    while ($('tail').children.length > TAIL_KEPT) $('tail').lastChild.remove();
  });
  source.addEventListener('end', () => {
    $('tail-state').textContent = '(reconnecting)';
  });
  source.addEventListener('error', () => {
    if (source.readyState !== EventSource.CLOSED) {
      $('tail-state').textContent = '(reconnecting)';
      return;
    }
    // Refused (a limit, an engine outage, a drain): the browser gives up,
    // so try again later while the channel is still inspected.
    $('tail-state').textContent = `(closed; retrying in ${Math.round(retryMs / 1000)} s)`;
    setTimeout(() => {
      if (tail === source && inspected === channel) openTail(channel, Math.min(retryMs * 2, TAIL_RETRY_MAX_MS));
    }, retryMs);
  });
}

// ---- actions ---------------------------------------------------------------

function report(error) {
  if (error instanceof LoggedOut) return showLogin();
  $('problem').hidden = false;
  $('problem').textContent = error.message;
}

$('publish').addEventListener('submit', async (event) => {
  event.preventDefault();
  const result = $('publish-result');
  let data;
  try {
    data = JSON.parse($('publish-data').value);
  } catch (error) {
    result.textContent = `The data is not JSON: ${error.message}`;
    return;
  }
  const channel = $('publish-channel').value.trim();
  try {
    const published = await api('publish', { channel, data });
    result.textContent = published.offset ? `Published at offset ${published.offset}.` : 'Published.';
  } catch (error) {
    if (error instanceof LoggedOut) return showLogin();
    result.textContent = `Not published: ${error.message}`;
  }
});

$('disconnect').addEventListener('submit', async (event) => {
  event.preventDefault();
  const user = $('disconnect-user').value.trim();
  const result = $('disconnect-result');
  try {
    await api('disconnect', { user });
    result.textContent = `Every connection of ${user} was told to disconnect.`;
  } catch (error) {
    if (error instanceof LoggedOut) return showLogin();
    result.textContent = `Not disconnected: ${error.message}`;
  }
});

showApp().catch(report);
