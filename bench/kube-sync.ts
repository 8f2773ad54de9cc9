/**
 * Initial sync of a large cluster through the reflectors (src/kube/watch.ts):
 * how long the three lists take, and how much memory the synced view adds.
 * The fake kube-apiserver runs in a child process, so the figures are the
 * watcher's alone.
 *
 *   npx tsc -p tsconfig.json && node --expose-gc dist/bench/kube-sync.js
 *   SERVICES=10000 NAMESPACES=100 ENDPOINTS=3 GZIP=1 PAGE=500 CHURN=1000 LOOKUPS=4000 WRITER=view   (the defaults)
 *
 * WRITER=view feeds the agent's ClusterView (kube/view.ts: slim objects plus
 * its indexes); WRITER=map a plain Map per kind (the objects alone, for
 * contrast). Phases, in order:
 *
 *   1. sync     the three lists; time, CPU, heap and RSS added (after gc), peak RSS.
 *   2. lookups  (view only) LOOKUPS questions through kube/records.ts answerCluster,
 *               a quarter each: A of svc-<i>.ns-<j>.svc.cluster.local (its cluster IP),
 *               A of an endpoint name svc-<i>-<e>.svc-<i>... (its pod IP), PTR of the
 *               cluster IP, A of a service that does not exist (NXDOMAIN). Every answer
 *               is checked; lookups/s over repeated passes.
 *   3. churn    CHURN live MODIFIED events; time and CPU per event, API load.
 *   4. relist   the server forgets its history and ends the watches ('expire' on
 *               the control pipe): each reflector resumes from a compacted RV, gets
 *               410 Gone, backs off, lists everything again and swaps it in. Time
 *               (total, and from the first list request), CPU, RSS and heap before,
 *               peak during (process.memoryUsage() every SAMPLE_MS=20 ms) and after
 *               (after gc). The lookups are checked again on the relisted view.
 *
 * The reflectors get a fixed jitter (random = 0): the three kinds then back
 * off the same 800 ms and relist together, the worst case for the peak, and
 * the run-to-run noise of the jitter is gone.
 *
 * Exits 1 if any lookup is answered wrong.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { systemClock } from '../src/clock.js';
import { silentLogger } from '../src/log.js';
import { Counters } from '../src/stats/counters.js';
import { QType, Rcode } from '../src/dns/constants.js';
import { nameToWire } from '../src/dns/name.js';
import { KubeApi, loadClusterConfig, type ApiGetter, type GetOutcome } from '../src/kube/client.js';
import { answerCluster, recordOptions, type ClusterResult, type RecordOptions } from '../src/kube/records.js';
import { ClusterView, type ClusterViewReader } from '../src/kube/view.js';
import { KubeWatch, WATCH_KINDS, watchCounterSchema, type WatchCounter } from '../src/kube/watch.js';
import type { ClusterViewWriter, KindName, KindObjects } from '../src/kube/types.js';
import { FakeApiServer, endpointSliceJson, namespaceJson, serviceJson } from '../testkit/fake-apiserver.js';

const SERVICES = Number(process.env['SERVICES'] ?? 10_000);
const NAMESPACES = Number(process.env['NAMESPACES'] ?? 100);
const ENDPOINTS = Number(process.env['ENDPOINTS'] ?? 3);
const GZIP = process.env['GZIP'] !== '0';
const PAGE = Number(process.env['PAGE'] ?? 500);
const CHURN = Math.min(SERVICES, Number(process.env['CHURN'] ?? 1_000));
const LOOKUPS = Number(process.env['LOOKUPS'] ?? 4_000);
const SAMPLE_MS = Number(process.env['SAMPLE_MS'] ?? 20);
/** gc() before each sample: the peak of live memory instead of live plus garbage (slows everything down; a diagnosis, not the figures). */
const SAMPLE_GC = process.env['SAMPLE_GC'] === '1';
const WRITER = process.env['WRITER'] ?? 'view';
if (WRITER !== 'view' && WRITER !== 'map') throw new Error(`WRITER must be view or map, not ${WRITER}`);

/** Addresses of service i: unique up to 65,536 services. */
function ip(prefix: string, i: number): string {
  return `${prefix}.${(i >> 8) & 255}.${i & 255}`;
}

