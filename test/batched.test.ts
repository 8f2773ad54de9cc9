// The batched UDP backend (--io batched): worker threads that own SO_REUSEPORT
// sockets made through koffi, answer hits with recvmmsg/sendmmsg from their
// own hit path and cache, and send misses across the message boundary to a
// real Resolver (HostResolvers to a fake upstream) on this thread. Real
// sockets on 127.0.0.1 and ::1; no timing thresholds: waits are bounded
// polls for an event, never assertions about how fast.
import t, { type Test } from 'tap';
import dgram from 'node:dgram';
import { MessageChannel, Worker, receiveMessageOnPort } from 'node:worker_threads';
import type { WorkerLink } from '../src/server/batched/worker-link.js';
import { whenStarted } from '../src/server/batched/worker-spawn.js';
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as dnsPacket from 'dns-packet';
import { ManualClock, systemClock } from '../src/clock.js';
import { scanAnswer } from '../src/dns/answer.js';
import { upstreamQuery } from '../src/dns/build.js';
import { QueryScratch, hashKey, parseQuery, parseQueryInto } from '../src/dns/query.js';
import { a as rr, answer, query, ttlOf } from './kit/dns.js';
import { createLogger, silentLogger } from '../src/log.js';
import type { CacheOptions } from '../src/cache/cache.js';
import { DnsCache } from '../src/cache/cache.js';
import { CACHE_COUNTERS } from '../src/cache/stats.js';
import { SEQ, StoreView } from '../src/cache/store-layout.js';
import { HitPath, type MissOutcome, type MissSink } from '../src/server/hit-path.js';
import { scrubCounted } from '../src/server/scrub.js';
import { RESOLVER_COUNTERS, Resolver } from '../src/server/resolver.js';
import type { Route } from '../src/server/route.js';
import { SERVER_COUNTERS } from '../src/server/stats.js';
import { UdpListener } from '../src/server/udp-listener.js';
import type { QueryHandler } from '../src/server/listener.js';
import { BatchedUdpListener, workerMissLimit } from '../src/server/batched/listener.js';
import { MissExchange, type MissReturn } from '../src/server/batched/miss-exchange.js';
import { Arena, MMSGHDR_BYTES, RecvVec, SendVec, SOCKADDR_SLOT_BYTES, recvVecBytes, vecBytes } from '../src/server/batched/msgvec.js';
import { COMPLETIONS_PER_TURN, WorkerLoop } from '../src/server/batched/loop.js';
import { DETACH_CHUNK_PEERS, Peer, SlotViews, SockaddrChunks, VIEW_LENGTHS, ipv6Text } from '../src/server/batched/loop-parts.js';
import { hitPathHistograms } from '../src/ops/histogram.js';
import { CHECK_EVERY_MS, IdleCollector, MIN_GAP_MS, MIN_GROWTH_BYTES, QUIET_RATE, exposeGc, heapAndExternalBytes } from '../src/ops/idle-gc.js';
import {
  Ctl, DONE_STRIDE, PENDING_RING, OUTCOMES, OUTCOME_INDEX, Packer, WAITER_SOCKADDR_WORDS, WAITER_STRIDE, itemBytes, itemExtra, itemExtraOffset, itemTag, itemToken, stamp16, holdBlock, takeBlock, waiterTag,
  type Packed, type WorkerInit, type WorkerReport,
} from '../src/server/batched/protocol.js';
import { DirectAnswers } from '../src/server/batched/direct.js';
import { AnswerCopy } from '../src/cache/entry.js';
import { WorkerTotals } from '../src/server/batched/worker-totals.js';
import { SOFT_PERIOD_MS, STAMP_AHEAD_MS, ShedGate, stampRefusal } from '../src/server/batched/shed-gate.js';
import { MIN_SHARE, UpstreamLoad } from '../src/server/upstream-load.js';
import { cgroupCpuQuota, createUdpListeners, defaultWorkers, MAX_AUTO_WORKERS, probeBatchedIo } from '../src/server/batched/select.js';
import { BATCHED_COUNTERS, WORKER_STATS_BYTES, workerCounters } from '../src/server/batched/stats.js';
import { Counters } from '../src/stats/counters.js';
import { EAGAIN, MSG_DONTWAIT, loadUdpBatch, type UdpBatchSys } from '../src/sys/udp-batch.js';
import { BASE, FakeKernel, sockaddr4, sockaddr6loopback } from './helpers/fake-udp-kernel.js';
import { PackedRing, RING_WAKE, ringBuffer, type RingWake } from '../src/server/batched/packed-ring.js';
import { HostResolvers } from '../src/upstream/host-resolvers.js';
import { ZoneRouter } from '../src/upstream/router.js';
import { SimDnsServer, staticHandler, type SimHandler, type StaticRecord } from '../testkit/dns-server.js';

// About 70 s alone; two files at a time on a loaded 2-CPU machine have taken it past tap's 120 s per file.
t.setTimeout(300_000);

const CACHE: CacheOptions = {
  positiveCapacity: 1000, negativeCapacity: 1000, maxBytes: 1 << 24, successTtl: 30, denialTtl: 5, minHits: 3, percent: 10, staleMs: 3_600_000,
};

function records(n: number): Record<string, StaticRecord> {
  const r: Record<string, StaticRecord> = {};
  for (let i = 0; i < n; i++) r[`svc-${i}.example.com`] = { A: [`10.0.${i >> 8}.${i & 255}`], ttl: 60 };
  return r;
}

/** Bounded wait for a condition (an event, not a speed). */
async function until(what: string, cond: () => boolean, limitMs = 5000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Without yielding this thread (so its event loop takes no worker report meanwhile): waits, bounded, for a
 * worker's shared counters to show what a test needs to have happened there.
 */
function spinUntil(what: string, cond: () => boolean): void {
  const end = Date.now() + 2000;
  while (!cond()) if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
}

/** Without yielding: lets a worker finish its turn (and post its report) before the next datagram reaches it. */
function holdThread(ms: number): void {
  const end = Date.now() + ms;
  while (Date.now() < end);
}

/** A client socket that collects every answer it gets, by id. */
class Client {
  readonly socket: dgram.Socket;
  readonly answers = new Map<number, dnsPacket.DecodedPacket>();
  constructor(family: 4 | 6 = 4) {
    this.socket = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
    this.socket.on('message', (m) => {
      const p = dnsPacket.decode(m);
      this.answers.set(p.id!, p);
    });
  }
  async ready(): Promise<void> {
    await new Promise<void>((r) => this.socket.bind(0, r));
  }
  send(port: number, name: string, id: number, host = '127.0.0.1', udpSize = 0): Promise<void> {
    const p: dnsPacket.Packet = { type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] };
    if (udpSize > 0) p.additionals = [{ type: 'OPT', name: '.', udpPayloadSize: udpSize, flags: 0, options: [] } as unknown as dnsPacket.Answer];
    // Resolves once the datagram has left (the kernel has queued it to the listener).
    return new Promise((resolve) => this.socket.send(dnsPacket.encode(p), port, host, () => resolve()));
  }
  close(): void {
    this.socket.close();
  }
}

interface Rig {
  upstream: SimDnsServer;
  listener: BatchedUdpListener;
  resolver: Resolver;
  /** Per listen address. */
  ports: readonly number[];
  logs: string[];
}

/** Names starting "black-" get no answer at all from the upstream (a silent server, per name); "held-" ones once `hold` resolves. */
function handler(n: number, hold?: Promise<void>): SimHandler {
  const inner = staticHandler(
    { ...records(n), 'big.example.com': { A: Array.from({ length: 120 }, (_, i) => `10.1.${i >> 8}.${i & 255}`), ttl: 60 } },
    { soaZone: 'example.com' },
  );
  return (q, ctx) => {
    const name = q.questions?.[0]?.name.toLowerCase() ?? '';
    if (name.startsWith('black-')) return null;
    if (hold !== undefined && name.startsWith('held-')) return hold.then(() => inner(q, ctx));
    return inner(q, ctx);
  };
}

/**
 * A real pipeline: the batched listener's workers, and on this thread a
 * Resolver over HostResolvers to a fake upstream. Each rig starts worker
 * threads, which under the test's TypeScript loader takes seconds: the
 * tests share rigs where they can.
 */
async function rig(
  t: Test,
  o: {
    workers?: number; latencyMs?: number; listen?: string[]; queryLogEvery?: number; spy?: (sys: UdpBatchSys) => UdpBatchSys; hold?: Promise<void>; idlePollMs?: number;
    /** The upstream's deadline (2 s by default). */
    timeoutMs?: number;
    ringBytes?: number;
  } = {},
): Promise<Rig> {
  const probed = await probeBatchedIo();
  if (typeof probed === 'string') throw new Error(`batched I/O unavailable on this machine: ${probed}`);
  const sys = o.spy?.(probed) ?? probed;
  const upstream = await SimDnsServer.start({ handler: handler(50, o.hold), faults: { latencyMs: o.latencyMs ?? 0 } });
  const host = new HostResolvers({
    servers: [{ host: '127.0.0.1', port: upstream.port }], attemptTimeoutMs: o.timeoutMs ?? 2000, attempts: 1, clock: systemClock, logger: silentLogger, name: 'host',
  });
  const router = new ZoneRouter<Route>([], { upstream: host, timeoutMs: o.timeoutMs ?? 2000, local: null });
  const logs: string[] = [];
  const listener = new BatchedUdpListener({
    listen: (o.listen ?? ['127.0.0.1']).map((h) => ({ host: h, port: 0 })), workers: o.workers ?? 1, cache: CACHE, maxUdpSize: 1232,
    queryLogEvery: o.queryLogEvery ?? 0, logger: createLogger('debug', (l) => logs.push(l)), sys,
    ...(o.idlePollMs !== undefined ? { idlePollMs: o.idlePollMs } : {}),
    ...(o.ringBytes !== undefined ? { ringBytes: o.ringBytes } : {}),
  });
  const resolver = new Resolver({ router, clock: systemClock, counters: new Counters(RESOLVER_COUNTERS), hits: listener, fallbackAfterMs: 0, localNegative: false, maxConcurrent: 1000 });
  listener.connect(resolver);
  await listener.start();
  t.teardown(async () => {
    await listener.close();
    resolver.close();
    await host.close();
    await upstream.close();
  });
  return { upstream, listener, resolver, ports: listener.ports, logs };
}

interface HeldRig {
  readonly r: Rig;
  readonly port: number;
  /** A client ready on loopback, closed at teardown. */
  readonly c: Client;
  /** Lets the upstream answer the held-* names it holds until then. */
  readonly release: () => void;
}

/** A rig whose upstream holds every held-* name until `release`, and a client for it. */
async function heldRig(t: Test, o: { listen?: string[]; spy?: (sys: UdpBatchSys) => UdpBatchSys; workers?: number; idlePollMs?: number; timeoutMs?: number; ringBytes?: number } = {}): Promise<HeldRig> {
  let release = (): void => {};
  const hold = new Promise<void>((resolve) => (release = resolve));
  const r = await rig(t, { ...o, hold });
  const c = new Client();
  await c.ready();
  t.teardown(() => c.close());
  return { r, port: r.ports[0]!, c, release };
}


/** Ends worker 0's thread and waits until the listener has spawned its successor (still starting: not yet ready). */
async function killWorkerZero(listener: BatchedUdpListener): Promise<{ first: Worker; successor: Worker }> {
  const first = listener.workerThread(0)!;
  await first.terminate();
  await until('the successor spawned', () => {
    const w = listener.workerThread(0);
    return w !== null && w !== first;
  }, 5000);
  return { first, successor: listener.workerThread(0)! };
}

const dataOf = (p: dnsPacket.DecodedPacket | undefined): string[] => (p?.answers ?? []).map((a) => String((a as { data: unknown }).data));
const rcodeName = (p: dnsPacket.DecodedPacket | undefined): string | undefined => (p as { rcode?: string } | undefined)?.rcode;

t.test('one worker, two addresses (127.0.0.1 and ::1)', async (t) => {
  const r = await rig(t, { latencyMs: 150, listen: ['127.0.0.1', '::1'], queryLogEvery: 1 });
  const [port4, port6] = r.ports as [number, number];
  t.not(port4, 0);
  t.not(port6, 0);

  await t.test('a miss goes upstream through the main thread, comes back cached, and the next query is a worker hit', async (t) => {
    const c = new Client();
    await c.ready();
    t.teardown(() => c.close());
    void c.send(port4, 'SVC-1.Example.COM', 101);
    await until('first answer', () => c.answers.has(101));
    const first = c.answers.get(101)!;
    t.equal(rcodeName(first), 'NOERROR');
    t.equal(first.questions?.[0]?.name, 'SVC-1.Example.COM', 'the client\'s 0x20 spelling is echoed');
    t.same(dataOf(first), ['10.0.0.1']);
    t.equal(r.upstream.stats.udpQueries, 1);

    void c.send(port4, 'svc-1.example.com', 102);
    await until('second answer', () => c.answers.has(102));
    t.same(dataOf(c.answers.get(102)), ['10.0.0.1']);
    t.equal(r.upstream.stats.udpQueries, 1, 'the second query never left the worker');
    const tot = r.listener.totals();
    t.equal(tot.server.get('requestsUdp'), 2);
    t.equal(tot.cache.get('hitPositive'), 1, 'answered from the worker\'s cache');
    t.equal(tot.server.get('misses'), 1);
    t.equal(tot.io.get('entriesPositive'), 1, 'the worker publishes its cache size');
    t.equal(tot.io.get('datagrams'), 2, 'received through recvmmsg');
  });

  await t.test('the same worker and cache answer on the IPv6 socket; the query log names the client', async (t) => {
    const c = new Client(6);
    await c.ready();
    t.teardown(() => c.close());
    void c.send(port6, 'svc-1.example.com', 103, '::1');
    await until('answer', () => c.answers.has(103));
    t.same(dataOf(c.answers.get(103)), ['10.0.0.1']);
    t.equal(r.upstream.stats.udpQueries, 1, 'a hit: one cache behind both addresses');
    await until('the query log line', () => r.logs.some((l) => l.includes('"msg":"query"') && l.includes('"client":"::1"')));
    const line = JSON.parse(r.logs.find((l) => l.includes('"msg":"query"') && l.includes('"client":"::1"'))!) as Record<string, unknown>;
    t.equal(line.worker, 0, 'worker log lines say which worker');
    t.equal(line.source, 'cache');
    t.ok(r.logs.some((l) => l.includes('"msg":"query"') && l.includes('"client":"127.0.0.1"') && l.includes('"source":"upstream"')));
  });

  await t.test('identical misses share one upstream query; each client gets its own id and spelling', async (t) => {
    const before = r.upstream.stats.udpQueries;
    const coalesced = r.listener.totals().server.get('coalesced');
    const clients: Client[] = [];
    for (let i = 0; i < 5; i++) {
      const c = new Client();
      await c.ready();
      clients.push(c);
    }
    t.teardown(() => clients.forEach((c) => c.close()));
    clients.forEach((c, i) => void c.send(port4, i % 2 === 0 ? 'svc-7.example.com' : 'SVC-7.EXAMPLE.com', 200 + i));
    await until('all answers', () => clients.every((c, i) => c.answers.has(200 + i)));
    t.equal(r.upstream.stats.udpQueries - before, 1, 'one upstream query for five clients');
    clients.forEach((c, i) => {
      const a = c.answers.get(200 + i);
      t.equal(a?.questions?.[0]?.name, i % 2 === 0 ? 'svc-7.example.com' : 'SVC-7.EXAMPLE.com');
      t.same(dataOf(a), ['10.0.0.7']);
    });
    t.equal(r.listener.totals().server.get('coalesced') - coalesced, 4);
  });

  await t.test('a waiting client keeps its address while the receive ring is refilled many times over', async (t) => {
    const waiting = new Client();
    const busy = new Client();
    await waiting.ready();
    await busy.ready();
    t.teardown(() => {
      waiting.close();
      busy.close();
    });
    void busy.send(port4, 'svc-2.example.com', 1);
    await until('warm-up', () => busy.answers.has(1));
    // The miss waits 150 ms upstream while hits from another client refill the 64-slot ring, in rounds the socket buffer holds.
    void waiting.send(port4, 'Svc-3.example.com', 4242);
    let id = 2;
    for (let round = 0; round < 8 && !waiting.answers.has(4242); round++) {
      const first = id;
      for (let i = 0; i < 100; i++) void busy.send(port4, 'svc-2.example.com', id++);
      await until('a round of hits', () => busy.answers.has(id - 1) || busy.answers.size >= id - first);
    }
    await until('the waiting client\'s answer', () => waiting.answers.has(4242));
    t.ok(r.listener.totals().io.get('datagrams') > 200, 'the ring went round while the miss waited');
    const a = waiting.answers.get(4242);
    t.equal(a?.questions?.[0]?.name, 'Svc-3.example.com');
    t.same(dataOf(a), ['10.0.0.3']);
    t.equal(waiting.answers.size, 1, 'nothing of the flood went to the waiting client');
    t.notOk([...busy.answers.values()].some((p) => p.questions?.[0]?.name !== 'svc-2.example.com'), 'no answer crossed to the wrong client');
  });

  await t.test('a reload reaches the worker before its next query', async (t) => {
    const c = new Client();
    await c.ready();
    t.teardown(() => c.close());
    await r.listener.configure({ cache: { successTtl: 30, denialTtl: 5, minHits: 3, percent: 10, staleMs: 0 }, maxUdpSize: 1232, queryLogEvery: 0 });
    const before = r.logs.length;
    void c.send(port4, 'svc-2.example.com', 701);
    await until('answer', () => c.answers.has(701));
    // Only this query's line: the waiting client's line of the test before may come now (its worker logs it when it takes the answer for its cache).
    t.equal(r.logs.slice(before).filter((l) => l.includes('"msg":"query"') && l.toLowerCase().includes('svc-2.example.com')).length, 0, 'query log off after the reload');
  });

  await t.test('an answer bigger than the send slots (--max-udp-size raised by a reload) still goes out whole', async (t) => {
    const c = new Client();
    await c.ready();
    t.teardown(() => c.close());
    void c.send(port4, 'big.example.com', 801, '127.0.0.1', 4096);
    await until('answer', () => c.answers.has(801));
    t.ok(c.answers.get(801)!.flag_tc, 'truncated at the start-up limit of 1232');
    await r.listener.configure({ cache: { successTtl: 30, denialTtl: 5, minHits: 3, percent: 10, staleMs: 0 }, maxUdpSize: 4096, queryLogEvery: 0 });
    void c.send(port4, 'big.example.com', 802, '127.0.0.1', 4096);
    await until('answer', () => c.answers.has(802));
    t.notOk(c.answers.get(802)!.flag_tc);
    t.equal(c.answers.get(802)!.answers?.length, 120, 'all 120 records (about 2 KB) in one datagram');
  });
});

t.test('two workers on one port: both get traffic, and a name in flight is asked upstream once', async (t) => {
  const r = await rig(t, { workers: 2, latencyMs: 200 });
  t.equal(r.listener.workers, 2);
  const port = r.ports[0]!;
  const clients: Client[] = [];
  for (let i = 0; i < 32; i++) {
    const c = new Client();
    await c.ready();
    clients.push(c);
  }
  t.teardown(() => clients.forEach((c) => c.close()));
  // 32 source ports: the kernel's reuseport hash sends all of them to one socket with probability 2^-31.
  clients.forEach((c, i) => void c.send(port, 'svc-9.example.com', 300 + i));
  await until('all answers', () => clients.every((c, i) => c.answers.has(300 + i)));
  const per = r.listener.workerCounters().map((w) => w.io.get('datagrams'));
  t.equal(per.length, 2);
  t.ok(per.every((n) => n > 0), `both workers received queries (${per.join(', ')})`);
  t.equal(r.upstream.stats.udpQueries, 1, 'the workers\' identical misses shared one upstream query');
  t.ok(r.listener.totals().io.get('crossWorkerCoalesced') >= 1, 'counted as coalesced across workers');
  clients.forEach((c, i) => t.same(dataOf(c.answers.get(300 + i)), ['10.0.0.9']));

  // One after the other this time: a name fetched through one worker is a hit in the other (one cache, read by both).
  const hitsBefore = r.listener.workerCounters().map((w) => w.cache.get('hitPositive'));
  const missesBefore = r.listener.workerCounters().map((w) => w.cache.get('miss'));
  for (let i = 0; i < clients.length; i++) {
    void clients[i]!.send(port, 'svc-11.example.com', 400 + i);
    await until('answer', () => clients[i]!.answers.has(400 + i));
    t.same(dataOf(clients[i]!.answers.get(400 + i)), ['10.0.0.11']);
  }
  t.equal(r.upstream.stats.udpQueries, 2, 'one upstream query for the new name');
  const hits = r.listener.workerCounters().map((w, k) => w.cache.get('hitPositive') - hitsBefore[k]!);
  const misses = r.listener.workerCounters().map((w, k) => w.cache.get('miss') - missesBefore[k]!);
  t.same(misses.sort(), [0, 1], `one worker missed it once (${misses.join(', ')})`);
  t.ok(hits.every((n) => n > 0), `both workers answered it as a hit (${hits.join(', ')}): the one that did not fetch it too`);
  t.equal(r.listener.totals().io.get('sharedHits'), 0, 'no worker had to ask the main thread for it');
  t.equal(r.listener.sharedCache.positiveSize, 2);
  t.equal(r.listener.totals().io.get('entriesPositive'), 2, 'the one store\'s size, not a sum over workers');

  // A worker that dies takes its sockets out of the group with it: the other answers everyone at once.
  const before = r.listener.workerCounters()[0]!.io.get('datagrams');
  await r.listener.workerThread(1)!.terminate();
  await until('the death to be noticed', () => r.logs.some((l) => l.includes('udp worker died')));
  t.equal(r.listener.liveWorkers, 1, 'one worker live while its successor waits its turn');
  t.equal(r.listener.totals().io.get('workersLive'), 1, 'and nodelocal_udp_workers_live says so');
  t.equal(r.listener.totals().io.get('restarts'), 0, 'no restart counted before the successor is ready');
  clients.forEach((c, i) => void c.send(port, 'svc-9.example.com', 800 + i));
  await until('all answers from the survivor', () => clients.every((c, i) => c.answers.has(800 + i)));
  t.equal(r.listener.workerCounters()[0]!.io.get('datagrams') - before, 32, 'all to worker 0');
  // The teardown closes before the restart delay: the replacement is never started here (start() covers that path).
});

t.test('a worker answers each hit of one receive batch with its own answer: the scratch answer block (answer-buffer.ts) is copied per answer, not shared by the batch', async (t) => {
  const r = await rig(t);
  const port = r.ports[0]!;
  const c = new Client();
  await c.ready();
  t.teardown(() => c.close());
  // Datagrams in, whatever their id: answers that shared one block would all carry the batch's last id.
  let got = 0;
  c.socket.on('message', () => got++);
  const N = 8;
  // Warm the cache one name at a time: the burst below is all hits, every answer the same length (one scratch view).
  for (let i = 0; i < N; i++) {
    void c.send(port, `svc-${i}.example.com`, 100 + i);
    await until('warm answer', () => c.answers.has(100 + i));
  }
  const w = (): { datagrams: number; batches: number } => {
    const io = r.listener.workerCounters()[0]!.io;
    return { datagrams: io.get('datagrams'), batches: io.get('batches') };
  };
  let batched = false;
  let wrong = 0;
  // Bounded: a burst usually lands in one or two receives; the loop only waits for one that took several datagrams.
  for (let round = 0; round < 20 && !batched; round++) {
    const before = w();
    const base = 1000 + round * N;
    const gotBefore = got;
    await Promise.all(Array.from({ length: N }, (_, i) => c.send(port, `svc-${i}.example.com`, base + i)));
    await until('the burst\'s answers', () => got - gotBefore >= N);
    for (let i = 0; i < N; i++) if (dataOf(c.answers.get(base + i)).join() !== `10.0.0.${i}`) wrong++;
    const after = w();
    batched = after.datagrams - before.datagrams > after.batches - before.batches;
  }
  t.ok(batched, 'some burst reached the worker as one receive batch of several datagrams');
  t.equal(wrong, 0, 'every client got its own name\'s address, not the batch\'s last answer');
});

/** The main thread's socket calls on the workers' sockets (the workers load their own binding): which fds it sends on, and which it closed. */
class SysSpy {
  readonly sends: number[] = [];
  readonly stale: number[] = [];
  /** Runs once, on the main thread, right after the next sendmmsg returns. */
  afterSend: (() => void) | null = null;
  readonly #open = new Set<number>();
  wrap(sys: UdpBatchSys): UdpBatchSys {
    return {
      ...sys,
      openUdp: (addr) => {
        const fd = sys.openUdp(addr);
        if (typeof fd === 'number') this.#open.add(fd);
        return fd;
      },
      close: (fd) => {
        this.#open.delete(fd);
        sys.close(fd);
      },
      sendmmsg: (fd, vec, count) => {
        this.#sent(fd);
        const r = sys.sendmmsg(fd, vec, count);
        const after = this.afterSend;
        this.afterSend = null;
        after?.();
        return r;
      },
      sendto: (fd, data, sa, len) => {
        this.#sent(fd);
        return sys.sendto(fd, data, sa, len);
      },
    };
  }
  #sent(fd: number): void {
    this.sends.push(fd);
    if (!this.#open.has(fd)) this.stale.push(fd);
  }
}

