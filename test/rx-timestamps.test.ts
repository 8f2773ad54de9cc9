// Kernel receive timestamps in the batched backend: the SCM_TIMESTAMPNS read
// (real sockets on 127.0.0.1), the worker's queue-wait histogram and its
// --max-query-age drops (the loop on this thread, over the fake kernel and
// over real sockets), and the metrics a scrape publishes. No timing
// thresholds: ages are checked against waits the test itself made (an age
// is never below the time the datagram was held), and against generous
// upper bounds.
import t, { type Test } from 'tap';
import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import { a as rr, answer, query } from './kit/dns.js';
import { scanAnswer } from '../src/dns/answer.js';
import { parseQuery } from '../src/dns/query.js';
import type { CacheOptions } from '../src/cache/cache.js';
import { DnsCache } from '../src/cache/cache.js';
import { CACHE_COUNTERS } from '../src/cache/stats.js';
import { systemClock } from '../src/clock.js';
import { loadConfig } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { AgentMetrics } from '../src/ops/agent-metrics.js';
import { COMPLETIONS_PER_TURN, COMPLETIONS_WHEN_BEHIND, WorkerLoop, workerBlockBytes } from '../src/server/batched/loop.js';
import { Arena, RecvVec, recvVecBytes, type Timespec } from '../src/server/batched/msgvec.js';
import { BatchedUdpListener } from '../src/server/batched/listener.js';
import { UpstreamLoad } from '../src/server/upstream-load.js';
import { Ctl, Packer, itemBytes, itemToken, transferOf, type ToWorker, type WorkerInit, type WorkerReport } from '../src/server/batched/protocol.js';
import { ringBuffer } from '../src/server/batched/packed-ring.js';
import { QUEUE_WAIT, WORKER_STATS_BYTES, workerCounters } from '../src/server/batched/stats.js';
import { Counters } from '../src/stats/counters.js';
import { isSysError, loadUdpBatch, sockaddrOf, type UdpBatchSys } from '../src/sys/udp-batch.js';
import { FakeKernel, sockaddr4 } from './helpers/fake-udp-kernel.js';

const CACHE: CacheOptions = {
  positiveCapacity: 100, negativeCapacity: 100, maxBytes: 1 << 22, successTtl: 30, denialTtl: 5, minHits: 3, percent: 10, staleMs: 3_600_000,
};

async function realSys(): Promise<UdpBatchSys> {
  const sys = await loadUdpBatch();
  if (typeof sys === 'string') throw new Error(`batched I/O unavailable on this machine: ${sys}`);
  return sys;
}