/** The endpoint addresses of service i: churned services moved from 10.100+e to 10.110+e. */
function endpointIp(i: number, e: number, churned: boolean): string {
  return ip(`10.${(churned ? 110 : 100) + e}`, i);
}

// ---------------------------------------------------------------- the fake API server (child process)

async function serve(): Promise<void> {
  const fake = new FakeApiServer({ gzip: GZIP });
  for (let n = 0; n < NAMESPACES; n++) fake.put('namespaces', namespaceJson(`ns-${n}`));
  for (let i = 0; i < SERVICES; i++) {
    const ns = `ns-${i % NAMESPACES}`;
    const name = `svc-${i}`;
    fake.put('services', serviceJson(ns, name, { clusterIP: ip('10.96', i), ports: [{ name: 'http', port: 80 }, { name: 'grpc', port: 9090 }] }));
    const eps = Array.from({ length: ENDPOINTS }, (_, e) => ({ addresses: [endpointIp(i, e, false)], hostname: `${name}-${e}` }));
    fake.put('endpointslices', endpointSliceJson(ns, `${name}-x7k2p`, name, eps));
  }
  fake.compact(); // the seeding is history nobody will ask for
  await fake.start();
  process.stdout.write(JSON.stringify({ url: fake.url }) + '\n');
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line === 'stats') {
      const list = fake.requests.filter((r) => !r.watch).length;
      const watch = fake.requests.filter((r) => r.watch).length;
      process.stdout.write(JSON.stringify({ list, watch, bytes: fake.bytesSent }) + '\n');
    } else if (line.startsWith('churn ')) {
      const n = Number(line.slice(6));
      for (let i = 0; i < n; i++) {
        const ns = `ns-${i % NAMESPACES}`;
        const name = `svc-${i}`;
        const eps = Array.from({ length: ENDPOINTS }, (_, e) => ({ addresses: [endpointIp(i, e, true)], hostname: `${name}-${e}` }));
        fake.put('endpointslices', endpointSliceJson(ns, `${name}-x7k2p`, name, eps));
      }
      process.stdout.write(JSON.stringify({ churned: n }) + '\n');
    } else if (line === 'expire') {
      // The watch history expires under every client (etcd compaction): a
      // reflector may hold the newest RV itself, so move past it first, then
      // forget, then end the watches so each resumes from an RV now too old.
      fake.bumpRv();
      fake.compact();
      fake.closeWatches();
      process.stdout.write(JSON.stringify({ compactedAt: fake.resourceVersion }) + '\n');
    }
  }
  await fake.close();
}

// ---------------------------------------------------------------- the writers

interface Counts {
  readonly services: number;
  readonly endpointslices: number;
  readonly namespaces: number;
}

class MapWriter implements ClusterViewWriter {
  readonly maps: Record<KindName, Map<string, KindObjects[KindName]>> = { services: new Map(), endpointslices: new Map(), namespaces: new Map() };
  upsert<K extends KindName>(kind: K, obj: KindObjects[K]): void {
    this.maps[kind].set('namespace' in obj ? `${obj.namespace}/${obj.name}` : obj.name, obj);
  }
  remove<K extends KindName>(kind: K, namespace: string, name: string): void {
    this.maps[kind].delete(kind === 'namespaces' ? name : `${namespace}/${name}`);
  }
  replace<K extends KindName>(kind: K, objs: Iterable<KindObjects[K]>): void {
    const m = new Map<string, KindObjects[KindName]>();
    for (const o of objs) m.set('namespace' in o ? `${o.namespace}/${o.name}` : o.name, o);
    this.maps[kind] = m;
  }
  markSynced(): void {}
  touch(): void {}
  get counts(): Counts {
    return { services: this.maps.services.size, endpointslices: this.maps.endpointslices.size, namespaces: this.maps.namespaces.size };
  }
}

interface Subject {
  readonly writer: ClusterViewWriter;
  /** The view to ask, or null for the map writer (nothing to look up). */
  readonly reader: ClusterViewReader | null;
  counts(): Counts;
}

