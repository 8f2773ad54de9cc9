/**
 * `npm run soak -- --minutes 10 [--rate 1000] [--csv file]`
 *
 * The built agent as its own process in front of two fake upstreams
 * (testkit SimDnsServer: a cluster DNS over TCP, an external resolver over
 * UDP), fed an open-loop mix for the given time: cluster names that are
 * cached (hits, expiring every 30 s), external names (hits), a fresh
 * external name each time (misses: the cache fills to its capacity and
 * evicts), a fresh cluster name that does not exist (NXDOMAIN misses), and
 * the same non-existent names again (negative hits); a quarter over TCP
 * (a few pipelined connections), the rest over UDP. Halfway the cluster DNS
 * is stopped for 5 s and started again on the same port.
 *
 * Every 10 s: the agent's RSS (/proc) and heap (its /metrics: prom-client's
 * nodejs_heap_size_used_bytes), and what the queries of that interval got.
 * A query with no answer within 5 s is lost. A SERVFAIL is allowed only
 * for a question neither stale data nor anything else could answer while the
 * cluster DNS was down (fresh NXDOMAIN names); every other SERVFAIL, any
 * wrong rcode and any lost query make the exit code 1. Writes a CSV.
 */
import dgram from 'node:dgram';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { FrameDecoder, frame } from '../src/dns/framing.js';
import { SimDnsServer, staticHandler } from '../testkit/dns-server.js';
import type { SimHandler } from '../testkit/sim-types.js';
import { mib, rssOf, scrape, spawnAgent } from './agent-proc.js';

interface Args {
  minutes: number;
  rate: number;
  csv: string;
  host: string;
  sampleS: number;
  outageS: number;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { minutes: 10, rate: 1000, csv: path.join('bench', 'results', 'soak', 'latest.csv'), host: '127.0.0.1', sampleS: 10, outageS: 5 };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--minutes': a.minutes = Number(v); i++; break;
      case '--rate': a.rate = Number(v); i++; break;
      case '--csv': a.csv = String(v); i++; break;
      case '--host': a.host = String(v); i++; break;
      case '--sample-seconds': a.sampleS = Number(v); i++; break;
      case '--outage-seconds': a.outageS = Number(v); i++; break;
      default: throw new Error(`unknown argument ${argv[i]} (--minutes N --rate Q/S --csv FILE --host 127.x.y.z --sample-seconds S --outage-seconds S)`);
    }
  }
  if (!(a.minutes > 0) || !(a.rate > 0)) throw new Error('--minutes and --rate must be positive');
  return a;
}

type Kind = 'hit' | 'exthit' | 'miss' | 'nx' | 'nxrep';
const KINDS: readonly Kind[] = ['hit', 'exthit', 'miss', 'nx', 'nxrep'];
/** Cumulative shares of the mix. */
const MIX: ReadonlyArray<[number, Kind]> = [[0.40, 'hit'], [0.55, 'exthit'], [0.75, 'miss'], [0.90, 'nx'], [1, 'nxrep']];
const LOST_AFTER_MS = 5000;
const UDP_SOCKETS = 8;
const TCP_CONNS = 4;
const TCP_SHARE = 0.25;
/** After the cluster DNS is back, the agent's TCP pool may still be in its reconnect backoff (capped well below this). */
const RECONNECT_GRACE_MS = 30_000;

let seq = 0;
function question(kind: Kind): string {
  const r = Math.floor(Math.random() * 100);
  switch (kind) {
    case 'hit': return `svc-${r}.default.svc.cluster.local`;
    case 'exthit': return `www${r % 50}.example.com`;
    case 'miss': return `m${seq++}.soak.example.com`;
    case 'nx': return `nx${seq++}.default.svc.cluster.local`;
    case 'nxrep': return `nope${r % 50}.default.svc.cluster.local`;
  }
}

function encodeQuery(id: number, name: string): Buffer {
  const parts: Buffer[] = [Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])];
  for (const l of name.split('.')) parts.push(Buffer.from([l.length]), Buffer.from(l, 'ascii'));
  parts.push(Buffer.from([0, 0, 1, 0, 1]));
  return Buffer.concat(parts);
}