t.test('rings too small for a turn: a burst of misses and their completions goes by post both ways, in order, every client answered, then the rings again', async (t) => {
  const { r, port, c, release } = await heldRig(t, { ringBytes: 512, idlePollMs: 60_000 });
  const io = (): Counters<keyof typeof BATCHED_COUNTERS.slot> => r.listener.totals().io;
  // Under the host upstream's 256 questions in flight.
  const N = 200;
  for (let i = 0; i < N; i++) void c.send(port, `held-${i}.example.com`, i + 1);
  // Every miss reached the main thread (the upstream holds them): the worker's turns of up to 64 misses overflowed 512 bytes.
  await until('every miss upstream', () => r.upstream.stats.udpQueries >= N);
  t.ok(io().get('ringToMain') > 0, `turns posted to the main thread: ${io().get('ringToMain')}`);
  release();
  await until('every answer', () => c.answers.size >= N);
  t.same([...Array(N).keys()].filter((i) => rcodeName(c.answers.get(i + 1)) !== 'NXDOMAIN' || c.answers.get(i + 1)?.questions?.[0]?.name !== `held-${i}.example.com`), [], 'each client its own answer');
  t.ok(io().get('ringToWorker') > 0, `completions posted to the worker: ${io().get('ringToWorker')}`);
  // Both posts read: a lone miss and its completion take the rings again.
  const before = [io().get('ringToMain'), io().get('ringToWorker')];
  await c.send(port, 'svc-7.example.com', 5000);
  await until('the lone answer', () => c.answers.has(5000));
  t.same(dataOf(c.answers.get(5000)), ['10.0.0.7']);
  await c.send(port, 'svc-7.example.com', 5001);
  await until('the hit', () => c.answers.has(5001));
  t.same([io().get('ringToMain'), io().get('ringToWorker')], before, 'no post this time');
});

t.test('direct answers: the main thread sends a miss\'s answer on the worker\'s socket, with the client\'s id, case and size; the worker caches it for the next ask', async (t) => {
  const spy = new SysSpy();
  const r = await rig(t, { spy: (s) => spy.wrap(s) });
  const port = r.ports[0]!;
  const c = new Client();
  await c.ready();
  t.teardown(() => c.close());
  const io = (): Counters<keyof typeof BATCHED_COUNTERS.slot> => r.listener.totals().io;

  void c.send(port, 'SvC-5.ExAmPlE.cOm', 4321, '127.0.0.1', 1232);
  await until('the answer', () => c.answers.has(4321));
  const a = c.answers.get(4321);
  t.equal(a?.questions?.[0]?.name, 'SvC-5.ExAmPlE.cOm', 'the client\'s 0x20 spelling echoed');
  t.same(dataOf(a), ['10.0.0.5']);
  t.ok(a?.additionals?.some((x) => x.type === 'OPT'), 'an OPT for the EDNS client');
  t.equal(io().get('directAnswers'), 1, 'sent by the main thread');
  t.ok(spy.sends.length >= 1, 'on a socket of the main thread\'s sys (sendmmsg)');
  t.equal(spy.stale.length, 0);

  // Asked again: a hit in the worker's own cache (one worker: no shared cache), not a second upstream query.
  void c.send(port, 'svc-5.example.com', 4322);
  await until('the second answer', () => c.answers.has(4322));
  t.same(dataOf(c.answers.get(4322)), ['10.0.0.5']);
  t.equal(r.upstream.stats.udpQueries, 1, 'one upstream query');
  const w = r.listener.workerCounters()[0]!;
  t.equal(w.cache.get('hitPositive'), 1, 'the second ask is a worker hit');
  t.equal(io().get('directAnswers'), 1, 'the hit went out from the worker');
  t.equal(w.server.get('rcode0'), 1, 'the worker counts the answer it sent');
  t.equal(r.listener.totals().server.get('rcode0'), 2, 'each answer counted once (the main thread counts what it sent)');

  // No EDNS, an answer of about 2 KB: truncated to 512 bytes for this client, as the worker would.
  void c.send(port, 'big.example.com', 4323);
  await until('the big answer', () => c.answers.has(4323));
  const big = c.answers.get(4323)!;
  t.ok((big.flags! & dnsPacket.TRUNCATED_RESPONSE) !== 0, 'TC set');
  t.equal(io().get('directAnswers'), 2);

  // Many clients on one name in flight (some join after the first): each gets exactly one answer, with its id.
  const clients: Client[] = [];
  for (let i = 0; i < 8; i++) {
    const k = new Client();
    await k.ready();
    clients.push(k);
  }
  t.teardown(() => clients.forEach((k) => k.close()));
  clients.forEach((k, i) => void k.send(port, 'svc-6.example.com', 500 + i));
  await until('all answers', () => clients.every((k, i) => k.answers.has(500 + i)));
  // A duplicate would arrive within the worker's next turn: give it one (a query that wakes it) and a bounded wait.
  void c.send(port, 'svc-6.example.com', 4324);
  await until('the hit', () => c.answers.has(4324));
  await new Promise((res) => setTimeout(res, 50));
  t.ok(clients.every((k) => k.answers.size === 1), 'no client answered twice');
  t.equal(r.upstream.stats.udpQueries, 3);
  t.equal(spy.stale.length, 0, 'never a send on a closed socket');
});

t.test('direct answers leave before the completion is posted: a client that asks again in between is a hit in its worker (the exchange stored the answer in the one cache first) and gets one answer', async (t) => {
  const spy = new SysSpy();
  const r = await rig(t, { spy: (s) => spy.wrap(s) });
  const port = r.ports[0]!;
  const sys = (await probeBatchedIo()) as UdpBatchSys;
  // The second client is a socket of our own through the same calls: it can send while this thread is held inside sendmmsg.
  const fd = sys.openUdp({ host: '127.0.0.1', port: 0 });
  if (typeof fd !== 'number') throw new Error(`openUdp: ${String(fd)}`);
  const block = sys.alloc(recvVecBytes(2, 512) + 64);
  t.teardown(() => {
    sys.close(fd);
    block.free();
  });
  const arena = new Arena(block.address, block.bytes);
  const recv = new RecvVec(arena, 2, 512);
  const to = arena.take(SOCKADDR_SLOT_BYTES);
  arena.u8.set(sockaddr4('127.0.0.1', port), to);
  const ask = (id: number): Buffer =>
    Buffer.from(dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: 'svc-9.example.com', type: 'A', class: 'IN' }] }));
  const w = r.listener.workerCounters()[0]!;
  let joinedBeforePost = false;
  spy.afterSend = () => {
    // The first client's answer just left; the completion is not posted yet. Ask again and hold this thread until the
    // worker has taken the datagram (its turn took its messages before receiving: it cannot have the completion).
    const before = w.io.get('datagrams');
    t.ok(sys.sendto(fd, ask(2), block.address + to, 16) > 0, 'the second ask sent');
    const end = Date.now() + 5000;
    while (w.io.get('datagrams') === before && Date.now() < end);
    joinedBeforePost = w.io.get('datagrams') > before;
  };
  const c = new Client();
  await c.ready();
  t.teardown(() => c.close());
  void c.send(port, 'svc-9.example.com', 1);
  await until('the first answer', () => c.answers.has(1));
  t.ok(joinedBeforePost, 'the worker took the second ask while the main thread was still sending');
  const answers: Buffer[] = [];
  const take = (): boolean => {
    const n = sys.recvmmsg(fd, recv.address, 2, MSG_DONTWAIT);
    for (let i = 0; i < n; i++) answers.push(Buffer.from(arena.u8.subarray(recv.dataOffset(i), recv.dataOffset(i) + recv.length(i))));
    if (n > 0) recv.reset(n);
    return answers.length > 0;
  };
  await until('the second answer', take);
  await new Promise((res) => setTimeout(res, 50));
  take();
  t.equal(answers.length, 1, 'answered once');
  const second = dnsPacket.decode(answers[0]!);
  t.equal(second.id, 2);
  t.same(dataOf(second), ['10.0.0.9']);
  t.same(dataOf(c.answers.get(1)), ['10.0.0.9']);
  t.equal(r.upstream.stats.udpQueries, 1, 'one upstream query');
  t.equal(w.cache.get('hitPositive'), 1, 'a hit, although the completion had not reached the worker: it reads the store the exchange wrote');
  t.equal(w.server.get('coalesced'), 0, 'nothing to join');
  t.equal(r.listener.totals().io.get('directAnswers'), 1, 'the main thread sent the first answer, the worker the second (its hit)');
});

t.test('direct answers: a worker that dies with a miss in flight gets nothing sent on its closed sockets; its successor serves (and its socket carries the held client\'s answer)', async (t) => {
  const spy = new SysSpy();
  const { r, port, c, release } = await heldRig(t, { spy: (s) => spy.wrap(s) });
  // A name fetched before the death: the main thread stores it, the successor reads it.
  void c.send(port, 'svc-4.example.com', 100);
  await until('the first answer', () => c.answers.has(100));
  let sentBefore = spy.sends.length;
  void c.send(port, 'held-7.example.com', 1);
  await until('the question to reach the upstream', () => r.upstream.stats.udpQueries === 2);
  // A thread asleep in poll ends only when poll returns: a datagram wakes it (the answer to that one is lost with the worker too).
  const dying = r.listener.workerThread(0)!.terminate();
  const waker = new Client();
  await waker.ready();
  t.teardown(() => waker.close());
  void waker.send(port, 'svc-8.example.com', 1);
  await dying;
  await until('the death to be noticed', () => r.logs.some((l) => l.includes('udp worker died')));
  t.equal(r.resolver.inflight, 1, 'dead before the upstream answered');
  release();
  await until('the upstream answer to come back', () => r.resolver.inflight === 0);
  await new Promise((res) => setTimeout(res, 20));
  t.equal(spy.sends.length, sentBefore, 'nothing sent for the dead worker, while no worker\'s socket is there');
  t.equal(spy.stale.length, 0);
  t.notOk(c.answers.has(1), 'its answer waits for the successor\'s socket');
  // A thread starts in seconds under the test's TypeScript loader. Wait until it is ready (the restart is counted
  // then): before it has bound, the port may have no socket at all and the datagram is refused (seen in CI under load).
  await until('the successor to be ready', () => r.listener.totals().io.get('restarts') === 1, 30_000);
  await until('the held answer, sent on the successor\'s socket once it was bound', () => c.answers.has(1));
  t.equal(rcodeName(c.answers.get(1)), 'NXDOMAIN');
  t.equal(spy.sends.length, sentBefore + 1, 'sent from this thread, once');
  sentBefore = spy.sends.length;
  void c.send(port, 'svc-4.example.com', 2);
  await until('the answer from the successor', () => c.answers.has(2), 30_000);
  t.same(dataOf(c.answers.get(2)), ['10.0.0.4']);
  t.equal(r.upstream.stats.udpQueries, 2, 'no second query for the name fetched before the death');
  t.equal(r.listener.workerCounters().at(-1)!.cache.get('hitPositive'), 1, 'a hit in the successor: it reads the same store');
  t.equal(r.listener.totals().io.get('restarts'), 1, 'the restart counted, once its successor was ready');
  t.equal(spy.sends.length, sentBefore, 'a hit goes out from the worker');
  void c.send(port, 'held-7.example.com', 3);
  await until('the held name', () => c.answers.has(3), 30_000);
  t.equal(rcodeName(c.answers.get(3)), 'NXDOMAIN');
  void c.send(port, 'svc-3.example.com', 4);
  await until('a new name through the successor', () => c.answers.has(4), 30_000);
  t.same(dataOf(c.answers.get(4)), ['10.0.0.3']);
  t.equal(spy.stale.length, 0, 'the successor\'s sockets are new and open');
  t.ok(spy.sends.length > sentBefore, 'its miss was answered directly');
});

/** Two workers; a client (id 1) waits on `name`, held by the upstream; the worker whose miss it is then dies. */
async function heldByDeadWorker(t: Test, name: string): Promise<HeldRig> {
  const h = await heldRig(t, { workers: 2, idlePollMs: 50 });
  void h.c.send(h.port, name, 1);
  await until('the question to reach the upstream', () => h.r.upstream.stats.udpQueries === 1);
  const holder = h.r.listener.workerCounters().findIndex((w) => w.io.get('inflight') === 1);
  t.not(holder, -1, 'one worker holds the miss');
  await h.r.listener.workerThread(holder)!.terminate();
  await until('the death to be noticed', () => h.r.logs.some((l) => l.includes('udp worker died')));
  return h;
}

t.test('direct answers: a worker that dies with a client held on the main thread: the client still gets its answer when the miss completes, sent on a live sibling\'s socket for the same address', async (t) => {
  const { r, c, release } = await heldByDeadWorker(t, 'held-7.example.com');
  t.equal(r.resolver.inflight, 1, 'dead before the upstream answered');
  release();
  await until('the held client\'s answer', () => c.answers.has(1));
  t.equal(rcodeName(c.answers.get(1)), 'NXDOMAIN', 'the upstream\'s answer, with the client\'s id');
  t.equal(r.listener.totals().io.get('sendErrors'), 0);
});

t.test('direct answers: the only worker dies with a client held on the main thread: once its successor is spawned (sockets bound, not yet ready), the answer goes out on the successor\'s socket', async (t) => {
  // The upstream's deadline well past the successor's spawn (its worker ends within 50 ms, the restart waits 1 s).
  const { r, port, c, release } = await heldRig(t, { idlePollMs: 50, timeoutMs: 10_000 });
  void c.send(port, 'held-6.example.com', 1);
  await until('the question to reach the upstream', () => r.upstream.stats.udpQueries === 1);
  await killWorkerZero(r.listener);
  // A thread takes seconds to start under the tests' TypeScript loader: its sockets are bound, its loop not yet run.
  t.equal(r.listener.liveWorkers, 0, 'the successor is not ready yet');
  release();
  await until('the held client\'s answer', () => c.answers.has(1));
  t.equal(rcodeName(c.answers.get(1)), 'NXDOMAIN', 'the upstream\'s answer');
  t.equal(r.listener.totals().io.get('sendErrors'), 0, 'nothing lost');
});

t.test('direct answers: the only worker dies with a client held on the main thread and its miss completes before the successor is spawned: the answer waits for the successor\'s socket (within a bound), not lost', async (t) => {
  const { r, port, c, release } = await heldRig(t, { idlePollMs: 50, timeoutMs: 10_000 });
  void c.send(port, 'held-4.example.com', 1);
  await until('the question to reach the upstream', () => r.upstream.stats.udpQueries === 1);
  await r.listener.workerThread(0)!.terminate();
  await until('the death to be noticed', () => r.logs.some((l) => l.includes('udp worker died')));
  t.equal(r.listener.workerThread(0), null, 'no successor yet (its restart waits 1 s)');
  release();
  await until('the upstream answer to come back', () => r.resolver.inflight === 0);
  await until('the held client\'s answer', () => c.answers.has(1));
  t.equal(rcodeName(c.answers.get(1)), 'NXDOMAIN', 'the upstream\'s answer');
  t.equal(r.listener.totals().io.get('sendErrors'), 0, 'nothing lost');
});

t.test('shutdown: an answer for the only worker\'s held client that comes after the pause, with no socket left, is given up and counted at once (no successor comes), not held, and drain() resolves with it', async (t) => {
  const { r, port, c, release } = await heldRig(t, { idlePollMs: 50, timeoutMs: 10_000 });
  void c.send(port, 'held-3.example.com', 1);
  await until('the question to reach the upstream', () => r.upstream.stats.udpQueries === 1);
  await r.listener.workerThread(0)!.terminate();
  await until('the death to be noticed', () => r.logs.some((l) => l.includes('udp worker died')));
  r.listener.pause();
  t.equal(r.listener.workerThread(0), null, 'no successor (none is started once paused)');
  let drained = false;
  const drain = r.listener.drain().then(() => (drained = true));
  release();
  await until('the upstream answer to come back', () => r.resolver.inflight === 0);
  // The answer goes out (or is given up) in the turn it came, before the next timer turn.
  await new Promise((res) => setImmediate(res));
  t.equal(r.listener.totals().io.get('sendErrors'), 1, 'no socket to send it on: lost and counted at once');
  t.ok(drained, 'drain() resolved with it');
  await drain;
  t.notOk(c.answers.has(1));
});

t.test('shutdown: drain() waits for the clients held for a worker that died too, so they get the upstream\'s answer, not the abort\'s SERVFAIL', async (t) => {
  const { r, c, release } = await heldByDeadWorker(t, 'held-9.example.com');
  r.listener.pause();
  let drained = false;
  const drain = r.listener.drain().then(() => (drained = true));
  // The live worker has nothing in flight: without the held client drain() resolves at its next turn.
  await new Promise((res) => setTimeout(res, 500));
  t.notOk(drained, 'still draining while the held client waits');
  release();
  await drain;
  await until('the answer to arrive', () => c.answers.has(1));
  t.equal(rcodeName(c.answers.get(1)), 'NXDOMAIN', 'the upstream\'s answer, sent before drain() resolved');
  t.equal(await r.listener.abortAll(), 0, 'nothing left for the abort');
});

t.test('shutdown past its grace with a client held for a worker that died: abortAll() answers it too (SERVFAIL), on a live sibling\'s socket', async (t) => {
  const { r, c, release } = await heldByDeadWorker(t, 'held-8.example.com');
  t.teardown(release);
  r.listener.pause();
  // The grace period over before the upstream answers (drain() would wait for it: the test above).
  t.equal(await r.listener.abortAll(), 1, 'counted among the clients the abort answered');
  t.equal(r.listener.totals().server.get('abortedAtShutdown'), 1, 'and in nodelocal_shutdown_aborted_total');
  await until('the held client\'s answer', () => c.answers.has(1));
  t.equal(rcodeName(c.answers.get(1)), 'SERVFAIL');
});

t.test('a worker that dies right after posting its turn\'s report: the report is still read (its miss goes upstream, its client is answered on a live sibling\'s socket)', async (t) => {
  const r = await rig(t, { workers: 2, idlePollMs: 50 });
  const c = new Client();
  await c.ready();
  t.teardown(() => c.close());
  // Connected: its send leaves at once, with no lookup on a later tick (this thread is held while it goes).
  await new Promise<void>((resolve) => c.socket.connect(r.ports[0]!, '127.0.0.1', () => resolve()));
  const p: dnsPacket.Packet = { type: 'query', id: 1, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: 'svc-5.example.com', type: 'A', class: 'IN' }] };
  c.socket.send(dnsPacket.encode(p));
  // Without yielding: the worker takes the miss and posts its report, then ends (asleep in poll: at its 50 ms timeout)
  // before this thread reads that report; its exit and the report are both waiting when the thread yields.
  spinUntil('a worker to hold the miss', () => r.listener.workerCounters().some((w) => w.io.get('inflight') === 1));
  holdThread(20);
  const holder = r.listener.workerCounters().findIndex((w) => w.io.get('inflight') === 1);
  void r.listener.workerThread(holder)!.terminate();
  holdThread(300);
  await until('the death to be noticed', () => r.logs.some((l) => l.includes('udp worker died')));
  await until('the client\'s answer', () => c.answers.has(1));
  t.same(dataOf(c.answers.get(1)), ['10.0.0.5'], 'the upstream\'s answer');
  t.equal(r.upstream.stats.udpQueries, 1, 'its miss went upstream');
});

t.test('shutdown loses nothing taken: pause answers what was queued, answers still go out, abort answers the rest, close frees the port', async (t) => {
  const r = await rig(t, { latencyMs: 300 });
  const port = r.ports[0]!;
  const c = new Client();
  await c.ready();
  t.teardown(() => c.close());
  void c.send(port, 'svc-1.example.com', 1);
  await until('warm-up', () => c.answers.has(1));
  for (let i = 0; i < 10; i++) void c.send(port, `svc-${10 + i}.example.com`, 500 + i);
  for (let i = 0; i < 3; i++) void c.send(port, `black-${i}.example.com`, 600 + i);
  await until('the questions to reach the upstream', () => r.upstream.stats.udpQueries === 14);
  await until('the worker to publish them', () => r.listener.inflight === 13);
  // 200 hits already in the socket's queue (sent, maybe not yet read) when pause comes: all answered.
  const sends: Promise<void>[] = [];
  for (let i = 0; i < 200; i++) sends.push(c.send(port, 'svc-1.example.com', 1000 + i));
  await Promise.all(sends);
  r.listener.pause();
  await until('the queued hits', () => [...Array(200).keys()].every((i) => c.answers.has(1000 + i)));
  t.pass('every query queued before pause was answered');
  await c.send(port, 'svc-1.example.com', 999);
  await until('the answered misses', () => [...Array(10).keys()].every((i) => c.answers.has(500 + i)));
  for (let i = 0; i < 10; i++) t.same(dataOf(c.answers.get(500 + i)), [`10.0.0.${10 + i}`], `client ${i} answered after pause`);
  let drained = false;
  const draining = r.listener.drain().then(() => {
    drained = true;
  });
  await until('the worker to publish the rest', () => r.listener.inflight === 3);
  t.notOk(drained, 'not drained while three clients wait on a silent upstream');
  t.equal(await r.listener.abortAll(), 3, 'the grace period is over: three answered at once');
  await draining;
  await until('SERVFAILs', () => [0, 1, 2].every((i) => c.answers.has(600 + i)));
  for (let i = 0; i < 3; i++) t.equal(rcodeName(c.answers.get(600 + i)), 'SERVFAIL');
  t.equal(r.listener.totals().server.get('abortedAtShutdown'), 3);
  await r.listener.close();
  t.notOk(c.answers.has(999), 'a query sent after pause is not taken');
  // The port is free again: a plain exclusive dgram socket can bind it.
  const probe = dgram.createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    probe.once('error', reject);
    probe.bind({ port, address: '127.0.0.1', exclusive: true }, () => resolve());
  });
  probe.close();
});

t.test('a port already taken without SO_REUSEPORT: start fails with the reason and leaves nothing behind', async (t) => {
  const sys = await probeBatchedIo();
  if (typeof sys === 'string') throw new Error(sys);
  const taken = dgram.createSocket('udp4');
  await new Promise<void>((r) => taken.bind({ port: 0, address: '127.0.0.1', exclusive: true }, () => r()));
  t.teardown(() => taken.close());
  const l = new BatchedUdpListener({
    listen: [{ host: '127.0.0.1', port: taken.address().port }], workers: 2, cache: CACHE, maxUdpSize: 1232, queryLogEvery: 0, logger: silentLogger, sys,
  });
  await t.rejects(l.start(), /cannot listen on udp:\/\/127\.0\.0\.1:\d+ \(batched, 2 workers\): bind\(\) .*EADDRINUSE/);
  await l.close();
});

t.test('the main thread\'s native block for a worker cannot be had (out of memory): start fails, and no worker thread is left running', async (t) => {
  const real = await probeBatchedIo();
  if (typeof real === 'string') throw new Error(real);
  // Only the main thread's allocation fails (DirectAnswers'): the worker loads its own binding in its thread.
  const sys: UdpBatchSys = { ...real, alloc: () => { throw new Error('out of memory (test)'); } };
  const threads = (): number => readdirSync('/proc/self/task').length;
  const before = threads();
  const l = new BatchedUdpListener({ listen: [{ host: '127.0.0.1', port: 0 }], workers: 1, cache: CACHE, maxUdpSize: 1232, queryLogEvery: 0, logger: silentLogger, sys });
  await t.rejects(l.start(), /out of memory \(test\)/);
  await l.close();
  // A thread started before the throw would still be there: no one holds it, so no one ends it.
  await new Promise((r) => setTimeout(r, 500));
  t.equal(threads(), before, 'no thread more than before the start');
});

