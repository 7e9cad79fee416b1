// Chat rooms on centrifuge-js. Each room is a channel `chat:<room>` whose
// namespace keeps history and presence (see herald.toml):
// - a late joiner loads the last 50 messages from history;
// - after a network drop the client resubscribes from where it was and
//   Herald sends what it missed (recovery); if too much was missed, the
//   page reloads history and says so;
// - who is here comes from presence, kept current by join and leave events;
// - "is typing" goes over `typing:<room>`, which keeps nothing.
import { colorOf, connect, el, userName } from './shared/demo.mjs';

const ROOMS = ['lobby', 'rust', 'random'];
const name = userName();
document.getElementById('you').textContent = name;
const client = connect(name);
window.demo = { client };

let room = null;

for (const id of ROOMS) {
  document.getElementById('rooms').append(el('button', { 'data-room': id, onclick: () => enter(id) }, `# ${id}`));
}
enter(new URLSearchParams(location.search).get('room') ?? 'lobby');

function enter(id) {
  if (room) room.leave();
  document.querySelectorAll('#rooms button').forEach((b) => b.classList.toggle('current', b.dataset.room === id));
  document.getElementById('title').textContent = `# ${id}`;
  room = openRoom(id);
  window.demo.room = room;
}

function openRoom(id) {
  const messages = document.getElementById('messages');
  const members = new Map(); // client id → user name
  const typists = new Map(); // user name → timer
  messages.replaceChildren();

  // A message is placed by its offset in the channel's stream, so history
  // and live messages interleave correctly and none shows twice.
  const show = (pub) => {
    if (typeof pub.data?.text !== 'string' || messages.querySelector(`[data-offset="${pub.offset}"]`)) return;
    const author = pub.info?.user ?? 'server';
    const line = el('li', { 'data-offset': pub.offset },
      el('b', { style: `color:${colorOf(author)}` }, author), ': ', pub.data.text.slice(0, 500));
    const later = [...messages.children].find((li) => Number(li.dataset.offset) > pub.offset);
    messages.insertBefore(line, later ?? null);
    if (!later) messages.scrollTop = messages.scrollHeight;
  };
  const note = (text) => {
    messages.append(el('li', { class: 'system' }, text));
    messages.scrollTop = messages.scrollHeight;
  };
  const showMembers = () => {
    const names = [...new Set(members.values())].sort();
    document.getElementById('members').replaceChildren(
      ...names.map((who) => el('li', {}, el('span', { class: 'dot', style: `background:${colorOf(who)}` }), who)));
  };
  const loadHistory = async () => {
    const { publications } = await sub.history({ limit: 50, reverse: true });
    publications.reverse().forEach(show);
  };

  const sub = client.newSubscription(`chat:${id}`);
  sub.on('subscribed', async (ctx) => {
    if (!ctx.wasRecovering) await loadHistory();
    else if (!ctx.recovered) {
      note('You were away too long to catch up on everything; here are the latest messages.');
      messages.replaceChildren();
      await loadHistory();
    }
    const { clients } = await sub.presence();
    members.clear();
    for (const [clientId, info] of Object.entries(clients)) members.set(clientId, info.user);
    showMembers();
  });
  sub.on('publication', show);
  sub.on('join', ({ info }) => {
    if (![...members.values()].includes(info.user)) note(`${info.user} joined`);
    members.set(info.client, info.user);
    showMembers();
  });
  sub.on('leave', ({ info }) => {
    members.delete(info.client);
    if (![...members.values()].includes(info.user)) note(`${info.user} left`);
    showMembers();
  });
  sub.subscribe();

  const typing = client.newSubscription(`typing:${id}`);
  const showTypists = () => {
    const names = [...typists.keys()];
    document.getElementById('typing').textContent =
      names.length === 0 ? '' : `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} typing…`;
  };
  typing.on('publication', ({ info }) => {
    if (!info || info.user === name) return;
    clearTimeout(typists.get(info.user));
    typists.set(info.user, setTimeout(() => { typists.delete(info.user); showTypists(); }, 3000));
    showTypists();
  });
  typing.subscribe();

  // Send: a message that cannot leave (the network is down) goes back in the box.
  const form = document.getElementById('send');
  const input = document.getElementById('text');
  let lastTyping = 0;
  const onInput = () => {
    if (Date.now() - lastTyping < 2000 || client.state !== 'connected') return;
    lastTyping = Date.now();
    typing.publish({ typing: true }).catch(() => {});
  };
  const onSubmit = async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = ''; // at once: whatever is typed next is the next message
    try {
      await sub.publish({ text });
      lastTyping = 0;
    } catch (error) {
      if (!input.value) input.value = text;
      note(`Not sent (${error.message ?? 'offline'}): it is back in the box, send it again.`);
    }
  };
  form.addEventListener('submit', onSubmit);
  input.addEventListener('input', onInput);

  return {
    sub,
    leave() {
      form.removeEventListener('submit', onSubmit);
      input.removeEventListener('input', onInput);
      for (const s of [sub, typing]) {
        s.unsubscribe();
        client.removeSubscription(s);
      }
      typists.forEach(clearTimeout);
    },
  };
}
