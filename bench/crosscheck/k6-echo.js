// k6 WebSocket echo client used by bench/crosscheck/crosscheck.sh to
// cross-check rtedge-loadgen. Each VU opens one connection and, for
// DURATION_S seconds, either sends a text message every PERIOD_MS (open
// loop, PERIOD_MS > 0) or ping-pongs (PERIOD_MS = 0). Messages carry the
// send time (ms) in their first 20 characters; round trips go to the
// `echo_rtt_ms` trend and echoes to the `echoes` counter.
import ws from 'k6/ws';
import { Counter, Trend } from 'k6/metrics';

const URL = __ENV.URL;
const CONNS = parseInt(__ENV.CONNS || '10', 10);
const PERIOD_MS = parseFloat(__ENV.PERIOD_MS || '0');
const DURATION_MS = parseFloat(__ENV.DURATION_S || '10') * 1000;
const SIZE = parseInt(__ENV.SIZE || '64', 10);
const SUBPROTOCOL = __ENV.SUBPROTOCOL || 'echo';

const echoes = new Counter('echoes');
const rtt = new Trend('echo_rtt_ms', true);

export const options = {
  scenarios: {
    echo: {
      executor: 'per-vu-iterations',
      vus: CONNS,
      iterations: 1,
      maxDuration: `${Math.ceil(DURATION_MS / 1000) + 30}s`,
    },
  },
};

const pad = 'x'.repeat(Math.max(0, SIZE - 20));
function msg() {
  return String(Date.now()).padStart(20, '0') + pad;
}

export default function () {
  const params = SUBPROTOCOL ? { headers: { 'Sec-WebSocket-Protocol': SUBPROTOCOL } } : {};
  ws.connect(URL, params, (socket) => {
    socket.on('open', () => {
      if (PERIOD_MS > 0) {
        socket.setInterval(() => socket.send(msg()), PERIOD_MS);
      } else {
        socket.send(msg());
      }
      socket.setTimeout(() => socket.close(), DURATION_MS);
    });
    socket.on('message', (m) => {
      echoes.add(1);
      rtt.add(Date.now() - parseInt(m.substring(0, 20), 10));
      if (PERIOD_MS <= 0) {
        socket.send(msg());
      }
    });
  });
}

export function handleSummary(data) {
  const out = {};
  out[__ENV.OUT || 'k6-summary.json'] = JSON.stringify(data);
  return out;
}