t.test('without koffi, --io batched falls back to dgram, says why, and serves', async (t) => {
  const logs: string[] = [];
  const logger = createLogger('info', (l) => logs.push(l));
  const cache = new DnsCache(CACHE, new Counters(CACHE_COUNTERS));
  const hitPath = new HitPath({ cache, clock: systemClock, logger, counters: new Counters(SERVER_COUNTERS), maxUdpSize: 1232 });
  const upstream = await SimDnsServer.start({ handler: staticHandler(records(5), { soaZone: 'example.com' }) });
  const host = new HostResolvers({ servers: [{ host: '127.0.0.1', port: upstream.port }], attemptTimeoutMs: 2000, attempts: 1, clock: systemClock, logger: silentLogger });
  const resolver = new Resolver({
    router: new ZoneRouter<Route>([], { upstream: host, timeoutMs: 2000, local: null }), clock: systemClock, counters: new Counters(RESOLVER_COUNTERS), hits: hitPath,
    fallbackAfterMs: 0, localNegative: false, maxConcurrent: 1000,
  });
  hitPath.connect(resolver, scrubCounted);
  const made = await createUdpListeners({
    io: 'batched', workers: 0, listen: [{ host: '127.0.0.1', port: 0 }], hitPath, cache: CACHE, maxUdpSize: 1232, queryLogEvery: 0, logger,
    loadKoffi: () => Promise.reject(new Error("Cannot find package 'koffi'")),
  });
  t.equal(made.io, 'dgram');
  t.equal(made.batched, null);
  t.match(made.fallbackReason, /koffi unavailable: Cannot find package 'koffi'/);
  t.ok(logs.some((l) => l.includes('batched I/O unavailable') && l.includes('koffi')), 'the fallback is logged with its reason');
  t.equal(made.listeners.length, 1);
  const udp = made.listeners[0] as UdpListener;
  t.ok(udp instanceof UdpListener);
  await udp.start();
  t.teardown(async () => {
    await udp.close();
    resolver.close();
    await host.close();
    await upstream.close();
  });
  const c = new Client();
  await c.ready();
  t.teardown(() => c.close());
  void c.send(udp.port, 'svc-2.example.com', 42);
  await until('answer over dgram', () => c.answers.has(42));
  t.same(dataOf(c.answers.get(42)!), ['10.0.0.2']);

  const plain = await createUdpListeners({
    io: 'dgram', workers: 0, listen: [{ host: '127.0.0.1', port: 0 }, { host: '::1', port: 0 }], hitPath, cache: CACHE, maxUdpSize: 1232, queryLogEvery: 0, logger,
  });
  t.equal(plain.fallbackReason, null, '--io dgram is a choice, not a fallback');
  const scoped = await createUdpListeners({
    io: 'batched', workers: 1, listen: [{ host: 'fe80::1%lo', port: 0 }], hitPath, cache: CACHE, maxUdpSize: 1232, queryLogEvery: 0, logger,
  });
  t.equal(scoped.io, 'dgram');
  t.match(scoped.fallbackReason, /interface scope/);
  t.equal(plain.listeners.length, 2, 'one dgram listener per address');
});

t.test('a dgram UDP listener on a wildcard address is warned about at start: its answers leave from the address the kernel picks per client, not the one asked', async (t) => {
  // Node's dgram cannot set IP_PKTINFO, so a query to 127.0.0.2 on 0.0.0.0 is answered from 127.0.0.1 (the route's
  // source to the client), which resolvers drop ("reply from unexpected source"). Batched sets it: no warning there.
  const hitPath: QueryHandler = { handle: () => undefined };
  {
    const logs: string[] = [];
    const logger = createLogger('info', (l) => logs.push(l));
    const made = await createUdpListeners({ io: 'batched', workers: 1, hitPath, cache: CACHE, maxUdpSize: 1232, queryLogEvery: 0, logger, listen: [{ host: '0.0.0.0', port: 0 }] });
    t.equal(made.io, 'batched');
    t.notOk(logs.some((l) => l.includes('wildcard')), 'batched: answers from the address asked, nothing to warn of');
    for (const l of made.listeners) await l.close();
  }
  for (const io of ['dgram'] as const) {
    const logs: string[] = [];
    const logger = createLogger('info', (l) => logs.push(l));
    const base = { io, workers: 1, hitPath, cache: CACHE, maxUdpSize: 1232, queryLogEvery: 0, logger };
    const wild = await createUdpListeners({ ...base, listen: [{ host: '127.0.0.1', port: 0 }, { host: '0.0.0.0', port: 0 }, { host: '::', port: 0 }] });
    const warned = logs.filter((l) => l.includes('wildcard'));
    t.equal(warned.length, 1, `${io}: one warning for the wildcard listen addresses`);
    t.match(warned[0], /"level":"warn"/, `${io}: at warn`);
    t.match(warned[0], /0\.0\.0\.0:0/, `${io}: naming 0.0.0.0`);
    t.match(warned[0], /\[::\]:0/, `${io}: naming ::`);
    t.notMatch(warned[0], /127\.0\.0\.1:0/, `${io}: not naming the specific address`);
    logs.length = 0;
    const specific = await createUdpListeners({ ...base, listen: [{ host: '127.0.0.1', port: 0 }] });
    t.notOk(logs.some((l) => l.includes('wildcard')), `${io}: no warning for a specific address`);
    for (const l of [...wild.listeners, ...specific.listeners]) await l.close();
  }
});

t.test('batched on a wildcard address: an answer leaves from the address its query was sent to (IP_PKTINFO), a hit\'s from the worker and a miss\'s from the main thread', async (t) => {
  // Without it, a query to 127.0.0.2 from 127.0.0.1 is answered from 127.0.0.1 (the route's source to the client), and
  // resolvers drop the answer ("reply from unexpected source"): a pod asking 169.254.20.10 gets the node's address.
  const r = await rig(t, { listen: ['0.0.0.0'] });
  const port = r.ports[0]!;
  const sock = dgram.createSocket('udp4');
  t.teardown(() => sock.close());
  const from = new Map<number, string>();
  sock.on('message', (m, rinfo) => from.set(dnsPacket.decode(m).id!, `${rinfo.address}:${rinfo.port}`));
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve));
  const ask = (id: number, to: string): void => {
    sock.send(dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: 'svc-3.example.com', type: 'A', class: 'IN' }] }), port, to);
  };
  ask(1, '127.0.0.2');
  await until('the miss answered', () => from.has(1));
  ask(2, '127.0.0.3');
  await until('the hit answered', () => from.has(2));
  t.equal(from.get(1), `127.0.0.2:${port}`, 'the miss, answered by the main thread, leaves from the address it was sent to');
  t.equal(from.get(2), `127.0.0.3:${port}`, 'the hit, answered by the worker, leaves from the address it was sent to');
  ask(3, '127.0.0.1');
  await until('the plain one answered', () => from.has(3));
  t.equal(from.get(3), `127.0.0.1:${port}`, 'a query to the route\'s own source is answered from it too');
  // An answer bigger than the send slots (a reload raised --max-udp-size) goes out alone: from the address asked too.
  await r.listener.configure({ cache: { successTtl: 30, denialTtl: 5, minHits: 3, percent: 10, staleMs: 0 }, maxUdpSize: 4096, queryLogEvery: 0 });
  const big = (id: number, to: string): void => {
    const opt = { type: 'OPT', name: '.', udpPayloadSize: 4096, flags: 0, options: [] } as unknown as dnsPacket.Answer;
    sock.send(dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: 'big.example.com', type: 'A', class: 'IN' }], additionals: [opt] }), port, to);
  };
  big(4, '127.0.0.2');
  await until('the big miss answered', () => from.has(4));
  big(5, '127.0.0.3');
  await until('the big hit answered', () => from.has(5));
  t.equal(from.get(4), `127.0.0.2:${port}`, 'a big answer to a miss, from the main thread, leaves from the address asked');
  t.equal(from.get(5), `127.0.0.3:${port}`, 'a big answer to a hit, from the worker, leaves from the address asked');
});

/**
 * Run inside a namespace of the test's own (IPv6 needs addresses this host must not be given): a wildcard socket
 * made by the built udp-batch.ts takes datagrams to each address in argv, and answers each through RecvVec and
 * SendVec as the worker does; prints "recv N sent N" and what the client got, "payload from source" per line.
 */
const PKTINFO_PROBE = `
import dgram from 'node:dgram';
const [root, wild, clientAt, ...dests] = process.argv.slice(2);
const { loadUdpBatch } = await import(root + '/dist/src/sys/udp-batch.js');
const { Arena, RecvVec, SendVec, recvVecBytes, vecBytes } = await import(root + '/dist/src/server/batched/msgvec.js');
const sys = await loadUdpBatch();
const fd = sys.openUdp({ host: wild, port: 0 });
if (typeof fd !== 'number') throw new Error(fd.message);
const port = sys.localPort(fd);
const block = sys.alloc(recvVecBytes(4, 512) + vecBytes(4, 512));
const arena = new Arena(block.address, block.bytes);
const recv = new RecvVec(arena, 4, 512);
const send = new SendVec(arena, 4, 512);
const c = dgram.createSocket(wild.includes(':') ? 'udp6' : 'udp4');
const got = [];
c.on('message', (m, r) => got.push(m + ' from ' + r.address));
await new Promise((res) => c.bind(0, clientAt, res));
for (const to of dests) c.send(to, port, to);
const until = async (cond) => { for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10)); };
let n = 0;
await until(() => (n = sys.recvmmsg(fd, recv.address, 4, 0x40)) === dests.length || n > 0);
for (let i = 0; i < n; i++) {
  recv.keepDestination(i);
  send.push(Buffer.from(arena.u8.subarray(recv.dataOffset(i), recv.dataOffset(i) + recv.length(i))), arena.u32, recv.sockaddrOffset(i) >> 2, recv.nameLength(i));
}
console.log('recv ' + n + ' sent ' + sys.sendmmsg(fd, send.address, send.filled));
await until(() => got.length === n);
console.log(got.sort().join('\\n'));
process.exit(0);
`;

t.test('batched on ::, for real: an answer leaves from the IPv6 address its query was sent to, a link-local one by its interface', { skip: process.getuid?.() !== 0 ? 'needs root (a network namespace)' : false }, async (t) => {
  const ip = (...args: string[]): void => {
    const r = spawnSync('ip', args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
  };
  const ns = `rvb-pkt6-${process.pid % 100000}`;
  ip('netns', 'add', ns);
  t.teardown(() => void spawnSync('ip', ['netns', 'del', ns]));
  ip('-n', ns, 'link', 'set', 'lo', 'up');
  ip('-n', ns, 'addr', 'add', 'fd00::2/128', 'dev', 'lo', 'nodad');
  ip('-n', ns, 'addr', 'add', 'fd00::3/128', 'dev', 'lo', 'nodad');
  // Two link-local addresses on a veth pair inside the namespace: fe80::b names no interface without its scope.
  ip('-n', ns, 'link', 'add', 'pka', 'type', 'veth', 'peer', 'name', 'pkb');
  for (const [dev, addr] of [['pka', 'fe80::a'], ['pkb', 'fe80::b']] as const) {
    ip('-n', ns, 'link', 'set', dev, 'up');
    ip('-n', ns, 'addr', 'add', `${addr}/64`, 'dev', dev, 'nodad');
  }
  const dir = mkdtempSync(join(tmpdir(), 'rvb-pkt6-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const script = join(dir, 'probe.mjs');
  writeFileSync(script, PKTINFO_PROBE);
  const root = new URL('..', import.meta.url).pathname;
  // env -i: tap's loader is in NODE_OPTIONS; the probe imports the built files.
  const run = (...args: string[]): string =>
    spawnSync('ip', ['netns', 'exec', ns, 'env', '-i', process.execPath, script, root, ...args], { encoding: 'utf8', timeout: 20_000 }).stdout;
  t.equal(run('::', '::1', 'fd00::2', 'fd00::3', '::1'), 'recv 3 sent 3\n::1 from ::1\nfd00::2 from fd00::2\nfd00::3 from fd00::3\n', 'each answer from the address asked');
  t.equal(run('::', 'fe80::a%pka', 'fe80::b%pkb'), 'recv 1 sent 1\nfe80::b%pkb from fe80::b%pka\n', 'a link-local address answers from itself');
  t.equal(run('0.0.0.0', '127.0.0.1', '127.0.0.2', '127.0.0.3'), 'recv 2 sent 2\n127.0.0.2 from 127.0.0.2\n127.0.0.3 from 127.0.0.3\n', 'IPv4 alike');
});

t.test('a worker\'s refresh that another thread claimed first goes no further upstream; a client that joined it (its read met the writer mid-change) gets the cached answer, not SERVFAIL', async (t) => {
  // A refresh whose claim fails (DnsCache.claimRefresh: another thread refreshes the name, or a reload turned prefetch
  // off) is no refresh, as the dgram backend's refused claimPrefetch starts none: the exchange takes it as a plain miss,
  // answered from the store while the entry is fresh. A refresh has no client when it leaves the worker, but one may
  // join it there before the outcome returns: a query whose read gave up (the slot mid-change) or that came just after
  // expiry. It gets the cached answer.
  const r = await rig(t);
  const port = r.ports[0]!;
  const name = 'svc-7.example.com';
  const key = parseQuery(query({ name })).key;
  const cache = r.listener.sharedCache;
  // Stored 28 s ago with TTL 30 (successTtl): due for refresh since 27 s (10%), fresh for 2 s more.
  const up = answer(name, [rr(name, '10.0.0.7', 30)]);
  cache.insert(key, up, scanAnswer(up)!, Date.now() - 28_000);
  const c = new Client();
  await c.ready();
  t.teardown(() => c.close());
  // Two hits first: CACHE asks for 3 hits before a refresh.
  for (const id of [1, 2]) {
    await c.send(port, name, id);
    await until(`hit ${id}`, () => c.answers.has(id));
  }
  t.same(dataOf(c.answers.get(2)), ['10.0.0.7']);
  // From here the main thread does not yield until both queries are in the worker: a connected socket sends at once.
  await new Promise<void>((res) => c.socket.connect(port, '127.0.0.1', () => res()));
  const encode = (id: number): Buffer => dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] });
  const w = r.listener.workerCounters()[0]!;
  const hits = w.cache.get('hitPositive');
  c.socket.send(encode(3));
  // Counted once the hit has read the entry and decided on its refresh.
  spinUntil('the third hit', () => w.cache.get('hitPositive') === hits + 1);
  // The hit reported the refresh; meanwhile another thread claimed it (what the listener does for another worker's).
  t.ok(cache.claimRefresh(key, Date.now()), 'claimed elsewhere first');
  // The writer mid-change in the name's slot: the next read gives up and joins the refresh in flight.
  const view = new StoreView(cache.layout);
  const slot = view.find(key, (hashKey(key) & cache.layout.hashMask) >>> 0);
  t.ok(slot >= 0);
  Atomics.add(view.ver, slot, 1);
  c.socket.send(encode(4));
  spinUntil('the fourth query to join the refresh', () => w.server.get('coalesced') === 1);
  Atomics.add(view.ver, slot, 1);
  t.equal(w.cache.get('readGaveUp'), 1, 'the fourth query\'s read gave up');
  t.equal(w.server.get('coalesced'), 1, 'and it joined the refresh in flight');
  await until('answers 3 and 4', () => c.answers.has(3) && c.answers.has(4));
  t.same(dataOf(c.answers.get(3)), ['10.0.0.7'], 'the hit');
  t.equal(rcodeName(c.answers.get(4)), 'NOERROR', 'the client that joined the refresh gets an answer, not SERVFAIL');
  t.same(dataOf(c.answers.get(4)), ['10.0.0.7']);
  t.equal(r.upstream.stats.udpQueries, 0, 'the refresh refused here (claimed elsewhere) did not go upstream');
});

t.test('a client whose record reaches the main thread after its miss was answered there, in the same turn, is answered without waiting for the worker\'s idle poll', async (t) => {
  // The main thread answers a miss's known clients itself and posts the completion lazily (no wake: worker-link.ts
  // #flush). A client that joined the miss later is the worker's to answer; its record, arriving late, nudges the
  // worker (listener.ts #onReport). When the record arrives in the same turn as the answer, before the completion is
  // posted, the nudge finds nothing to take, and the completion that follows goes without a wake: the worker sleeps
  // in poll until its idle timeout or the next datagram, and the client waits that long. The timeout is a minute
  // here, so a missing wake-up is a hang (the bounded wait below fails), not a delay measured against a clock.
  const r = await rig(t, { idlePollMs: 60_000 });
  const port = r.ports[0]!;
  const name = 'svc-11.example.com';
  const key = parseQuery(query({ name })).key;
  const c1 = new Client();
  const c2 = new Client();
  await c1.ready();
  await c2.ready();
  t.teardown(() => {
    c1.close();
    c2.close();
  });
  await new Promise<void>((res) => c1.socket.connect(port, '127.0.0.1', () => res()));
  await new Promise<void>((res) => c2.socket.connect(port, '127.0.0.1', () => res()));
  const io = r.listener.workerCounters()[0]!.io;
  const encode = (id: number): Buffer => dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] });
  // This thread does not yield until both clients wait on one miss in the worker, each reported in its own turn.
  const seen = io.get('datagrams');
  c1.socket.send(encode(1));
  spinUntil('the first query', () => io.get('datagrams') === seen + 1);
  holdThread(20);
  c2.socket.send(encode(2));
  spinUntil('the second query', () => io.get('datagrams') === seen + 2);
  holdThread(20);
  // The name arrives in the one cache meanwhile (another worker fetched it): the exchange answers the miss from it as
  // soon as the first report is read, in the same turn as the second report.
  const up = answer(name, [rr(name, '10.0.0.11', 30)]);
  r.listener.sharedCache.insert(key, up, scanAnswer(up)!, Date.now());
  // Other work of this thread's turn between reading the reports and the link's flush (this immediate is queued
  // before the flush): the nudged worker finds nothing and is back in poll by the time the completion is posted.
  setImmediate(() => holdThread(50));
  await until('both answers, the later one without waiting out the worker\'s idle poll', () => c1.answers.has(1) && c2.answers.has(2), 10_000);
  t.same(dataOf(c1.answers.get(1)), ['10.0.0.11']);
  t.same(dataOf(c2.answers.get(2)), ['10.0.0.11']);
  t.equal(r.listener.workerCounters()[0]!.server.get('coalesced'), 1, 'the second client joined the first one\'s miss');
});

t.test('a worker that never says it is ready: its start is rejected after a bound and the thread ended, not awaited for ever', async (t) => {
  // A thread alive and silent (its event loop kept busy, nothing posted): what a worker stuck before its loop looks like.
  const { port1, port2 } = new MessageChannel();
  const worker = new Worker('require("node:worker_threads"); setInterval(() => {}, 1000);', { eval: true });
  t.teardown(() => void worker.terminate());
  let fdsClosed = 0;
  const link = { index: 9, port: port1, worker, alive: true, ready: false, closing: false, closeFds: () => void fdsClosed++, freeBlock: () => {} };
  port2.unref();
  const logs: string[] = [];
  const exits: number[] = [];
  const started = whenStarted(link as unknown as WorkerLink, createLogger('debug', (l) => logs.push(l)), () => {}, (code) => void exits.push(code), 300);
  const outcome = await Promise.race([started.then(() => 'ready', (err: Error) => err.message), new Promise<string>((res) => setTimeout(() => res('hung'), 5000).unref())]);
  t.match(outcome, /not ready/, 'the start is rejected');
  await until('the thread to end', () => exits.length === 1);
  t.ok(link.closing, 'its exit is no death to restart');
  t.equal(fdsClosed, 1, 'its sockets closed once it ended');
  t.ok(logs.some((l) => l.includes('did not start in time')), 'logged');
});

t.test('shutdown with a restarted worker that dies before it is ready: drain and abort still resolve', async (t) => {
  // A worker is in the listener's links (alive) from the moment it is spawned, so pause() and abortAll() count on its
  // answer. whenStarted (worker-spawn.ts) reports an exit to the listener only after 'ready' (or 'failed'); an exit
  // before either only rejects the start, and nothing tells #checkDrained or #checkAborted that this worker will
  // never answer: drain() and abortAll() wait forever (the agent's stop has no deadline around abortAll).
  const r = await rig(t);
  const { successor } = await killWorkerZero(r.listener);
  // Shutdown while it starts: pause, drain, then (grace over) abort; it dies before its loop ran.
  r.listener.pause();
  const drained = r.listener.drain().then(() => 'drained');
  const aborted = r.listener.abortAll();
  await successor.terminate();
  await until('the failed start to be logged', () => r.logs.some((l) => l.includes('could not be restarted')));
  t.pass('it died before it was ready (its start failed)');
  const within = <T>(p: Promise<T>, ms: number): Promise<T | 'hung'> => Promise.race([p, new Promise<'hung'>((res) => setTimeout(() => res('hung'), ms).unref())]);
  t.equal(await within(drained, 10_000), 'drained', 'drain() resolves: the worker that died answers nothing more');
  t.equal(await within(aborted, 10_000), 0, 'abortAll() resolves: nothing was waiting in it');
});

t.test('a worker ended by terminate() (what a stuck one gets) frees no native block itself: this thread frees it once the thread is gone; one that closed freed its own, not freed again here', async (t) => {
  // Each worker's vectors live in one native block (~360 KB and ~90 KB a socket), freed by the worker at the end of
  // run() or after it threw (worker.ts). terminate() (worker-watch.ts on a loop that stood still, worker-stop.ts at
  // shutdown, worker-spawn.ts on a silent start) stops its JavaScript where it stands, and no finally runs: every
  // stuck worker ended and replaced leaked its block.
  const freed: number[] = [];
  const r = await rig(t, { spy: (sys) => ({ ...sys, freeAddress: (address: number) => (freed.push(address), sys.freeAddress(address)) }) });
  const c = new Client();
  await c.ready();
  t.teardown(() => c.close());
  await c.send(r.ports[0]!, 'svc-1.example.com', 1);
  await until('an answer', () => c.answers.has(1));
  t.same(freed, [], 'nothing freed here while the worker runs');
  await killWorkerZero(r.listener);
  t.equal(freed.length, 1, 'the ended worker\'s block is freed here, once its thread is gone');
  t.ok((freed[0] ?? 0) > 0, 'at the address it had');
  await until('the successor in its loop', () => r.listener.liveWorkers === 1, 30_000);
  await c.send(r.ports[0]!, 'svc-2.example.com', 2);
  await until('an answer from the successor', () => c.answers.has(2), 30_000);
  await r.listener.close();
  t.equal(freed.length, 1, 'the successor closed and freed its own block: not freed a second time here');
});

t.test('abort right after an answer came back in the same turn: the client gets that answer once, no SERVFAIL beside it', async (t) => {
  // The main thread answers the client itself (direct.ts) and queues the completion for the end of the turn
  // (worker-link.ts #flush, setImmediate). abortAll() in the same turn forgets the direct answers and posts 'abort'
  // at once: the worker takes the abort before the completion, answers the client SERVFAIL, and the queued answer
  // is still sent at the end of the turn. The worker's own guard (loop.ts: completions taken before aborting) only
  // covers completions already posted.
  const r = await rig(t);
  const port = r.ports[0]!;
  const name = 'black-abort.example.com';
  const got: Buffer[] = [];
  const c = new Client();
  await c.ready();
  c.socket.on('message', (m) => got.push(m));
  t.teardown(() => c.close());
  void c.send(port, name, 7);
  await until('the question to be in flight upstream', () => r.resolver.inflight === 1 && r.listener.inflight === 1);
  r.listener.pause();
  // The upstream's answer for the exchange's first question (token 1), then the grace period ends, in one turn.
  r.listener.complete(1, answer(name, [rr(name, '192.0.2.77', 60)]), 'upstream');
  const aborted = r.listener.abortAll();
  await aborted;
  await until('an answer', () => got.length > 0);
  await new Promise((res) => setTimeout(res, 300));
  t.same(got.map((m) => [m.readUInt16BE(0), m[3]! & 0x0f]), [[7, 0]], 'one answer, the upstream\'s (NOERROR)');
});

t.test('--io batched where it works: one listener for every address, the auto worker count', async (t) => {
  const made = await createUdpListeners({
    io: 'batched', workers: 0, listen: [{ host: '127.0.0.1', port: 0 }, { host: '127.0.0.2', port: 0 }], hitPath: { handle: () => {} }, cache: CACHE, maxUdpSize: 1232,
    queryLogEvery: 0, logger: silentLogger,
  });
  t.equal(made.io, 'batched');
  t.equal(made.listeners.length, 1);
  t.equal(made.batched?.workers, defaultWorkers());
  t.match(made.batched?.name, /^udp:\/\/127\.0\.0\.1:0,127\.0\.0\.2:0 \(batched, \d workers?\)$/);
});

t.test('the platform checks: a loader that is not koffi, and the worker count rules', async (t) => {
  t.match(await loadUdpBatch(() => Promise.resolve({})), /libc binding failed/);
  t.equal(defaultWorkers(1, null), 1);
  t.equal(defaultWorkers(2, null), 2);
  t.equal(defaultWorkers(64, null), MAX_AUTO_WORKERS, 'capped');
  t.equal(defaultWorkers(64, 1.5), 2, 'a cgroup quota of 1.5 CPUs allows 2');
  t.equal(defaultWorkers(8, 0.2), 1);
  const files: Record<string, string> = { '/sys/fs/cgroup/cpu.max': '150000 100000\n' };
  const read = (p: string): string => {
    const v = files[p];
    if (v === undefined) throw new Error('ENOENT');
    return v;
  };
  t.equal(cgroupCpuQuota(read), 1.5);
  files['/sys/fs/cgroup/cpu.max'] = 'max 100000\n';
  t.equal(cgroupCpuQuota(read), null);
  delete files['/sys/fs/cgroup/cpu.max'];
  files['/sys/fs/cgroup/cpu/cpu.cfs_quota_us'] = '200000';
  files['/sys/fs/cgroup/cpu/cpu.cfs_period_us'] = '100000';
  t.equal(cgroupCpuQuota(read), 2);
  files['/sys/fs/cgroup/cpu/cpu.cfs_quota_us'] = '-1';
  t.equal(cgroupCpuQuota(read), null);
});

