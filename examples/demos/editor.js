// A shared document edited from many pages at once, with Yjs (a CRDT) on
// centrifuge-js. Every edit is a Yjs update published on `docs:<name>`;
// every page applies everyone's updates, in any order, and all pages end
// with the same text. The channel's history holds the updates (and a full
// copy of the document every 100 edits), so a page that opens late reads
// the document from history. After a network drop the page recovers what
// it missed, and sends its own edits made meanwhile as one update.
// Where each editor's cursor is goes over `cursors:<name>` (no history),
// as a Yjs relative position, so it stays put while others type.
import * as Y from 'yjs';

import { colorOf, connect, el, userName } from './shared/demo.mjs';

const docName = new URLSearchParams(location.search).get('doc') ?? 'notes';
const name = userName();
document.getElementById('you').textContent = name;
document.getElementById('title').textContent = `Collaborative editor: ${docName}`;

const doc = new Y.Doc();
const text = doc.getText('body');
const textarea = document.getElementById('text');
const REMOTE = 'remote'; // the origin of updates from other pages

const client = connect(name);
const updates = client.newSubscription(`docs:${docName}`);
const cursors = client.newSubscription(`cursors:${docName}`);
window.demo = { client, text: () => text.toString() };

// --- Updates out: each local edit, and now and then the whole document.
let editsSinceCopy = 0;
let unsent = false;

const toBase64 = (bytes) => {
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
};
const fromBase64 = (text) => Uint8Array.from(atob(text), (char) => char.charCodeAt(0));

function send(update) {
  updates.publish({ update: toBase64(update) }).catch(() => {
    // Offline: the whole document goes out once the page is back.
    unsent = true;
    setTimeout(sendUnsent, 1000);
  });
}

function sendUnsent() {
  if (!unsent || updates.state !== 'subscribed') return;
  unsent = false;
  send(Y.encodeStateAsUpdate(doc));
}

doc.on('update', (update, origin) => {
  if (origin === REMOTE) return;
  editsSinceCopy += 1;
  if (editsSinceCopy >= 100) {
    editsSinceCopy = 0;
    send(Y.encodeStateAsUpdate(doc));
  } else {
    send(update);
  }
});

// --- Updates in: live ones, and history for a late joiner.
function apply(data) {
  if (typeof data?.update !== 'string') return;
  try {
    Y.applyUpdate(doc, fromBase64(data.update), REMOTE);
  } catch {
    // not a Yjs update: ignored, like any bad input from another client
  }
}

updates.on('publication', (ctx) => apply(ctx.data));
updates.on('subscribed', async (ctx) => {
  if (!ctx.wasRecovering || !ctx.recovered) {
    const { publications } = await updates.history({ limit: -1 });
    publications.forEach((pub) => apply(pub.data));
  }
  // Back from a drop: what was typed meanwhile may not have left.
  if (ctx.wasRecovering && text.length > 0) unsent = true;
  sendUnsent();
  document.getElementById('status').textContent = 'in sync';
});
updates.on('unsubscribed', () => { document.getElementById('status').textContent = ''; });
updates.subscribe();

// --- The textarea: a typed change becomes one delete and one insert.
textarea.addEventListener('input', () => {
  const before = text.toString();
  const after = textarea.value;
  let start = 0;
  while (start < before.length && start < after.length && before[start] === after[start]) start += 1;
  let endBefore = before.length;
  let endAfter = after.length;
  while (endBefore > start && endAfter > start && before[endBefore - 1] === after[endAfter - 1]) {
    endBefore -= 1;
    endAfter -= 1;
  }
  doc.transact(() => {
    if (endBefore > start) text.delete(start, endBefore - start);
    if (endAfter > start) text.insert(start, after.slice(start, endAfter));
  });
  sendCursor();
});

// Another page's edit: update the textarea and keep this page's selection in place.
text.observe((event) => {
  if (event.transaction.local) return;
  let { selectionStart: start, selectionEnd: end } = textarea;
  let index = 0;
  for (const change of event.delta) {
    if (change.retain) index += change.retain;
    else if (change.insert) {
      if (index < start) start += change.insert.length;
      if (index < end) end += change.insert.length;
      index += change.insert.length;
    } else if (change.delete) {
      if (index < start) start -= Math.min(change.delete, start - index);
      if (index < end) end -= Math.min(change.delete, end - index);
    }
  }
  textarea.value = text.toString();
  textarea.setSelectionRange(start, end);
  drawCursors();
});

// --- Cursors: where everyone else is.
const editors = new Map(); // client id → { user, at }
let me = null;
let lastCursor = 0;

function sendCursor() {
  if (cursors.state !== 'subscribed' || Date.now() - lastCursor < 100) return;
  lastCursor = Date.now();
  const at = Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(text, textarea.selectionStart));
  cursors.publish({ at }).catch(() => {});
}
for (const type of ['keyup', 'click', 'select']) textarea.addEventListener(type, sendCursor);
textarea.addEventListener('scroll', () => { document.getElementById('mirror').scrollTop = textarea.scrollTop; });

client.on('connected', (ctx) => { me = ctx.client; });
cursors.on('subscribed', async () => {
  const { clients } = await cursors.presence();
  editors.clear();
  for (const [id, info] of Object.entries(clients)) editors.set(id, { user: info.user, at: null });
  drawCursors();
  sendCursor();
});
cursors.on('join', ({ info }) => {
  editors.set(info.client, { user: info.user, at: null });
  drawCursors();
});
cursors.on('leave', ({ info }) => {
  editors.delete(info.client);
  drawCursors();
});
cursors.on('publication', ({ info, data }) => {
  if (!info || !data?.at) return;
  editors.set(info.client, { user: info.user, at: data.at });
  drawCursors();
});
cursors.subscribe();

/** Draws the others' cursors into the mirror behind the textarea, and the list of editors. */
function drawCursors() {
  const content = text.toString();
  const marks = [];
  for (const [id, { user, at }] of editors) {
    if (id === me || !at) continue;
    let position = null;
    try {
      position = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(at), doc);
    } catch {
      // a malformed position from another client: not drawn
    }
    if (position) marks.push({ index: Math.min(position.index, content.length), user });
  }
  marks.sort((a, b) => a.index - b.index);
  const parts = [];
  let from = 0;
  for (const { index, user } of marks) {
    parts.push(content.slice(from, index));
    parts.push(el('span', { class: 'caret', 'data-name': user, style: `border-color:${colorOf(user)};background:${colorOf(user)}` }));
    from = index;
  }
  parts.push(content.slice(from), '\n');
  const mirror = document.getElementById('mirror');
  mirror.replaceChildren(...parts);
  mirror.scrollTop = textarea.scrollTop;
  const names = [...new Set([...editors.values()].map((editor) => editor.user))].sort();
  document.getElementById('editors').replaceChildren(...names.map((user) =>
    el('li', {}, el('span', { class: 'dot', style: `background:${colorOf(user)}` }), user)));
}