/** Blocks this thread (the loop under test is synchronous, so the test's waits are too). */
function hold(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * The kernel turns its timestamping on from a work queue, and off again when
 * the last socket that asked closes: until it is on, a datagram gets its
 * stamp when it is read (age 0). A socket of our own that asked, kept open,
 * and datagrams sent to it until one reads as held (bounded): then every
 * socket's datagrams are stamped as they arrive. Returns its closer.
 */
function timestampingOn(t: Test, sys: UdpBatchSys): () => void {
  const fd = openLoopback(sys);
  const block = sys.alloc(recvVecBytes(2, 64) + 128);
  const close = (): void => {
    sys.close(fd);
    block.free();
  };
  t.equal(sys.rxTimestamps(fd), 0, 'the kernel accepts SO_TIMESTAMPNS');
  const arena = new Arena(block.address, block.bytes);
  const recv = new RecvVec(arena, 2, 64);
  const saOff = arena.take(32);
  const nowOff = arena.take(16);
  const sa = sockaddrOf({ host: '127.0.0.1', port: sys.localPort(fd) });
  if (typeof sa === 'string') throw new Error(sa);
  arena.u8.set(sa.bytes, saOff);
  for (let tries = 0; tries < 40; tries++) {
    sys.sendto(fd, Buffer.from('warm'), block.address + saOff, sa.bytes.length);
    hold(10);
    const k = sys.recvmmsg(fd, recv.address, recv.count, 0x40);
    sys.realtime(block.address + nowOff);
    const now = { sec: Number(arena.view.getBigInt64(nowOff, true)), nsec: Number(arena.view.getBigInt64(nowOff + 8, true)) };
    const on = k > 0 && recv.ageNs(0, now) >= 10e6;
    if (k > 0) recv.reset(k);
    if (on) return close;
  }
  close();
  throw new Error('the kernel never stamped a datagram on arrival');
}

function openLoopback(sys: UdpBatchSys): number {
  const fd = sys.openUdp({ host: '127.0.0.1', port: 0 });
  if (isSysError(fd)) throw new Error(fd.message);
  return fd;
}

/** A query the hit path answers at once, without a cache or an upstream: opcode STATUS gets NOTIMP. */
function statusQuery(id: number): Buffer {
  const q = query({ name: 'status.example.com', id });
  q[2] = (q[2]! & 0x87) | (2 << 3);
  return q;
}

t.test('a real socket: SO_TIMESTAMPNS ages are at least the time held, in send order, and absent without the option', async (t) => {
  const sys = await realSys();
  const server = openLoopback(sys);
  const bare = openLoopback(sys);
  const client = openLoopback(sys);
  const block = sys.alloc(recvVecBytes(8, 512) + 128);
  t.teardown(() => {
    for (const fd of [server, bare, client]) sys.close(fd);
    block.free();
  });
  t.teardown(timestampingOn(t, sys));
  t.equal(sys.rxTimestamps(server), 0, 'the kernel accepts SO_TIMESTAMPNS');
  const arena = new Arena(block.address, block.bytes);
  const recv = new RecvVec(arena, 8, 512);
  const nowOff = arena.take(16);
  const saOff = arena.take(32);
  const send = (port: number, data: Buffer): void => {
    const sa = sockaddrOf({ host: '127.0.0.1', port });
    if (typeof sa === 'string') throw new Error(sa);
    arena.u8.set(sa.bytes, saOff);
    t.equal(sys.sendto(client, data, block.address + saOff, sa.bytes.length), data.length);
  };
  const now = (): Timespec => {
    t.equal(sys.realtime(block.address + nowOff), 0);
    return { sec: Number(arena.view.getBigInt64(nowOff, true)), nsec: Number(arena.view.getBigInt64(nowOff + 8, true)) };
  };
  const HELD_MS = 50;
  for (let i = 0; i < 3; i++) {
    send(sys.localPort(server), Buffer.from(`datagram ${i}`));
    hold(5);
  }
  send(sys.localPort(bare), Buffer.from('no stamp'));
  hold(HELD_MS);
  const n = sys.recvmmsg(server, recv.address, recv.count, 0x40);
  t.equal(n, 3);
  const at = now();
  const ages = [0, 1, 2].map((i) => recv.ageNs(i, at));
  t.ok(ages.every((a) => a >= HELD_MS * 1e6), `each waited at least the ${HELD_MS} ms held (${ages.map((a) => (a / 1e6).toFixed(1)).join(', ')} ms)`);
  t.ok(ages.every((a) => a < 60e9), 'and less than a minute (the same clock as the kernel\'s)');
  t.ok(ages[0]! >= ages[1]! && ages[1]! >= ages[2]!, 'the first sent is the oldest');
  t.ok(Number.isFinite(recv.kernelTimeUs(0)) && Math.abs(recv.kernelTimeUs(0) - Date.now() * 1000) < 60e6, 'the stamp reads as an epoch time');
  recv.reset(n);
  t.equal(sys.recvmmsg(bare, recv.address, recv.count, 0x40), 1);
  t.equal(recv.ageNs(0, now()), -1, 'no SO_TIMESTAMPNS: no age');
  t.ok(Number.isNaN(recv.kernelTimeUs(0)));
  recv.reset(1);
});

// The loop on this thread over the fake kernel: ages exactly as scripted.

const SVC = 'svc.example.com';
const NOW_NS = 1_700_000_000_000_000_000n;

function loopRig(steps: (() => void)[], over: Partial<WorkerInit> = {}, errno = 0, cache: CacheOptions = CACHE) {
  const k = new FakeKernel(steps);
  k.nowNs = NOW_NS;
  k.timestampErrno = errno;
  const stats = new SharedArrayBuffer(WORKER_STATS_BYTES);
  // The main thread's cache: the loop reads it; a script playing the main thread stores in it.
  const store = new DnsCache(cache, new Counters(CACHE_COUNTERS), { shared: true });
  const init: WorkerInit = {
    index: 0, fds: [5], names: ['udp://127.0.0.1:53'], wakeFd: 99, ctl: k.ctl, reports: k.reportRing, completions: k.doneRing, load: k.load.buffer, stats, cache: CACHE, store: store.layout, maxUdpSize: 512,
    queryLogEvery: 0, clientMissRate: 0, clientMissBurst: 1, clientMissInflight: Infinity, batch: 8, maxInflight: 100, maxQueryAgeMs: 1000, localZones: [], ...over,
  };
  const loop = new WorkerLoop(k, k.workerPort, init);
  t.teardown(() => k.mainPort.close());
  return { k, loop, c: workerCounters(stats), store };
}

const ms = (n: number): bigint => BigInt(n) * 1_000_000n;

/** The clients waiting on misses in these reports: their queries' ids (a miss itself carries the upstream query). */
/** The clients reported waiting on a miss (the worker reports them when the main thread answers them: remoteWaiters). */
function missIds(reports: WorkerReport[]): number[] {
  const out: number[] = [];
  for (const r of reports) {
    const m = r.waiters ?? null;
    if (m === null) continue;
    for (let i = 0; i < m.count; i++) out.push(itemBytes(m, i)!.readUInt16BE(0));
  }
  return out;
}

/** The question name of a DNS message. */
function dnsName(m: Buffer): string {
  const labels: string[] = [];
  for (let i = 12; i < m.length && m[i]! > 0; i += m[i]! + 1) labels.push(m.subarray(i + 1, i + 1 + m[i]!).toString('latin1'));
  return labels.join('.');
}

/** Bucket index of `seconds` in QUEUE_WAIT (the +Inf bucket last). */
function bucketOf(seconds: number): number {
  const i = QUEUE_WAIT.bounds.findIndex((b) => seconds <= b);
  return i < 0 ? QUEUE_WAIT.bounds.length : i;
}

t.test('loop: a query older than --max-query-age is dropped and counted; younger ones are served; every age is in the histogram', async (t) => {
  const reports: WorkerReport[] = [];
  const { k, loop, c } = loopRig([
    () => {
      k.queue(5, { data: query({ name: SVC, id: 1 }), from: sockaddr4('10.0.0.1', 1001), stampNs: NOW_NS - ms(2500) });
      k.queue(5, { data: query({ name: 'other.example.com', id: 2 }), from: sockaddr4('10.0.0.1', 1002), stampNs: NOW_NS - ms(999) });
      k.queue(5, { data: query({ name: 'third.example.com', id: 3 }), from: sockaddr4('10.0.0.1', 1003), stampNs: NOW_NS - ms(3) });
    },
    () => reports.push(...k.reports()),
  ], { remoteWaiters: true });
  loop.run();
  t.same(missIds(reports).sort(), [2, 3], 'the two younger than 1 s went on as misses; the 2.5 s old one did not');
  t.equal(c.io.get('stale'), 1, 'nodelocal_dropped_total{reason="stale_query"}');
  t.equal(c.io.get('datagrams'), 3, 'it was received (and counted as such)');
  t.equal(c.server.get('req_udp_1_A'), 2, 'the dropped one is no request: the hit path never saw it');
  const h = c.queueWait;
  t.equal(h.count, 3, 'every stamped datagram observed, the dropped one too');
  t.ok(Math.abs(h.sum - (2.5 + 0.999 + 0.003)) < 1e-6, `the sum of the ages, in seconds (${h.sum})`);
  for (const age of [2.5, 0.999, 0.003]) t.equal(h.values[bucketOf(age)], 1, `${age} s in the bucket le=${QUEUE_WAIT.bounds[bucketOf(age)]}`);
  t.equal(k.sent.length, 0, 'nothing sent to the stale client');
});

t.test('loop: --max-query-age 0 never drops, and still measures', async (t) => {
  const reports: WorkerReport[] = [];
  const { k, loop, c } = loopRig(
    [
      () => k.queue(5, { data: query({ name: SVC, id: 7 }), from: sockaddr4('10.0.0.1', 1007), stampNs: NOW_NS - ms(30_000) }),
      () => reports.push(...k.reports()),
    ],
    { maxQueryAgeMs: 0, remoteWaiters: true },
  );
  loop.run();
  t.same(missIds(reports), [7], 'served however old');
  t.equal(c.io.get('stale'), 0);
  t.equal(c.queueWait.count, 1);
  t.equal(c.queueWait.values[QUEUE_WAIT.bounds.length], 1, '30 s: above the last bound (+Inf)');
});

t.test('loop: a socket that refuses SO_TIMESTAMPNS serves every query, measures nothing, drops nothing, and says so once', async (t) => {
  const reports: WorkerReport[] = [];
  const { k, loop, c } = loopRig(
    [
      () => {
        k.queue(5, { data: query({ name: SVC, id: 1 }), from: sockaddr4('10.0.0.1', 1001), stampNs: NOW_NS - ms(9000) });
        k.queue(5, { data: query({ name: 'b.example.com', id: 2 }), from: sockaddr4('10.0.0.1', 1002), stampNs: NOW_NS - ms(9000) });
      },
      () => reports.push(...k.reports()),
    ],
    { remoteWaiters: true },
    92,
  );
  loop.run();
  reports.push(...k.reports());
  t.same(missIds(reports).sort(), [1, 2]);
  t.equal(c.io.get('stale'), 0);
  t.equal(c.queueWait.count, 0);
  const warns = reports.flatMap((r) => r.logs ?? []).filter(([level, msg]) => level === 'warn' && msg.includes('SO_TIMESTAMPNS'));
  t.equal(warns.length, 1, 'one warning, at start');
});

t.test('loop: ages are read per datagram of a batch, and a hit after a dropped query is answered', async (t) => {
  const { k, loop, c, store } = loopRig([
    () => k.queue(5, { data: query({ name: SVC, id: 1 }), from: sockaddr4('10.0.0.1', 1001) }),
    () => {
      const r = k.reports();
      const m = r.find((x) => x.misses !== null)!.misses!;
      const done = new Packer(false, 6);
      const bytes = answer(SVC, [rr(SVC, '192.0.2.1', 60)]);
      // The main thread's part: stored in the one cache, then the completion posted.
      store.insert(parseQuery(query({ name: SVC })).key, bytes, scanAnswer(bytes)!, systemClock.now());
      done.push(itemToken(m, 0), 0, bytes, null);
      const items = done.take();
      k.mainPort.postMessage({ t: 'done', items } satisfies ToWorker, transferOf(items));
      Atomics.store(new Int32Array(k.ctl), Ctl.PENDING, 1);
    },
    () => {
      k.nowNs += ms(10);
      k.queue(5, { data: query({ name: SVC, id: 2 }), from: sockaddr4('10.0.0.1', 2002), stampNs: k.nowNs - ms(5000) });
      k.queue(5, { data: query({ name: SVC, id: 3 }), from: sockaddr4('10.0.0.1', 2003), stampNs: k.nowNs - ms(1) });
    },
  ]);
  loop.run();
  const ids = k.sent.map((s) => [s.data.readUInt16BE(0), s.to.readUInt16BE(2)]);
  t.same(ids, [[1, 1001], [3, 2003]], 'the miss answered, then the young hit; the old one dropped');
  t.equal(c.io.get('stale'), 1);
  t.equal(c.cache.get('hitPositive'), 1);
});

// The loop on this thread over real sockets: the kernel stamps, the loop ages and drops.

t.test('loop over real sockets: a query held in the kernel queue past the bound is dropped and counted; a fresh one is answered', async (t) => {
  const sys = await realSys();
  t.teardown(timestampingOn(t, sys));
  const server = openLoopback(sys);
  const client = openLoopback(sys);
  const wake = sys.eventfd();
  if (isSysError(wake)) throw new Error(wake.message);
  const port = sys.localPort(server);
  const block = sys.alloc(recvVecBytes(4, 512) + 256);
  const arena = new Arena(block.address, block.bytes);
  const clientRecv = new RecvVec(arena, 4, 512);
  const scratchOff = arena.take(32);
  const { port1: main, port2: workerPort } = new MessageChannel();
  const ctl = new SharedArrayBuffer(Ctl.WORDS * 4);
  const stats = new SharedArrayBuffer(WORKER_STATS_BYTES);
  t.teardown(() => {
    main.close();
    for (const fd of [server, client, wake]) sys.close(fd);
    block.free();
  });
  const send = (data: Buffer): void => {
    const sa = sockaddrOf({ host: '127.0.0.1', port });
    if (typeof sa === 'string') throw new Error(sa);
    arena.u8.set(sa.bytes, scratchOff);
    if (sys.sendto(client, data, block.address + scratchOff, sa.bytes.length) !== data.length) throw new Error('sendto failed');
  };
  const HELD_MS = 300;
  const BOUND_MS = 100;
  let step = 0;
  // The real binding, but poll is the script: the loop is on this thread and must not block in the kernel.
  const scripted: UdpBatchSys = {
    ...sys,
    poll: () => {
      step++;
      if (step === 1) {
        send(statusQuery(1));
        hold(HELD_MS);
      } else if (step === 2) {
        send(statusQuery(2));
      } else {
        main.postMessage({ t: 'close' } satisfies ToWorker);
        Atomics.store(new Int32Array(ctl), Ctl.PENDING, 1);
      }
      return 1;
    },
  };
  const store = new DnsCache(CACHE, new Counters(CACHE_COUNTERS), { shared: true });
  const init: WorkerInit = {
    index: 0, fds: [server], names: [`udp://127.0.0.1:${port}`], wakeFd: wake, ctl, reports: ringBuffer(), completions: ringBuffer(), load: new UpstreamLoad({ workers: 1 }).buffer, stats, cache: CACHE, store: store.layout, maxUdpSize: 512,
    queryLogEvery: 0, clientMissRate: 0, clientMissBurst: 1, clientMissInflight: Infinity, batch: 4, maxInflight: 100, maxQueryAgeMs: BOUND_MS, localZones: [],
  };
  t.ok(workerBlockBytes(4, 1, 512) > recvVecBytes(4, 4096), 'the worker block holds the control slots');
  new WorkerLoop(scripted, workerPort, init).run();
  const c = workerCounters(stats);
  t.equal(c.io.get('datagrams'), 2);
  t.equal(c.queueWait.count, 2, 'both stamped and aged');
  const n = sys.recvmmsg(client, clientRecv.address, clientRecv.count, 0x40);
  const got = n > 0 ? [...Array(n).keys()].map((i) => Buffer.from(arena.u8.subarray(clientRecv.dataOffset(i), clientRecv.dataOffset(i) + clientRecv.length(i)))) : [];
  t.notOk(got.some((a) => a.readUInt16BE(0) === 1), `the query held ${HELD_MS} ms (bound ${BOUND_MS} ms) got no answer`);
  t.ok(c.io.get('stale') >= 1, 'and is counted as dropped');
  // The fresh one is answered unless this machine held it past the bound too: either way it is accounted for.
  const freshAnswered = got.some((a) => a.readUInt16BE(0) === 2 && (a[3]! & 0x0f) === 4);
  t.equal(c.io.get('stale') + (freshAnswered ? 1 : 0), 2, 'the fresh query: answered NOTIMP (rcode 4), or (a stalled machine) dropped and counted');
  t.ok(c.queueWait.values.slice(bucketOf(HELD_MS / 1000), QUEUE_WAIT.bounds.length + 1).reduce((a, b) => a + b, 0) >= 1, 'the held one\'s age in a bucket at or past the time held');
  for (let m = receiveMessageOnPort(main); m !== undefined; m = receiveMessageOnPort(main)) void m;
});

// What a scrape publishes.

t.test('/metrics: the workers\' queue-wait histogram and stale drops, summed over workers', async (t) => {
  const cfg = (argv: string[]): number => loadConfig(argv, { env: {} }).config.maxQueryAgeMs;
  t.equal(cfg([]), 5000, '--max-query-age defaults to 5 s');
  t.equal(cfg(['--max-query-age', '0']), 0, '0: off');
  t.equal(cfg(['--max-query-age', '1500ms']), 1500);
  t.throws(() => cfg(['--max-query-age', '2m']), /between/);

  const sys = await realSys();
  t.teardown(timestampingOn(t, sys));
  const listener = new BatchedUdpListener({ listen: [{ host: '127.0.0.1', port: 0 }], workers: 2, cache: CACHE, maxUdpSize: 1232, queryLogEvery: 0, logger: silentLogger, sys, maxQueryAgeMs: 1000 });
  await listener.start();
  t.teardown(() => listener.close());
  const metrics = new AgentMetrics(
    { server: 'dns://127.0.0.1:53', cache: new DnsCache(CACHE, new Counters(CACHE_COUNTERS)), clock: systemClock, upstreams: () => [], view: () => null },
    { version: 'test', revision: '' },
  );
  metrics.addWorkerTotals(() => listener.totals());
  // Each worker's shared block, written here as the worker would (its hot path bumps the same memory).
  const [w0, w1] = listener.workerCounters();
  w0!.queueWait.observe(0.00002);
  w1!.queueWait.observe(0.00002);
  w1!.queueWait.observe(7);
  w1!.io.values[w1!.io.schema.slot.stale]!++;
  // And a real query through a worker: a NOTIMP answer, its age observed too.
  const client = openLoopback(sys);
  const block = sys.alloc(recvVecBytes(2, 512) + 64);
  t.teardown(() => {
    sys.close(client);
    block.free();
  });
  const arena = new Arena(block.address, block.bytes);
  const recv = new RecvVec(arena, 2, 512);
  const saOff = arena.take(32);
  const sa = sockaddrOf({ host: '127.0.0.1', port: listener.ports[0]! });
  if (typeof sa === 'string') throw new Error(sa);
  arena.u8.set(sa.bytes, saOff);
  t.equal(sys.sendto(client, statusQuery(77), block.address + saOff, sa.bytes.length), statusQuery(77).length);
  const end = Date.now() + 10_000;
  let answered = 0;
  while (answered === 0 && Date.now() < end) {
    answered = Math.max(0, sys.recvmmsg(client, recv.address, recv.count, 0x40));
    if (answered === 0) await new Promise((r) => setTimeout(r, 10));
  }
  t.equal(answered, 1, 'answered');
  const text = await metrics.metrics();
  const line = (name: string, label = ''): string | undefined => text.split('\n').find((l) => l.startsWith(name) && l.includes(label));
  t.match(text, /# TYPE nodelocal_udp_queue_wait_seconds histogram/);
  t.match(line('nodelocal_udp_queue_wait_seconds_count'), /\} 4$/, 'three written + the real query, over both workers');
  t.match(line('nodelocal_udp_queue_wait_seconds_bucket{', 'le="2.5"'), /\} 3$/, 'three of them at most 2.5 s');
  t.match(line('nodelocal_udp_queue_wait_seconds_bucket{', 'le="+Inf"'), /\} 4$/);
  t.match(line('nodelocal_dropped_total{', 'reason="stale_query"'), /\} 1$/);
  t.match(line('nodelocal_udp_queue_wait_seconds_bucket{', 'le="0.00001"'), /server="dns:\/\/127\.0\.0\.1:53"/, 'with the server label');
});