// Socket-free parts: what crosses threads, the vector layout, the exchange.

class Ret implements MissReturn {
  listening = true;
  got: [number, Buffer | null, MissOutcome][] = [];
  refusals = 0;
  deliver(token: number, answer: Buffer | null, outcome: MissOutcome): void {
    this.got.push([token, answer, outcome]);
  }
  refusedForLoad(): void {
    this.refusals++;
  }
}

t.test('the exchange: one upstream question per key across workers, outcomes fanned back by each worker\'s token', async (t) => {
  const counters = new Counters(BATCHED_COUNTERS);
  const ex = new MissExchange({ counters, server: new Counters(SERVER_COUNTERS), shared: null, clock: new ManualClock() });
  const sent: { token: number; key: string }[] = [];
  const sink: MissSink = { forward: (token, key) => sent.push({ token, key }) };
  const a = new Ret();
  const b = new Ret();
  ex.forward(a, 7, 'k1', Buffer.from('q'));
  t.same(a.got, [[7, null, 'closed']], 'no upstream side yet: closed at once');
  a.got = [];
  ex.connect(sink);
  ex.forward(a, 8, 'k1', Buffer.from('q'));
  ex.forward(b, 3, 'k1', Buffer.from('q'));
  ex.forward(b, 4, 'k2', Buffer.from('q'));
  t.equal(sent.length, 2);
  t.equal(counters.get('crossWorkerCoalesced'), 1, 'one miss joined another worker\'s');
  t.equal(ex.inflight, 2);
  // A real answer: the exchange scrubs what it fans out, and a message it cannot read goes out as unusable (empty).
  const ans = Buffer.from(dnsPacket.encode({
    type: 'response', id: 0, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE,
    questions: [{ name: 'k1.example', type: 'A' }], answers: [{ name: 'k1.example', type: 'A', ttl: 30, data: '10.0.0.1' }],
  }));
  ex.complete(sent[0]!.token, ans, 'upstream');
  t.same(a.got, [[8, ans, 'upstream']]);
  t.same(b.got, [[3, ans, 'upstream']]);
  ex.complete(sent[0]!.token, ans, 'upstream');
  t.equal(a.got.length, 1, 'a second outcome for a token is ignored');
  b.listening = false;
  ex.complete(sent[1]!.token, null, 'timeout');
  t.equal(b.got.length, 1, 'a dead worker gets nothing');
  ex.forward(a, 9, 'k1', Buffer.from('q'));
  t.equal(sent.length, 3, 'after completion the key is asked again');
  // A sink that completes inside forward (a local limit) still finds the question.
  const sync = new MissExchange({ counters, server: new Counters(SERVER_COUNTERS), shared: null, clock: new ManualClock() });
  sync.connect({ forward: (token) => sync.complete(token, null, 'overloaded') });
  sync.forward(a, 10, 'k3', Buffer.from('q'));
  t.same(a.got.at(-1), [10, null, 'overloaded']);
  t.equal(sync.inflight, 0);
  // Only a refusal at --max-concurrent tells a worker to shed, once per waiter it had on the question.
  t.equal(a.refusals, 0, 'one upstream\'s own limit (overloaded) stamps nothing');
  const capped = new MissExchange({ counters, server: new Counters(SERVER_COUNTERS), shared: null, clock: new ManualClock() });
  capped.connect({ forward: (token) => capped.complete(token, null, 'capped') });
  capped.forward(a, 11, 'k4', Buffer.from('q'));
  t.same(a.got.at(-1), [11, null, 'capped']);
  t.equal(a.refusals, 1, 'the cap stamped the worker');
  t.equal(b.refusals, 0, 'a timeout, an answer or a dead worker stamp nothing');
});

t.test('in flight, for the workers to see: the exchange marks a question by key hash while it is up, and a worker\'s gate at the cap sends that question on', async (t) => {
  const load = new UpstreamLoad({ workers: 2 });
  const ex = new MissExchange({ counters: new Counters(BATCHED_COUNTERS), server: new Counters(SERVER_COUNTERS), shared: null, clock: new ManualClock(), load });
  const sent: number[] = [];
  ex.connect({ forward: (token) => sent.push(token) });
  const key = parsed('popular.example.org').key;
  const other = parsed('flood-1.example.org').key;
  const worker = new UpstreamLoad(load.buffer);
  t.notOk(worker.maybeInflight(hashKey(key)), 'nothing marked before it is asked');
  const a = new Ret();
  ex.forward(a, 1, key, Buffer.from('q'));
  ex.forward(a, 2, key, Buffer.from('q'));
  t.ok(worker.maybeInflight(hashKey(key)), 'asked: marked, where a worker attached to the buffer reads it');
  t.notOk(worker.maybeInflight(hashKey(other)), 'another name is not');
  // A worker's gate at the cap: the marked question goes on (the main thread joins it), the flood's is shed.
  load.setCap(10);
  load.setInflight(10);
  const ctl = new Int32Array(new SharedArrayBuffer(Ctl.WORDS * 4));
  stampRefusal(ctl, 0);
  const c = new Counters(BATCHED_COUNTERS);
  const gate = new ShedGate(ctl, load.buffer, [], { lastGaveUp: false }, { values: c.values, slot: BATCHED_COUNTERS.slot.shedBusy }, { now: () => 1 });
  t.ok(gate.admits(parsed('POPULAR.example.org')), 'in flight elsewhere: admitted at the cap (any spelling: the key is lower-cased)');
  t.notOk(gate.admits(parsed('flood-1.example.org')), 'a new question at the cap: shed');
  t.equal(c.get('shedBusy'), 1, 'only that one counted');
  ex.complete(sent[0]!, null, 'timeout');
  t.notOk(worker.maybeInflight(hashKey(key)), 'completed: unmarked (one mark for the question, however many joined it)');
  t.notOk(gate.admits(parsed('popular.example.org')), 'and at the cap it is shed again');
  // A question refused inside forward() (the cap, synchronously) leaves no mark behind.
  const capped = new MissExchange({ counters: new Counters(BATCHED_COUNTERS), server: new Counters(SERVER_COUNTERS), shared: null, clock: new ManualClock(), load });
  capped.connect({ forward: (token) => capped.complete(token, null, 'capped') });
  capped.forward(a, 3, other, Buffer.from('q'));
  t.notOk(worker.maybeInflight(hashKey(other)), 'refused at once: no mark left');
});

t.test('detached peers: each keeps its own sockaddr after its receive slot is refilled, across chunks, none sharing a run', async (t) => {
  const slotWords = SOCKADDR_SLOT_BYTES >> 2;
  const ring = new Uint32Array(slotWords);
  const chunks = new SockaddrChunks();
  const kept: Peer[] = [];
  // One chunk and a half: the carve rolls over to a fresh chunk and the peers in the old one keep theirs.
  const n = DETACH_CHUNK_PEERS + DETACH_CHUNK_PEERS / 2;
  for (let i = 0; i < n; i++) {
    // 127.0.0.x, port 1000 + i: what recvmmsg would have written into the one slot.
    ring[0] = 2 | (((1000 + i) >> 8) << 16) | (((1000 + i) & 0xff) << 24);
    ring[1] = 0x0000007f | ((i % 250) + 1) << 24;
    const p = new Peer(ring, 0);
    p.detach(chunks);
    kept.push(p);
  }
  ring.fill(0xffffffff);
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) {
    const p = kept[i]!;
    t.not(p.words, ring, 'no longer a view of the slot');
    seen.add(`${p.words === kept[0]!.words ? 'a' : 'b'}:${p.wordOff}`);
    if (p.port !== 1000 + i || p.address !== `127.0.0.${(i % 250) + 1}`) {
      t.fail(`peer ${i}: ${p.address}:${p.port}`);
      return;
    }
  }
  t.equal(seen.size, n, 'every peer has a run of its own');
  t.not(kept[n - 1]!.words, kept[0]!.words, 'past DETACH_CHUNK_PEERS a new chunk');
});

t.test('peers: a client\'s address hash (its share of a question\'s waiters) is the same from every port, and differs by address, IPv4 and IPv6', async (t) => {
  const slot = new Uint32Array(SOCKADDR_SLOT_BYTES >> 2);
  const peer = new Peer(slot, 0);
  const v4 = (port: number, last: number): number => {
    slot.fill(0);
    slot[0] = 2 | ((port >> 8) << 16) | ((port & 0xff) << 24);
    slot[1] = 0x0001000a | (last << 24);
    return peer.addressHash;
  };
  t.equal(v4(1000, 5), v4(61000, 5), 'one IPv4 address, two ports: one hash');
  t.not(v4(1000, 5), v4(1000, 6), 'another IPv4 address: another hash');
  const v6 = (port: number, last: number): number => {
    slot.fill(0);
    slot[0] = 10 | ((port >> 8) << 16) | ((port & 0xff) << 24);
    slot[2] = 0x000080fd;
    slot[5] = last << 24;
    return peer.addressHash;
  };
  t.equal(v6(1000, 5), v6(2000, 5), 'one IPv6 address, two ports: one hash');
  t.not(v6(1000, 5), v6(1000, 6), 'another IPv6 address: another hash');
});

t.test('slot views: one Buffer per receive slot and length, made once, reading the slot as it is now; long datagrams get their own', async (t) => {
  const ab = new ArrayBuffer(4 * 1024);
  const u8 = new Uint8Array(ab);
  const views = new SlotViews(ab, 4);
  u8.set([1, 2, 3], 1024);
  const a = views.get(1, 1024, 3);
  t.same([...a], [1, 2, 3]);
  u8.set([7, 8, 9], 1024);
  const b = views.get(1, 1024, 3);
  t.equal(b, a, 'the same object for the same slot and length');
  t.same([...b], [7, 8, 9], 'showing what the slot holds now');
  t.not(views.get(1, 1024, 2), a, 'another length: another view');
  t.equal(views.get(1, 1024, 2).length, 2, 'exactly as long as the datagram');
  t.not(views.get(2, 2048, 3), a, 'another slot: another view');
  t.not(views.get(1, 1024, VIEW_LENGTHS), views.get(1, 1024, VIEW_LENGTHS), 'from VIEW_LENGTHS up, a fresh view each time (the cache stays bounded)');
});

/** A query as the hit path hands it to a MissGate: the scratch its parse filled (the key as bytes, no string). */
function parsed(name: string): QueryScratch {
  const q = new QueryScratch();
  parseQueryInto(query({ name }), q);
  return q;
}

t.test('shed gate: sheds what the main thread would refuse (at its cap now), and after a refusal what is beyond the worker\'s share waiting; never a zone the view answers; across the 32-bit wrap', async (t) => {
  const ctl = new Int32Array(new SharedArrayBuffer(Ctl.WORDS * 4));
  const c = new Counters(BATCHED_COUNTERS);
  let wall = 1_700_000_000_000;
  const reads = { lastGaveUp: false };
  // The main thread's side: two workers share a cap of 1,000.
  const load = new UpstreamLoad({ workers: 2 });
  const gate = new ShedGate(ctl, load.buffer, ['cluster.local', '10.in-addr.arpa.'], reads, { values: c.values, slot: BATCHED_COUNTERS.slot.shedBusy }, { now: () => wall });
  const ext = parsed('x.example.org');
  const svc = parsed('web.shop.svc.CLUSTER.local');
  stampRefusal(ctl, wall - 3_600_000);
  t.ok(gate.admits(ext), 'no cap written yet (no resolver connected): admitted');
  load.setCap(1000);
  load.setInflight(999);
  t.ok(gate.admits(ext), 'below the cap, no refusal lately: admitted');
  load.setInflight(1000);
  t.notOk(gate.admits(ext), 'the main thread at its cap: shed');
  t.ok(gate.admits(svc), 'the cluster zone is left to the view, whatever the case');
  t.ok(gate.admits(parsed('cluster.local')), 'the zone\'s apex too');
  t.ok(gate.admits(parsed('4.3.2.10.in-addr.arpa')), 'and the second zone');
  t.notOk(gate.admits(parsed('web.notcluster.local')), 'a name that only ends in the same letters is no zone of the view: shed');
  t.notOk(gate.admits(parsed('local')), 'nor is a parent of the zone');
  reads.lastGaveUp = true;
  t.ok(gate.admits(ext), 'a read that gave up on a store mid-change is no miss: the main thread answers it from the store');
  reads.lastGaveUp = false;
  load.setInflight(10);
  const waiting = { inflight: 500 };
  gate.watch(waiting);
  t.ok(gate.admits(ext), 'room at the cap, no refusal lately: admitted however many of ours wait');
  stampRefusal(ctl, wall);
  t.notOk(gate.admits(ext), 'refused just now: not with its share (1,000 over 2 workers) of ours already waiting');
  waiting.inflight = 499;
  t.ok(gate.admits(ext), 'one fewer: it crosses (a refusal alone sheds nothing: the count says there is room)');
  waiting.inflight = 500;
  wall += SOFT_PERIOD_MS - 1;
  t.notOk(gate.admits(ext), 'still inside the period');
  wall += 1;
  t.ok(gate.admits(ext), 'the period has ended: the usual limits');
  load.setInflight(0);
  load.setCap(10);
  waiting.inflight = MIN_SHARE;
  stampRefusal(ctl, wall);
  t.notOk(gate.admits(ext), `a small cap: each worker still has ${MIN_SHARE} (and not with those waiting)`);
  waiting.inflight = MIN_SHARE - 1;
  t.ok(gate.admits(ext), 'one fewer: it crosses');
  waiting.inflight = MIN_SHARE;
  stampRefusal(ctl, wall + 5);
  t.notOk(gate.admits(ext), 'a refusal stamped after the turn began (its clock read then) is one just now');
  stampRefusal(ctl, wall + STAMP_AHEAD_MS + 1000);
  t.ok(gate.admits(ext), 'a stamp far in the future (a clock out of step) ends the period, never stretches it');
  wall = 2 ** 32 * 400 - 10;
  stampRefusal(ctl, wall);
  wall += 20;
  t.notOk(gate.admits(ext), 'across the wrap of the 32-bit stamp');
  load.setInflight(10);
  gate.configure([]);
  t.notOk(gate.admits(svc), 'at the cap with no view after a reload: the cluster zone is shed too');
  t.equal(c.get('shedBusy'), 9, 'each shed miss counted');
});

t.test('the shared cache: another worker\'s miss on a fetched name is answered without the upstream, aged; only a refresh due goes upstream', async (t) => {
  const clock = new ManualClock();
  const counters = new Counters(BATCHED_COUNTERS);
  const shared = new DnsCache(CACHE, new Counters(CACHE_COUNTERS));
  const ex = new MissExchange({ counters, server: new Counters(SERVER_COUNTERS), shared, clock });
  const sent: { token: number; key: string }[] = [];
  ex.connect({ forward: (token, key) => sent.push({ token, key }) });
  const name = 'web.example.com';
  const q = parseQuery(query({ name: 'WEB.example.com', id: 9 }));
  const up = upstreamQuery(q);
  const a = new Ret();
  const b = new Ret();
  ex.forward(a, 1, q.key, up);
  t.equal(sent.length, 1);
  ex.complete(sent[0]!.token, answer(name, [rr(name, '192.0.2.1', 20)]), 'upstream');
  t.equal(shared.positiveSize, 1, 'the fetched answer is kept');
  clock.advance(5_000);
  ex.forward(b, 77, q.key, up);
  t.equal(sent.length, 1, 'no second upstream query');
  t.equal(counters.get('sharedHits'), 1);
  const [tok, got, outcome] = b.got[0]!;
  t.equal(tok, 77);
  t.equal(outcome, 'upstream');
  const decoded = dnsPacket.decode(got!);
  t.equal(ttlOf(decoded.answers![0]!), 15, 'TTL aged, so the worker\'s copy expires with the original');
  t.equal(decoded.id, 0, 'answers the worker\'s upstream form of the question');
  // CACHE has prefetch at 10% with 3 hits: a 20 s entry is due from 18 s. A worker's plain miss there (its lock-free
  // read gave up, or the entry arrived since it looked) is still answered from the store; only the refresh goes upstream.
  clock.advance(13_500);
  ex.forward(b, 78, q.key, up);
  t.equal(sent.length, 1, 'in the prefetch window a plain miss is still answered from the store');
  t.equal(counters.get('sharedHits'), 2);
  t.equal(b.got[1]?.[0], 78, 'to the worker that asked');
  ex.sinkFor(a).forward(79, q.key, up, true);
  t.equal(sent.length, 2, 'in the prefetch window the refresh goes upstream');
  ex.complete(sent[1]!.token, answer(name, [rr(name, '192.0.2.1', 20)], { rcode: 'SERVFAIL' }), 'upstream');
  t.equal(counters.get('sharedHits'), 2);
  const q2 = parseQuery(query({ name: 'other.example.com' }));
  ex.forward(a, 2, q2.key, upstreamQuery(q2));
  ex.complete(sent[2]!.token, answer('other.example.com', [], { rcode: 'SERVFAIL' }), 'upstream');
  t.equal(shared.positiveSize + shared.negativeSize, 1, 'a SERVFAIL is not kept');
});

t.test('packed batches survive the trip: tokens, tags, bytes, nulls, keys, growth', async (t) => {
  const p = new Packer(true);
  const big = Buffer.alloc(20_000, 7);
  for (let i = 0; i < 300; i++) p.push(i, i % OUTCOMES.length, i === 5 ? null : i === 6 ? big : Buffer.from(`item-${i}`), `key-${i}`);
  t.equal(p.count, 300);
  const { port1, port2 } = new MessageChannel();
  const got = new Promise<unknown>((r) => port2.once('message', r));
  const packed = p.take();
  port1.postMessage(packed, [packed.index.buffer as ArrayBuffer, packed.bytes.buffer as ArrayBuffer]);
  const q = (await got) as typeof packed;
  port1.close();
  t.equal(p.count, 0, 'the packer starts afresh');
  t.equal(q.count, 300);
  t.equal(itemToken(q, 299), 299);
  t.equal(OUTCOMES[itemTag(q, 9)], OUTCOMES[9 % OUTCOMES.length]);
  t.equal(itemBytes(q, 5), null);
  t.same(itemBytes(q, 6), big);
  t.equal(itemBytes(q, 299)!.toString(), 'item-299');
  t.equal(q.keys![42], 'key-42');
  t.equal(OUTCOME_INDEX.malformed, OUTCOMES.indexOf('malformed'));
});

t.test('the vectors: pointers, lengths and sockaddrs where the kernel expects them', async (t) => {
  const base = 0x10000;
  const ab = new ArrayBuffer(recvVecBytes(4, 100) + vecBytes(4, 100));
  const arena = new Arena(base, ab);
  const recv = new RecvVec(arena, 4, 100);
  const send = new SendVec(arena, 4, 100);
  const dv = new DataView(ab);
  const hdr = recv.address - base;
  t.equal(recv.slotBytes, 128, 'slots 64-aligned');
  const iov = Number(dv.getBigUint64(hdr + MMSGHDR_BYTES + 16, true)) - base;
  t.equal(Number(dv.getBigUint64(iov, true)) - base, recv.dataOffset(1), 'mmsghdr[1].msg_iov -> iovec[1].iov_base -> slot 1');
  t.equal(Number(dv.getBigUint64(hdr + 0, true)) - base, recv.sockaddrOffset(0), 'msg_name points at the sockaddr slot');
  t.equal(dv.getUint32(hdr + 8, true), SOCKADDR_SLOT_BYTES);
  t.equal(Number(dv.getBigUint64(hdr + 24, true)), 1, 'one iovec per message');
  // What the kernel would write for a 33-byte datagram from 10.1.2.3:5353.
  dv.setUint32(hdr + MMSGHDR_BYTES + 56, 33, true);
  dv.setUint32(hdr + MMSGHDR_BYTES + 8, 16, true);
  dv.setUint32(hdr + MMSGHDR_BYTES + 48, 0x20, true);
  t.equal(recv.length(1), 33);
  t.equal(recv.nameLength(1), 16);
  t.ok(recv.truncated(1));
  recv.reset(2);
  t.equal(recv.nameLength(1), SOCKADDR_SLOT_BYTES, 'reset restores the room for a sockaddr_in6');
  const sa = new Uint32Array(8);
  new Uint8Array(sa.buffer).set([2, 0, 0x14, 0xe9, 10, 1, 2, 3]);
  send.push(Buffer.from('hello'), sa, 0, 16);
  t.equal(send.filled, 1);
  const sh = send.address - base;
  t.equal(send.nameLength(0), 16);
  t.same([...arena.u8.subarray(send.sockaddrOffset(0), send.sockaddrOffset(0) + 8)], [2, 0, 0x14, 0xe9, 10, 1, 2, 3]);
  const siov = Number(dv.getBigUint64(sh + 16, true)) - base;
  t.equal(Number(dv.getBigUint64(siov + 8, true)), 5, 'iov_len is the answer\'s length');
  t.equal(Buffer.from(ab, send.dataOffset(0), 5).toString(), 'hello');
  t.equal(send.at(1), send.address + MMSGHDR_BYTES);
  for (let i = 1; i < 4; i++) send.push(Buffer.from('x'), sa, 0, 16);
  t.ok(send.full);
  send.clear();
  t.equal(send.filled, 0);
  t.throws(() => arena.take(1 << 20), /arena exhausted/);
  // A wildcard socket's datagram: its pktinfo (after a timestamp) is kept beside the sockaddr, and the answer carries it.
  const ctl = (v: { address: number }, i: number): number => Number(dv.getBigUint64(v.address - base + i * MMSGHDR_BYTES + 32, true)) - base;
  const controlLen = (v: { address: number }, i: number): number => Number(dv.getBigUint64(v.address - base + i * MMSGHDR_BYTES + 40, true));
  const cmsg = (at: number, len: number, level: number, type: number): void => {
    dv.setBigUint64(at, BigInt(len), true);
    dv.setInt32(at + 8, level, true);
    dv.setInt32(at + 12, type, true);
  };
  const receive6 = (dest: string, ifindex: number): void => {
    const c = ctl(recv, 0);
    cmsg(c, 32, 1, 35); // SCM_TIMESTAMPNS
    cmsg(c + 32, 36, 41, 50); // IPV6_PKTINFO: in6_pktinfo { addr, ifindex }
    new Uint8Array(ab).set(Buffer.from(dest, 'hex'), c + 48);
    dv.setInt32(c + 64, ifindex, true);
    dv.setBigUint64(hdr + 40, 72n, true);
    new Uint8Array(ab).set([10, 0, 0x14, 0xe9], recv.sockaddrOffset(0)); // AF_INET6, port 5353
    recv.keepDestination(0);
  };
  receive6('fd000000000000000000000000000010', 7);
  send.push(Buffer.from('v6'), arena.u32, recv.sockaddrOffset(0) >> 2, 28);
  const c6 = ctl(send, 0);
  t.equal(controlLen(send, 0), 40, 'msg_controllen: CMSG_SPACE(sizeof(struct in6_pktinfo))');
  t.same([Number(dv.getBigUint64(c6, true)), dv.getInt32(c6 + 8, true), dv.getInt32(c6 + 12, true)], [36, 41, 50], 'cmsg_len, IPPROTO_IPV6, IPV6_PKTINFO');
  t.equal(Buffer.from(ab, c6 + 16, 16).toString('hex'), 'fd000000000000000000000000000010', 'the source: the address the query was sent to');
  t.equal(dv.getInt32(c6 + 32, true), 0, 'a global address leaves by the route: no interface');
  receive6('fe800000000000000000000000000001', 7);
  send.push(Buffer.from('ll'), arena.u32, recv.sockaddrOffset(0) >> 2, 28);
  t.equal(dv.getInt32(ctl(send, 1) + 32, true), 7, 'a link-local one names the interface it came in on');
  // IPv4: in_pktinfo { ifindex, spec_dst, addr }, alone.
  const c4 = ctl(recv, 0);
  cmsg(c4, 28, 0, 8);
  dv.setInt32(c4 + 16, 3, true);
  new Uint8Array(ab).set([169, 254, 20, 10], c4 + 20);
  dv.setBigUint64(hdr + 40, 32n, true);
  new Uint8Array(ab).set([2, 0, 0x14, 0xe9, 10, 1, 2, 3], recv.sockaddrOffset(0));
  recv.keepDestination(0);
  send.push(Buffer.from('v4'), arena.u32, recv.sockaddrOffset(0) >> 2, 16);
  const s4 = ctl(send, 2);
  t.equal(controlLen(send, 2), 32, 'msg_controllen: CMSG_SPACE(sizeof(struct in_pktinfo))');
  t.same([Number(dv.getBigUint64(s4, true)), dv.getInt32(s4 + 8, true), dv.getInt32(s4 + 12, true), dv.getInt32(s4 + 16, true)], [28, 0, 8, 0], 'cmsg_len, IPPROTO_IP, IP_PKTINFO, no interface');
  t.same([...new Uint8Array(ab, s4 + 20, 4)], [169, 254, 20, 10], 'ipi_spec_dst: the address the query was sent to');
  // No pktinfo (a socket on one address): whatever an earlier datagram left in the slot, no control message.
  dv.setBigUint64(hdr + 40, 0n, true);
  recv.keepDestination(0);
  send.push(Buffer.from('plain'), arena.u32, recv.sockaddrOffset(0) >> 2, 16);
  t.equal(controlLen(send, 3), 0, 'none kept: msg_controllen 0');
  send.clear();
  // A socket on one address (the loop passes pktinfo false): its slot, left with a wildcard's pktinfo, keeps none.
  receive6('fd000000000000000000000000000010', 7);
  recv.keepDestination(0, false);
  send.push(Buffer.from('one'), arena.u32, recv.sockaddrOffset(0) >> 2, 28);
  t.equal(controlLen(send, 0), 0, 'not read for a socket on one address: msg_controllen 0');
  receive6('fd000000000000000000000000000010', 7);
  send.push(Buffer.from('wild'), arena.u32, recv.sockaddrOffset(0) >> 2, 28);
  t.equal(controlLen(send, 1), 40, 'read for a wildcard');
  send.clear();
  t.equal(ipv6Text(Buffer.from('00000000000000000000000000000001', 'hex')), '::1');
  t.equal(ipv6Text(Buffer.from('fe800000000000000000000000000001', 'hex')), 'fe80::1');
  t.equal(ipv6Text(Buffer.from('20010db8000100000001000000000001', 'hex')), '2001:db8:1:0:1::1');
  t.equal(BATCHED_COUNTERS.slot.batches, 0);
});

