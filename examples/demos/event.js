// A live event on centrifuge-js: the host runs polls and quizzes, the
// audience votes and asks questions, and everyone upvotes questions.
//
// Everything that happens is a publication on one channel, `event:<name>`,
// and every page folds that stream into the same state: polls, their
// votes (one per user, the last one counts), questions and their upvotes.
// Herald gives every publication its place in the stream (its offset),
// across all nodes of a cluster, so every page counts the same votes. A
// page that opens late reads the stream from history; one that lost its
// network gets what it missed when it reconnects (recovery). Who did
// something comes from the publication's `info`, which Herald sets from
// the sender's token: nobody can vote as someone else.
import { connect, el, userName } from './shared/demo.mjs';

const params = new URLSearchParams(location.search);
const isHost = params.get('role') === 'host';
const eventName = params.get('event') ?? 'keynote';
const name = userName();
document.getElementById('you').textContent = name;
document.getElementById('title').textContent = `Live event: ${eventName}${isHost ? ' (host)' : ''}`;
document.body.classList.toggle('host', isHost);
const otherRole = new URLSearchParams({ event: eventName, ...(isHost ? {} : { role: 'host' }) });
Object.assign(document.getElementById('other-role'), { href: `?${otherRole}`, textContent: isHost ? 'Audience view' : 'Host view' });

const client = connect(name);
const sub = client.newSubscription(`event:${eventName}`);

// The state every page builds from the stream.
let state = emptyState();
let last = 0; // the offset of the last publication folded in
let loading = null; // publications that arrive while history loads

function emptyState() {
  return { host: null, polls: new Map(), questions: new Map() };
}

/** Folds one publication into the state; anything malformed is ignored. */
function fold(pub) {
  if (pub.offset <= last) return;
  last = pub.offset;
  const user = pub.info?.user;
  const data = pub.data ?? {};
  if (!user) return;
  const byHost = user === state.host;
  switch (data.kind) {
    case 'open': // the first to open the event hosts it
      state.host ??= user;
      break;
    case 'poll':
      if (byHost && typeof data.question === 'string' && Array.isArray(data.options) && data.options.length >= 2) {
        state.polls.set(pub.offset, {
          question: data.question.slice(0, 200),
          options: data.options.slice(0, 8).map((option) => String(option).slice(0, 80)),
          quiz: data.quiz === true,
          votes: new Map(),
          closed: false,
        });
      }
      break;
    case 'vote': {
      const poll = state.polls.get(data.poll);
      if (poll && !poll.closed && Number.isInteger(data.option) && data.option >= 0 && data.option < poll.options.length) {
        poll.votes.set(user, data.option);
      }
      break;
    }
    case 'close': { // a quiz's answer is told only now
      const poll = state.polls.get(data.poll);
      if (!byHost || !poll) break;
      poll.closed = true;
      if (poll.quiz && Number.isInteger(data.answer) && data.answer >= 0 && data.answer < poll.options.length) poll.answer = data.answer;
      break;
    }
    case 'ask':
      if (typeof data.text === 'string' && data.text.trim()) {
        state.questions.set(pub.offset, { text: data.text.trim().slice(0, 280), author: user, upvotes: new Set(), answered: false });
      }
      break;
    case 'upvote':
      state.questions.get(data.question)?.upvotes.add(user);
      break;
    case 'answered': {
      const question = state.questions.get(data.question);
      if (byHost && question) question.answered = true;
      break;
    }
  }
}

sub.on('publication', (pub) => {
  if (loading) loading.push(pub);
  else {
    fold(pub);
    render();
  }
});
sub.on('subscribed', async (ctx) => {
  // Recovered: the missed publications follow as usual. Otherwise (first
  // time, or away too long) the state is rebuilt from the whole stream.
  if (ctx.wasRecovering && ctx.recovered) return;
  loading = [];
  try {
    const { publications } = await sub.history({ limit: -1 });
    state = emptyState();
    last = 0;
    [...publications, ...loading].forEach(fold);
  } finally {
    loading = null;
  }
  if (isHost && state.host === null) await sub.publish({ kind: 'open' });
  render();
});
sub.subscribe();
setInterval(async () => {
  if (sub.state !== 'subscribed') return;
  const { numUsers } = await sub.presenceStats().catch(() => ({ numUsers: 0 }));
  document.getElementById('audience').textContent = `${numUsers} here`;
}, 3000);