interface Pending {
  kind: Kind;
  at: number;
}

/** One client channel (UDP socket or TCP connection): ids and what is owed. */
class Channel {
  readonly pending = new Map<number, Pending>();
  #next = Math.floor(Math.random() * 65536);
  id(): number | null {
    for (let i = 0; i < 65536; i++) {
      const id = this.#next;
      this.#next = (this.#next + 1) & 0xffff;
      if (!this.pending.has(id)) return id;
    }
    return null;
  }
}

interface Interval {
  sent: number;
  answered: number;
  lost: number;
  servfail: number;
  servfailAllowed: number;
  wrong: number;
  latencies: number[];
}
const emptyInterval = (): Interval => ({ sent: 0, answered: 0, lost: 0, servfail: 0, servfailAllowed: 0, wrong: 0, latencies: [] });

const args = parseArgs(process.argv.slice(2));
const clusterRecords: Record<string, { A: string[]; ttl: number }> = {};
for (let i = 0; i < 100; i++) clusterRecords[`svc-${i}.default.svc.cluster.local`] = { A: [`10.96.${i >> 8}.${i & 0xff}`], ttl: 30 };
const extStatic = staticHandler(Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`www${i}.example.com`, { A: ['192.0.2.80'], ttl: 300 }])), { soaZone: 'example.com', negativeTtl: 60 });
/** Any name under soak.example.com exists (one A record): every fresh one is a miss that fills the cache. */
const external: SimHandler = (q) => {
  const name = q.questions?.[0]?.name ?? '';
  if (name.toLowerCase().endsWith('.soak.example.com')) return { answers: [{ type: 'A', name, ttl: 60, class: 'IN', data: '198.51.100.7' }] };
  return extStatic(q, { transport: 'udp', remoteAddress: '', remotePort: 0 });
};
const cluster = await SimDnsServer.start({ handler: staticHandler(clusterRecords, { soaZone: 'cluster.local', negativeTtl: 30 }) });
const ext = await SimDnsServer.start({ handler: external });
const agent = await spawnAgent({ host: args.host, clusterPort: cluster.port, externalPort: ext.port });
console.log(`agent pid ${agent.pid} on ${args.host}:${agent.port}; cluster DNS :${cluster.port}, external :${ext.port}; ${args.minutes} min at ${args.rate} q/s`);

const totalMs = args.minutes * 60_000;
const outageStart = totalMs / 2;
const outageEnd = outageStart + args.outageS * 1000;
let clusterUp = true;
const t0 = performance.now();
const now = (): number => performance.now() - t0;
let cur = emptyInterval();
const total = emptyInterval();
const byKindServfail = new Map<Kind, number>(KINDS.map((k) => [k, 0]));
let tcpClosedLost = 0;
let servfailFirst: number | null = null;
let servfailLast: number | null = null;

function settle(ch: Channel, id: number, b: Buffer | null): void {
  const p = ch.pending.get(id);
  if (p === undefined) return;
  ch.pending.delete(id);
  if (b === null) {
    cur.lost++;
    return;
  }
  cur.answered++;
  cur.latencies.push(now() - p.at);
  const rcode = b[3]! & 0xf;
  const want = p.kind === 'nx' || p.kind === 'nxrep' ? 3 : 0;
  if (rcode === want && (want !== 0 || b.readUInt16BE(6) > 0)) return;
  if (rcode === 2) {
    cur.servfail++;
    byKindServfail.set(p.kind, (byKindServfail.get(p.kind) ?? 0) + 1);
    // Down, or reconnecting after it came back (the pool's backoff): a fresh cluster name has no stale answer and no view (--no-kube).
    const inOutage = p.at >= outageStart - LOST_AFTER_MS && p.at <= outageEnd + RECONNECT_GRACE_MS;
    if (inOutage && p.kind === 'nx') cur.servfailAllowed++;
    servfailFirst ??= p.at;
    servfailLast = p.at;
    return;
  }
  cur.wrong++;
}