// The worker loop itself, on this thread: a fake kernel (test/helpers/fake-udp-kernel.ts)
// fills and drains the vectors where the loop laid them out, and a script plays the
// main thread each time the loop would sleep. Deterministic: no sockets, threads or clocks.

const SVC = 'svc.example.com';

function loopRig(steps: (() => void)[], over: Partial<WorkerInit> = {}, k = new FakeKernel(steps)) {
  const stats = new SharedArrayBuffer(WORKER_STATS_BYTES);
  // The main thread's cache: the loop reads it, the script plays the main thread and stores in it.
  const store = new DnsCache(CACHE, new Counters(CACHE_COUNTERS), { shared: true });
  const init: WorkerInit = {
    index: 3, fds: [5, 6], names: ['udp://127.0.0.1:53', 'udp://[::1]:53'], wakeFd: 99, ctl: k.ctl, reports: k.reportRing, completions: k.doneRing, load: k.load.buffer, stats, cache: CACHE, store: store.layout, maxUdpSize: 512,
    queryLogEvery: 0, clientMissRate: 0, clientMissBurst: 1, clientMissInflight: Infinity, batch: 4, maxInflight: 100, maxQueryAgeMs: 0, localZones: [], ...over,
  };
  const loop = new WorkerLoop(k, k.workerPort, init);
  t.teardown(() => k.mainPort.close());
  return { k, loop, c: workerCounters(stats), store };
}

/** What the main thread's exchange does with an answer it fetched: stores it in the one cache. */
function storeAnswer(store: DnsCache, name: string, bytes: Buffer): void {
  store.insert(parseQuery(query({ name })).key, bytes, scanAnswer(bytes)!, systemClock.now());
}

const from4 = (port: number): Buffer => sockaddr4('10.0.0.1', port);
const idOf = (b: Buffer): number => b.readUInt16BE(0);
const portOf = (sa: Buffer): number => sa.readUInt16BE(2);

/** The main thread's answer to every miss in the loop's reports so far (stored in `store` first, as the exchange does, when given). */
function answerMisses(k: FakeKernel, reports: WorkerReport[], bytes: (name: string) => Buffer, store: DnsCache | null = null): number {
  const done = new Packer(false);
  for (const r of reports) {
    const m = r.misses;
    if (m === null) continue;
    for (let i = 0; i < m.count; i++) {
      const name = dnsPacket.decode(itemBytes(m, i)!).questions![0]!.name;
      const ans = bytes(name);
      if (store !== null) storeAnswer(store, name, ans);
      done.push(itemToken(m, i), OUTCOME_INDEX.upstream, ans, null);
    }
  }
  const n = done.count;
  if (n > 0) k.post({ t: 'done', items: done.take() });
  return n;
}

t.test('loop: its native block is published in the shared words once allocated; whichever of the loop (dispose) and the main thread (after exit) takes it first frees it, the other nothing', async (t) => {
  const ended = loopRig([]);
  ended.loop.dispose();
  ended.loop.dispose();
  t.equal(ended.k.blockFrees, 1, 'a loop that ended freed its block once');
  t.equal(takeBlock(new Int32Array(ended.k.ctl)), null, 'nothing left for the main thread to free');
  // Terminated: no dispose() ran. The main thread takes it after 'exit' (worker-link.ts freeBlock).
  const terminated = loopRig([]);
  t.equal(takeBlock(new Int32Array(terminated.k.ctl)), BASE, 'the main thread finds the address alloc() gave');
  terminated.loop.dispose();
  t.equal(terminated.k.blockFrees, 0, 'a dispose() after that frees nothing');
  t.equal(takeBlock(new Int32Array(terminated.k.ctl)), null, 'taken once');
  // A constructor that throws after the allocation leaves no loop to dispose (worker.ts): the start fails, the thread ends.
  const k = new FakeKernel([]);
  t.teardown(() => k.mainPort.close());
  k.rxTimestamps = () => {
    throw new Error('thrown after the allocation');
  };
  t.throws(() => loopRig([], {}, k), /thrown after the allocation/);
  t.equal(takeBlock(new Int32Array(k.ctl)), BASE, 'its block is there for the main thread to free after exit');
  const ctl = new Int32Array(new SharedArrayBuffer(Ctl.WORDS * 4));
  t.equal(takeBlock(ctl), null, 'no block published: nothing to free');
  holdBlock(ctl, { address: 0x7ffc_8abc_d000, bytes: new ArrayBuffer(8), free: () => {} });
  t.equal(takeBlock(ctl), 0x7ffc_8abc_d000, 'an address whose low word has its top bit set comes back whole');
});

t.test('loop: a miss crosses once for many clients on two sockets, its answer goes back to each on its own socket (flushing a full vector), then hits', async (t) => {
  const seen: WorkerReport[] = [];
  const { k, loop, c, store } = loopRig([
    () => {
      for (let i = 1; i <= 5; i++) k.queue(5, { data: query({ name: i === 1 ? 'SVC.example.com' : SVC, id: i }), from: from4(1110 + i) });
      k.queue(6, { data: query({ name: SVC, id: 6 }), from: sockaddr6loopback(2222) });
    },
    () => {
      const reports = k.reports();
      seen.push(...reports);
      t.equal(answerMisses(k, reports, (n) => answer(n, [rr(n, '192.0.2.9', 60)]), store), 1, 'one miss for six clients');
    },
    () => {
      t.equal(k.sent.length, 6);
      const v4 = k.sent.filter((s) => s.fd === 5);
      const v6 = k.sent.filter((s) => s.fd === 6);
      t.same(v4.map((s) => [idOf(s.data), portOf(s.to), s.to.length]), [1, 2, 3, 4, 5].map((i) => [i, 1110 + i, 16]), 'each IPv4 client, from socket 5');
      t.same(v6.map((s) => [idOf(s.data), portOf(s.to), s.to.length]), [[6, 2222, 28]], 'the IPv6 client, from socket 6');
      t.equal(dnsPacket.decode(v4[0]!.data).questions?.[0]?.name, 'SVC.example.com', 'spelling echoed');
      for (let i = 0; i < 6; i++) k.queue(5, { data: query({ name: SVC, id: 10 + i }), from: from4(3000 + i) });
    },
  ]);
  const sendsBefore = c.io.get('sends');
  loop.run();
  t.equal(k.sent.length, 12);
  t.same(k.sent.slice(6).map((s) => [idOf(s.data), portOf(s.to)]), [...Array(6).keys()].map((i) => [10 + i, 3000 + i]), 'six hits, each to its sender');
  t.equal(c.io.get('datagrams'), 12);
  t.equal(c.io.get('batches'), 5, 'batches of at most four: 4 + 1 on socket 5 and 1 on socket 6, then 4 + 2 hits');
  t.equal(c.io.get('sends') - sendsBefore, 5, 'the five answers for socket 5 take two calls (four slots), socket 6 one, the hits two');
  t.equal(c.cache.get('hitPositive'), 6);
  t.equal(c.server.get('coalesced'), 5);
  t.equal(c.server.get('req_udp_1_A'), 11, 'coredns_dns_requests_total: the IPv4 clients as family 1 (read from the sockaddr)');
  t.equal(c.server.get('req_udp_2_A'), 1, 'the IPv6 client as family 2');
  t.equal(store.positiveSize, 1, 'stored once, by the main thread');
  t.equal(c.io.get('entriesPositive'), 0, 'the worker publishes no cache gauges: the store is the main thread\'s');
  const all = [...seen, ...k.reports()];
  // The ring's records are read before each message: the first turn's miss can come out ahead of 'ready' (packed-ring.ts).
  t.equal(all.filter((r) => r.misses === null && r.waiters == null)[0]?.ready, true, 'ready first of what it posted');
  t.equal(all.at(-1)?.closed, true, 'closed last');
});

t.test('loop: a handler that throws after its query became a waiter does not leave that waiter reading the receive slot the next datagram refills', async (t) => {
  const original = HitPath.prototype.handle;
  // A fault injected after the real handling: the miss is open and its client waits on it.
  HitPath.prototype.handle = function (this: HitPath, ...args: Parameters<HitPath['handle']>): void {
    original.apply(this, args);
    if (dnsPacket.decode(args[0]).id === 1) throw new Error('injected after the waiter was taken');
  };
  t.teardown(() => {
    HitPath.prototype.handle = original;
  });
  const { k, loop } = loopRig([
    () => k.queue(5, { data: query({ name: 'first.example.com', id: 1 }), from: from4(1111) }),
    // Into the same receive slot: its sockaddr words now say 2222.
    () => k.queue(5, { data: query({ name: 'second.example.com', id: 2 }), from: from4(2222) }),
    () => {
      answerMisses(k, k.reports(), (n) => answer(n, [rr(n, '192.0.2.9', 60)]));
    },
    () => {},
  ]);
  loop.run();
  const first = k.sent.filter((s) => idOf(s.data) === 1);
  t.same(first.map((s) => portOf(s.to)), [1111], 'the first client gets its answer, at its own address');
  t.same(k.sent.filter((s) => idOf(s.data) === 2).map((s) => portOf(s.to)), [2222], 'the second client gets its own');
});

t.test('loop: after a turn that posted misses (under a batch, no completions waiting) it sleeps at once; after hits or a full batch it looks again first', async (t) => {
  const at: number[] = [];
  const { k, loop, c, store } = loopRig([
    () => {
      at.push(k.recvCalls);
      k.queue(5, { data: query({ name: 'svc-0.example.com', id: 1 }), from: from4(1000) });
    },
    () => {
      at.push(k.recvCalls);
      t.equal(answerMisses(k, k.reports(), (n) => answer(n, [rr(n, '192.0.2.1', 60)]), store), 1);
    },
    () => {
      at.push(k.recvCalls);
      k.queue(5, { data: query({ name: 'svc-0.example.com', id: 2 }), from: from4(1000) });
    },
    () => {
      at.push(k.recvCalls);
      for (let i = 1; i <= 4; i++) k.queue(5, { data: query({ name: `svc-${i}.example.com`, id: 10 + i }), from: from4(1000 + i) });
    },
    () => at.push(k.recvCalls),
  ]);
  loop.run();
  const turns = at.slice(1).map((n, i) => n - at[i]!);
  // Two sockets: a turn is two receives. The miss's turn is the only one not followed by a second look.
  t.same(turns, [2, 4, 4, 4], 'miss: slept at once; completion, hit, full batch of misses: one more turn first');
  t.equal(c.cache.get('hitPositive'), 1, 'the second ask was a hit');
  t.equal(k.sent.filter((s) => idOf(s.data) === 1 || idOf(s.data) === 2).length, 2, 'both asks answered');
});

t.test('loop: pause reads and answers what was already queued, then stops receiving; drained once nothing waits', async (t) => {
  // Opcode STATUS: answered NOTIMP at once by the hit path, no cache involved.
  const status = (id: number): Buffer => {
    const q = query({ name: SVC, id });
    q[2] = (q[2]! & 0x87) | (2 << 3);
    return q;
  };
  let reports: WorkerReport[] = [];
  const { k, loop } = loopRig([
    () => {
      for (let i = 0; i < 5; i++) k.queue(5, { data: status(i), from: from4(4000 + i) });
      k.post({ t: 'pause' });
    },
    () => {
      t.equal(k.sent.length, 5, 'the five queued before pause are answered');
      reports = k.reports();
      t.ok(reports.some((r) => r.drained === true), 'drained reported');
      for (let i = 0; i < 3; i++) k.queue(5, { data: status(10 + i), from: from4(5000 + i) });
    },
    () => {
      t.equal(k.sent.length, 5, 'nothing read after the queue ran empty');
      t.equal(k.inbox.get(5)?.length, 3);
    },
  ]);
  loop.run();
  t.equal(k.sent.length, 5);
  t.ok(k.sent.every((s) => (s.data[3]! & 0x0f) === 4), 'NOTIMP');
});

t.test('loop: a cut datagram is dropped and counted; a failed or short sendmmsg loses only the answers it could not send', async (t) => {
  const { k, loop, c } = loopRig([
    () => {
      k.queue(5, { data: Buffer.concat([query({ name: SVC, id: 1 }), Buffer.alloc(5000)]), from: from4(1) });
      for (let i = 0; i < 3; i++) k.queue(5, { data: Buffer.from([0, i, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]), from: from4(10 + i) });
      k.queue(5, { data: Buffer.from([1, 2, 3]), from: from4(20) });
    },
  ]);
  loop.run();
  t.equal(c.io.get('oversize'), 1, 'the 5 KB datagram arrived cut: dropped');
  t.equal(c.server.get('dropped'), 4, 'responses sent to us and an unreadable header are dropped by the hit path');
  t.equal(k.sent.length, 0, 'nothing to answer');
  const { k: k2, loop: loop2, c: c2 } = loopRig([
    () => {
      for (let i = 0; i < 3; i++) {
        const q = query({ name: SVC, id: i });
        q[5] = 2; // QDCOUNT 2: FORMERR, answered at once
        k2.queue(5, { data: q, from: from4(100 + i) });
      }
      // First call refused (the first message is given up), then one at a time.
      k2.sendmmsgScript.push(-EAGAIN, 1, 1);
    },
  ]);
  loop2.run();
  t.same(k2.sent.map((s) => portOf(s.to)), [101, 102], 'the refused first answer is lost, the others go');
  t.equal(c2.io.get('sendErrors'), 1);
});

t.test('loop: past maxInflight a miss is refused at once; abort answers the waiting; a reload raises the answer size past the slots', async (t) => {
  const big = answer('big.example.com', Array.from({ length: 120 }, (_, i) => rr('big.example.com', `10.1.0.${i}`, 60)));
  const { k, loop, c } = loopRig(
    [
      () => {
        k.queue(5, { data: query({ name: 'a.example.com', id: 1 }), from: from4(1) });
        k.queue(5, { data: query({ name: 'b.example.com', id: 2 }), from: from4(2) });
      },
      () => {
        const misses = k.reports().flatMap((r) => (r.misses === null ? [] : [r.misses]));
        t.equal(misses.reduce((n, m) => n + m.count, 0), 1, 'only the first crossed');
        t.equal(k.sent.length, 1);
        t.equal(idOf(k.sent[0]!.data), 2);
        t.equal(k.sent[0]!.data[3]! & 0x0f, 2, 'SERVFAIL at once for the second');
        t.equal(c.io.get('overloaded'), 1);
        k.post({ t: 'abort' });
      },
      () => {
        const reports = k.reports();
        t.equal(reports.find((r) => r.aborted !== undefined)?.aborted, 1);
        t.equal(k.sent.length, 2);
        t.equal(idOf(k.sent[1]!.data), 1, 'the waiting client gets its SERVFAIL');
        k.post({ t: 'configure', cache: { successTtl: 30, denialTtl: 5, minHits: 3, percent: 10, staleMs: 0 }, maxUdpSize: 4096, queryLogEvery: 1, clientMissRate: 0, clientMissBurst: 1, clientMissInflight: Infinity, localZones: [] });
        k.queue(5, { data: query({ name: 'big.example.com', id: 3, edns: true, udpSize: 4096 }), from: from4(3) });
      },
      () => {
        const reports = k.reports();
        t.ok(reports.some((r) => r.configured === true), 'the reload is acknowledged');
        answerMisses(k, reports, () => big);
      },
      () => {
        const last = k.sent.at(-1)!;
        t.equal(last.via, 'sendmmsg', 'bigger than a 512-byte slot: sent on its own, in a vector of one');
        t.equal(portOf(last.to), 3);
        t.equal(dnsPacket.decode(last.data).answers?.length, 120);
        const logs = k.reports().flatMap((r) => r.logs ?? []);
        t.ok(logs.some(([level, msg, f]) => level === 'info' && msg === 'query' && f?.client === '10.0.0.1'), 'the query log decodes the peer');
      },
    ],
    { maxInflight: 1 },
  );
  loop.run();
  t.equal(c.server.get('abortedAtShutdown'), 1);
});

t.test('loop: while the main thread is at its cap, a new miss is answered here (stale, else SERVFAIL) without crossing; a view zone and a question in flight still cross', async (t) => {
  const q = (name: string, id: number) => ({ data: query({ name, id }), from: from4(id) });
  const missKeys = (reports: WorkerReport[]): string[] => reports.flatMap((r) => r.misses?.keys ?? []);
  const { k, loop, c, store } = loopRig(
    [
      () => k.queue(5, q('inflight.example.com', 1)),
      () => {
        t.equal(missKeys(k.reports()).length, 1, 'before any refusal a miss crosses');
        k.load.setCap(1);
        k.load.setInflight(1);
        k.queue(5, q('inflight.example.com', 2));
        k.queue(5, q('new.example.com', 3));
        k.queue(5, q('old.example.com', 4));
        k.queue(5, q('web.shop.svc.cluster.local', 5));
      },
      () => {
        const keys = missKeys(k.reports());
        t.equal(keys.length, 1, 'only the view\'s zone crossed');
        t.match(keys[0], /cluster/);
        t.same(k.sent.map((d) => idOf(d.data)), [3, 4], 'the two shed misses answered in the turn they arrived');
        t.equal(k.sent[0]!.data[3]! & 0x0f, 2, 'SERVFAIL without a stale answer');
        const stale = dnsPacket.decode(k.sent[1]!.data);
        t.equal(k.sent[1]!.data[3]! & 0x0f, 0, 'the stale answer where the cache still holds one');
        t.equal(ttlOf(stale.answers![0]!), 30, 'with the stale TTL');
        t.equal(c.io.get('shedBusy'), 2);
        t.equal(c.server.get('coalesced'), 1, 'the query for the name in flight joined it');
        k.load.setInflight(0);
        stampRefusal(new Int32Array(k.ctl));
        k.queue(5, q('later.example.com', 6));
      },
      () => t.same(missKeys(k.reports()).length, 1, 'room at the cap again: refused just now, but with few of its own waiting, a miss crosses'),
    ],
    { localZones: ['cluster.local'] },
  );
  const old = answer('old.example.com', [rr('old.example.com', '192.0.2.4', 60)]);
  store.insert(parseQuery(query({ name: 'old.example.com' })).key, old, scanAnswer(old)!, systemClock.now() - 120_000);
  loop.run();
  t.equal(c.io.get('shedBusy'), 2);
});

t.test('loop: a read that meets the writer mid-change is no miss: neither the shed gate nor the worker limit answers it, it goes to the main thread', async (t) => {
  const missKeys = (reports: WorkerReport[]): string[] => reports.flatMap((r) => r.misses?.keys ?? []);
  let seq: Int32Array | null = null;
  const { k, loop, c, store } = loopRig(
    [
      () => k.queue(5, { data: query({ name: 'fill.example.com', id: 1 }), from: from4(1) }),
      () => {
        t.equal(missKeys(k.reports()).length, 1, 'the worker limit (1) is now taken');
        k.load.setCap(1);
        k.load.setInflight(1);
        // The writer, preempted inside a change: the sequence word stays odd.
        Atomics.add(seq!, SEQ, 1);
        k.queue(5, { data: query({ name: SVC, id: 2 }), from: from4(2) });
      },
      () => {
        t.same(missKeys(k.reports()), [parseQuery(query({ name: SVC })).key], 'the cached name went to the main thread, not a SERVFAIL');
        t.equal(k.sent.length, 0, 'nothing answered here');
        t.equal(c.cache.get('readGaveUp'), 1, 'counted as a read given up');
        t.equal(c.io.get('shedBusy') + c.io.get('overloaded'), 0, 'neither shed nor refused');
        Atomics.add(seq!, SEQ, 1);
        k.queue(5, { data: query({ name: SVC, id: 3 }), from: from4(3) });
      },
      () => t.same(k.sent.map((d) => idOf(d.data)), [3], 'once the change is done, a hit again'),
    ],
    { maxInflight: 1 },
  );
  storeAnswer(store, SVC, answer(SVC, [rr(SVC, '192.0.2.9', 60)]));
  seq = new Int32Array(store.layout.index, 0, 4);
  loop.run();
});

t.test('loop: a hit is not held behind a big batch of completions (at most COMPLETIONS_PER_TURN per turn)', async (t) => {
  const N = COMPLETIONS_PER_TURN + 44;
  let mark = 0;
  const rig = loopRig(
    [
      () => rig.k.queue(5, { data: query({ name: 'hot.example.com', id: 1 }), from: from4(1) }),
      () => answerMisses(rig.k, rig.k.reports(), (n) => answer(n, [rr(n, '192.0.2.1', 60)]), rig.store),
      () => {
        for (let i = 0; i < N; i++) rig.k.queue(5, { data: query({ name: `m-${i}.example.com`, id: i }), from: from4(1000 + i) });
      },
      () => {
        t.equal(answerMisses(rig.k, rig.k.reports(), (n) => answer(n, [rr(n, '192.0.2.2', 60)]), rig.store), N);
        mark = rig.k.sent.length;
        rig.k.queue(5, { data: query({ name: 'hot.example.com', id: 9999 }), from: from4(2) });
      },
    ],
    { maxInflight: 1000 },
  );
  rig.loop.run();
  const after = rig.k.sent.slice(mark);
  t.equal(after.length, N + 1);
  const hit = after.findIndex((s) => idOf(s.data) === 9999 && portOf(s.to) === 2);
  t.ok(hit >= 0 && hit <= COMPLETIONS_PER_TURN, `the hit went out with the first ${COMPLETIONS_PER_TURN} completions (at ${hit}), not after all ${N}`);
});

t.test('loop: every client handed back in the turn \'close\' comes is answered, past COMPLETIONS_PER_TURN of them (none left in the queue at exit)', async (t) => {
  const N = COMPLETIONS_PER_TURN + 44;
  const { k, loop, store } = loopRig([
    () => {
      storeAnswer(store, SVC, answer(SVC, [rr(SVC, '192.0.2.7', 60)]));
      // Records the main thread handed back (their question was answered there), arriving with the close.
      const p = new Packer(false, WAITER_STRIDE);
      for (let i = 0; i < N; i++) {
        p.push(1, waiterTag(0, 16), query({ name: SVC, id: i }), null);
        const words = new Uint32Array(WAITER_SOCKADDR_WORDS);
        new Uint8Array(words.buffer).set(from4(1000 + i));
        p.extraWords(words, 0, WAITER_SOCKADDR_WORDS);
      }
      k.post({ t: 'again', items: p.take() });
      k.post({ t: 'close' });
    },
  ], { remoteWaiters: true });
  loop.run();
  t.equal(k.sent.length, N, `all ${N} handed-back clients get their hit`);
  t.same(new Set(k.sent.map((s) => portOf(s.to))).size, N, 'each at its own address');
});