function subject(): Subject {
  if (WRITER === 'map') {
    const m = new MapWriter();
    return { writer: m, reader: null, counts: () => m.counts };
  }
  const v = new ClusterView();
  return { writer: v, reader: v, counts: () => v.counts };
}

/** The API client, noting when each list request (not watch) goes out. */
class TimedApi implements ApiGetter {
  readonly listTimes: number[] = [];
  readonly #inner: ApiGetter;
  constructor(inner: ApiGetter) {
    this.#inner = inner;
  }
  get(p: string, signal: AbortSignal): Promise<GetOutcome> {
    if (!p.includes('watch=')) this.listTimes.push(performance.now());
    return this.#inner.get(p, signal);
  }
}

// ---------------------------------------------------------------- lookups

type Expect = { readonly rcode: 'NOERROR'; readonly type: 'A' | 'PTR'; readonly data: string } | { readonly rcode: 'NXDOMAIN' };

interface Probe {
  readonly qname: Uint8Array;
  readonly qtype: number;
  readonly text: string;
  readonly expect: Expect;
}

/** LOOKUPS questions spread over the services (a prime stride visits every namespace); see the header. */
function probes(churned: number): Probe[] {
  const out: Probe[] = [];
  for (let k = 0; k < LOOKUPS; k++) {
    const i = (k * 7919) % SERVICES;
    const svc = `svc-${i}.ns-${i % NAMESPACES}.svc.cluster.local`;
    const q = ENDPOINTS === 0 && k % 4 === 1 ? 0 : k % 4;
    if (q === 0) {
      out.push({ text: svc, qname: nameToWire(svc), qtype: QType.A, expect: { rcode: 'NOERROR', type: 'A', data: ip('10.96', i) } });
    } else if (q === 1) {
      const e = k % ENDPOINTS;
      const name = `svc-${i}-${e}.${svc}`;
      out.push({ text: name, qname: nameToWire(name), qtype: QType.A, expect: { rcode: 'NOERROR', type: 'A', data: endpointIp(i, e, i < churned) } });
    } else if (q === 2) {
      const name = ip('10.96', i).split('.').reverse().join('.') + '.in-addr.arpa';
      out.push({ text: name, qname: nameToWire(name), qtype: QType.PTR, expect: { rcode: 'NOERROR', type: 'PTR', data: svc } });
    } else {
      const name = `svc-${SERVICES + i}.ns-${i % NAMESPACES}.svc.cluster.local`;
      out.push({ text: name, qname: nameToWire(name), qtype: QType.A, expect: { rcode: 'NXDOMAIN' } });
    }
  }
  return out;
}

function correct(r: ClusterResult, x: Expect): boolean {
  if (r.kind !== 'answer') return false;
  if (x.rcode === 'NXDOMAIN') return r.rcode === Rcode.NXDOMAIN && r.answer.length === 0;
  const rr = r.answer[0];
  return r.rcode === Rcode.NOERROR && r.answer.length === 1 && rr !== undefined && rr.type === x.type && rr.data === x.data;
}

interface LookupResult {
  readonly asked: number;
  readonly correct: number;
  readonly perSec: number;
}

/** Checks every probe once, then times passes over them for at least `minMs`. */
function lookups(view: ClusterViewReader, ps: readonly Probe[], opts: RecordOptions, minMs: number): LookupResult {
  let ok = 0;
  let wrong = 0;
  for (const p of ps) {
    const r = answerCluster(view, p.qname, p.qtype, opts);
    if (correct(r, p.expect)) ok++;
    else if (++wrong <= 5) console.error(`wrong answer: ${p.text} ${JSON.stringify(r)}, expected ${JSON.stringify(p.expect)}`);
  }
  let n = 0;
  let answered = 0;
  const t0 = performance.now();
  let ms = 0;
  do {
    for (const p of ps) if (answerCluster(view, p.qname, p.qtype, opts).kind === 'answer') answered++;
    n += ps.length;
    ms = performance.now() - t0;
  } while (ms < minMs);
  if (answered !== n) throw new Error('answers changed between passes');
  return { asked: ps.length, correct: ok, perSec: Math.round((n / ms) * 1000) };
}