const udp: Array<{ sock: dgram.Socket; ch: Channel }> = [];
for (let i = 0; i < UDP_SOCKETS; i++) {
  const sock = dgram.createSocket({ type: 'udp4', recvBufferSize: 1 << 22 });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  const ch = new Channel();
  sock.on('message', (m) => {
    if (m.length >= 12) settle(ch, m.readUInt16BE(0), m);
  });
  udp.push({ sock, ch });
}

interface TcpChan {
  sock: net.Socket;
  ch: Channel;
  open: boolean;
}
function openTcp(): TcpChan {
  const ch = new Channel();
  const sock = net.connect(agent.port, agent.host);
  const c: TcpChan = { sock, ch, open: false };
  const dec = new FrameDecoder((f) => {
    if (f.length >= 12) settle(ch, f.readUInt16BE(0), Buffer.from(f));
  });
  sock.on('connect', () => (c.open = true));
  sock.on('data', (d) => dec.push(d));
  sock.on('error', () => {});
  sock.on('close', () => {
    c.open = false;
    // Whatever was owed on a closed connection is lost (a real client would retry).
    tcpClosedLost += ch.pending.size;
    for (const id of [...ch.pending.keys()]) settle(ch, id, null);
  });
  return c;
}
const tcp: TcpChan[] = Array.from({ length: TCP_CONNS }, () => openTcp());

function pickKind(): Kind {
  const r = Math.random();
  for (const [share, k] of MIX) if (r < share) return k;
  return 'hit';
}

let sendIx = 0;
function sendOne(): void {
  const kind = pickKind();
  const name = question(kind);
  if (Math.random() < TCP_SHARE) {
    let c = tcp[sendIx++ % TCP_CONNS]!;
    if (c.sock.destroyed) {
      c = openTcp();
      tcp[sendIx % TCP_CONNS] = c;
    }
    const id = c.ch.id();
    if (id === null) return;
    c.ch.pending.set(id, { kind, at: now() });
    c.sock.write(frame(encodeQuery(id, name)));
  } else {
    const u = udp[sendIx++ % UDP_SOCKETS]!;
    const id = u.ch.id();
    if (id === null) return;
    u.ch.pending.set(id, { kind, at: now() });
    u.sock.send(encodeQuery(id, name), agent.port, agent.host);
  }
  cur.sent++;
}

function expire(): void {
  const cutoff = now() - LOST_AFTER_MS;
  for (const ch of [...udp.map((u) => u.ch), ...tcp.map((c) => c.ch)]) {
    for (const [id, p] of ch.pending) if (p.at < cutoff) settle(ch, id, null);
  }
}

