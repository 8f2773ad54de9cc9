// The list-then-watch reflectors (src/kube/watch.ts) against the fake
// kube-apiserver on loopback, through the real client path: a kubeconfig
// file, client-node's auth (bearer token checked by the fake), Node's http.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import http from 'node:http';
import net, { type AddressInfo, type Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import path from 'node:path';
import { ManualClock } from '../src/clock.js';
import { createLogger } from '../src/log.js';
import { Counters } from '../src/stats/counters.js';
import { KubeApi, MAX_RETRY_AFTER_MS, loadClusterConfig, parseRetryAfter, type ApiGetter } from '../src/kube/client.js';
import { Backoff, backoffDelay, backoffDefaults } from '../src/kube/backoff.js';
import { KubeWatch, Reflector, realTimers, watchCounterSchema, watchDefaults, type Timers, type WatchCounter, type WatchTuning } from '../src/kube/watch.js';
import type { ClusterViewWriter, KindName, KindObjects, SlimEndpointSlice, SlimService } from '../src/kube/types.js';
import { ClusterView } from '../src/kube/view.js';
import { NodePods, PodWatch, podWatchCounterSchema } from '../src/kube/pods.js';
import { answerCluster, recordOptions } from '../src/kube/records.js';
import { QType, Rcode } from '../src/dns/constants.js';
import { nameToWire } from '../src/dns/name.js';
import { writeKubeconfig } from '../testkit/cluster.js';
import { FakeApiServer, endpointSliceJson, namespaceJson, serviceJson, type FakeApiOptions } from '../testkit/fake-apiserver.js';

// ---------------------------------------------------------------- helpers

function keyOf(obj: KindObjects[KindName]): string {
  return 'namespace' in obj ? `${obj.namespace}/${obj.name}` : obj.name;
}

/** A Map-based writer that also records what it was told. */
class RecordingWriter implements ClusterViewWriter {
  readonly maps: Record<KindName, Map<string, KindObjects[KindName]>> = {
    services: new Map(),
    endpointslices: new Map(),
    namespaces: new Map(),
  };
  readonly synced = new Set<KindName>();
  readonly replaces: Record<KindName, number> = { services: 0, endpointslices: 0, namespaces: 0 };
  readonly touches: number[] = [];

  upsert<K extends KindName>(kind: K, obj: KindObjects[K]): void {
    this.maps[kind].set(keyOf(obj), obj);
  }
  remove<K extends KindName>(kind: K, namespace: string, name: string): void {
    this.maps[kind].delete(kind === 'namespaces' ? name : `${namespace}/${name}`);
  }
  replace<K extends KindName>(kind: K, objs: Iterable<KindObjects[K]>): void {
    const m = new Map<string, KindObjects[KindName]>();
    for (const o of objs) m.set(keyOf(o), o);
    this.maps[kind] = m;
    this.replaces[kind]++;
  }
  markSynced(kind: KindName): void {
    this.synced.add(kind);
  }
  touch(nowMs: number): void {
    this.touches.push(nowMs);
  }
  service(ns: string, name: string): SlimService | undefined {
    return this.maps.services.get(`${ns}/${name}`) as SlimService | undefined;
  }
}

/** Polls until `cond` holds; a bound against hangs only (the assertion is the condition). */
async function until(t: Test, what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  t.fail(`timed out waiting for: ${what}`);
  throw new Error(`timed out waiting for: ${what}`);
}

interface LogLine {
  level: string;
  msg: string;
  kind?: string;
  error?: string;
}

const testBackoff = { initialMs: 5, capMs: 40, resetMs: 60_000 };

interface Env {
  fake: FakeApiServer;
  api: KubeApi;
  writer: RecordingWriter;
  clock: ManualClock;
  counters: Counters<WatchCounter>;
  logs: LogLine[];
  opts: {
    clock: ManualClock;
    log: ReturnType<typeof createLogger>;
    counters: Counters<WatchCounter>;
    tuning: Partial<WatchTuning>;
    timers?: Timers;
  };
  /** Starts a KubeWatch (all kinds), stopped at teardown. */
  watchAll(): KubeWatch;
  /** Starts one reflector, stopped at teardown. */
  reflector<K extends KindName>(kind: K): Reflector<K>;
}

async function setup(
  t: Test,
  o: { fake?: FakeApiOptions; tuning?: Partial<WatchTuning>; timers?: Timers; token?: string } = {},
): Promise<Env> {
  const fake = new FakeApiServer({ token: 'test-token', ...o.fake });
  await fake.start();
  const file = writeKubeconfig(fake.url, o.token ?? 'test-token');
  const dir = path.dirname(file);
  const cfg = await loadClusterConfig({ kubeconfig: file });
  if (cfg.kind !== 'ok') throw new Error(cfg.reason);
  const api = new KubeApi(cfg);
  const writer = new RecordingWriter();
  const clock = new ManualClock();
  const counters = new Counters(watchCounterSchema);
  const logs: LogLine[] = [];
  const log = createLogger('debug', (line) => logs.push(JSON.parse(line) as LogLine));
  const opts = { clock, log, counters, tuning: { backoff: testBackoff, ...o.tuning }, ...(o.timers ? { timers: o.timers } : {}) };
  const stops: (() => Promise<void>)[] = [];
  t.teardown(async () => {
    for (const s of stops) await s();
    await fake.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return {
    fake,
    api,
    writer,
    clock,
    counters,
    logs,
    opts,
    watchAll() {
      const w = new KubeWatch(api, writer, opts);
      stops.push(() => w.stop());
      w.start();
      return w;
    },
    reflector<K extends KindName>(kind: K) {
      const r = new Reflector(kind, api, writer, opts);
      stops.push(() => r.stop());
      r.start();
      return r;
    },
  };
}

function seed(fake: FakeApiServer, services: number, ns = 'default'): void {
  fake.put('namespaces', namespaceJson(ns));
  for (let i = 0; i < services; i++) {
    const name = `svc-${i}`;
    fake.put('services', serviceJson(ns, name, { clusterIP: `10.96.${i >> 8}.${i & 255}` }));
    fake.put('endpointslices', endpointSliceJson(ns, `${name}-abcde`, name, [{ addresses: [`10.244.${i >> 8}.${i & 255}`] }]));
  }
}

// ---------------------------------------------------------------- tests

t.test('initial sync: every kind listed, synced, touched with the injected clock', async (t) => {
  const env = await setup(t);
  seed(env.fake, 3);
  env.fake.put('namespaces', namespaceJson('kube-system'));
  const w = env.watchAll();
  await until(t, 'synced', () => w.synced);
  t.equal(env.writer.maps.services.size, 3);
  t.equal(env.writer.maps.endpointslices.size, 3);
  t.same([...env.writer.maps.namespaces.keys()].sort(), ['default', 'kube-system']);
  t.same(env.writer.service('default', 'svc-1'), {
    namespace: 'default',
    name: 'svc-1',
    kind: 'ClusterIP',
    clusterIPs: ['10.96.0.1'],
    externalName: '',
    ports: [{ name: 'http', port: 80, protocol: 'TCP' }],
    publishNotReadyAddresses: false,
  });
  t.ok(env.writer.touches.length > 0 && env.writer.touches.every((ms) => ms === env.clock.now()), 'touch() gets Clock time');
  t.equal(env.counters.get('services.lists'), 1);
  t.equal(env.counters.get('services.relists'), 0);
  // Watches follow, with the protocol parameters client-go sends.
  await until(t, 'three watches open', () => env.fake.openWatches === 3);
  const watchReq = env.fake.requests.find((r) => r.kind === 'services' && r.watch);
  t.equal(watchReq?.params.get('allowWatchBookmarks'), 'true');
  const timeout = Number(watchReq?.params.get('timeoutSeconds'));
  t.ok(timeout >= 300 && timeout < 600, `timeoutSeconds in [300, 600): ${timeout}`);
  t.equal(env.logs.filter((l) => l.msg === 'kube initial list applied').length, 3, 'one sync line per kind');
});

t.test('live ADDED / MODIFIED / DELETED arrive', async (t) => {
  const env = await setup(t);
  seed(env.fake, 1);
  const w = env.watchAll();
  await until(t, 'watching', () => w.synced && env.fake.openWatches === 3);
  env.fake.put('services', serviceJson('default', 'new', { clusterIP: '10.96.9.9' }));
  await until(t, 'added', () => env.writer.service('default', 'new') !== undefined);
  env.fake.put('services', serviceJson('default', 'new', { clusterIP: 'None' }));
  await until(t, 'modified', () => env.writer.service('default', 'new')?.kind === 'Headless');
  env.fake.put('endpointslices', endpointSliceJson('default', 'new-x', 'new', [{ addresses: ['10.1.0.1'], ready: false, hostname: 'h0' }]));
  await until(t, 'slice added', () => env.writer.maps.endpointslices.has('default/new-x'));
  const slice = env.writer.maps.endpointslices.get('default/new-x') as SlimEndpointSlice;
  t.same(slice.endpoints, [{ addresses: ['10.1.0.1'], ready: false, hostname: 'h0' }]);
  t.equal(slice.serviceName, 'new');
  env.fake.remove('services', 'default', 'new');
  await until(t, 'deleted', () => env.writer.service('default', 'new') === undefined);
  env.fake.remove('namespaces', '', 'default');
  await until(t, 'namespace deleted', () => env.writer.maps.namespaces.size === 0);
  t.equal(env.counters.get('services.lists'), 1, 'no relist');
  t.ok(env.counters.get('services.events') >= 3);
});

t.test('a closed watch resumes from the last RV, without a relist', async (t) => {
  const env = await setup(t);
  seed(env.fake, 2);
  const r = env.reflector('services');
  await until(t, 'watching', () => r.synced && env.fake.openWatches === 1);
  env.fake.put('services', serviceJson('default', 'a'));
  await until(t, 'a', () => env.writer.service('default', 'a') !== undefined);
  const rvBefore = r.resourceVersion;
  t.equal(rvBefore, env.fake.resourceVersion);
  env.fake.closeWatches();
  // Changed while no watch was open: the resumed watch replays them from history.
  env.fake.put('services', serviceJson('default', 'b'));
  env.fake.remove('services', 'default', 'svc-0');
  await until(t, 'b and no svc-0', () => env.writer.service('default', 'b') !== undefined && env.writer.service('default', 'svc-0') === undefined);
  t.equal(env.fake.seen('services', false), 1, 'one list page, ever');
  t.equal(env.counters.get('services.lists'), 1);
  t.equal(env.counters.get('services.watchRestarts'), 1);
  const watches = env.fake.requests.filter((q) => q.kind === 'services' && q.watch);
  t.equal(watches.at(-1)?.params.get('resourceVersion'), rvBefore, 're-watch from the kept RV');
  t.equal(env.writer.replaces.services, 1);
});

for (const expiredAs of ['event', 'http'] as const) {
  t.test(`410 (${expiredAs}) -> relist; changes while away neither lost nor duplicated`, async (t) => {
    const env = await setup(t);
    env.fake.expiredAs = expiredAs;
    seed(env.fake, 5);
    const w = env.watchAll();
    await until(t, 'watching', () => w.synced && env.fake.openWatches === 3);
    await env.fake.down();
    // While we are away: adds, a modify, a delete, then history is compacted.
    env.fake.put('services', serviceJson('default', 'while-away', { clusterIP: '10.96.50.50' }));
    env.fake.put('services', serviceJson('default', 'svc-1', { clusterIP: '10.96.60.60' }));
    env.fake.remove('services', 'default', 'svc-2');
    env.fake.remove('endpointslices', 'default', 'svc-2-abcde');
    env.fake.compact();
    t.equal(env.writer.maps.services.size, 5, 'the last view keeps serving while down');
    await env.fake.up();
    await until(t, 'relisted', () => env.counters.get('services.relists') === 1 && env.counters.get('endpointslices.relists') === 1);
    t.same([...env.writer.maps.services.keys()].sort(), ['default/svc-0', 'default/svc-1', 'default/svc-3', 'default/svc-4', 'default/while-away']);
    t.same(env.writer.service('default', 'svc-1')?.clusterIPs, ['10.96.60.60']);
    t.equal(env.writer.maps.endpointslices.size, 4);
    t.ok(env.logs.some((l) => l.msg === 'kube watch history expired; relisting' && l.kind === 'services'));
    // And it carries on watching after the relist.
    env.fake.put('services', serviceJson('default', 'after'));
    await until(t, 'after', () => env.writer.service('default', 'after') !== undefined);
  });
}

t.test('API server down then up: last state kept, one warning, one recovery line', async (t) => {
  const env = await setup(t);
  seed(env.fake, 3);
  const r = env.reflector('services');
  await until(t, 'watching', () => r.synced && env.fake.openWatches === 1);
  await env.fake.down();
  await until(t, 'several failed retries', () => env.counters.get('services.errors') >= 3);
  t.equal(env.writer.maps.services.size, 3, 'view unchanged while the API is down');
  t.equal(env.logs.filter((l) => l.level === 'warn').length, 1, 'one warning for the whole outage');
  env.fake.put('services', serviceJson('default', 'during-outage'));
  await env.fake.up();
  await until(t, 'caught up', () => env.writer.service('default', 'during-outage') !== undefined);
  t.equal(env.counters.get('services.lists'), 1, 'history still there: resumed, no relist');
  t.equal(env.logs.filter((l) => l.msg === 'kube API reachable again').length, 1);
});

t.test('bookmarks advance the RV the next watch starts from', async (t) => {
  const env = await setup(t);
  seed(env.fake, 1);
  const r = env.reflector('services');
  await until(t, 'watching', () => r.synced && env.fake.openWatches === 1);
  env.fake.bumpRv(50); // other kinds changed; no services event carries the new RV
  env.fake.progressNotify(); // etcd tells the services watch cache the new RV
  env.fake.bookmark('services');
  await until(t, 'bookmark applied', () => r.resourceVersion === env.fake.resourceVersion);
  const bookmarkRv = r.resourceVersion;
  env.fake.closeWatches();
  await until(t, 're-watched', () => env.fake.seen('services', true) === 2);
  t.equal(env.fake.requests.filter((q) => q.kind === 'services' && q.watch).at(-1)?.params.get('resourceVersion'), bookmarkRv);
  t.equal(env.writer.maps.services.size, 1, 'a bookmark changes no object');
});

t.test('pagination: pages of pageSize, one replace at the end', async (t) => {
  const env = await setup(t, { tuning: { pageSize: 4 } });
  seed(env.fake, 10);
  const r = env.reflector('services');
  await until(t, 'synced', () => r.synced);
  const pages = env.fake.requests.filter((q) => q.kind === 'services' && !q.watch);
  t.equal(pages.length, 3);
  t.same(
    pages.map((p) => p.params.get('limit')),
    ['4', '4', '4'],
  );
  t.equal(pages[0]?.params.get('continue'), null);
  t.ok(pages[1]?.params.get('continue'));
  t.equal(env.writer.maps.services.size, 10);
  t.equal(env.writer.replaces.services, 1);
});

t.test('pagination: an expired continue token (410) relists from scratch', async (t) => {
  const env = await setup(t, { tuning: { pageSize: 4 } });
  seed(env.fake, 10);
  let compactions = 0;
  env.fake.onPartialPage = () => {
    if (compactions++ === 0) {
      // Between page 1 and 2: a change and a compaction make the token stale.
      env.fake.put('services', serviceJson('default', 'mid-list'));
      env.fake.compact();
    }
  };
  const r = env.reflector('services');
  await until(t, 'synced', () => r.synced);
  t.equal(env.writer.maps.services.size, 11, 'the fresh list has every object once');
  t.equal(env.writer.replaces.services, 1, 'the partial list was never applied');
  const pages = env.fake.requests.filter((q) => q.kind === 'services' && !q.watch);
  t.equal(pages.length, 2 + 3, 'page 1, the expired page 2, then a whole new list');
  t.equal(pages[2]?.params.get('continue'), null);
});

t.test('malformed objects are skipped and counted; an undecodable watch line ends the watch, resumed from the last RV', async (t) => {
  const env = await setup(t);
  env.fake.put('services', serviceJson('default', 'good'));
  env.fake.put('services', { metadata: { name: 'no-spec', namespace: 'default' } });
  env.fake.put('endpointslices', { ...endpointSliceJson('default', 'weird', 'good', []), addressType: 'Bogus' });
  const w = env.watchAll();
  await until(t, 'watching', () => w.synced && env.fake.openWatches === 3);
  t.same([...env.writer.maps.services.keys()], ['default/good']);
  t.equal(env.writer.maps.endpointslices.size, 0);
  t.equal(env.counters.get('services.decodeFailures'), 1);
  t.equal(env.counters.get('endpointslices.decodeFailures'), 1);
  // A line cut short: nothing after it can be trusted to follow it, so the watch ends there and is made again.
  env.fake.injectLine('services', '{"type":"ADDED","object":');
  await until(t, 'watched again', () => env.fake.seen('services', true) === 2 && env.fake.openWatches === 3);
  // An unknown type is skipped, a blank line ignored; an event naming no object ends the watch too.
  env.fake.injectLine('services', '{"type":"SURPRISE","object":{}}');
  env.fake.injectLine('services', '');
  env.fake.injectLine('services', '{"type":"DELETED","object":{"metadata":{}}}');
  // Written behind the line that ends the second watch: the third replays them from the last RV.
  // A modification we cannot read removes the old version rather than serving it stale.
  env.fake.put('services', { metadata: { name: 'good', namespace: 'default' }, spec: { type: 'ExternalName' } });
  env.fake.put('services', serviceJson('default', 'later'));
  await until(t, 'later', () => env.writer.service('default', 'later') !== undefined);
  t.equal(env.writer.service('default', 'good'), undefined);
  t.equal(env.counters.get('services.decodeFailures'), 1 + 4);
  t.equal(env.counters.get('services.errors'), 2, 'each undecodable line ended its watch');
  t.equal(env.counters.get('services.watchRestarts'), 2, 'resumed from the kept RV');
  t.equal(env.counters.get('services.lists'), 1, 'no relist');
  t.ok(env.logs.some((l) => l.level === 'warn' && /undecodable event \(not a JSON object\)/.test(l.error ?? '')));
});

t.test('HTTP errors: list retried with backoff, watch ERROR event re-watched from RV', async (t) => {
  const env = await setup(t);
  seed(env.fake, 2);
  env.fake.failNext(500, 'etcd is sad', 2);
  const r = env.reflector('services');
  await until(t, 'synced after two failures', () => r.synced);
  t.equal(env.counters.get('services.errors'), 2);
  const warn = env.logs.find((l) => l.level === 'warn');
  t.match(warn?.error, /HTTP 500: etcd is sad/);
  await until(t, 'watching', () => env.fake.openWatches === 1);
  env.fake.injectLine('services', JSON.stringify({ type: 'ERROR', object: { kind: 'Status', code: 500, message: 'internal' } }));
  await until(t, 're-watched', () => env.fake.seen('services', true) === 2 && env.fake.openWatches === 1);
  t.equal(env.counters.get('services.lists'), 1);
  t.equal(env.counters.get('services.errors'), 3);
  env.fake.put('services', serviceJson('default', 'x'));
  await until(t, 'x', () => env.writer.service('default', 'x') !== undefined);
});

t.test('wrong token: 401 is a failure with the reason, retried', async (t) => {
  const env = await setup(t, { token: 'wrong' });
  const r = env.reflector('namespaces');
  await until(t, 'failed twice', () => env.counters.get('namespaces.errors') >= 2);
  t.notOk(r.synced);
  t.match(env.logs.find((l) => l.level === 'warn')?.error, /HTTP 401: Unauthorized/);
});

t.test('gzip list responses are decoded', async (t) => {
  const env = await setup(t, { fake: { gzip: true } });
  seed(env.fake, 20);
  const r = env.reflector('endpointslices');
  await until(t, 'synced', () => r.synced);
  t.equal(env.writer.maps.endpointslices.size, 20);
});

t.test('watch timeoutSeconds: the server ends the stream, the reflector re-watches', async (t) => {
  // The stream's no-data deadline is set once the watch's 200 arrived, which is when the watch's age starts.
  const asked: number[] = [];
  const timers: Timers = {
    set: (fn, ms) => {
      asked.push(ms);
      return realTimers.set(fn, ms);
    },
    clear: realTimers.clear,
  };
  const env = await setup(t, { tuning: { minWatchTimeoutS: 1 }, timers });
  seed(env.fake, 1);
  const r = env.reflector('services');
  await until(t, 'watching', () => r.synced && env.fake.openWatches === 1 && asked.includes(1_000 + watchDefaults.idleGraceMs));
  const t0 = Number(env.fake.requests.at(-1)?.params.get('timeoutSeconds'));
  t.ok(t0 === 1, `timeoutSeconds in [1, 2): ${t0}`);
  env.clock.advance(5_000); // the watch lived long enough to count as healthy though it saw no event
  await until(t, 'second watch', () => env.fake.seen('services', true) === 2 && env.fake.openWatches === 1);
  t.equal(env.counters.get('services.errors'), 0, 'a normal end is not a failure');
  // Ended at once with no event: client-go's "very short watch", a failure with backoff.
  await until(t, 'third watch', () => env.fake.seen('services', true) === 3);
  t.equal(env.counters.get('services.errors'), 1);
  t.equal(env.counters.get('services.lists'), 1);
});

t.test('backoff: exponential, capped, jittered, reset after a quiet period', async (t) => {
  const p = { initialMs: 800, capMs: 30_000, resetMs: 120_000 };
  t.same(backoffDefaults, p, 'client-go reflector numbers');
  t.equal(backoffDelay(p, 0, 0), 800);
  t.equal(backoffDelay(p, 1, 0), 1600);
  t.equal(backoffDelay(p, 0, 0.5), 1200);
  t.equal(backoffDelay(p, 10, 0), 30_000);
  t.equal(backoffDelay(p, 1000, 0.999), 59_970);
  const clock = new ManualClock();
  const b = new Backoff(p);
  const seq = [0, 1, 2, 3].map(() => b.next(clock.now(), 0));
  t.same(seq, [800, 1600, 3200, 6400]);
  clock.advance(119_999);
  t.equal(b.next(clock.now(), 0), 12_800, 'still in the streak');
  clock.advance(120_000);
  t.equal(b.next(clock.now(), 0), 800, 'quiet for resetMs: starts over');
});

t.test('the reflector sleeps the backoff delays it computes', async (t) => {
  const asked: number[] = [];
  const timers: Timers = {
    set: (fn, ms) => {
      if (ms < 1000) asked.push(ms);
      return realTimers.set(fn, ms < 1000 ? 1 : ms);
    },
    clear: realTimers.clear,
  };
  const env = await setup(t, { timers, tuning: { backoff: { initialMs: 100, capMs: 400, resetMs: 60_000 } } });
  await env.fake.down();
  env.reflector('services');
  await until(t, '6 failures', () => env.counters.get('services.errors') >= 6);
  // random is Math.random: each delay is base * [1, 2).
  const bases = [100, 200, 400, 400, 400, 400];
  bases.forEach((base, i) => t.ok(asked[i]! >= base && asked[i]! < 2 * base, `delay ${i}: ${asked[i]} in [${base}, ${2 * base})`));
});

t.test('stop() ends watches and backoff waits promptly', async (t) => {
  const env = await setup(t, { tuning: { backoff: { initialMs: 3_600_000, capMs: 3_600_000, resetMs: 60_000 } } });
  seed(env.fake, 1);
  const w = new KubeWatch(env.api, env.writer, env.opts);
  w.start();
  await until(t, 'watching', () => w.synced && env.fake.openWatches === 3);
  await w.stop();
  await until(t, 'server sees the watches closed', () => env.fake.openWatches === 0);
  // A reflector stuck in an hour-long backoff stops at once too.
  await env.fake.down();
  const r = new Reflector('services', env.api, env.writer, env.opts);
  r.start();
  await until(t, 'in backoff', () => env.counters.get('services.errors') >= 1);
  await r.stop();
  t.pass('stop() resolved during an hour-long backoff');
  // Stopped before it started: start() does nothing.
  const idle = new Reflector('namespaces', env.api, env.writer, env.opts);
  await idle.stop();
  idle.start();
  t.equal(idle.synced, false);
});

t.test('an ApiGetter that fails before any request (auth plugin) is a failure, not a throw', async (t) => {
  const writer = new RecordingWriter();
  const counters = new Counters(watchCounterSchema);
  let calls = 0;
  const api: ApiGetter = {
    get: () => {
      calls++;
      return Promise.resolve({ ok: false, error: 'auth: exec plugin failed' });
    },
  };
  const logs: LogLine[] = [];
  const r = new Reflector('services', api, writer, {
    clock: new ManualClock(),
    log: createLogger('debug', (l) => logs.push(JSON.parse(l) as LogLine)),
    counters,
    tuning: { backoff: testBackoff },
  });
  r.start();
  await until(t, 'retried', () => calls >= 3);
  await r.stop();
  t.match(logs[0]?.error, /exec plugin failed/);
  t.equal(logs.filter((l) => l.level === 'warn').length, 1);
});

t.test('broken responses: not a list, no RV, odd status bodies, oversize pages and lines, silent watches', async (t) => {
  const list = (rv: string): string => JSON.stringify({ kind: 'NamespaceList', metadata: { resourceVersion: rv }, items: [{ metadata: { name: 'n1' } }] });
  // Each GET takes the next scripted response: [status, body chunks, end the body?].
  const script: [number, string[], boolean][] = [
    [200, ['not json'], true],
    [200, ['{"items":{}}'], true],
    [200, [JSON.stringify({ items: null, metadata: {} })], true],
    [503, ['upstream connect error'], true],
    [200, ['x'.repeat(300)], true],
    [200, [list('7')], true],
    [200, ['{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"8"}}}\n', 'y'.repeat(300)], false],
    [200, [], false],
    [200, [], false],
  ];
  const paths: string[] = [];
  const bodies: PassThrough[] = [];
  const api: ApiGetter = {
    get: (p, signal) => {
      paths.push(p);
      const step = script.shift();
      if (step === undefined) return new Promise((resolve) => signal.addEventListener('abort', () => resolve({ ok: false, error: 'aborted' })));
      const body = new PassThrough();
      bodies.push(body);
      for (const c of step[1]) body.write(c);
      if (step[2]) body.end();
      return Promise.resolve({ ok: true, status: step[0], body });
    },
  };
  const writer = new RecordingWriter();
  const counters = new Counters(watchCounterSchema);
  const logs: LogLine[] = [];
  const r = new Reflector('namespaces', api, writer, {
    clock: new ManualClock(),
    log: createLogger('debug', (l) => logs.push(JSON.parse(l) as LogLine)),
    counters,
    tuning: { backoff: testBackoff, maxPageBytes: 200, maxLineBytes: 200, minWatchTimeoutS: 0, idleGraceMs: 20 },
  });
  t.teardown(() => r.stop());
  r.start();
  await until(t, 'script played', () => script.length === 0);
  await until(t, 'idle watch dropped', () => counters.get('namespaces.errors') === 7);
  const errors = logs.filter((l) => l.error !== undefined).map((l) => l.error ?? '');
  t.match(errors, [
    /not a list/,
    /not a list/,
    /no resourceVersion/,
    /HTTP 503: upstream connect error/,
    /broken off/,
    /event over 200 bytes/,
    /no data for 20 ms/,
  ]);
  t.equal(counters.get('namespaces.decodeFailures'), 2);
  t.ok(writer.synced.has('namespaces'));
  t.equal(r.resourceVersion, '8');
  t.match(paths.at(-1), /resourceVersion=8&/);
  for (const b of bodies) b.destroy();
});

t.test('a writer that throws: logged, relisted, the reflector keeps going', async (t) => {
  const env = await setup(t);
  seed(env.fake, 2);
  let throwOnce = true;
  const upsert = env.writer.upsert.bind(env.writer);
  env.writer.upsert = (kind, obj) => {
    if (throwOnce) {
      throwOnce = false;
      throw new Error('view bug');
    }
    upsert(kind, obj);
  };
  let replaceThrows = true;
  const replace = env.writer.replace.bind(env.writer);
  env.writer.replace = (kind, objs) => {
    if (replaceThrows) {
      replaceThrows = false;
      throw new Error('replace bug');
    }
    replace(kind, objs);
  };
  const r = env.reflector('services');
  await until(t, 'watching', () => r.synced && env.fake.openWatches === 1);
  t.equal(env.fake.seen('services', false), 2, 'the list whose replace threw was done again');
  env.fake.put('services', serviceJson('default', 'boom'));
  await until(t, 'relisted after the throw', () => env.counters.get('services.relists') === 1);
  t.ok(env.writer.service('default', 'boom'), 'the relist brought it in');
  t.ok(env.logs.some((l) => l.level === 'error' && l.msg === 'kube reflector failed; relisting'));
  env.fake.put('services', serviceJson('default', 'after'));
  await until(t, 'after', () => env.writer.service('default', 'after') !== undefined);
});

// ---------------------------------------------------------------- deadlines on requests that never finish

/**
 * A scripted ApiGetter: each GET takes the next step; a step either answers
 * (status, chunks written, body ended or left open) or hangs before any
 * response header. Everything hangs once the script is played. Every body and
 * every hung request is released when its signal aborts, as KubeApi's are.
 */
type Step = { readonly hang: true } | { readonly hang?: false; readonly status: number; readonly chunks: readonly string[]; readonly end: boolean };

function scriptedApi(script: Step[]): { api: ApiGetter; paths: string[] } {
  const paths: string[] = [];
  const api: ApiGetter = {
    get: (p, signal) => {
      paths.push(p);
      const step = script.shift() ?? { hang: true };
      if (step.hang === true) {
        return new Promise((resolve) => signal.addEventListener('abort', () => resolve({ ok: false, error: 'aborted' })));
      }
      const body = new PassThrough();
      signal.addEventListener('abort', () => body.destroy());
      for (const c of step.chunks) body.write(c);
      if (step.end) body.end();
      return Promise.resolve({ ok: true, status: step.status, body });
    },
  };
  return { api, paths };
}

/**
 * Every timer the reflector asks for fires within 50 ms, whatever its length:
 * a deadline of any size is reached at once, so the tests below assert that
 * the reflector recovers, not when.
 */
const hurriedTimers: Timers = { set: (fn, ms) => realTimers.set(fn, Math.min(ms, 50)), clear: realTimers.clear };

function nsList(rv: string, names: readonly string[]): string {
  return JSON.stringify({ kind: 'NamespaceList', metadata: { resourceVersion: rv }, items: names.map((name) => ({ metadata: { name } })) });
}

function scriptedReflector(
  t: Test,
  api: ApiGetter,
  tuning: Partial<WatchTuning> = {},
): { r: Reflector<'namespaces'>; writer: RecordingWriter; counters: Counters<WatchCounter> } {
  const writer = new RecordingWriter();
  const counters = new Counters(watchCounterSchema);
  const r = new Reflector('namespaces', api, writer, {
    clock: new ManualClock(),
    log: createLogger('error', () => {}),
    counters,
    timers: hurriedTimers,
    tuning: { backoff: testBackoff, minWatchTimeoutS: 1, idleGraceMs: 20, ...tuning },
  });
  t.teardown(() => r.stop());
  r.start();
  return { r, writer, counters };
}

t.test('a watch whose response headers never come is given up and made again', async (t) => {
  // The connection is up (the peer ACKs, keepalive cannot tell) but the
  // server, or a proxy in front of it, never answers the watch request.
  // Once the watch's own timeout has passed, nothing good can come of it.
  const { api, paths } = scriptedApi([
    { status: 200, chunks: [nsList('7', ['n1'])], end: true },
    { hang: true },
    { status: 200, chunks: [JSON.stringify({ type: 'ADDED', object: { metadata: { name: 'n2', resourceVersion: '8' } } }) + '\n'], end: false },
  ]);
  const { writer } = scriptedReflector(t, api);
  await until(t, 'the event of the second watch applied', () => writer.maps.namespaces.has('n2'));
  t.match(paths[2], /watch=1&resourceVersion=7&/, 'watched again from the listed RV');
});

t.test('a list page whose body stops half-way is given up and listed again', async (t) => {
  // Headers and half a page, then silence on a live connection: the whole
  // list must not wait on it for ever (the view would never sync).
  const full = nsList('7', ['n1', 'n2']);
  const { api } = scriptedApi([
    { status: 200, chunks: [full.slice(0, full.length >> 1)], end: false },
    { status: 200, chunks: [full], end: true },
  ]);
  const { r, writer } = scriptedReflector(t, api);
  await until(t, 'synced from the second list', () => r.synced);
  t.same([...writer.maps.namespaces.keys()].sort(), ['n1', 'n2']);
});

t.test('a list whose response headers never come is given up and made again', async (t) => {
  const { api } = scriptedApi([{ hang: true }, { status: 200, chunks: [nsList('7', ['n1'])], end: true }]);
  const { r } = scriptedReflector(t, api);
  await until(t, 'synced from the second list', () => r.synced);
});

t.test('one kind that can no longer reach the API: the view may not deny what that kind would have shown', async (t) => {
  // RBAC for endpointslices revoked (or their watch stuck) after the sync,
  // while services and namespaces keep hearing from the API server. Their
  // bookmarks must not vouch for the endpoint slices: past max-api-silence
  // without a word about slices, a headless service with no endpoints in
  // the view is stale, not empty.
  const env = await setup(t);
  seed(env.fake, 1);
  let slicesRefused = false;
  const api: ApiGetter = {
    get: (p, signal) =>
      slicesRefused && p.startsWith('/apis/discovery.k8s.io/')
        ? Promise.resolve({ ok: false, error: 'HTTP 403: endpointslices is forbidden' })
        : env.api.get(p, signal),
  };
  const view = new ClusterView();
  const w = new KubeWatch(api, view, env.opts);
  t.teardown(() => w.stop());
  w.start();
  await until(t, 'watching', () => w.synced && env.fake.openWatches === 3);
  slicesRefused = true;
  env.fake.closeWatches();
  await until(t, 'slices refused, the others watching again', () => env.counters.get('endpointslices.errors') >= 1 && env.fake.openWatches === 2);
  env.fake.put('services', serviceJson('default', 'late', { clusterIP: 'None' }));
  env.fake.put('endpointslices', endpointSliceJson('default', 'late-x', 'late', [{ addresses: ['10.244.9.9'], ready: true }]));
  await until(t, 'the service arrived', () => view.service('default', 'late') !== undefined);
  const maxSilenceMs = 300_000;
  env.clock.advance(maxSilenceMs + 1_000);
  env.fake.progressNotify(); // no namespace changed: without it the namespaces watch gets no bookmark
  env.fake.bookmark('services');
  env.fake.bookmark('namespaces');
  await until(t, 'bookmarks heard', () => view.contactOf('services') === env.clock.now() && view.contactOf('namespaces') === env.clock.now());
  const opts = recordOptions({ zone: 'cluster.local', negativesAllowed: view.negativesAllowed(env.clock.now(), maxSilenceMs) });
  const r = answerCluster(view, nameToWire('late.default.svc.cluster.local'), QType.A, opts);
  t.not(r.kind === 'answer' ? r.rcode : r.kind, Rcode.NXDOMAIN, 'no NXDOMAIN for a service whose endpoints the view has not heard about');
  t.equal(r.kind, 'unknown', 'SERVFAIL rather than a negative from a kind silent past max-api-silence');
});

t.test('a watch line that cannot be decoded ends the watch: the event it carried is replayed, not lost', async (t) => {
  // client-go's StreamWatcher stops at a decode error and the reflector
  // watches again from the last RV it applied, so the server replays the
  // event. Skipping the line and reading on applies later events (and their
  // RV) past it: the lost event (here the deletion of n1) never comes back,
  // and the view serves a deleted object until the next 410 relist, which
  // in a healthy cluster may be days away.
  const deleted = JSON.stringify({ type: 'DELETED', object: { metadata: { name: 'n1', resourceVersion: '8' } } });
  const added = JSON.stringify({ type: 'ADDED', object: { metadata: { name: 'n3', resourceVersion: '9' } } });
  const paths: string[] = [];
  let watchesFrom7 = 0;
  const api: ApiGetter = {
    get: (p, signal) => {
      paths.push(p);
      const body = new PassThrough();
      signal.addEventListener('abort', () => body.destroy());
      if (!p.includes('watch=1')) {
        body.end(nsList('7', ['n1', 'n2']));
      } else if (p.includes('resourceVersion=7&') && watchesFrom7++ === 0) {
        // The first watch: the deletion arrives cut short (a proxy, a corrupted chunk), then the next event whole.
        body.write(deleted.slice(0, deleted.length - 3) + '\n');
        body.write(added + '\n');
      } else if (p.includes('resourceVersion=7&')) {
        // Watched again from the RV before the broken line: the server's history replays both.
        body.write(deleted + '\n');
        body.write(added + '\n');
      }
      // Any other watch (from a later RV): open and quiet, as a live watch in a calm cluster.
      return Promise.resolve({ ok: true, status: 200, body });
    },
  };
  const { writer } = scriptedReflector(t, api);
  await until(t, 'n3 applied', () => writer.maps.namespaces.has('n3'));
  await until(t, 'the deletion carried by the broken line applied', () => !writer.maps.namespaces.has('n1'));
  t.same([...writer.maps.namespaces.keys()].sort(), ['n2', 'n3']);
});

/** Timers on a virtual clock the test moves: `advance` fires what fell due, in order. */
class VirtualTimers implements Timers {
  nowMs = 0;
  readonly #due = new Map<TimerHandle, { at: number; fn: () => void }>();

  set(fn: () => void, ms: number): TimerHandle {
    // A real handle that never fires, only as the key the reflector gives back to clear().
    const h = setTimeout(() => {}, 2 ** 31 - 1);
    h.unref();
    clearTimeout(h);
    this.#due.set(h, { at: this.nowMs + ms, fn });
    return h;
  }

  clear(h: TimerHandle): void {
    this.#due.delete(h);
  }

  advance(ms: number): void {
    this.nowMs += ms;
    for (;;) {
      let next: [TimerHandle, { at: number; fn: () => void }] | undefined;
      for (const e of this.#due) if (e[1].at <= this.nowMs && (next === undefined || e[1].at < next[1].at)) next = e;
      if (next === undefined) return;
      this.#due.delete(next[0]);
      next[1].fn();
    }
  }
}

type TimerHandle = ReturnType<typeof setTimeout>;

t.test('a watch silent for several bookmark periods is dead: given up and made again, not kept for the whole watch timeout', async (t) => {
  // We ask for bookmarks (allowWatchBookmarks=true) and kube-apiserver's
  // watch cache sends one to such a watch every minute
  // (cacher.go defaultBookmarkFrequency), even in a cluster where nothing
  // changes. A watch that has carried no byte for several minutes is on a
  // wedged server or proxy, or a half-open connection whose peer's kernel
  // still answers keepalives: nothing else will ever end it. Waiting for
  // timeoutSeconds (300-600 s) plus grace freezes the view for up to
  // 10.5 minutes, while the same node could be watching through another
  // API server behind the load balancer.
  const env = await setup(t);
  seed(env.fake, 1);
  const vt = new VirtualTimers();
  const r = new Reflector('services', env.api, env.writer, { ...env.opts, timers: vt, random: () => 0 });
  t.teardown(() => r.stop());
  r.start();
  await until(t, 'watching', () => r.synced && env.fake.openWatches === 1);
  const timeoutS = Number(env.fake.requests.filter((q) => q.kind === 'services' && q.watch).at(-1)?.params.get('timeoutSeconds'));
  t.equal(timeoutS, 300, 'the watch asked the server for 300 s');
  // 200 s without a byte: more than three missed bookmarks, well inside the 300 s the watch asked for.
  for (let s = 0; s < 200; s++) {
    vt.advance(1_000);
    await new Promise((resolve) => setImmediate(resolve));
  }
  await until(t, 'the silent watch given up and a new one made', () => {
    vt.advance(10); // the backoff before the new watch, on the same virtual clock (at most 10 s more in all)
    return env.fake.seen('services', true) >= 2;
  });
  t.ok(vt.nowMs < timeoutS * 1_000, `a new watch after ${vt.nowMs} ms of silence, before the old one's own timeout`);
});

t.test('a quiet kind with no bookmarks (etcd progress notifications rare): each watch the server takes from our RV vouches for its view', async (t) => {
  // kube-apiserver bookmarks a watch only at a resourceVersion its cache for
  // that kind has newer than the watch's: after a change of that kind or an
  // etcd progress notification (etcd's default: every 10 min; kine: never).
  // A Services watch in a cluster where no Service changes then carries
  // nothing, is given up for silence every 150 s, and its view must still
  // count as current: the new watch, taken from our RV with no ERROR 410,
  // is the server saying nothing was missed. Without that the view stops
  // denying names past --max-api-silence (SERVFAIL for every miss in the
  // cluster zone during a kube-dns outage) and every silence logs an error.
  const env = await setup(t);
  seed(env.fake, 1);
  const vt = new VirtualTimers();
  const view = new ClusterView();
  const r = new Reflector('services', env.api, view, { ...env.opts, timers: vt, random: () => 0 });
  t.teardown(() => r.stop());
  r.start();
  await until(t, 'watching', () => r.synced && env.fake.openWatches === 1);
  // The first watch's own grace passes now, at clock 0: left to round 1's steps it vouched at that round's clock.
  for (let s = 0; s < 20; s++) {
    vt.advance(500);
    await new Promise((resolve) => setImmediate(resolve));
  }
  const maxSilenceMs = 300_000;
  for (let round = 1; round <= 3; round++) {
    env.clock.advance(200_000);
    // Stepped only until the new watch is asked for: a step more could pass its grace before the check below.
    for (let s = 0; s < 151 && env.fake.seen('services', true) < round + 1; s++) {
      vt.advance(1_000);
      await new Promise((resolve) => setImmediate(resolve));
    }
    await until(t, `watch ${round + 1} made`, () => env.fake.seen('services', true) >= round + 1 && env.fake.openWatches === 1);
    const acceptedAt = env.clock.now();
    t.ok(view.contactOf('services') < acceptedAt, `round ${round}: not current before the new watch`);
    // The stream's timers start when the response reaches the reflector, a few turns after the fake saw the request.
    await until(t, `round ${round}: the new watch's 200 vouches for the view once its grace passed with no ERROR`, () => {
      vt.advance(100);
      return view.contactOf('services') === acceptedAt;
    });
  }
  t.ok(env.clock.now() > maxSilenceMs * 2, 'well past max-api-silence since the list');
  t.equal(env.counters.get('services.errors'), 0, 'silence on a watch the server took is no error');
  t.equal(env.counters.get('services.watchRestarts'), 3, 'each new watch counted as resumed');
  t.equal(env.logs.filter((l) => l.level === 'warn').length, 0, 'nothing warned');
});

t.test('a 410 is no sign of a fresh view: negatives stop max-api-silence after the view was last known complete', async (t) => {
  // The watch broke at T0 (API server restarted); when it comes back the
  // resumed watch gets ERROR 410: events since T0 are gone from its history,
  // so the view is known to be missing changes until a relist succeeds.
  // Counting that 410 (or the watch's 200 before it) as contact restarts
  // the max-api-silence clock: if the relists then fail (an API server
  // shedding load after a restart answers lists with 429), the view goes on
  // denying names created during the outage for another max-api-silence,
  // here 6 minutes after it was last complete with a limit of 5.
  const env = await setup(t);
  seed(env.fake, 1);
  let refuseLists = false;
  const api: ApiGetter = {
    get: (p, signal) =>
      refuseLists && !p.includes('watch=1') ? Promise.resolve({ ok: false, error: 'HTTP 429: too many requests' }) : env.api.get(p, signal),
  };
  const view = new ClusterView();
  const w = new KubeWatch(api, view, env.opts);
  t.teardown(() => w.stop());
  w.start();
  await until(t, 'watching', () => w.synced && env.fake.openWatches === 3);
  const maxSilenceMs = 300_000;
  const completeAt = env.clock.now();
  await env.fake.down();
  env.fake.put('services', serviceJson('default', 'late', { clusterIP: '10.96.7.7' }));
  env.fake.compact();
  refuseLists = true;
  env.clock.advance(240_000);
  await env.fake.up();
  await until(t, 'every kind told its history expired', () => env.logs.filter((l) => l.msg === 'kube watch history expired; relisting').length >= 3);
  env.clock.advance(120_000);
  t.ok(env.clock.now() - completeAt > maxSilenceMs, 'the view was last complete more than max-api-silence ago');
  t.notOk(view.negativesAllowed(env.clock.now(), maxSilenceMs), 'no negatives from a view known to miss changes for longer than max-api-silence');
  const opts = recordOptions({ zone: 'cluster.local', negativesAllowed: view.negativesAllowed(env.clock.now(), maxSilenceMs) });
  const r = answerCluster(view, nameToWire('late.default.svc.cluster.local'), QType.A, opts);
  t.not(r.kind === 'answer' ? r.rcode : r.kind, Rcode.NXDOMAIN, 'no NXDOMAIN for a service created while the watch was away');
});

t.test('429 with Retry-After: the reflector waits at least as long as the server asked', async (t) => {
  // kube-apiserver (priority and fairness, a watch cache still
  // initialising) and the load balancers in front of it shed load with 429
  // and say when to come back; client-go's request retry honours
  // Retry-After. Retrying on our own backoff (0.8-1.6 s at first) sends a
  // DaemonSet's thousands of nodes back many times sooner than asked.
  const server = http.createServer((req, res) => {
    req.resume();
    res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '30' });
    res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'TooManyRequests', code: 429, message: 'too many requests, please try again later' }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const file = writeKubeconfig(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, 'tk');
  const cfg = await loadClusterConfig({ kubeconfig: file });
  if (cfg.kind !== 'ok') throw new Error(cfg.reason);
  const requestTimeoutMs = 123_456;
  const slept: number[] = [];
  const timers: Timers = {
    set: (fn, ms) => {
      if (ms === requestTimeoutMs) return realTimers.set(fn, ms);
      slept.push(ms);
      return realTimers.set(fn, 1);
    },
    clear: realTimers.clear,
  };
  const writer = new RecordingWriter();
  const counters = new Counters(watchCounterSchema);
  const r = new Reflector('services', new KubeApi(cfg), writer, {
    clock: new ManualClock(),
    log: createLogger('error', () => {}),
    counters,
    timers,
    tuning: { backoff: backoffDefaults, requestTimeoutMs },
  });
  t.teardown(async () => {
    await r.stop();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  });
  r.start();
  await until(t, 'two 429s answered', () => slept.length >= 2);
  t.ok(slept[0]! >= 30_000, `first retry after ${slept[0]} ms; the server asked for 30 s`);
  t.ok(slept[1]! >= 30_000, `second retry after ${slept[1]} ms; the server asked for 30 s`);
});

t.test('Retry-After: seconds or an HTTP-date, never negative, capped', async (t) => {
  const now = Date.parse('Wed, 02 Dec 2026 16:00:00 GMT');
  t.equal(parseRetryAfter('30', now), 30_000);
  t.equal(parseRetryAfter(' 0 ', now), 0);
  t.equal(parseRetryAfter('Wed, 02 Dec 2026 16:01:30 GMT', now), 90_000, 'an HTTP-date, from the wall clock');
  t.equal(parseRetryAfter('Wed, 02 Dec 2026 15:59:00 GMT', now), 0, 'a date gone by: no wait');
  t.equal(parseRetryAfter('86400', now), MAX_RETRY_AFTER_MS, 'a day is capped');
  t.equal(parseRetryAfter('-5', now), undefined);
  t.equal(parseRetryAfter('soon', now), undefined);
});

t.test('a 503 asking for a wait is honoured; a 400 with Retry-After is not a reason to wait', async (t) => {
  const script: [number, string][] = [
    [503, 'watch cache not ready'],
    [400, 'bad request'],
  ];
  const api: ApiGetter = {
    get: () => {
      const [status, message] = script.shift() ?? [503, 'again'];
      const body = new PassThrough();
      body.end(JSON.stringify({ kind: 'Status', code: status, message }));
      return Promise.resolve({ ok: true, status, body, retryAfterMs: 20_000 });
    },
  };
  const slept: number[] = [];
  const timers: Timers = {
    set: (fn, ms) => {
      if (ms !== watchDefaults.requestTimeoutMs) slept.push(ms);
      return realTimers.set(fn, 1);
    },
    clear: realTimers.clear,
  };
  const r = new Reflector('services', api, new RecordingWriter(), {
    clock: new ManualClock(),
    log: createLogger('error', () => {}),
    counters: new Counters(watchCounterSchema),
    timers,
    tuning: { backoff: testBackoff },
  });
  t.teardown(() => r.stop());
  r.start();
  await until(t, 'two failures', () => slept.length >= 2);
  t.ok(slept[0]! >= 20_000, `after the 503: ${slept[0]} ms`);
  t.ok(slept[1]! < 1_000, `after the 400: ${slept[1]} ms, the backoff alone`);
});

/**
 * Lists whose pages carry the continue token `next(path)` gives (never an
 * empty one, so a list never ends by itself): how many pages a reflector asks
 * for, and how many of its lists fail, before 50 pages.
 */
async function listWithTokens(
  t: Test,
  next: (path: string) => string,
  o: { tuning?: Partial<WatchTuning>; perPage?: number } = {},
): Promise<{ lists: number; failures: number }> {
  let lists = 0;
  const names = Array.from({ length: o.perPage ?? 1 }, (_, i) => ({ metadata: { name: `n${i}` } }));
  const api: ApiGetter = {
    get: (p, signal) => {
      if (p.includes('watch=1') || ++lists > 50) return new Promise((resolve) => signal.addEventListener('abort', () => resolve({ ok: false, error: 'aborted' })));
      const body = new PassThrough();
      body.end(JSON.stringify({ kind: 'NamespaceList', metadata: { resourceVersion: '7', continue: next(p) }, items: names }));
      return Promise.resolve({ ok: true, status: 200, body });
    },
  };
  const { counters } = scriptedReflector(t, api, o.tuning);
  await until(t, 'the list given up, or 50 pages asked for', () => counters.get('namespaces.errors') >= 1 || lists > 50);
  return { lists, failures: counters.get('namespaces.errors') };
}

t.test('a continue token the server hands back unchanged is a failure: the list neither loops without backoff nor grows without bound', async (t) => {
  // A real continue token always moves on (it names the last key served).
  // One that comes back as sent (a broken proxy or server answering every
  // page alike) would have the reflector fetch the same page for ever, with
  // no backoff, holding each copy of its items until the list "ends".
  const { lists, failures } = await listWithTokens(t, () => 'same-token');
  t.ok(failures >= 1, 'a page whose continue token did not move on ends the list as a failure');
  t.ok(lists <= 2 * (failures + 1), `${lists} pages asked for, for ${failures} failed lists`);
});

t.test('watchRestarts counts watches resumed, not attempts that never reached the API server', async (t) => {
  const env = await setup(t);
  seed(env.fake, 1);
  const r = env.reflector('services');
  await until(t, 'watching', () => r.synced && env.fake.openWatches === 1);
  await env.fake.down();
  await until(t, 'several failed attempts', () => env.counters.get('services.errors') >= 4);
  await env.fake.up();
  await until(t, 'watching again', () => env.fake.openWatches === 1);
  t.equal(env.counters.get('services.lists'), 1, 'resumed, not relisted');
  t.equal(env.counters.get('services.watchRestarts'), 1, 'one watch resumed from the kept RV');
});

/**
 * A namespaces reflector whose first 20 watches each end at once after `line` (a list is answered normally),
 * the 21st hangs; waits until a failure is counted or the 20 are made. Whether such a watch is a very short one.
 */
async function shortWatches(t: Test, line: string): Promise<{ counters: Counters<WatchCounter>; watches: number }> {
  let watches = 0;
  const api: ApiGetter = {
    get: (p, signal) => {
      const body = new PassThrough();
      if (!p.includes('watch=1')) body.end(nsList('7', ['n1']));
      else if (++watches <= 20) body.end(line);
      else return new Promise((resolve) => signal.addEventListener('abort', () => resolve({ ok: false, error: 'aborted' })));
      return Promise.resolve({ ok: true, status: 200, body });
    },
  };
  const { counters } = scriptedReflector(t, api);
  await until(t, 'a failure counted, or 20 watches made', () => counters.get('namespaces.errors') >= 1 || watches > 20);
  return { counters, watches };
}

t.test('a watch that ends at once with only blank lines is a very short watch: backed off, not made again in a tight loop', async (t) => {
  // client-go counts decoded events for its "very short watch" rule; a
  // blank line is none. A proxy answering each watch with a newline and
  // closing would otherwise have the reflector re-watch with no delay at all.
  const { counters, watches } = await shortWatches(t, '\n');
  t.ok(counters.get('namespaces.errors') >= 1, 'a watch with nothing but a blank line, ended at once, is a failure');
  t.ok(watches < 20, `${watches} watches made before the first backoff`);
});

t.test('continue tokens that go round in a cycle are a failure too: the list neither loops without backoff nor grows without bound', async (t) => {
  // Two tokens handed out in turn (a proxy or a broken server alternating
  // between two pages) never come back "as sent", yet the list never moves on.
  const { lists, failures } = await listWithTokens(t, (p) => (p.includes('continue=token-a') ? 'token-b' : 'token-a'));
  t.ok(failures >= 1, 'a continue token seen before in the same list ends it as a failure');
  t.ok(lists <= 3 * (failures + 1), `${lists} pages asked for, for ${failures} failed lists`);
});

t.test('continue tokens that move on for ever are a failure too: a list is bounded in pages and in objects, then relisted after a backoff', async (t) => {
  // Each token new (a broken server or proxy counting up): no token repeats,
  // yet the list never ends, holding every page's objects and never syncing.
  let n = 0;
  const fresh = (): string => `token-${++n}`;
  const pages = await listWithTokens(t, fresh, { tuning: { maxListPages: 10 } });
  t.ok(pages.failures >= 1, 'a list past maxListPages pages ends as a failure');
  t.ok(pages.lists <= 10 * (pages.failures + 1), `${pages.lists} pages asked for, for ${pages.failures} failed lists`);
  const objects = await listWithTokens(t, fresh, { tuning: { maxListObjects: 250 }, perPage: 100 });
  t.ok(objects.failures >= 1, 'a list past maxListObjects objects ends as a failure');
  t.ok(objects.lists <= 3 * (objects.failures + 1), `${objects.lists} pages of 100 asked for, for ${objects.failures} failed lists`);
});

t.test('a watch that ends at once with only lines of no known event type is a very short watch too: backed off, not made again in a tight loop', async (t) => {
  // client-go's watch decoder fails on a type it does not know (an ERROR to
  // the reflector, then a backoff); we skip such a line, but it is no decoded
  // event for the very-short-watch rule. A proxy answering every watch with
  // 200 and a JSON error body, then closing, would otherwise have the
  // reflector re-watch with no delay at all.
  const { counters, watches } = await shortWatches(t, JSON.stringify({ error: 'upstream connect error' }) + '\n');
  t.ok(counters.get('namespaces.errors') >= 1, 'a watch with nothing but a line of no known type, ended at once, is a failure');
  t.ok(watches < 20, `${watches} watches made before the first backoff`);
  t.ok(counters.get('namespaces.decodeFailures') >= 1, 'the line is still counted as a decode failure');
});

t.test('stop() does not wait out the request deadline when a request hangs before it looks at its signal (an exec credential plugin)', async (t) => {
  // KubeApi.get awaits the credentials before it sends anything: client-node's
  // exec plugin is a child process with no timeout of its own, and the abort
  // signal is looked at only once it is done.
  let calls = 0;
  const api: ApiGetter = {
    get: () => {
      calls++;
      return new Promise(() => {});
    },
  };
  const r = new Reflector('namespaces', api, new RecordingWriter(), {
    clock: new ManualClock(),
    log: createLogger('error', () => {}),
    counters: new Counters(watchCounterSchema),
    tuning: { backoff: testBackoff, requestTimeoutMs: 3_600_000 },
  });
  r.start();
  await until(t, 'a request in flight', () => calls === 1);
  let bound: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([
    r.stop().then(() => 'stopped'),
    new Promise<string>((resolve) => {
      bound = setTimeout(() => resolve('still waiting'), 5_000);
    }),
  ]);
  clearTimeout(bound);
  t.equal(outcome, 'stopped', 'stop() resolved, not held for the hour-long request deadline');
});

t.test('stop() while a list hangs on a silent API server (connection taken, no answer) ends the request and returns, not after the request deadline', async (t) => {
  // The agent's kube-watch and pod-watch parts wait for this stop with no time limit of their own (only main's
  // hard stop bounds them): it must end the request in flight itself. A real KubeApi, a real socket.
  const sockets = new Set<Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.resume(); // the request read (and never answered): the client's close then shows here
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  const file = writeKubeconfig(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, 'tk');
  const cfg = await loadClusterConfig({ kubeconfig: file });
  if (cfg.kind !== 'ok') throw new Error(cfg.reason);
  const opts = { clock: new ManualClock(), log: createLogger('error', () => {}), tuning: { backoff: backoffDefaults, requestTimeoutMs: 3_600_000 } };
  const view = new KubeWatch(new KubeApi(cfg), new RecordingWriter(), { ...opts, counters: new Counters(watchCounterSchema) });
  const pods = new PodWatch(new KubeApi(cfg), new NodePods(() => {}), { ...opts, nodeName: 'node-a', counters: new Counters(podWatchCounterSchema) });
  view.start();
  pods.start();
  await until(t, 'four lists waiting on the server', () => sockets.size === 4);
  let bound: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([
    Promise.all([view.stop(), pods.stop()]).then(() => 'stopped'),
    new Promise<string>((resolve) => {
      bound = setTimeout(() => resolve('still waiting'), 20_000);
    }),
  ]);
  clearTimeout(bound);
  t.equal(outcome, 'stopped', 'both stops resolved, not held for the hour-long request deadline');
  await until(t, 'the server sees every request given up', () => sockets.size === 0);
});

/** A namespaces reflector on `api`, started (stopped at teardown), whose log lines and counters the test reads. */
function loggedReflector(t: Test, api: ApiGetter): { logs: LogLine[]; counters: Counters<WatchCounter> } {
  const logs: LogLine[] = [];
  const counters = new Counters(watchCounterSchema);
  const r = new Reflector('namespaces', api, new RecordingWriter(), {
    clock: new ManualClock(),
    log: createLogger('debug', (l) => logs.push(JSON.parse(l) as LogLine)),
    counters,
    timers: hurriedTimers,
    tuning: { backoff: testBackoff },
  });
  t.teardown(() => r.stop());
  r.start();
  return { logs, counters };
}

t.test('a Status with a huge message (a broken server or proxy) is not logged whole', async (t) => {
  // The message of a failed list's Status, and of a watch's ERROR event, goes
  // into the warning line: a list's error body may be as big as a page
  // (maxPageBytes) and a watch line as long as maxLineBytes.
  const huge = 'x'.repeat(1 << 20);
  const status = (code: number): Record<string, unknown> => ({ kind: 'Status', apiVersion: 'v1', status: 'Failure', message: huge, code });
  let lists = 0;
  const api: ApiGetter = {
    get: (p, signal) => {
      const body = new PassThrough();
      if (!p.includes('watch=1')) {
        if (++lists === 1) {
          body.end(JSON.stringify(status(500)));
          return Promise.resolve({ ok: true, status: 500, body });
        }
        body.end(nsList('7', ['n1']));
      } else if (lists === 2) {
        lists++;
        body.end(JSON.stringify({ type: 'ERROR', object: status(500) }) + '\n');
      } else return new Promise((resolve) => signal.addEventListener('abort', () => resolve({ ok: false, error: 'aborted' })));
      return Promise.resolve({ ok: true, status: 200, body });
    },
  };
  const { logs, counters } = loggedReflector(t, api);
  await until(t, 'the failed list and the failed watch', () => counters.get('namespaces.errors') >= 2);
  const failures = logs.filter((l) => /HTTP 500|watch event/.test(l.error ?? ''));
  t.equal(failures.length, 2, 'both failures logged');
  for (const l of failures) t.ok((l.error ?? '').length < 4096, `${(l.error ?? '').length} chars logged for a ${huge.length}-char message`);
});

t.test('a watch line of no known event type is skipped and counted as a decode failure, not as a watch event, and the metrics\' help says so', async (t) => {
  // nodelocal_kube_watch_events_total counts ADDED, MODIFIED, DELETED, BOOKMARK and ERROR events; a line of another
  // type is no event (as for the very-short-watch rule) and, unlike a line that cannot be read, does not end the watch.
  const unknown = JSON.stringify({ error: 'upstream connect error' });
  const added = JSON.stringify({ type: 'ADDED', object: { metadata: { name: 'n2', resourceVersion: '8' } } });
  const { api } = scriptedApi([
    { status: 200, chunks: [nsList('7', ['n1'])], end: true },
    { status: 200, chunks: [unknown + '\n' + added + '\n'], end: false },
  ]);
  const { writer, counters } = scriptedReflector(t, api);
  await until(t, 'the event after the unknown line applied', () => writer.maps.namespaces.has('n2'));
  t.equal(counters.get('namespaces.decodeFailures'), 1, 'the unknown line counted as a decode failure');
  t.equal(counters.get('namespaces.events'), 1, 'only the ADDED counted as a watch event');
  const help = watchCounterSchema.defs.find((d) => d.name === 'nodelocal_kube_decode_failures_total')?.help ?? '';
  t.match(help, /unknown type[^.]*skipped/i, `the decode failures' help tells an unknown type (skipped) from an unreadable line: ${help}`);
});

t.test('a watch ERROR event whose code is a huge string (a broken server or proxy) is not logged whole either', async (t) => {
  // A Status's code is an HTTP status, a number; the log line takes it as it comes, whatever its type and length.
  const huge = 'x'.repeat(1 << 20);
  const { api } = scriptedApi([
    { status: 200, chunks: [nsList('7', ['n1'])], end: true },
    { status: 200, chunks: [JSON.stringify({ type: 'ERROR', object: { kind: 'Status', code: huge, message: 'broken' } }) + '\n'], end: true },
  ]);
  const { logs, counters } = loggedReflector(t, api);
  await until(t, 'the failed watch', () => counters.get('namespaces.errors') >= 1);
  const failures = logs.filter((l) => /watch event/.test(l.error ?? ''));
  t.ok(failures.length >= 1, 'the failure logged');
  for (const l of failures) t.ok((l.error ?? '').length < 4096, `${(l.error ?? '').length} chars logged for a ${huge.length}-char code`);
});

/** A kubeconfig for `server` whose user's token comes from the exec plugin `script` (a shell script written beside it). */
function execKubeconfig(server: string, script: string, command = '', extra = ''): { dir: string; file: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nldns-exec-'));
  const plugin = path.join(dir, 'plugin.sh');
  fs.writeFileSync(plugin, `#!/bin/sh\necho $$ >> "${dir}/pids"\n${script}\n`, { mode: 0o755 });
  const file = path.join(dir, 'kubeconfig');
  fs.writeFileSync(file, [
    'apiVersion: v1',
    `clusters: [{name: c, cluster: {server: "${server}", insecure-skip-tls-verify: true}}]`,
    `users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: "${command || plugin}", interactiveMode: Never${extra}}}}]`,
    'contexts: [{name: x, context: {cluster: c, user: u}}]',
    'current-context: x',
  ].join('\n'));
  return { dir, file };
}

function pidsOf(dir: string): number[] {
  const p = path.join(dir, 'pids');
  return fs.existsSync(p) ? fs.readFileSync(p, 'utf8').split('\n').filter((l) => l !== '').map(Number) : [];
}

/** Running: not gone, nor a zombie (an orphan's is reaped by whoever is pid 1, maybe never). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

t.test('an exec credential plugin that hangs is run once at a time and killed past its deadline, not a new process per request and retry', async (t) => {
  // Each reflector's every request (and retry) asks for credentials; a
  // plugin that never answers (a cloud token service unreachable) must not
  // leave one more process behind each time, nor hold the credentials for ever.
  const fake = new FakeApiServer({ token: 'test-token' });
  await fake.start();
  const { dir, file } = execKubeconfig(fake.url, 'exec sleep 60');
  const cfg = await loadClusterConfig({ kubeconfig: file, execTimeoutMs: 300 });
  if (cfg.kind !== 'ok') throw new Error(cfg.kind === 'none' ? cfg.reason : cfg.reason);
  const counters = new Counters(watchCounterSchema);
  const w = new KubeWatch(new KubeApi(cfg), new RecordingWriter(), {
    clock: new ManualClock(),
    log: createLogger('error', () => {}),
    counters,
    tuning: { backoff: testBackoff, requestTimeoutMs: 100 },
  });
  t.teardown(async () => {
    await w.stop();
    for (const pid of pidsOf(dir)) if (alive(pid)) process.kill(pid, 'SIGKILL');
    await fake.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  w.start();
  const errors = (): number => counters.get('services.errors') + counters.get('endpointslices.errors') + counters.get('namespaces.errors');
  await until(t, 'several failed requests', () => errors() >= 12);
  // A process just killed is alive to kill(0) until it is reaped: the fewest seen over a few looks.
  let running = Infinity;
  for (let i = 0; i < 3; i++) {
    running = Math.min(running, pidsOf(dir).filter(alive).length);
    await new Promise((r) => setTimeout(r, 20));
  }
  t.ok(running <= 1, `${running} plugin processes running at once after ${errors()} failed requests`);
  const first = pidsOf(dir)[0];
  t.ok(first !== undefined, 'the plugin was run');
  await until(t, 'the first plugin process ended', () => first === undefined || !alive(first));
});

t.test('an exec credential plugin killed past its deadline takes the processes it started with it', async (t) => {
  // A wrapper script (sh running the real plugin) killed alone leaves the real plugin running, orphaned, one per
  // deadline for as long as the token service stays out of reach.
  const fake = new FakeApiServer({ token: 'test-token' });
  await fake.start();
  const { dir, file } = execKubeconfig(fake.url, `sleep 60 &\necho $! >> "$(dirname "$0")/pids"\nwait`);
  t.teardown(async () => {
    for (const pid of pidsOf(dir)) if (alive(pid)) process.kill(pid, 'SIGKILL');
    await fake.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const cfg = await loadClusterConfig({ kubeconfig: file, execTimeoutMs: 200 });
  if (cfg.kind !== 'ok') throw new Error(cfg.kind === 'none' ? cfg.reason : cfg.reason);
  const r = await new KubeApi(cfg).get('/api/v1/namespaces', new AbortController().signal);
  t.match(r, { ok: false, error: /gave no credential/ });
  t.equal(pidsOf(dir).length, 2, 'the script and the process it started');
  await until(t, 'both ended', () => pidsOf(dir).every((pid) => !alive(pid)));
});

/**
 * A fake API server wanting `token`, a kubeconfig whose exec plugin runs `script` (execKubeconfig), and `requests`
 * GETs through it: each status (or error), and how many times the plugin ran.
 */
async function execRequests(t: Test, token: string, requests: number, script: string, command = '', extra = ''): Promise<{ answers: (number | string)[]; runs: number }> {
  const fake = new FakeApiServer({ token });
  await fake.start();
  const { dir, file } = execKubeconfig(fake.url, script, command, extra);
  t.teardown(async () => {
    await fake.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const cfg = await loadClusterConfig({ kubeconfig: file });
  if (cfg.kind !== 'ok') throw new Error(cfg.reason);
  const api = new KubeApi(cfg);
  const answers: (number | string)[] = [];
  for (let i = 0; i < requests; i++) {
    const r = await api.get('/api/v1/namespaces?limit=1', new AbortController().signal);
    answers.push(r.ok ? r.status : r.error);
    if (r.ok) r.body.resume();
  }
  return { answers, runs: pidsOf(dir).length };
}

t.test('an exec credential plugin that answers: its token is sent, and kept until it expires', async (t) => {
  const later = new Date(Date.now() + 3_600_000).toISOString();
  const cred = JSON.stringify({ apiVersion: 'client.authentication.k8s.io/v1', kind: 'ExecCredential', status: { token: 'test-token', expirationTimestamp: later } });
  const { answers, runs } = await execRequests(t, 'test-token', 3, `echo '${cred}'`);
  t.same(answers, [200, 200, 200], 'the plugin\'s token was accepted');
  t.equal(runs, 1, 'the plugin ran once: its token had not expired');
});

t.test('an exec credential plugin: a relative command is the kubeconfig directory\'s, args and env are passed, a credential without expiry is asked for again', async (t) => {
  // Exits 3 unless told, as client-go tells a plugin, that no one is there to answer a prompt.
  const script = [
    `case "$KUBERNETES_EXEC_INFO" in *'"interactive":false'*) ;; *) exit 3;; esac`,
    `printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"tok-%s-%s"}}' "$1" "$PLUGIN_ENV"`,
  ].join('\n');
  const extra = ', args: [from-args], env: [{name: PLUGIN_ENV, value: and-env}]';
  const { answers, runs } = await execRequests(t, 'tok-from-args-and-env', 2, script, './plugin.sh', extra);
  t.same(answers, [200, 200], 'the token made of the args and the env was accepted');
  t.equal(runs, 2, 'no expirationTimestamp: run for each request');
});