// ---------------------------------------------------------------- measuring

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g === undefined) throw new Error('run with node --expose-gc');
  g();
  g();
}

const MiB = 1024 * 1024;
const mib = (n: number): number => Math.round((n / MiB) * 10) / 10;
const cpuMs = (c: NodeJS.CpuUsage): number => Math.round((c.user + c.system) / 1000);

async function until(cond: () => boolean, timeoutMs = 300_000): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, Math.max(0, ms)));

/** Peak RSS and heapUsed, sampled every `ms` (the heap peak includes garbage not yet collected). */
class PeakSampler {
  rss: number;
  heapUsed: number;
  readonly #timer: NodeJS.Timeout;
  constructor(ms: number, from: NodeJS.MemoryUsage) {
    this.rss = from.rss;
    this.heapUsed = from.heapUsed;
    this.#timer = setInterval(() => this.sample(), ms);
  }
  sample(): void {
    if (SAMPLE_GC) gc();
    const m = process.memoryUsage();
    this.rss = Math.max(this.rss, m.rss);
    this.heapUsed = Math.max(this.heapUsed, m.heapUsed);
  }
  stop(): void {
    clearInterval(this.#timer);
    this.sample();
  }
}

async function main(): Promise<void> {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'serve'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const out = readline.createInterface({ input: child.stdout });
  const replies = out[Symbol.asyncIterator]();
  const next = async (): Promise<Record<string, unknown>> => JSON.parse(String((await replies.next()).value)) as Record<string, unknown>;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-sync-'));
  try {
    const { url } = (await next()) as { url: string };
    const file = path.join(dir, 'kubeconfig');
    fs.writeFileSync(
      file,
      `apiVersion: v1\nclusters:\n- {name: c, cluster: {server: "${url}", insecure-skip-tls-verify: true}}\n` +
        `users:\n- {name: u, user: {token: t}}\ncontexts:\n- {name: x, context: {cluster: c, user: u}}\ncurrent-context: x\n`,
    );
    const cfg = await loadClusterConfig({ kubeconfig: file });
    if (cfg.kind !== 'ok') throw new Error(cfg.reason);
    const counters = new Counters(watchCounterSchema);
    const count = (kind: KindName, m: 'relists' | 'events'): number => counters.get(`${kind}.${m}` as WatchCounter);
    const opts = recordOptions({ zone: 'cluster.local', negativesAllowed: true });
    // Built before the baseline: the questions are the bench's, not the view's.
    const probesSynced = probes(0);
    const probesChurned = probes(CHURN);

    // ---- 1. initial sync
    gc();
    const before = process.memoryUsage();
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    const subj = subject();
    const api = new TimedApi(new KubeApi(cfg));
    const watch = new KubeWatch(api, subj.writer, {
      clock: systemClock, log: silentLogger, counters, random: () => 0, tuning: { pageSize: PAGE },
    });
    watch.start();
    const syncPeak = new PeakSampler(SAMPLE_MS, before);
    await until(() => watch.synced);
    const syncMs = performance.now() - t0;
    const syncCpu = process.cpuUsage(cpu0);
    const syncedAt = performance.now();
    syncPeak.stop();
    gc();
    const after = process.memoryUsage();
    const counts = subj.counts();
    const objects = counts.services + counts.endpointslices + counts.namespaces;
    // The watches open right after each list: wait for all three before reading the server's counts.
    let load: Record<string, unknown> = {};
    for (let i = 0; i < 200; i++) {
      child.stdin.write('stats\n');
      load = await next();
      if (load['watch'] === 3) break;
      await sleep(5);
    }

    // ---- 2. lookups on the synced view
    const look = subj.reader === null ? null : lookups(subj.reader, probesSynced, opts, 300);

    // ---- 3. churn
    child.stdin.write(`churn ${CHURN}\n`);
    await next();
    const c1 = process.cpuUsage();
    const e0 = count('endpointslices', 'events');
    const t1 = performance.now();
    await until(() => count('endpointslices', 'events') - e0 >= CHURN);
    const churnMs = performance.now() - t1;
    const churnCpu = process.cpuUsage(c1);

    // ---- 4. relist
    // A watch that ends with no event within 1 s counts as failed (client-go's
    // "very short watch") and would add a backoff: let the watches age first,
    // as they would in a cluster (they last 5-10 min).
    await sleep(syncedAt + 1_500 - performance.now());
    const relists0 = WATCH_KINDS.map((k) => count(k, 'relists'));
    gc();
    const beforeRelist = process.memoryUsage();
    const relistPeak = new PeakSampler(SAMPLE_MS, beforeRelist);
    const c2 = process.cpuUsage();
    const t2 = performance.now();
    child.stdin.write('expire\n');
    await next();
    await until(() => WATCH_KINDS.every((k, i) => count(k, 'relists') > relists0[i]!));
    const t3 = performance.now();
    const relistCpu = process.cpuUsage(c2);
    relistPeak.stop();
    const firstList = api.listTimes.find((t) => t >= t2) ?? t3;
    gc();
    const afterRelist = process.memoryUsage();
    const lookRelisted = subj.reader === null ? null : lookups(subj.reader, probesChurned, opts, 100);
    await watch.stop();

    const viewRss = beforeRelist.rss - before.rss;
    const viewHeap = beforeRelist.heapUsed - before.heapUsed;
    const result = {
      writer: WRITER,
      services: counts.services,
      endpointslices: counts.endpointslices,
      namespaces: counts.namespaces,
      endpointsPerSlice: ENDPOINTS,
      gzip: GZIP,
      pageSize: PAGE,
      sync: {
        ms: Math.round(syncMs),
        cpuMs: cpuMs(syncCpu),
        rssAddedMiB: mib(after.rss - before.rss),
        heapAddedMiB: mib(after.heapUsed - before.heapUsed),
        heapBytesPerObject: Math.round((after.heapUsed - before.heapUsed) / objects),
        peakRssAddedMiB: mib(syncPeak.rss - before.rss),
        peakHeapAddedMiB: mib(syncPeak.heapUsed - before.heapUsed),
        listRequests: load['list'],
        watchRequests: load['watch'],
        bytesFromApi: load['bytes'],
      },
      lookups: look === null || lookRelisted === null ? null : {
        asked: look.asked,
        correct: look.correct,
        perSec: look.perSec,
        afterRelistAsked: lookRelisted.asked,
        afterRelistCorrect: lookRelisted.correct,
        afterRelistPerSec: lookRelisted.perSec,
      },
      churn: {
        events: CHURN,
        ms: Math.round(churnMs),
        cpuUsPerEvent: Math.round(((churnCpu.user + churnCpu.system) / CHURN) * 10) / 10,
      },
      process: {
        // Before the watch started: the baseline everything "added" is over.
        rssBaseMiB: mib(before.rss),
        heapBaseMiB: mib(before.heapUsed),
      },
      relist: {
        ms: Math.round(t3 - t2),
        fromFirstListMs: Math.round(t3 - firstList),
        cpuMs: cpuMs(relistCpu),
        // Whole-process figures, MiB.
        rssBeforeMiB: mib(beforeRelist.rss),
        rssPeakMiB: mib(relistPeak.rss),
        rssAfterMiB: mib(afterRelist.rss),
        heapBeforeMiB: mib(beforeRelist.heapUsed),
        heapPeakMiB: mib(relistPeak.heapUsed),
        heapAfterMiB: mib(afterRelist.heapUsed),
        // Over the process before the watch started: 2.0 would be the view twice over.
        peakRssAddedOverView: Math.round(((relistPeak.rss - before.rss) / viewRss) * 100) / 100,
        peakHeapAddedOverView: Math.round(((relistPeak.heapUsed - before.heapUsed) / viewHeap) * 100) / 100,
        rssAddedAfterMiB: mib(afterRelist.rss - before.rss),
        heapAddedAfterMiB: mib(afterRelist.heapUsed - before.heapUsed),
      },
    };
    console.log(JSON.stringify(result, null, 2));
    const wrong = look === null || lookRelisted === null ? 0 : look.asked - look.correct + lookRelisted.asked - lookRelisted.correct;
    if (wrong > 0) {
      console.error(`${wrong} lookups answered wrong`);
      process.exitCode = 1;
    }
  } finally {
    child.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === 'serve') await serve();
else await main();