const quantile = (xs: number[], q: number): number => {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

interface Sample {
  t: number;
  rss: number | null;
  heapUsed: number | null;
  heapTotal: number | null;
  iv: Interval;
  clusterUp: boolean;
}
const samples: Sample[] = [];
const HEAP_USED = 'nodejs_heap_size_used_bytes';
const HEAP_TOTAL = 'nodejs_heap_size_total_bytes';

async function sample(): Promise<void> {
  const m = await scrape(agent.metricsUrl, [HEAP_USED, HEAP_TOTAL]);
  const s: Sample = { t: Math.round(now() / 1000), rss: rssOf(agent.pid), heapUsed: m.get(HEAP_USED) ?? null, heapTotal: m.get(HEAP_TOTAL) ?? null, iv: cur, clusterUp };
  for (const k of ['sent', 'answered', 'lost', 'servfail', 'servfailAllowed', 'wrong'] as const) total[k] += cur[k];
  cur = emptyInterval();
  samples.push(s);
  console.log(`t=${String(s.t).padStart(4)}s rss ${mib(s.rss)} MiB heap ${mib(s.heapUsed)}/${mib(s.heapTotal)} MiB | sent ${s.iv.sent} answered ${s.iv.answered} lost ${s.iv.lost} servfail ${s.iv.servfail} (allowed ${s.iv.servfailAllowed}) wrong ${s.iv.wrong} p50 ${quantile(s.iv.latencies, 0.5).toFixed(2)} ms p99 ${quantile(s.iv.latencies, 0.99).toFixed(2)} ms${s.clusterUp ? '' : ' [cluster DNS down]'}`);
}

await sample();
// Open loop: every 5 ms send what is due since the start (no catch-up bursts past 50 ms of lag).
let due = 0;
let nextSample = args.sampleS * 1000;
let outageDone = false;
await new Promise<void>((resolve) => {
  const timer = setInterval(() => {
    const t = now();
    if (!agent.alive()) {
      clearInterval(timer);
      resolve();
      return;
    }
    if (t >= totalMs) {
      clearInterval(timer);
      resolve();
      return;
    }
    const want = Math.floor((t * args.rate) / 1000);
    if (want - due > args.rate / 20) due = want - Math.floor(args.rate / 20);
    while (due < want) {
      sendOne();
      due++;
    }
    if (clusterUp && !outageDone && t >= outageStart) {
      clusterUp = false;
      console.log(`t=${(t / 1000).toFixed(0)}s cluster DNS stopped`);
      void cluster.stop();
    }
    if (!clusterUp && t >= outageEnd) {
      clusterUp = true;
      outageDone = true;
      console.log(`t=${(t / 1000).toFixed(0)}s cluster DNS started again on :${cluster.port}`);
      void cluster.restart();
    }
    if (t >= nextSample) {
      nextSample += args.sampleS * 1000;
      expire();
      void sample();
    }
  }, 5);
});
// Let the last queries finish, then count whatever is still owed as lost.
await new Promise((r) => setTimeout(r, LOST_AFTER_MS + 200));
expire();
await sample();
const crashed = !agent.alive() ? agent.exit() : null;
await agent.stop();
for (const u of udp) u.sock.close();
for (const c of tcp) c.sock.destroy();
await Promise.all([cluster.close(), ext.close()]);

mkdirSync(path.dirname(args.csv), { recursive: true });
writeFileSync(args.csv, [
  't_s,rss_mib,heap_used_mib,heap_total_mib,sent,answered,lost,servfail,servfail_allowed,wrong,p50_ms,p99_ms,cluster_up',
  ...samples.map((s) => [s.t, mib(s.rss), mib(s.heapUsed), mib(s.heapTotal), s.iv.sent, s.iv.answered, s.iv.lost, s.iv.servfail, s.iv.servfailAllowed, s.iv.wrong, quantile(s.iv.latencies, 0.5).toFixed(2), quantile(s.iv.latencies, 0.99).toFixed(2), s.clusterUp ? 1 : 0].join(',')),
].join('\n') + '\n');

const rssVals = samples.map((s) => s.rss).filter((x): x is number => x !== null);
const warm = samples.filter((s) => s.t >= 60).map((s) => s.rss).filter((x): x is number => x !== null);
console.log('');
console.log(`sent ${total.sent}, answered ${total.answered}, lost ${total.lost} (of which on closed TCP connections ${tcpClosedLost}), wrong ${total.wrong}`);
console.log(`SERVFAIL ${total.servfail}: ${total.servfailAllowed} fresh NXDOMAIN names while the cluster DNS was down (no stale answer, no view: allowed); by kind ${JSON.stringify(Object.fromEntries(byKindServfail))}`);
if (servfailFirst !== null && servfailLast !== null) console.log(`SERVFAILs were asked from ${((servfailFirst - outageStart) / 1000).toFixed(1)} s to ${((servfailLast - outageStart) / 1000).toFixed(1)} s after the cluster DNS stopped (down for ${args.outageS} s)`);
console.log(`RSS min ${mib(Math.min(...rssVals))} max ${mib(Math.max(...rssVals))} MiB; after the first minute min ${mib(Math.min(...warm))} max ${mib(Math.max(...warm))} MiB`);
console.log(`CSV: ${args.csv}; agent log: ${agent.logFile}`);
const bad = crashed !== null || total.lost > 0 || total.wrong > 0 || total.servfail > total.servfailAllowed;
if (crashed !== null) console.log(`the agent exited during the soak: ${crashed}`);
process.exit(bad ? 1 : 0);