const act = (data) => sub.publish(data).catch((error) => alert(`Not sent: ${error.message}`));
window.demo = { client, sub, act, state: () => state };

function render() {
  const polls = [...state.polls.entries()].reverse();
  document.getElementById('polls').replaceChildren(...(polls.length ? polls.map(([id, poll]) => renderPoll(id, poll)) : [el('p', { class: 'muted' }, 'No poll yet.')]));
  const questions = [...state.questions.entries()].sort(([, a], [, b]) => a.answered - b.answered || b.upvotes.size - a.upvotes.size);
  document.getElementById('questions').replaceChildren(...questions.map(([id, question]) =>
    el('li', { class: `question${question.answered ? ' answered' : ''}`, 'data-question': id },
      el('button', { disabled: question.upvotes.has(name), onclick: () => act({ kind: 'upvote', question: id }) }, `▲ ${question.upvotes.size}`),
      el('span', { class: 'text' }, question.text, el('span', { class: 'muted' }, ` — ${question.author}`)),
      isHost && !question.answered && name === state.host
        ? el('button', { onclick: () => act({ kind: 'answered', question: id }) }, 'Answered')
        : null)));
}

function renderPoll(id, poll) {
  const counts = poll.options.map((_, n) => [...poll.votes.values()].filter((vote) => vote === n).length);
  const total = poll.votes.size;
  const mine = poll.votes.get(name);
  const reveal = poll.answer !== undefined;
  return el('div', { class: 'poll', 'data-poll': id },
    el('h4', {}, `${poll.quiz ? 'Quiz' : 'Poll'}: ${poll.question}`),
    ...poll.options.map((option, n) =>
      el('div', { class: `option${mine === n ? ' mine' : ''}${reveal && n === poll.answer ? ' correct' : ''}`, 'data-option': n },
        el('button', { disabled: poll.closed, onclick: () => act({ kind: 'vote', poll: id, option: n }) },
          el('span', { class: 'fill', style: `width:${total ? (100 * counts[n]) / total : 0}%` }),
          el('span', { class: 'label' }, option)),
        el('span', { class: 'count' }, String(counts[n])))),
    el('p', { class: 'muted' },
      `${total} vote${total === 1 ? '' : 's'}${poll.closed ? ' · closed' : ''}`,
      reveal && mine !== undefined ? (mine === poll.answer ? ' · you got it right' : ' · not this time') : null),
    isHost && !poll.closed && name === state.host ? el('button', { onclick: () => closePoll(id, poll) }, 'Close') : null);
}

// A quiz's options go out shuffled, and only the host's page knows the
// right one until the quiz closes.
function closePoll(id, poll) {
  const right = localStorage.getItem(`herald-demo-quiz:${poll.question}`);
  const answer = poll.quiz ? poll.options.indexOf(right) : -1;
  act({ kind: 'close', poll: id, ...(answer >= 0 ? { answer } : {}) });
}

document.getElementById('new-poll').addEventListener('submit', async (event) => {
  event.preventDefault();
  const options = document.getElementById('options').value.split(',').map((o) => o.trim()).filter(Boolean);
  if (options.length < 2) return alert('Give at least two options, separated by commas.');
  const question = document.getElementById('question').value.trim();
  const quiz = document.getElementById('quiz').checked;
  event.target.reset();
  if (quiz) {
    localStorage.setItem(`herald-demo-quiz:${question}`, options[0]);
    for (let n = options.length - 1; n > 0; n -= 1) {
      const other = Math.floor(Math.random() * (n + 1));
      [options[n], options[other]] = [options[other], options[n]];
    }
  }
  await act({ kind: 'poll', question, options, quiz });
});

document.getElementById('ask').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = document.getElementById('ask-text');
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  await act({ kind: 'ask', text });
});
