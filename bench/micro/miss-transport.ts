/**
 * How much of the agent's miss latency is the transport to the simulated
 * kube-dns rather than the agent: the same unique cluster names asked of the
 * bench's simulator (its own process, as in a bench run) straight over UDP,
 * as the `direct` target does, and over pipelined TCP the way the agent's
 * TcpPool asks (two connections, Nagle off, every query of a turn in one
 * write per connection). The difference is what TCP to the simulator costs
 * by itself, which the agent-vs-direct comparison charges to the agent.
 *
 *   node dist/bench/micro/miss-transport.js [--rate 5000] [--seconds 5] [--rounds 2]
 *
 * Open loop: queries leave on a 1 ms tick at the rate asked, whatever the
 * answers do; latency is from the send call to the answer's arrival.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { FrameDecoder } from '../../src/dns/framing.js';
import { SimProcess } from '../sim/control.js';
import { DEFAULT_ZONES, encodeName } from '../sim/zones.js';

const { values } = parseArgs({
  options: {
    rate: { type: 'string', default: '5000' },
    seconds: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '2' },
  },
});
const RATE = Number(values.rate);
const SECONDS = Number(values.seconds);
const ROUNDS = Number(values.rounds);

let serial = 0;
/** A query for a unique existing cluster service (the miss workload's `u-` names). */
function nextQuery(id: number): Buffer {
  const name = encodeName(`u-mt-${serial++}.ns-${serial % DEFAULT_ZONES.namespaces}.svc.${DEFAULT_ZONES.clusterDomain}`);
  const q = Buffer.alloc(12 + name.length + 4);
  q.writeUInt16BE(id, 0);
  q.writeUInt16BE(0x0100, 2);
  q.writeUInt16BE(1, 4);
  name.copy(q, 12);
  q.writeUInt16BE(1, 12 + name.length);
  q.writeUInt16BE(1, 14 + name.length);
  return q;
}

interface Transport {
  send(q: Buffer): void;
  close(): void;
}

function udpTransport(port: number, onAnswer: (msg: Buffer) => void): Promise<Transport> {
  const s = dgram.createSocket('udp4');
  s.on('message', onAnswer);
  return new Promise((resolve) =>
    s.bind(0, '127.0.0.1', () => resolve({ send: (q) => s.send(q, port, '127.0.0.1'), close: () => s.close() })),
  );
}

/** As TcpPool: frames staged per connection, one write per connection per turn (setImmediate), round-robin over two. */
async function tcpTransport(port: number, onAnswer: (msg: Buffer) => void): Promise<Transport> {
  const conns = await Promise.all(
    [0, 1].map(
      () =>
        new Promise<{ socket: net.Socket; staged: Buffer[] }>((resolve) => {
          const socket = net.connect({ host: '127.0.0.1', port, noDelay: true }, () => resolve({ socket, staged: [] }));
          const decoder = new FrameDecoder(onAnswer);
          socket.on('data', (chunk) => decoder.push(chunk));
        }),
    ),
  );
  let next = 0;
  let queued = false;
  const flush = (): void => {
    queued = false;
    for (const c of conns) {
      if (c.staged.length === 0) continue;
      c.socket.write(Buffer.concat(c.staged));
      c.staged.length = 0;
    }
  };
  return {
    send(q) {
      const f = Buffer.allocUnsafe(q.length + 2);
      f.writeUInt16BE(q.length, 0);
      q.copy(f, 2);
      conns[next++ & 1]!.staged.push(f);
      if (!queued) {
        queued = true;
        setImmediate(flush);
      }
    },
    close() {
      for (const c of conns) c.socket.destroy();
    },
  };
}

async function run(kind: 'udp' | 'tcp', port: number): Promise<{ p50: number; p90: number; p99: number; answered: number; sent: number }> {
  const sentAt = new Float64Array(65536);
  const lat: number[] = [];
  const onAnswer = (msg: Buffer): void => {
    if (msg.length < 12) return;
    const t0 = sentAt[msg.readUInt16BE(0)]!;
    if (t0 > 0) lat.push(performance.now() - t0);
    sentAt[msg.readUInt16BE(0)] = 0;
  };
  const t = kind === 'udp' ? await udpTransport(port, onAnswer) : await tcpTransport(port, onAnswer);
  let id = 0;
  let sent = 0;
  const start = performance.now();
  const total = RATE * SECONDS;
  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      // Catch up to where the clock says we should be: a late tick sends more.
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * RATE));
      while (sent < due) {
        id = (id + 1) & 0xffff;
        sentAt[id] = performance.now();
        t.send(nextQuery(id));
        sent++;
      }
      if (sent >= total) {
        clearInterval(tick);
        setTimeout(resolve, 500);
      }
    }, 1);
  });
  t.close();
  lat.sort((a, b) => a - b);
  const q = (p: number): number => lat[Math.min(lat.length - 1, Math.floor(lat.length * p))] ?? Number.NaN;
  return { p50: q(0.5), p90: q(0.9), p99: q(0.99), answered: lat.length, sent };
}

const sim = await SimProcess.start({
  host: '127.0.0.1',
  zones: DEFAULT_ZONES,
  cluster: { port: 0, latencyMs: 0, jitterMs: 0, lossRate: 0 },
  external: { port: 0, latencyMs: 0, jitterMs: 0, lossRate: 0 },
  api: null,
});
try {
  for (let r = 1; r <= ROUNDS; r++) {
    for (const kind of ['udp', 'tcp'] as const) {
      const s = await run(kind, sim.cluster.port);
      const ms = (x: number): string => `${x.toFixed(3)} ms`;
      console.log(`round ${r} ${kind}: ${RATE} q/s, answered ${s.answered}/${s.sent}, p50 ${ms(s.p50)} p90 ${ms(s.p90)} p99 ${ms(s.p99)}`);
    }
  }
} finally {
  await sim.stop();
}