t.test('loop: a client handed back in the turn \'close\' comes that misses again is answered (SERVFAIL) by the worker, not reported to a main thread that no longer reads', async (t) => {
  const seen = reportTaker();
  const { k, loop } = loopRig([
    () => {
      const p = new Packer(false, WAITER_STRIDE);
      p.push(1, waiterTag(0, 16), query({ name: 'again.example.com', id: 7 }), null);
      const words = new Uint32Array(WAITER_SOCKADDR_WORDS);
      new Uint8Array(words.buffer).set(from4(7777));
      p.extraWords(words, 0, WAITER_SOCKADDR_WORDS);
      k.post({ t: 'again', items: p.take() });
      k.post({ t: 'close' });
    },
  ], { remoteWaiters: true });
  loop.run();
  seen.take(k.reports());
  t.same(k.sent.map((s) => [idOf(s.data), portOf(s.to), s.data[3]! & 0x0f]), [[7, 7777, 2]], 'SERVFAIL from the worker');
  t.equal(seen.waiters.length, 0, 'no record for it');
});

t.test('--io and --workers: flags and config-file keys, validated (a bad value is a ConfigError: exit 2)', async (t) => {
  const { loadConfig, ConfigError, DEFAULTS } = await import('../src/config.js');
  t.equal(DEFAULTS.io, 'batched', 'batched by default');
  t.equal(DEFAULTS.workers, 0, 'workers auto by default');
  const c = loadConfig(['--io', 'dgram', '--workers', '3'], { env: {} }).config;
  t.equal(c.io, 'dgram');
  t.equal(c.workers, 3);
  t.throws(() => loadConfig(['--io', 'recvmmsg'], { env: {} }), ConfigError, 'an unknown backend');
  t.throws(() => loadConfig(['--io', 'recvmmsg'], { env: {} }), /--io "recvmmsg": expected batched or dgram/);
  t.throws(() => loadConfig(['--workers', '-1'], { env: {} }), /--workers "-1"/);
  t.throws(() => loadConfig(['--workers', '65'], { env: {} }), /--workers "65": expected a whole number 0-64/);
  t.throws(() => loadConfig(['--workers', 'two'], { env: {} }), ConfigError);
  const dir = mkdtempSync(join(tmpdir(), 'nldns-io-'));
  const file = join(dir, 'agent.yaml');
  writeFileSync(file, 'io: dgram\nworkers: 2\n');
  const f = loadConfig(['--config', file], { env: {} }).config;
  t.same([f.io, f.workers], ['dgram', 2], 'config-file keys io and workers');
  t.same(workerMissLimit(0, 1000, 250, 4), { clientMissRate: 0, clientMissBurst: 1, clientMissInflight: Infinity }, 'no limit: none in the workers');
  t.same(workerMissLimit(100, 1000, 250, 4), { clientMissRate: 25, clientMissBurst: 250, clientMissInflight: 62 }, 'each worker a quarter of rate, burst and questions in flight');
  t.same(workerMissLimit(100, 2, 2, 4), { clientMissRate: 25, clientMissBurst: 1, clientMissInflight: 1 }, 'a burst and a cap of at least one');
});

/** A completion as the main thread sends it: `here`, it answered the token's clients itself (direct.ts). */
function doneItems(items: { token: number; answer: Buffer | null; here: boolean; outcome?: MissOutcome }[]): Packer {
  const done = new Packer(false, DONE_STRIDE);
  for (const i of items) {
    done.push(i.token, OUTCOME_INDEX[i.outcome ?? 'upstream'], i.answer, null);
    done.extra(0, i.here ? 1 : 0);
    if (i.here) done.extra(1, stamp16());
  }
  return done;
}

/** Collects a loop's reports as a test plays the main thread: the last miss's token and every waiter record. */
function reportTaker(): { token: number; readonly waiters: Packed[]; take: (reports: WorkerReport[]) => void } {
  const seen = {
    token: 0,
    waiters: [] as Packed[],
    take: (reports: WorkerReport[]): void => {
      for (const r of reports) {
        if (r.misses !== null) seen.token = itemToken(r.misses, 0);
        if (r.waiters) seen.waiters.push(r.waiters);
      }
    },
  };
  return seen;
}

/** A waiter record the loop reported, handed back as the main thread does (direct.ts): every word of it, as it came. */
function handedBack(w: Packed, i = 0): Packed {
  const p = new Packer(false, WAITER_STRIDE);
  p.push(itemToken(w, i), itemTag(w, i), itemBytes(w, i), null);
  p.extraWords(new Uint32Array(w.index.buffer, w.index.byteOffset, w.index.length), itemExtraOffset(w, i), WAITER_STRIDE - 4);
  return p.take();
}

/** Steps: client 1 (port 1111) misses SVC, then client 2 (port 2222) joins its question; `seen` takes the reports. */
function twoClients(k: () => FakeKernel, seen: ReturnType<typeof reportTaker>): (() => void)[] {
  return [
    () => k().queue(5, { data: query({ name: SVC, id: 1 }), from: from4(1111) }),
    () => {
      seen.take(k().reports());
      k().queue(5, { data: query({ name: SVC, id: 2 }), from: from4(2222) });
    },
  ];
}

t.test('loop with remoteWaiters: a client handed back that hits is observed in the duration histogram from when it first arrived, not as 0 s', async (t) => {
  const seen = reportTaker();
  const HELD_MS = 25;
  const { k, loop, c, store } = loopRig([
    ...twoClients(() => k, seen),
    () => {
      seen.take(k.reports());
      storeAnswer(store, SVC, answer(SVC, [rr(SVC, '192.0.2.7', 60)]));
      k.post({ t: 'done', items: doneItems([{ token: seen.token, answer: answer(SVC, [rr(SVC, '192.0.2.7', 60)]), here: true }]).take() });
      // Client 2 has waited at least this long by the time it is answered (a lower bound, not a speed).
      holdThread(HELD_MS);
      k.post({ t: 'again', items: handedBack(seen.waiters[1]!) });
    },
  ], { remoteWaiters: true });
  loop.run();
  t.same(k.sent.map((s) => [idOf(s.data), portOf(s.to)]), [[2, 2222]], 'the client handed back gets its hit');
  t.equal(c.hist.duration.count, 1, 'observed once, here');
  // Less one ms: holdThread() reads Date.now(), whole milliseconds.
  t.ok(c.hist.duration.sum >= (HELD_MS - 1) / 1000, `from its arrival: about the ${HELD_MS} ms it was held at least (observed ${c.hist.duration.sum} s)`);
  // As the dgram backend counts a client that joined a miss: one lookup each, a miss; its second look is no hit.
  t.equal(c.cache.get('miss'), 2, 'clients 1 and 2 each counted a miss once');
  t.equal(c.cache.get('hitPositive'), 0, 'the client handed back is not counted a hit besides');
});

t.test('loop with remoteWaiters: a client handed back after its question timed out, answered stale on the spot (the failure recheck window), is observed from when it first arrived and counted one cache miss, as the dgram backend counts it', async (t) => {
  const seen = reportTaker();
  const HELD_MS = 25;
  const { k, loop, c, store } = loopRig([
    () => {
      // Expired a minute ago, inside the stale window.
      const old = answer(SVC, [rr(SVC, '192.0.2.8', 60)]);
      store.insert(parseQuery(query({ name: SVC })).key, old, scanAnswer(old)!, systemClock.now() - 120_000);
      k.queue(5, { data: query({ name: SVC, id: 1 }), from: from4(1111) });
    },
    () => {
      seen.take(k.reports());
      k.queue(5, { data: query({ name: SVC, id: 2 }), from: from4(2222) });
    },
    () => {
      seen.take(k.reports());
      // The main thread answered client 1 stale (the upstream timed out); client 2's record came late.
      k.post({ t: 'done', items: doneItems([{ token: seen.token, answer: null, here: true, outcome: 'timeout' }]).take() });
      holdThread(HELD_MS);
      k.post({ t: 'again', items: handedBack(seen.waiters[1]!) });
    },
  ], { remoteWaiters: true });
  loop.run();
  t.same(k.sent.map((s) => [idOf(s.data), portOf(s.to)]), [[2, 2222]], 'the client handed back gets the stale answer here');
  t.same(dataOf(dnsPacket.decode(k.sent[0]!.data)), ['192.0.2.8']);
  t.equal(c.hist.duration.count, 1, 'observed once, here');
  t.ok(c.hist.duration.sum >= (HELD_MS - 1) / 1000, `from its arrival, not as 0 s (observed ${c.hist.duration.sum} s)`);
  t.equal(c.cache.get('miss'), 2, 'clients 1 and 2 each counted a miss once');
});

t.test('loop with remoteWaiters: a client handed back that joins a question in flight again is not counted coalesced a second time', async (t) => {
  const seen = reportTaker();
  const { k, loop, c } = loopRig([
    ...twoClients(() => k, seen),
    () => {
      seen.take(k.reports());
      // Answered on the main thread, not stored (say, uncacheable); client 3 then opens a new question for the name.
      k.post({ t: 'done', items: doneItems([{ token: seen.token, answer: answer(SVC, [rr(SVC, '192.0.2.7', 60)]), here: true }]).take() });
      k.queue(5, { data: query({ name: SVC, id: 3 }), from: from4(3333) });
    },
    () => {
      seen.take(k.reports());
      // Client 2's record came late: handed back, it joins client 3's question.
      k.post({ t: 'again', items: handedBack(seen.waiters[1]!) });
    },
    () => seen.take(k.reports()),
  ], { remoteWaiters: true });
  loop.run();
  t.equal(seen.waiters.reduce((n, p) => n + p.count, 0), 4, 'records: clients 1, 2 and 3, then client 2 again');
  t.equal(c.server.get('coalesced'), 1, 'client 2 joined a question in flight once as far as the count goes');
  t.equal(c.server.get('requestsUdp'), 3, 'three requests');
});

t.test('loop with remoteWaiters: waiters are reported for the main thread (token, socket, sockaddr, datagram); a completion it answered is not sent again, to any client reported', async (t) => {
  const seen = reportTaker();
  const { waiters, take } = seen;
  const { k, loop, c, store } = loopRig([
    () => k.queue(5, { data: query({ name: 'SvC.example.com', id: 1, edns: true }), from: from4(1111) }),
    () => {
      take(k.reports());
      // A second client joins the miss in flight: its record comes in a later report, under the same token.
      k.queue(6, { data: query({ name: SVC, id: 2 }), from: sockaddr6loopback(2222) });
    },
    () => {
      take(k.reports());
      // The main thread answered both clients when the answer came (client 2 it would hand back had its record come
      // late), and stored it.
      const ans = answer(SVC, [rr(SVC, '192.0.2.7', 60)]);
      storeAnswer(store, SVC, ans);
      k.post({ t: 'done', items: doneItems([{ token: seen.token, answer: ans, here: true }]).take() });
    },
    () => {
      t.same(k.sent.map((s) => [s.fd, idOf(s.data)]), [], 'the worker answers neither: both are the main thread\'s');
      k.queue(5, { data: query({ name: SVC, id: 3 }), from: from4(3333) });
    },
  ], { remoteWaiters: true });
  loop.run();
  t.not(seen.token, 0);
  const all = waiters.flatMap((p) => [...Array(p.count).keys()].map((i) => ({ p, i })));
  t.equal(all.length, 2, 'two waiter records');
  const [w1, w2] = all as [{ p: Packed; i: number }, { p: Packed; i: number }];
  t.same([itemToken(w1.p, w1.i), itemToken(w2.p, w2.i)], [seen.token, seen.token], 'both under the miss\'s token (the second found by its key)');
  t.same([itemTag(w1.p, w1.i), itemTag(w2.p, w2.i)], [waiterTag(0, 16), waiterTag(1, 28)], 'socket index and sockaddr length');
  t.equal(idOf(itemBytes(w1.p, w1.i)!), 1, 'the client\'s own datagram');
  const sa = new Uint8Array(new Uint32Array([...Array(WAITER_SOCKADDR_WORDS).keys()].map((x) => itemExtra(w1.p, w1.i, x))).buffer).subarray(0, 16);
  t.same(Buffer.from(sa), from4(1111), 'its sockaddr');
  t.same(k.sent.map((s) => idOf(s.data)), [3], 'then a hit from the cache the completion filled');
  t.equal(c.cache.get('hitPositive'), 1);
  t.equal(c.server.get('rcode0'), 1, 'the answer the worker sent counted; the ones the main thread sent are its to count');
  t.equal(c.io.get('inflight'), 0);
});

t.test('loop: a query from source port 0 (spoofed: nowhere to answer) is dropped and counted, never handled: no request, no miss', async (t) => {
  const { k, loop, c } = loopRig([
    () => {
      k.queue(5, { data: query({ name: SVC, id: 1 }), from: from4(0) });
      k.queue(6, { data: query({ name: SVC, id: 2 }), from: sockaddr6loopback(0) });
      k.queue(5, { data: query({ name: 'other.example.com', id: 3 }), from: from4(3333) });
    },
    () => undefined,
  ]);
  const before = c.server.get('requestsUdp');
  loop.run();
  t.equal(c.server.get('dropped'), 2, 'both counted in nodelocal_dropped_total (IPv4 and IPv6)');
  t.equal(c.server.get('requestsUdp') - before, 1, 'only the real client is a request');
  const misses = k.reports().reduce((n, r) => n + (r.misses?.count ?? 0), 0);
  t.equal(misses, 1, 'and only its question is a miss');
  t.same(k.sent, [], 'nothing sent to port 0');
});

t.test('loop with remoteWaiters: a waiting client is reported and only counted; every outcome is the main thread\'s to send; a client handed back runs again', async (t) => {
  const seen = reportTaker();
  const { waiters, take } = seen;
  let handedBack: Packed | null = null;
  const { k, loop, c, store } = loopRig([
    () => k.queue(5, { data: query({ name: SVC, id: 1 }), from: from4(1111) }),
    () => {
      take(k.reports());
      // Refills the receive slot client 1 came in: a peer it kept would now read 4444.
      k.queue(5, { data: query({ name: SVC, id: 2 }), from: from4(4444) });
    },
    () => {
      take(k.reports());
      // A failure, answered by the main thread (stale or SERVFAIL): client 2's record was on its way.
      k.post({ t: 'done', items: doneItems([{ token: seen.token, answer: null, here: true }]).take() });
    },
    () => {
      t.same(k.sent, [], 'nothing sent by the worker, not even to client 2: it holds neither (client 2 comes back handed back)');
      t.equal(c.io.get('inflight'), 0, 'the question is closed');
      // Client 2's record, handed back as if it had come late: the answer is stored by now, so it is a hit.
      storeAnswer(store, SVC, answer(SVC, [rr(SVC, '192.0.2.7', 60)]));
      const w = waiters[1]!;
      const p = new Packer(false, WAITER_STRIDE);
      p.push(seen.token, itemTag(w, 0), itemBytes(w, 0), null);
      p.extraWords(new Uint32Array(w.index.buffer, w.index.byteOffset, w.index.length), itemExtraOffset(w, 0), WAITER_SOCKADDR_WORDS);
      handedBack = p.take();
      k.post({ t: 'again', items: handedBack });
    },
    () => {
      t.same(k.sent.map((s) => [s.fd, idOf(s.data), portOf(s.to)]), [[5, 2, 4444]], 'the client handed back gets its hit, at its own address');
      // A client handed back that misses again becomes a miss of its own, reported with its record.
      const p = new Packer(false, WAITER_STRIDE);
      p.push(seen.token, waiterTag(1, 28), query({ name: 'again.example.com', id: 3 }), null);
      const words = new Uint32Array(WAITER_SOCKADDR_WORDS);
      new Uint8Array(words.buffer).set(sockaddr6loopback(5555));
      p.extraWords(words, 0, WAITER_SOCKADDR_WORDS);
      k.post({ t: 'again', items: p.take() });
    },
    () => take(k.reports()),
  ], { remoteWaiters: true });
  const requestsBefore = c.server.get('requestsUdp');
  loop.run();
  t.not(handedBack, null);
  t.equal(waiters.reduce((n, p) => n + p.count, 0), 3, 'three records: the two clients, then the one that missed again');
  const last = waiters[waiters.length - 1]!;
  t.same([idOf(itemBytes(last, 0)!), itemTag(last, 0), itemToken(last, 0)], [3, waiterTag(1, 28), seen.token], 'under its new miss\'s token, from its own socket and sockaddr');
  t.equal(c.server.get('requestsUdp') - requestsBefore, 2, 'a client handed back is not counted as a request again');
  t.equal(c.io.get('inflight'), 1, 'its miss waits');
});

t.test('loop with remoteWaiters: a miss refused at once (over --max-inflight) is answered by the worker; a client sampled for the query log is kept and logged, not sent twice', async (t) => {
  let token = 0;
  const logs: WorkerReport['logs'][] = [];
  const { k, loop, c } = loopRig([
    () => k.queue(5, { data: query({ name: SVC, id: 1 }), from: from4(1111) }),
    () => {
      for (const r of k.reports()) {
        if (r.misses !== null) token = itemToken(r.misses, 0);
        if (r.logs !== null) logs.push(r.logs);
      }
      // The main thread answered it; the worker logs it, sends nothing.
      k.post({ t: 'done', items: doneItems([{ token, answer: answer(SVC, [rr(SVC, '192.0.2.7', 60)]), here: true }]).take() });
    },
    () => {
      for (const r of k.reports()) if (r.logs !== null) logs.push(r.logs);
    },
  ], { remoteWaiters: true, queryLogEvery: 1 });
  loop.run();
  t.same(k.sent, [], 'nothing sent by the worker');
  const queryLines = logs.flatMap((l) => l ?? []).filter((l) => l[1] === 'query');
  t.same(queryLines.map((l) => [l[2]?.source, l[2]?.client, l[2]?.rcode]), [['upstream', '10.0.0.1', 0]], 'logged once, as answered upstream');

  const refused = loopRig([() => k2.queue(5, { data: query({ name: SVC, id: 9 }), from: from4(9999) })], { remoteWaiters: true, maxInflight: 0 });
  const k2 = refused.k;
  refused.loop.run();
  t.same(k2.sent.map((s) => [idOf(s.data), portOf(s.to), s.data[3]! & 0x0f]), [[9, 9999, 2]], 'SERVFAIL from the worker: the main thread never heard of it');
  t.equal(k2.reports().reduce((n, r) => n + (r.waiters?.count ?? 0), 0), 0, 'no record for it');
  t.equal(c.io.get('inflight'), 0);
});

t.test('loop with remoteWaiters: a timeout the main thread answered (stale) opens the failure recheck window here too: the next query for the name gets the stale answer at once (RFC 8767 5)', async (t) => {
  const seen = reportTaker();
  const { k, loop, store } = loopRig([
    () => k.queue(5, { data: query({ name: SVC, id: 1 }), from: from4(1111) }),
    () => {
      seen.take(k.reports());
      // The upstream timed out; the main thread answered client 1 stale.
      k.post({ t: 'done', items: doneItems([{ token: seen.token, answer: null, here: true, outcome: 'timeout' }]).take() });
    },
    () => k.queue(5, { data: query({ name: SVC, id: 2 }), from: from4(2222) }),
    () => seen.take(k.reports()),
  ], { remoteWaiters: true });
  // Expired a minute ago, inside the stale window.
  const stale = answer(SVC, [rr(SVC, '192.0.2.7', 60)]);
  store.insert(parseQuery(query({ name: SVC })).key, stale, scanAnswer(stale)!, systemClock.now() - 120_000);
  loop.run();
  t.not(seen.token, 0);
  t.same(k.sent.map((s) => [idOf(s.data), portOf(s.to), s.data[3]! & 0x0f]), [[2, 2222, 0]], 'client 2 gets the stale answer from the worker at once');
  t.equal(seen.waiters.reduce((n, p) => n + p.count, 0), 1, 'client 2 waits on no second upstream query');
});

t.test('loop with remoteWaiters: a client sampled for the query log whose record reached the main thread late is answered once (handed back), not also by the completion', async (t) => {
  const seen = reportTaker();
  const { k, loop, store } = loopRig([
    ...twoClients(() => k, seen),
    () => {
      seen.take(k.reports());
      const ans = answer(SVC, [rr(SVC, '192.0.2.7', 60)]);
      storeAnswer(store, SVC, ans);
      // Answered on the main thread; client 2's record came after, so the main thread hands it back.
      k.post({ t: 'done', items: doneItems([{ token: seen.token, answer: ans, here: true }]).take() });
      k.post({ t: 'again', items: handedBack(seen.waiters[1]!) });
    },
  ], { remoteWaiters: true, queryLogEvery: 1 });
  loop.run();
  t.equal(seen.waiters.length, 2);
  t.same(k.sent.map((s) => [idOf(s.data), portOf(s.to)]), [[2, 2222]], 'client 2 gets one answer from the worker; client 1 none (the main thread answered it)');
});

t.test('loop with remoteWaiters: abort sends nothing to a client sampled for the query log: the main thread answered it (direct.ts abort())', async (t) => {
  const seen = reportTaker();
  const { k, loop, c } = loopRig([
    () => k.queue(5, { data: query({ name: SVC, id: 1 }), from: from4(1111) }),
    () => {
      seen.take(k.reports());
      k.post({ t: 'abort' });
    },
  ], { remoteWaiters: true, queryLogEvery: 1 });
  loop.run();
  t.equal(seen.waiters.length, 1, 'its record went to the main thread');
  t.same(k.sent, [], 'no second answer from the worker');
  t.equal(c.server.get('abortedAtShutdown'), 1, 'counted once, here');
});

t.test('loop with remoteWaiters: clients handed back as the abort comes are answered by the worker in that turn, not reported to a main thread that has stopped waiting (its close would come first)', async (t) => {
  const seen = reportTaker();
  const record = (p: Packer, token: number, name: string, id: number, port: number): void => {
    p.push(token, waiterTag(0, 16), query({ name, id }), null);
    const words = new Uint32Array(WAITER_SOCKADDR_WORDS);
    new Uint8Array(words.buffer).set(from4(port));
    p.extraWords(words, 0, WAITER_SOCKADDR_WORDS);
  };
  const { k, loop } = loopRig([
    () => k.queue(5, { data: query({ name: SVC, id: 1 }), from: from4(1111) }),
    () => {
      seen.take(k.reports());
      k.post({ t: 'pause' });
    },
    () => {
      seen.take(k.reports());
      // Handed back just before the abort: one would join the question still in flight here, one misses afresh.
      const p = new Packer(false, WAITER_STRIDE);
      record(p, seen.token, SVC, 2, 2222);
      record(p, seen.token, 'again.example.com', 3, 3333);
      k.post({ t: 'again', items: p.take() });
      k.post({ t: 'abort' });
    },
    () => seen.take(k.reports()),
  ], { remoteWaiters: true });
  loop.run();
  t.equal(seen.waiters.reduce((n, p) => n + p.count, 0), 1, 'only client 1 was ever reported');
  t.same(k.sent.map((s) => [idOf(s.data), portOf(s.to), s.data[3]! & 0x0f]).sort(), [[2, 2222, 2], [3, 3333, 2]], 'both handed-back clients get SERVFAIL from the worker');
});

t.test('loop: a completion whose clients the main thread all answered only closes the question: the answer is not even read', async (t) => {
  let token = 0;
  const { k, loop, c } = loopRig([
    () => k.queue(5, { data: query({ name: SVC, id: 1 }), from: from4(1111) }),
    () => {
      for (const r of k.reports()) if (r.misses !== null) token = itemToken(r.misses, 0);
      // Bytes that are no DNS message: read, they would count as malformed and answer SERVFAIL.
      k.post({ t: 'done', items: doneItems([{ token, answer: Buffer.from('not an answer'), here: true }]).take() });
    },
    () => k.queue(5, { data: query({ name: 'other.example.com', id: 2 }), from: from4(2222) }),
  ], { remoteWaiters: true });
  loop.run();
  t.not(token, 0);
  t.equal(c.server.get('upstreamMalformed'), 0, 'not read');
  t.same(k.sent.map((s) => idOf(s.data)), [], 'nothing sent: the main thread answered the client');
  t.equal(c.server.get('rcode2'), 0, 'nothing counted here');
  t.equal(c.io.get('inflight'), 1, 'closed: only the later miss waits');
});

t.test('loop without direct answers: abort after completions takes them first: no SERVFAIL for a client whose answer came; no waiter reported', async (t) => {
  let token = 0;
  const seen = reportTaker();
  const { k, loop } = loopRig([
    () => k.queue(5, { data: query({ name: SVC, id: 1 }), from: from4(1111) }),
    () => {
      const reports = k.reports();
      seen.take(reports);
      for (const r of reports) if (r.misses !== null) token = itemToken(r.misses, 0);
      k.queue(5, { data: query({ name: 'other.example.com', id: 2 }), from: from4(2222) });
    },
    () => {
      seen.take(k.reports());
      // The first's answer posted without a wake; then the abort.
      k.post({ t: 'done', items: doneItems([{ token, answer: answer(SVC, [rr(SVC, '192.0.2.7', 60)]), here: false }]).take() });
      k.post({ t: 'abort' });
    },
  ]);
  loop.run();
  t.same(k.sent.map((s) => [idOf(s.data), s.data[3]! & 0x0f]), [[1, 0], [2, 2]], 'the first gets its answer, the other, still waiting, its SERVFAIL');
  t.equal(seen.waiters.length, 0, 'no waiter records: nobody on the main thread would answer them');
});

