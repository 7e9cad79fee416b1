// A live dashboard on pusher-js, the Pusher Channels client, connected to
// Herald's Pusher endpoint. The metrics arrive on `cache-dashboard`, a
// Pusher cache channel: Herald keeps its last event and sends it to each
// new subscriber at once, so the page never starts blank. The demo's feed
// publishes there through Herald's server API, four times a second:
//
//   POST /api/publish {"channel": "cache-dashboard", "data": {...},
//                      "tags": {"event": "metrics"}}
import { el, setBanner } from './shared/demo.mjs';

const POINTS = 120; // 30 s of history in each chart
const series = { requests: [], latency_p99: [], error_rate: [], orders: [] };

const pusher = new Pusher('demo-key', { // the app key in herald.toml
  cluster: 'herald', // pusher-js requires one; wsHost below is what counts
  wsHost: location.hostname,
  wsPort: Number(location.port) || 80,
  wssPort: Number(location.port) || 443,
  forceTLS: location.protocol === 'https:',
  enabledTransports: ['ws', 'wss'],
  disableStats: true,
});
pusher.connection.bind('state_change', ({ current }) => {
  setBanner(current === 'connected' ? null : current === 'connecting' ? 'Connecting…' : `Connection ${current}: retrying…`);
});

const channel = pusher.subscribe('cache-dashboard');
channel.bind('pusher:cache_miss', () => { document.getElementById('updated').textContent = 'no data yet: is the feed running?'; });
channel.bind('metrics', show);
window.demo = { pusher, received: [] };

function show(metrics) {
  window.demo.received.push(metrics);
  for (const [key, points] of Object.entries(series)) {
    const value = Number(metrics[key]);
    if (!Number.isFinite(value)) continue;
    points.push(value);
    if (points.length > POINTS) points.shift();
    document.getElementById(key).textContent = value.toLocaleString('en');
    draw(document.getElementById(`${key}-chart`), points);
  }
  const cpu = Array.isArray(metrics.cpu) ? metrics.cpu.map(Number) : [];
  document.getElementById('cpu').replaceChildren(...cpu.map((value, n) =>
    el('div', {}, `node ${n + 1}`, el('span', { class: 'bar', style: `width:${Math.max(0, Math.min(100, value)) * 2}px` }), `${value}%`)));
  document.getElementById('updated').textContent = `updated ${new Date(Number(metrics.at)).toLocaleTimeString('en')}`;
}

/** A line chart of `points`, scaled to their range, redrawn in place. */
function draw(canvas, points) {
  const width = (canvas.width = canvas.clientWidth * devicePixelRatio);
  const height = (canvas.height = canvas.clientHeight * devicePixelRatio);
  const context = canvas.getContext('2d');
  const low = Math.min(...points);
  const span = Math.max(...points) - low || 1;
  context.clearRect(0, 0, width, height);
  context.beginPath();
  points.forEach((value, n) => {
    const x = (n / (POINTS - 1)) * width;
    const y = height - 4 - ((value - low) / span) * (height - 8);
    if (n === 0) context.moveTo(x, y);
    else context.lineTo(x, y);
  });
  context.strokeStyle = '#3b5bdb';
  context.lineWidth = 2 * devicePixelRatio;
  context.stroke();
}