// The turn's order under a backlog: completions give way to the queries queued behind.

t.test('loop: while a socket is behind (a full receive), a turn applies at most COMPLETIONS_WHEN_BEHIND completions before reading on', async (t) => {
  const N = 300;
  const BATCH = 8;
  // The main thread's part: each answer stored in the one cache (as the exchange does), then the completion posted.
  const answerAll = (k: FakeKernel, reports: WorkerReport[]): number => {
    const done = new Packer(false, 6);
    for (const r of reports) {
      const m = r.misses;
      if (m === null) continue;
      for (let i = 0; i < m.count; i++) {
        const name = dnsName(itemBytes(m, i)!);
        const bytes = answer(name, [rr(name, '192.0.2.7', 60)]);
        rig.store.insert(parseQuery(query({ name })).key, bytes, scanAnswer(bytes)!, systemClock.now());
        done.push(itemToken(m, i), 0, bytes, null);
      }
    }
    const count = done.count;
    const items = done.take();
    k.mainPort.postMessage({ t: 'done', items } satisfies ToWorker, transferOf(items));
    Atomics.store(new Int32Array(k.ctl), Ctl.PENDING, 1);
    return count;
  };
  let mark = 0;
  const rig = loopRig(
    [
      () => k.queue(5, { data: query({ name: 'hot.example.com', id: 1 }), from: sockaddr4('10.0.0.2', 1) }),
      () => answerAll(k, k.reports()),
      () => {
        for (let i = 0; i < N; i++) k.queue(5, { data: query({ name: `m-${i}.example.com`, id: i }), from: sockaddr4('10.0.0.3', 1000 + i) });
      },
      () => {
        t.equal(answerAll(k, k.reports()), N);
        mark = k.sent.length;
        // Three full batches of hits queued behind the completions.
        for (let i = 0; i < 3 * BATCH; i++) k.queue(5, { data: query({ name: 'hot.example.com', id: 5000 + i }), from: sockaddr4('10.0.0.4', 2000 + i) });
      },
    ],
    // Room for every answer: an evicted hot entry would turn the hits into misses.
    { maxInflight: 1000, batch: BATCH },
    0,
    { ...CACHE, positiveCapacity: 1000 },
  );
  const { k, loop } = rig;
  loop.run();
  const after = k.sent.slice(mark).map((s) => (s.data.readUInt16BE(0) >= 5000 ? 'hit' : 'done'));
  t.equal(after.length, N + 3 * BATCH, JSON.stringify(after.reduce<[string, number][]>((r, x) => { const l = r[r.length - 1]; if (l !== undefined && l[0] === x) l[1]++; else r.push([x, 1]); return r; }, [])));
  // Runs of the same kind, in order: [kind, length].
  const runs: [string, number][] = [];
  for (const x of after) {
    const last = runs[runs.length - 1];
    if (last !== undefined && last[0] === x) last[1]++;
    else runs.push([x, 1]);
  }
  t.same(runs, [
    ['done', COMPLETIONS_PER_TURN], ['hit', BATCH],
    ['done', COMPLETIONS_WHEN_BEHIND], ['hit', BATCH],
    ['done', N - COMPLETIONS_PER_TURN - COMPLETIONS_WHEN_BEHIND], ['hit', BATCH],
  ], 'a turn not behind applies 256, then while the receives come back full 32 a turn');
});