t.test('loop: a message is applied after every ring record the main thread wrote before posting it, even one written while the worker applied an earlier message (abort after completions)', async (t) => {
  let token = 0;
  const original = HitPath.prototype.configure;
  let raced = false;
  // The main thread, on its own thread, as the worker applies the reload: it writes the first's answer to the ring, then posts the abort.
  HitPath.prototype.configure = function (this: HitPath, ...args: Parameters<HitPath['configure']>): void {
    original.apply(this, args);
    if (raced || token === 0) return;
    raced = true;
    k.post({ t: 'done', items: doneItems([{ token, answer: answer(SVC, [rr(SVC, '192.0.2.7', 60)]), here: false }]).take() });
    k.post({ t: 'abort' });
  };
  t.teardown(() => {
    HitPath.prototype.configure = original;
  });
  const { k, loop } = loopRig([
    () => k.queue(5, { data: query({ name: SVC, id: 1 }), from: from4(1111) }),
    () => {
      for (const r of k.reports()) if (r.misses !== null) token = itemToken(r.misses, 0);
      k.post({ t: 'configure', cache: { successTtl: 30, denialTtl: 5, minHits: 3, percent: 10, staleMs: 0 }, maxUdpSize: 512, queryLogEvery: 0, clientMissRate: 0, clientMissBurst: 1, clientMissInflight: Infinity, localZones: [] });
    },
    () => {},
  ]);
  loop.run();
  t.ok(raced, 'the completion and the abort came while the worker applied the reload');
  t.same(k.sent.map((s) => [idOf(s.data), s.data[3]! & 0x0f]), [[1, 0]], 'the client gets the answer the main thread had, not the abort\'s SERVFAIL');
});

t.test('DirectAnswers: serves each waiter as the worker would, whatever the outcome (answer, stale, SERVFAIL); late records go back; never sends on closed sockets', async (t) => {
  const sys = new FakeKernel([]);
  const fds = [5, 6];
  const counters = new Counters(BATCHED_COUNTERS);
  const server = new Counters(SERVER_COUNTERS);
  const hist = hitPathHistograms();
  let nowMs = 1000;
  // The one cache holds an expired answer for key 'old' (in its stale window): DnsCache.stale, counted per client served.
  const old = answer(SVC, [rr(SVC, '192.0.2.66', 600)]);
  const staleEntry = AnswerCopy.fromAnswer(old, scanAnswer(old)!, 0, 600, Number.POSITIVE_INFINITY, false);
  let staleServed = 0;
  const d = new DirectAnswers(sys, fds, 2, 512, {
    policy: () => ({ cache: CACHE, maxUdpSize: 1232 }), counters, server, hist, now: () => nowMs,
    stale: (key, _now, served) => (key === 'old' ? ((staleServed += served), staleEntry) : undefined), lookup: () => undefined, logger: silentLogger,
  });
  const waiter = (tok: number, sock: number, data: Buffer, from: Buffer): Packed => {
    const p = new Packer(false, WAITER_STRIDE);
    p.push(tok, waiterTag(sock, from.length), data, null);
    const words = new Uint32Array(WAITER_SOCKADDR_WORDS);
    new Uint8Array(words.buffer).set(from);
    p.extraWords(words, 0, WAITER_SOCKADDR_WORDS);
    return p.take();
  };
  const ok = answer(SVC, [rr(SVC, '192.0.2.7', 600)]);
  const sentNow = (): [number, number, number][] => {
    const from = sys.sent.length;
    d.flush();
    return sys.sent.slice(from).map((s) => [idOf(s.data), portOf(s.to), s.data[3]! & 0x0f]);
  };

  d.expect(7, 'k7');
  t.equal(d.add(waiter(7, 0, query({ name: 'sVc.EXAMPLE.com', id: 0x1234, edns: true, udpSize: 4096 }), from4(1111))), false);
  t.equal(d.add(waiter(7, 1, query({ name: SVC, id: 0x4321 }), sockaddr6loopback(2222))), false);
  nowMs += 3;
  t.equal(d.answer(7, ok), true, 'answered here, both records');
  t.equal(hist.duration.count, 2, 'each answer observed in coredns_dns_request_duration_seconds, here where it leaves');
  t.equal(hist.duration.sum, 0.006, 'from when its record arrived: 3 ms each');
  t.equal(hist.responseSize[0].count, 2, 'and its size, as UDP');
  t.equal(sys.sent.length, 0, 'nothing before the end of the turn');
  d.flush();
  t.same(sys.sent.map((s) => [s.fd, idOf(s.data), portOf(s.to), s.via]), [[5, 0x1234, 1111, 'sendmmsg'], [6, 0x4321, 2222, 'sendmmsg']]);
  const first = dnsPacket.decode(sys.sent[0]!.data);
  t.equal(first.questions?.[0]?.name, 'sVc.EXAMPLE.com', '0x20 case echoed');
  t.ok(first.additionals?.some((x) => x.type === 'OPT'), 'OPT for the EDNS client');
  t.equal((first.answers?.[0] as { ttl?: number } | undefined)?.ttl, 30, 'TTL capped by the cache policy (successTtl), as the worker serves it');
  t.notOk(dnsPacket.decode(sys.sent[1]!.data).additionals?.some((x) => x.type === 'OPT'), 'none for the other');
  t.equal(counters.get('directAnswers'), 2);
  t.equal(server.get('rcode0'), 2, 'counted by rcode as they leave');

  t.equal(d.add(waiter(7, 0, query({ name: SVC, id: 9 }), from4(9999))), true, 'a record for a completed miss is handed back');
  const back = d.takeAgain();
  t.equal(back?.count, 1, 'in the next \'again\' message');
  t.same([idOf(itemBytes(back!, 0)!), itemTag(back!, 0)], [9, waiterTag(0, 16)], 'as it came: datagram, socket and sockaddr length');
  t.equal(portOf(Buffer.from(back!.index.buffer, back!.index.byteOffset + itemExtraOffset(back!, 0) * 4, 16)), 9999, 'and its sockaddr');
  t.equal(d.takeAgain(), null, 'taken once');

  d.expect(8, 'k8');
  d.add(waiter(8, 0, query({ name: SVC, id: 10 }), from4(1010)));
  t.equal(d.failedSincePost, false, 'answers only: the completions can go without waking the worker');
  t.equal(d.answer(8, null), true, 'a failure (timeout) is answered here too');
  t.equal(d.failedSincePost, true, 'and its completion wakes the worker (its shed gate counts its misses in flight)');
  t.same(sentNow(), [[10, 1010, 2]], 'SERVFAIL: nothing stale for its key');
  t.equal(d.add(waiter(8, 0, query({ name: SVC, id: 19 }), from4(1019))), true, 'a late record for a question that failed: late (the link flushes)');
  t.same(sentNow(), [[19, 1019, 2]], 'it gets the failure\'s answer at once, as a client that joined in time did (not another upstream deadline)');
  t.equal(d.takeAgain(), null, 'and not handed back');
  d.expect(9, 'k9');
  d.add(waiter(9, 0, query({ name: SVC, id: 11 }), from4(1011)));
  t.equal(d.answer(9, answer(SVC, [], { rcode: 'SERVFAIL' })), true);
  t.same(sentNow(), [[11, 1011, 2]], 'an upstream SERVFAIL: SERVFAIL');
  d.expect(13, 'old');
  d.add(waiter(13, 0, query({ name: SVC, id: 14 }), from4(1014)));
  d.add(waiter(13, 1, query({ name: SVC, id: 15 }), sockaddr6loopback(1015)));
  t.equal(d.answer(13, null), true);
  const staleOut = sys.sent.length;
  t.same(sentNow(), [[14, 1014, 0], [15, 1015, 0]], 'stale for a key the cache still holds (RFC 8767), to each client');
  t.equal(staleServed, 2, 'counted once per client served');
  t.equal((dnsPacket.decode(sys.sent[staleOut]!.data).answers?.[0] as { ttl?: number } | undefined)?.ttl, 30, 'with the stale answer TTL');
  d.expect(16, 'old');
  d.add(waiter(16, 0, query({ name: SVC, id: 16 }), from4(1016)));
  d.answer(16, answer(SVC, [], { rcode: 'FORMERR' }));
  t.same(sentNow(), [[16, 1016, 0]], 'an upstream FORMERR with a stale entry held: stale');
  d.expect(17, 'k17');
  d.add(waiter(17, 0, query({ name: SVC, id: 17 }), from4(1017)));
  d.answer(17, answer(SVC, [], { rcode: 'FORMERR' }));
  t.same(sentNow(), [[17, 1017, 1]], 'with nothing stale: the FORMERR as it came, as the worker would');
  d.expect(18, 'k18');
  d.add(waiter(18, 0, query({ name: SVC, id: 18 }), from4(1018)));
  d.answer(18, Buffer.from('not an answer'));
  t.same(sentNow(), [[18, 1018, 2]], 'a malformed answer: SERVFAIL (nothing stale)');
  t.equal(server.get('upstreamMalformed'), 1, 'counted here, where it is read (nodelocal_upstream_malformed_total)');
  d.expect(10, 'k10');
  t.equal(d.answer(10, ok), true, 'known here though nobody waits (a refresh): the worker sends nothing');
  t.same(sentNow(), [], 'nothing sent');

  // Queued, then the worker's sockets are closed before the end of the turn: nothing goes out.
  d.expect(11, 'k11');
  d.add(waiter(11, 0, query({ name: SVC, id: 12 }), from4(1012)));
  t.equal(d.answer(11, ok), true);
  fds.length = 0;
  const before = sys.sent.length;
  d.close();
  d.flush();
  d.expect(12, 'k12');
  d.add(waiter(12, 0, query({ name: SVC, id: 13 }), from4(1013)));
  t.equal(d.answer(12, ok), false, 'after close: left to nobody');
  t.equal(sys.sent.length, before, 'nothing sent after the sockets closed');
  t.equal(counters.get('sendErrors'), 1, 'the one queued counted as lost');
});

t.test('DirectAnswers: clients of an answer the exchange stored are served from its entry; once the worker has exited, a late record is answered here from the one cache (fresh, else stale, else SERVFAIL), never handed back to the dead worker', async (t) => {
  const sys = new FakeKernel([]);
  const counters = new Counters(BATCHED_COUNTERS);
  const keyOf = (name: string): string => parseQuery(query({ name })).key;
  const cached = answer(SVC, [rr(SVC, '192.0.2.7', 600)]);
  const fresh = AnswerCopy.fromAnswer(cached, scanAnswer(cached)!, 1000, 600, Number.POSITIVE_INFINITY, false);
  const oldName = 'old.example.com';
  const old = answer(oldName, [rr(oldName, '192.0.2.66', 600)]);
  const staleEntry = AnswerCopy.fromAnswer(old, scanAnswer(old)!, 0, 600, Number.POSITIVE_INFINITY, false);
  const d = new DirectAnswers(sys, [5], 4, 512, {
    policy: () => ({ cache: CACHE, maxUdpSize: 1232 }), counters, server: new Counters(SERVER_COUNTERS), hist: hitPathHistograms(), now: () => 2000,
    stale: (key) => (key === keyOf(oldName) ? staleEntry : undefined), lookup: (key) => (key === keyOf(SVC) ? fresh : undefined), logger: silentLogger,
  });
  const waiter = (tok: number, data: Buffer, port: number): Packed => {
    const p = new Packer(false, WAITER_STRIDE);
    const from = from4(port);
    p.push(tok, waiterTag(0, from.length), data, null);
    const words = new Uint32Array(WAITER_SOCKADDR_WORDS);
    new Uint8Array(words.buffer).set(from);
    p.extraWords(words, 0, WAITER_SOCKADDR_WORDS);
    return p.take();
  };
  // Alive, a record for a question answered already goes back to the worker, which runs it through its hit path.
  t.equal(d.add(waiter(3, query({ name: SVC, id: 1 }), 1001)), true);
  t.equal(d.takeAgain()?.count, 1, 'handed back while the worker lives');
  // An answer the exchange stored in the one cache: its clients are served from that entry, not from a copy of their own.
  d.expect(6, keyOf(SVC));
  d.add(waiter(6, query({ name: SVC, id: 5 }), 1005));
  const other = answer(SVC, [rr(SVC, '192.0.2.99', 600)]);
  t.equal(d.answer(6, other, scanAnswer(other)!, fresh), true);
  d.flush();
  t.equal((dnsPacket.decode(sys.sent.pop()!.data).answers?.[0] as { data?: string } | undefined)?.data, '192.0.2.7', 'served from the stored entry');
  d.workerExited();
  // Its last records, read at 'exit': the worker cannot take them back any more.
  t.equal(d.add(waiter(3, query({ name: SVC, id: 2 }), 1002)), true, 'late: the link flushes');
  t.equal(d.add(waiter(4, query({ name: oldName, id: 3 }), 1003)), true);
  t.equal(d.add(waiter(5, query({ name: 'gone.example.com', id: 4 }), 1004)), true);
  t.equal(d.takeAgain(), null, 'nothing handed back to a dead worker');
  d.flush();
  t.same(sys.sent.map((s) => [idOf(s.data), portOf(s.to), s.data[3]! & 0x0f]), [[2, 1002, 0], [3, 1003, 0], [4, 1004, 2]], 'fresh, stale, SERVFAIL: each client answered');
  const a = dnsPacket.decode(sys.sent[0]!.data).answers?.[0] as { data?: string; ttl?: number } | undefined;
  t.equal(a?.data, '192.0.2.7', 'from the entry the one cache holds');
  t.equal(a?.ttl, 599, 'aged as the hit path ages it (stored at 1 s, served at 2 s)');
  t.equal(counters.get('directAnswers'), 4);
  t.equal(counters.get('sendErrors'), 0);
});

t.test('DirectAnswers: abort() answers every client waiting here at once (stale or SERVFAIL); records after it go back to the worker', async (t) => {
  const sys = new FakeKernel([]);
  const counters = new Counters(BATCHED_COUNTERS);
  const d = new DirectAnswers(sys, [5], 2, 512, {
    policy: () => ({ cache: CACHE, maxUdpSize: 1232 }), counters, server: new Counters(SERVER_COUNTERS), hist: hitPathHistograms(), now: () => 1000, stale: () => undefined, lookup: () => undefined, logger: silentLogger,
  });
  const rec = (tok: number, id: number, port: number): Packed => {
    const p = new Packer(false, WAITER_STRIDE);
    p.push(tok, waiterTag(0, 16), query({ name: SVC, id }), null);
    const words = new Uint32Array(WAITER_SOCKADDR_WORDS);
    new Uint8Array(words.buffer).set(from4(port));
    p.extraWords(words, 0, WAITER_SOCKADDR_WORDS);
    return p.take();
  };
  d.expect(1, 'a');
  d.add(rec(1, 21, 2001));
  d.expect(2, 'b');
  d.add(rec(2, 22, 2002));
  d.abort();
  t.same(sys.sent.map((s) => [idOf(s.data), portOf(s.to), s.data[3]! & 0x0f]), [[21, 2001, 2], [22, 2002, 2]], 'both answered SERVFAIL, and sent at once');
  t.equal(d.answer(1, answer(SVC, [rr(SVC, '192.0.2.7', 60)])), false, 'a late outcome finds nothing to answer');
  d.expect(3, 'c');
  t.equal(d.add(rec(3, 23, 2003)), true, 'a miss reported after the abort: its client goes back to the worker (which answers it at once)');
  t.equal(d.takeAgain()?.count, 1);
  t.equal(sys.sent.length, 2, 'nothing more sent from here');
  d.close();
});

t.test('idle GC: a worker gone quiet after a burst collects twice, one check apart; never while busy, small or too soon', async (t) => {
  let heap = 100e6;
  let gcs = 0;
  const gc = (): void => {
    gcs++;
    heap -= 30e6;
  };
  const c = new IdleCollector(gc, 0, () => heap);
  let now = 0;
  let datagrams = 0;
  const step = (rate: number): boolean => {
    now += CHECK_EVERY_MS;
    datagrams += rate;
    return c.maybeCollect(now, datagrams);
  };
  t.equal(c.maybeCollect(CHECK_EVERY_MS - 1, 0), false, 'not before a second');
  heap += MIN_GROWTH_BYTES - 1;
  t.equal(step(0), false, 'quiet, but not grown enough');
  heap += 50e6;
  for (let i = 0; i < 12; i++) t.equal(step(QUIET_RATE * 10), false, `busy (${QUIET_RATE * 10}/s): no pause, however big the heap`);
  t.equal(gcs, 0);
  t.equal(step(QUIET_RATE), true, 'quiet again and grown: collect');
  t.equal(step(0), true, 'and once more at the next check');
  t.equal(gcs, 2);
  heap += 50e6;
  const until = now + MIN_GAP_MS - CHECK_EVERY_MS;
  while (now < until) t.equal(step(0), false, 'not again within the gap');
  t.equal(step(0), true, 'after the gap');
  t.equal(gcs, 3);
  t.equal(new IdleCollector(null, 0, () => 1e12).maybeCollect(60_000, 0), false, 'no gc function: never');
});

t.test('idle GC: the real gc() from exposeGc collects garbage on this thread', async (t) => {
  const gc = exposeGc();
  t.type(gc, 'function', 'V8 hands over gc()');
  // Twice, as the collector does: the second finishes sweeping the ArrayBuffers the first found dead, so the base
  // holds no garbage that could be freed while the test allocates (seen in CI: the base counted 18 MB about to go).
  gc!();
  gc!();
  const base = heapAndExternalBytes();
  let junk: Buffer[] | null = Array.from({ length: 2000 }, () => Buffer.alloc(16 * 1024, 1));
  t.ok(heapAndExternalBytes() - base >= 16e6, 'the garbage to be counted: ArrayBuffer memory outside the heap');
  junk = null;
  // As the collector does: the second collection finishes sweeping the ArrayBuffers the first found dead.
  gc!();
  gc!();
  t.equal(junk, null);
  t.ok(heapAndExternalBytes() - base < 8e6, `collected: ${Math.round((heapAndExternalBytes() - base) / 1e6)} MB above the start`);
});

t.test('idle GC on the main thread: the part collects after a burst once the event loop has been quiet, and counts it', async (t) => {
  const { idleGcPart } = await import('../src/agent-parts.js');
  const clock = new ManualClock();
  const added: Array<Counters<string>> = [];
  const metrics = { add: (c: Counters<string>) => void added.push(c) } as unknown as Parameters<typeof idleGcPart>[0]['metrics'];
  const part = idleGcPart({ metrics, clock });
  await part.start();
  t.teardown(() => part.stop(clock.now() + 1000));
  const collections = (): number => added[0]!.get('collections');
  // A burst: memory held past the collector's baseline. It stays held through the quiet phase: let go at once,
  // V8 may collect it on its own before the gap has passed (seen in CI under load), and the heap has then not grown.
  let junk: Buffer[] | null = Array.from({ length: 1500 }, () => Buffer.alloc(16 * 1024, 1));
  // Quiet: the event loop idles between checks (real time), while the manual clock passes the minimum gap. The gap
  // takes 10 checks; a check finds the loop quiet only when it was idle for 95% of its 30 ms (not always so on a
  // loaded machine): 100 checks at most, the loop ending at the pair.
  for (let i = 0; i < 100 && collections() < 2; i++) {
    await new Promise((r) => setTimeout(r, 30));
    clock.advance(CHECK_EVERY_MS);
  }
  t.equal(collections(), 2, 'a pair of full collections once quiet after the gap');
  t.equal(junk.length, 1500);
  junk = null;
  // Busy: the loop never idles between checks, so no pause however large the heap.
  const busyUntil = clock.now() + MIN_GAP_MS + 5 * CHECK_EVERY_MS;
  // Held through the busy phase, twice the first burst: the heap has grown past what the pair left either way.
  let held: Buffer[] = Array.from({ length: 3000 }, () => Buffer.alloc(16 * 1024, 1));
  while (clock.now() < busyUntil) {
    const spin = performance.now() + 2;
    while (performance.now() < spin);
    clock.advance(CHECK_EVERY_MS);
  }
  t.equal(held.length, 3000);
  held = [];
  t.equal(held.length, 0);
  t.equal(collections(), 2, 'none while the event loop was busy');
});

t.test('a worker whose restart fails is tried again while the listener runs: its slot does not stay empty for the life of the process', async (t) => {
  // listener.ts #restart tries once: when the successor dies before it is ready (its start is rejected: whenStarted
  // marks it closing), the error is logged ("could not be restarted; the other workers keep serving") and nothing
  // schedules another try. With --workers 1 (the default on a pinned or 1-CPU pod) nothing serves UDP any more,
  // and /ready does not say so.
  const r = await rig(t);
  const port = r.ports[0]!;
  const { first, successor } = await killWorkerZero(r.listener);
  await successor.terminate();
  await until('the failed start to be logged', () => r.logs.some((l) => l.includes('could not be restarted')));
  t.pass('the first restart failed (its worker died before it was ready)');
  await until('another try', () => {
    const w = r.listener.workerThread(0);
    return w !== null && w !== successor && w !== first;
  }, 15_000).catch(() => undefined);
  t.not(r.listener.workerThread(0), null, 'a new worker holds slot 0 again');
  // Ready before the query: a thread still starting (seconds on a loaded machine: 11 s seen) would read it older than
  // --max-query-age (5 s) and drop it as stale.
  await until('the new worker to be ready', () => r.listener.liveWorkers === 1, 30_000).catch(() => undefined);
  const c = new Client();
  await c.ready();
  t.teardown(() => c.close());
  void c.send(port, 'svc-2.example.com', 1);
  // Nothing to wait for without a worker: the datagram sits in no socket (its port is closed).
  if (r.listener.workerThread(0) !== null) await until('an answer', () => c.answers.has(1), 30_000).catch(() => undefined);
  t.same(dataOf(c.answers.get(1)), ['10.0.0.2'], 'UDP is served again');
});

t.test('shed gate: a refusal 2^32 ms (49.7 days) ago is no refusal now: a long-lived worker does not start shedding when the 32-bit stamp comes round again', async (t) => {
  // shed-gate.ts keeps the last refusal as wall ms cut to 32 bits and takes the difference in 32-bit arithmetic, so
  // a stamp T and a time T + 2^32 + x read as "x ms since a refusal". A worker never refused (WorkerLink stamps it
  // an hour before its spawn) shed every new miss (SERVFAIL, or stale) for 50 ms, then (as the gate was then) all
  // beyond 64 until 2 s later, once every 49.7 days of uptime: all workers at once (they start together).
  const ctl = new Int32Array(new SharedArrayBuffer(Ctl.WORDS * 4));
  const c = new Counters(BATCHED_COUNTERS);
  const spawnedAt = 1_700_000_000_000;
  let wall = spawnedAt;
  const load = new UpstreamLoad({ workers: 1 });
  load.setCap(1000);
  const gate = new ShedGate(ctl, load.buffer, [], { lastGaveUp: false }, { values: c.values, slot: BATCHED_COUNTERS.slot.shedBusy }, { now: () => wall });
  const ext = parsed('x.example.org');
  // What a new WorkerLink stamps: long ago, so the worker starts admitting every miss.
  stampRefusal(ctl, spawnedAt - 3_600_000);
  gate.watch({ inflight: 1000 });
  t.ok(gate.admits(ext), 'a fresh worker admits');
  wall = spawnedAt - 3_600_000 + 2 ** 32 + 10;
  t.ok(gate.admits(ext), 'never refused, 49.7 days later: still admitted');
  stampRefusal(ctl, spawnedAt);
  wall = spawnedAt + 2 ** 32 + STAMP_AHEAD_MS + 10;
  t.ok(gate.admits(ext), 'refused once 49.7 days ago, nothing since: admitted (the soft period ended long ago)');
  t.equal(c.get('shedBusy'), 0, 'nothing shed');
});

/**
 * A client on another host: a network namespace of this test's own, joined to this one by a veth pair. Returns the
 * namespace and this side's address on the link (a listener on a wildcard is reached there).
 */
function clientNamespace(t: Test): { ns: string; hostAddr: string } {
  const ip = (...args: string[]): void => {
    const r = spawnSync('ip', args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
  };
  const tag = `${process.pid % 100000}${clientNamespaces++}`;
  const ns = `rvb-wild-${tag}`;
  const hostIf = `rvbh${tag}`;
  const peerIf = `rvbc${tag}`;
  const net = `10.${213 + clientNamespaces}.${process.pid % 250}`;
  ip('netns', 'add', ns);
  t.teardown(() => {
    spawnSync('ip', ['netns', 'del', ns]);
    spawnSync('ip', ['link', 'del', hostIf]);
  });
  ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', peerIf);
  ip('link', 'set', peerIf, 'netns', ns);
  ip('addr', 'add', `${net}.1/30`, 'dev', hostIf);
  ip('link', 'set', hostIf, 'up');
  ip('-n', ns, 'addr', 'add', `${net}.2/30`, 'dev', peerIf);
  ip('-n', ns, 'link', 'set', peerIf, 'up');
  ip('-n', ns, 'link', 'set', 'lo', 'up');
  return { ns, hostAddr: `${net}.1` };
}
let clientNamespaces = 0;

/** dig's output for one try (8 s at most) from inside `ns`. */
function digFrom(ns: string, server: string, port: number, name: string): Promise<string> {
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', ns, 'dig', `@${server}`, '-p', String(port), name, 'A', '+tries=1', '+timeout=8'], { encoding: 'utf8' }, (_err, stdout) => resolve(stdout));
  });
}

const netnsClientSkip = process.getuid?.() !== 0 ? 'needs root (a network namespace)' : spawnSync('dig', ['-v']).status !== 0 ? 'needs dig' : false;

t.test('pause on a wildcard address: answers to queries already taken still reach a client on another host', { skip: netnsClientSkip }, async (t) => {
  // pause() (listener.ts) detaches every socket: udp-batch.ts detach() connects it to its own address, loopback for a
  // wildcard. connect() on a socket bound to 0.0.0.0 also fixes its local address to 127.0.0.1 (ip4_datagram_connect
  // sets inet_saddr and inet_rcv_saddr when unset), so every answer sent on it afterwards leaves from 127.0.0.1:
  // to a pod or another host the kernel refuses it (sendmmsg: EINVAL). The misses in flight at a shutdown or
  // handover, and the queries still queued, are lost ("shutdown loses nothing taken" holds only for loopback clients).
  const { ns, hostAddr } = clientNamespace(t);
  const { r, port, release } = await heldRig(t, { listen: ['0.0.0.0'] });
  const dig = (name: string): Promise<string> => digFrom(ns, hostAddr, port, name);
  const warm = await dig('svc-1.example.com');
  t.match(warm, /status: NOERROR/, 'before the pause a client on another host is answered (routing and wildcard work)');
  const held = dig('held-9.example.com');
  await until('the question to reach the upstream', () => r.resolver.inflight === 1 && r.listener.inflight === 1, 10_000);
  // Shutdown begins (or a new agent took over): the miss in flight is still to be answered.
  r.listener.pause();
  release();
  const out = await held;
  t.match(out, /status: NXDOMAIN/, 'the miss taken before the pause is answered');
  t.equal(r.listener.totals().io.get('sendErrors'), 0, 'no send failed');
});

t.test('dgram with SO_REUSEPORT, pause on a wildcard address: an answer to a query taken before the pause still reaches a client on another host', { skip: netnsClientSkip }, async (t) => {
  // The same in reuseport.ts detachUdp (the dgram listener's handover drain): connect() to loopback fixes the
  // wildcard socket's source to 127.0.0.1, and the answer to a pod is refused by the kernel.
  const { ns, hostAddr } = clientNamespace(t);
  let held: (() => void) | null = null;
  const handler: QueryHandler = {
    handle(msg, channel, peer) {
      // A response: the query with QR and RA set (NOERROR, no records).
      const reply = Buffer.from(msg);
      reply[2] = reply[2]! | 0x80;
      reply[3] = reply[3]! | 0x80;
      if (held === null && msg.includes(Buffer.from('held'))) held = () => channel.send(reply, peer);
      else channel.send(reply, peer);
    },
  };
  const udp = new UdpListener({ host: '0.0.0.0', port: 0 }, handler, silentLogger, { reusePort: true });
  await udp.start();
  t.teardown(() => udp.close());
  t.ok(udp.reusePort, 'bound through SO_REUSEPORT (the handover drain applies)');
  t.match(await digFrom(ns, hostAddr, udp.port, 'warm.example.com'), /status: NOERROR/, 'before the pause a client on another host is answered');
  const out = digFrom(ns, hostAddr, udp.port, 'held.example.com');
  await until('the query to be taken', () => held !== null, 10_000);
  udp.pause();
  held!();
  t.match(await out, /status: NOERROR/, 'the query taken before the pause is answered');
});

t.test('DirectAnswers: a waiter whose datagram does not parse here goes back to the worker; the others are answered; no send error', async (t) => {
  const sys = new FakeKernel([]);
  const counters = new Counters(BATCHED_COUNTERS);
  const d = new DirectAnswers(sys, [5], 2, 512, {
    policy: () => ({ cache: CACHE, maxUdpSize: 1232 }), counters, server: new Counters(SERVER_COUNTERS), hist: hitPathHistograms(), now: () => 1000, stale: () => undefined, lookup: () => undefined, logger: silentLogger,
  });
  const p = new Packer(false, WAITER_STRIDE);
  for (const data of [query({ name: SVC, id: 1 }), Buffer.from('not a query')]) {
    p.push(7, waiterTag(0, 16), data, null);
    const words = new Uint32Array(WAITER_SOCKADDR_WORDS);
    new Uint8Array(words.buffer).set(from4(1111));
    p.extraWords(words, 0, WAITER_SOCKADDR_WORDS);
  }
  d.expect(7, 'k');
  d.add(p.take());
  t.equal(d.answer(7, answer(SVC, [rr(SVC, '192.0.2.7', 600)])), true);
  const back = d.takeAgain();
  t.equal(back?.count, 1, 'one handed back (the worker answers it as its hit path does: FORMERR or nothing)');
  t.equal(itemBytes(back!, 0)!.toString(), 'not a query', 'the one that does not parse');
  d.flush();
  t.same(sys.sent.map((s) => idOf(s.data)), [1], 'the other answered from here');
  t.equal(counters.get('sendErrors'), 0, 'nothing counted as a send error');
  d.close();
});

t.test('shutdown past its grace: abortAll() and close() do not wait forever on a worker that does not answer', async (t) => {
  // A worker asleep in poll that the main thread can no longer wake (its eventfd writes swallowed) answers neither
  // 'abort' nor 'close' until its idle poll ends: stand-in for a stuck worker. The agent awaits both with no deadline.
  let deaf = false;
  const r = await rig(t, { idlePollMs: 4000, spy: (sys) => ({ ...sys, wake: (fd) => (deaf ? 0 : sys.wake(fd)) }) });
  await new Promise((res) => setTimeout(res, 200));
  deaf = true;
  r.listener.pause();
  const at = Date.now();
  t.equal(await r.listener.abortAll(), 0, 'abortAll() resolves');
  t.ok(Date.now() - at < 3000, `within its wait, not the worker's poll (${Date.now() - at} ms)`);
  t.ok(r.logs.some((l) => l.includes('did not abort in time')), 'the stuck worker is named and terminated');
  const closing = Date.now();
  await r.listener.close();
  t.ok(Date.now() - closing < 3000, `close() does not wait on it either (${Date.now() - closing} ms)`);
});

/**
 * A listener on 0.0.0.0 whose upstream holds every held-* name until `release`, one name answered, then paused and
 * drained: its socket stays in its group (no connect() on a wildcard), so it still takes queries.
 */
async function pausedOnWildcard(t: Test): Promise<HeldRig> {
  const held = await heldRig(t, { listen: ['0.0.0.0'] });
  const { r, port, c, release } = held;
  t.teardown(() => release());
  void c.send(port, 'svc-1.example.com', 1);
  await until('warm-up', () => c.answers.has(1));
  r.listener.pause();
  await r.listener.drain();
  return held;
}

t.test('pause on a wildcard address: drain() waits for a miss its kept socket took after the pause (no SERVFAIL from the abort that follows)', async (t) => {
  // pause() (listener.ts) leaves a wildcard's sockets in their group, read and answered until close(), so queries keep
  // arriving after the pause. The worker reports 'drained' once (loop-report.ts Outbox: paused and nothing in flight,
  // then never again) and the listener keeps link.drained true: a miss taken afterwards is not waited for. The agent's
  // stop (agent-serving.ts) awaits drain() and then calls abortAll() at once: that client gets SERVFAIL (or, at close,
  // nothing) where the upstream's answer was on its way; with a handover on a wildcard, a share of every pod's misses.
  const { r, port, c, release } = await pausedOnWildcard(t);
  t.pass('drained: nothing waited at the pause');
  // The kept socket still takes queries (by design): this miss is now the listener's to answer.
  void c.send(port, 'held-7.example.com', 2);
  await until('the miss to reach the upstream', () => r.resolver.inflight === 1 && r.listener.inflight === 1, 10_000);
  const drainedNow = await Promise.race([r.listener.drain().then(() => true), new Promise<boolean>((res) => setImmediate(() => res(false)))]);
  t.notOk(drainedNow, 'drain() does not resolve while a client the listener took waits on the upstream');
  // As the agent does once drain() resolves: the grace period is taken as over.
  if (drainedNow) await r.listener.abortAll();
  release();
  await until('an answer', () => c.answers.has(2), 10_000);
  t.equal(rcodeName(c.answers.get(2)), 'NXDOMAIN', 'the client gets the upstream\'s answer, not SERVFAIL');
});

t.test('pause on a wildcard address: a miss taken after the worker said drained, read with that report, keeps drain() waiting', async (t) => {
  // The order the test above leaves to chance: the worker says 'drained' at the pause (nothing in flight), then its
  // kept socket takes a miss, both before this thread reads that report. The report is read after the ring (the miss
  // with it), so 'drained' was stale by then; taken as said, drain() resolved and the abort that follows answered the
  // client SERVFAIL.
  const { r, port, c, release } = await heldRig(t, { listen: ['0.0.0.0'] });
  t.teardown(() => release());
  void c.send(port, 'svc-1.example.com', 1);
  await until('warm-up', () => c.answers.has(1));
  let drained = false;
  r.listener.pause();
  const draining = r.listener.drain().then(() => (drained = true));
  // This thread blocked while another process sends the miss: the worker's report and the miss wait for it together.
  const q = dnsPacket.encode({ type: 'query', id: 2, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name: 'held-9.example.com', class: 'IN' }] });
  const script = "const s = require('node:dgram').createSocket('udp4'); s.send(Buffer.from(process.argv[1], 'hex'), Number(process.argv[2]), '127.0.0.1', () => s.close());";
  const sent = spawnSync(process.execPath, ['-e', script, q.toString('hex'), String(port)], { timeout: 10_000 });
  t.equal(sent.status, 0, 'the other process sent the query');
  await until('the miss to reach the upstream', () => r.resolver.inflight === 1, 10_000);
  await new Promise((res) => setTimeout(res, 100));
  t.notOk(drained, 'drain() waits while the miss the kept socket took waits on the upstream');
  release();
  await draining;
  t.pass('and resolves once it is answered');
});

t.test('pause on a wildcard address: a miss its kept socket takes after abortAll() is answered before close(), not dropped', async (t) => {
  // After 'abort' (loop.ts #apply) the worker keeps reading its kept wildcard socket: a new miss goes to the main
  // thread and its client waits. close() then ends the worker with that client still waiting: no answer at all
  // (the client waits its whole timeout, 5 s for glibc), though abortAll() promised that nothing taken waits any more.
  // After the abort a new miss has nothing to wait for (the agent closes next): it should be answered at once,
  // stale or SERVFAIL, as abortAll() answered the others.
  const { r, port, c } = await pausedOnWildcard(t);
  t.equal(await r.listener.abortAll(), 0, 'nothing waited at the abort');
  void c.send(port, 'held-8.example.com', 2);
  // Taken by the worker: either answered at once (the fix) or forwarded upstream (the defect).
  await until('the miss to be taken', () => c.answers.has(2) || r.resolver.inflight === 1, 10_000);
  await r.listener.close();
  await until('an answer', () => c.answers.has(2), 3000).catch(() => undefined);
  t.ok(c.answers.has(2), 'the client the listener took after the abort got an answer before the listener closed');
  t.equal(rcodeName(c.answers.get(2)), 'SERVFAIL', 'SERVFAIL (nothing stale to give)');
});

t.test('worker totals: the counts of workers that died stay in the sums, in one block however many die', async (t) => {
  const cache = new DnsCache(CACHE, new Counters(CACHE_COUNTERS));
  const totals = new WorkerTotals(new Counters(BATCHED_COUNTERS), new Counters(SERVER_COUNTERS), hitPathHistograms(), cache, false);
  const slot = SERVER_COUNTERS.slot.requestsUdp;
  const block = (requests: number): ReturnType<typeof workerCounters> => {
    const c = workerCounters(new SharedArrayBuffer(WORKER_STATS_BYTES));
    c.server.values[slot] = requests;
    c.hist.duration.observeMs(1);
    return c;
  };
  const live = block(5);
  const dead = [1, 2, 3, 4].map(block);
  t.equal(totals.sum([live, ...dead]).server.values[slot], 15, 'all five workers summed while alive');
  for (const d of dead) totals.died(d);
  totals.died(dead[0]!); // reported twice: counted once
  t.equal(totals.deadBlocks, 1, 'one block kept for the four dead workers');
  // The listener still lists the last dead one until its successor replaces it.
  const sums = totals.sum([live, dead[3]!]);
  t.equal(sums.server.values[slot], 15, 'no count lost or counted twice');
  t.equal(sums.hist.duration.values.reduce((a, v, i, all) => (i < all.length - 1 ? a + v : a), 0), 5, 'histogram observations of the dead kept too');
  t.equal(totals.sum([live, block(7)]).server.values[slot], 22, 'a successor adds its own');
});

t.test('WorkerRestarts.emptyForMs (what /health reads): 0 while any slot has a worker in its loop, counting only once every slot is empty, 0 again when one is back', async (t) => {
  const { WorkerRestarts } = await import('../src/server/batched/worker-restarts.js');
  // Not running: a death schedules no restart (no timer, no spawn).
  const r = new WorkerRestarts(2, { spawn: () => Promise.reject(new Error('not here')), running: () => false, restarted: () => {}, logger: silentLogger });
  r.ready(0);
  r.ready(1);
  r.died(0, 1);
  await new Promise((resolve) => setTimeout(resolve, 5));
  t.equal(r.emptyForMs, 0, 'one worker still serves: UDP is up');
  r.died(1, 1);
  await new Promise((resolve) => setTimeout(resolve, 5));
  const first = r.emptyForMs;
  t.ok(first > 0, 'both gone: UDP down since the second died');
  r.died(0, 1);
  t.ok(r.emptyForMs >= first, 'a second death of an empty slot does not start the count over');
  r.ready(1);
  t.equal(r.emptyForMs, 0, 'a worker back: up again');
});

// The rings between the threads (packed-ring.ts): one writer, one reader, records never wrapping.

function missItems(names: readonly string[], bytes = 40): Packer {
  const p = new Packer(true);
  names.forEach((name, i) => p.push(100 + i, i & 1, Buffer.alloc(bytes + i, i + 1), `${name}:1:1`));
  return p;
}

function waiterItems(n: number): Packer {
  const p = new Packer(false, WAITER_STRIDE);
  for (let i = 0; i < n; i++) {
    p.push(200 + i, waiterTag(i & 1, 16), Buffer.alloc(30, 0xa0 + i), null);
    for (let w = 0; w < WAITER_STRIDE - 4; w++) p.extra(w, i * 100 + w);
  }
  return p;
}

const itemsOf = (p: Packed | null) => p === null ? null : ({
  tokens: [...Array(p.count).keys()].map((i) => itemToken(p, i)),
  tags: [...Array(p.count).keys()].map((i) => itemTag(p, i)),
  bytes: [...Array(p.count).keys()].map((i) => itemBytes(p, i)!.toString('hex')),
  extra: [...Array(p.count).keys()].map((i) => [...Array(p.stride - 4).keys()].map((k) => itemExtra(p, i, k))),
  keys: p.keys,
});

t.test('PackedRing: a record of misses (with their keys) and waiters comes out as it went in, in copies the next records do not touch', async (t) => {
  const ring = new PackedRing(ringBuffer(4096));
  const misses = missItems(['a.example.com', 'b.example.com', 'é.example']);
  const waiters = waiterItems(2);
  const wantM = itemsOf(misses.view());
  const wantW = itemsOf(waiters.view());
  t.equal(ring.waiting, false);
  t.ok(ring.write(misses.view(), waiters.view()));
  t.equal(ring.waiting, true, 'written, not yet read');
  const got: [Packed | null, Packed | null][] = [];
  t.equal(ring.drain((m, w) => got.push([m, w])), 1);
  t.equal(ring.waiting, false);
  t.same(itemsOf(got[0]![0]), wantM, 'the misses: tokens, tags, bytes and keys (latin1, one character a byte)');
  t.same(itemsOf(got[0]![1]), wantW, 'the waiters: every extra word (the sockaddr and arrival stamp)');
  t.equal(got[0]![1]!.keys, null, 'a part without keys has none');
  // The same bytes written over with other records: the copies handed out stay as they were.
  for (let i = 0; i < 40; i++) {
    t.ok(ring.write(missItems(['c.example.com'], 200).view()));
    ring.drain(() => {});
  }
  t.same(itemsOf(got[0]![0]), wantM, 'copies: untouched by what the ring held since');
  t.ok(ring.write(waiterItems(1).view()));
  ring.drain((m, w) => got.push([m, w]));
  t.equal(got[1]![0]?.count, 1, 'a lone part');
  t.equal(got[1]![1], null, 'and no second');
  t.throws(() => ringBuffer(1000), /power of two/);
});

t.test('PackedRing: records never straddle the end (a pad sends the reader back to the start), and a full ring refuses until read', async (t) => {
  const ring = new PackedRing(ringBuffer(4096));
  let written = 0;
  let read = 0;
  const seen: string[] = [];
  // Records of changing sizes, read every third write, over many laps of the ring.
  for (let round = 0; round < 300; round++) {
    const names = [...Array(1 + (round % 4)).keys()].map((i) => `r${round}-${i}.example`);
    if (ring.write(missItems(names, 10 + (round % 7) * 9).view())) written++;
    else t.fail(`round ${round}: refused with room to spare`);
    if (round % 3 === 2) read += ring.drain((m) => seen.push(...m!.keys!));
  }
  read += ring.drain((m) => seen.push(...m!.keys!));
  t.equal(read, written, 'every record read once');
  t.same(seen, [...Array(300).keys()].flatMap((round) => [...Array(1 + (round % 4)).keys()].map((i) => `r${round}-${i}.example:1:1`)), 'in the order written, each whole');
  // Full: no reads, so writes are refused once the next record no longer fits; nothing half written.
  let accepted = 0;
  while (ring.write(missItems(['full.example'], 60).view())) accepted++;
  t.ok(accepted >= 20 && accepted <= 4096 / 100, `accepted ${accepted} records of ~100 bytes into 4 KiB`);
  t.equal(ring.drain((m) => t.same(m!.keys, ['full.example:1:1'])), accepted, 'the ones accepted, and only those');
  t.ok(ring.write(missItems(['again.example'], 60).view()), 'room again once read');
  t.notOk(ring.write(missItems(['huge.example'], 2100).view()), 'a record over half the ring is refused outright (it goes by post)');
});

t.test('loop: a turn of misses goes through the ring with one wake-up posted until the main thread reads; a turn that does not fit is posted, and so is every turn after it until that post is read', async (t) => {
  const keyOf = (name: string): string => parseQuery(query({ name })).key;
  const long = (i: number): string => `long-name-number-${i}-${'x'.repeat(40)}.example.com`;
  const raw = (): (WorkerReport | RingWake)[] => {
    const out: (WorkerReport | RingWake)[] = [];
    for (let m = receiveMessageOnPort(k.mainPort); m !== undefined; m = receiveMessageOnPort(k.mainPort)) out.push(m.message as WorkerReport | RingWake);
    return out;
  };
  const word = (w: number): number => Atomics.load(new Int32Array(k.ctl), w);
  let last: WorkerReport[] = [];
  const k: FakeKernel = new FakeKernel([
    // After the first turn's miss the main thread does not read: a second turn's miss goes in behind it.
    () => k.queue(5, { data: query({ name: 'svc-1.example.com', id: 2 }), from: from4(3002) }),
    () => {
      const msgs = raw();
      t.equal(msgs.filter((m) => m === RING_WAKE).length, 1, 'one RING_WAKE for the two turns written');
      t.same(msgs.filter((m) => m !== RING_WAKE).map((m) => (m as WorkerReport).ready), [true], 'besides it only ready');
      t.equal(word(Ctl.WAKE), 1, 'the word says one is unread');
      t.same(k.reports().flatMap((r) => r.misses?.keys ?? []), [keyOf('svc-0.example.com'), keyOf('svc-1.example.com')], 'both turns, in order, read from the ring');
      t.equal(word(Ctl.WAKE), 0, 'read: the next turn posts a wake-up of its own');
      // Four long names in one turn: more than half the 512-byte ring.
      for (let i = 0; i < 4; i++) k.queue(5, { data: query({ name: long(i), id: 10 + i }), from: from4(4000 + i) });
    },
    () => k.queue(5, { data: query({ name: 'svc-9.example.com', id: 30 }), from: from4(4100) }),
    () => {
      const msgs = raw().filter((m): m is WorkerReport => m !== RING_WAKE);
      t.same(msgs.map((r) => [r.overflow, r.misses?.keys]), [[true, [0, 1, 2, 3].map((i) => keyOf(long(i)))], [true, [keyOf('svc-9.example.com')]]], 'the turn too big for the ring posted, and the small one after it too, in order');
      t.equal(word(Ctl.OVERFLOW), 2, 'two posts not yet read');
      // The main thread reads them (listener.ts #onReport).
      Atomics.sub(new Int32Array(k.ctl), Ctl.OVERFLOW, 2);
      k.queue(5, { data: query({ name: 'svc-8.example.com', id: 31 }), from: from4(4101) });
    },
    () => {
      last = k.reports();
      k.post({ t: 'close' });
    },
  ], 512);
  const { loop } = loopRig([], {}, k);
  k.queue(5, { data: query({ name: 'svc-0.example.com', id: 1 }), from: from4(3001) });
  loop.run();
  t.same(last.map((r) => [r.overflow ?? false, r.misses?.keys]), [[false, [keyOf('svc-8.example.com')]]], 'once they are read, the ring again');
});

t.test('loop: completions come through the ring before anything posted after them; ones that do not fit are posted and taken in order, the worker saying so', async (t) => {
  const keyOf = (name: string): string => parseQuery(query({ name })).key;
  const word = (w: number): number => Atomics.load(new Int32Array(k.ctl), w);
  const names = ['svc-0.example.com', 'svc-1.example.com', 'svc-2.example.com'];
  const k: FakeKernel = new FakeKernel([
    () => {
      const misses = k.reports().flatMap((r) => (r.misses === null ? [] : [r.misses]));
      t.same(misses.flatMap((m) => m.keys), names.map(keyOf), 'three misses');
      // A small answer fits the 1 KiB ring; two of 12 records each (~560 bytes with their words) are over half of it.
      const big = (n: string): Buffer => answer(n, [...Array(12).keys()].map((i) => rr(n, `192.0.2.${i + 1}`, 60)));
      const tokens = misses.flatMap((m) => [...Array(m.count).keys()].map((i) => itemToken(m, i)));
      t.equal(answerMissesOf(k, tokens.slice(0, 1), [answer(names[0]!, [rr(names[0]!, '192.0.2.1', 60)])]), 1);
      t.equal(word(Ctl.PENDING) & PENDING_RING, PENDING_RING, 'through the ring');
      t.equal(answerMissesOf(k, tokens.slice(1), tokens.slice(1).map((_, i) => big(names[i + 1]!))), 2);
      t.equal(word(Ctl.DONE_OVERFLOW), 1, 'the rest posted: one message not yet taken');
    },
    () => {
      t.equal(word(Ctl.DONE_OVERFLOW), 0, 'taken by the worker');
      k.post({ t: 'close' });
    },
  ], 1024);
  const { loop } = loopRig([], {}, k);
  names.forEach((name, i) => k.queue(i === 0 ? 5 : 6, { data: query({ name, id: i + 1 }), from: i === 0 ? from4(3001) : sockaddr6loopback(3001 + i) }));
  loop.run();
  t.same(k.sent.map((s) => [idOf(s.data), dnsPacket.decode(s.data).answers!.length]), [[1, 1], [2, 12], [3, 12]], 'every client answered by the worker, in the order the completions were written');
});

/** Completions for `tokens` with `answers`, as the main thread's flush writes them (FakeKernel.post: the ring, else a post). */
function answerMissesOf(k: FakeKernel, tokens: number[], answers: Buffer[]): number {
  const done = new Packer(false, DONE_STRIDE);
  tokens.forEach((token, i) => done.push(token, OUTCOME_INDEX.upstream, answers[i]!, null));
  k.post({ t: 'done', items: done.take() });
  return tokens.length;
}
