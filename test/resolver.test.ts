// The socket-free pipeline: HitPath + Resolver + cache with a fake channel,
// fake upstreams and a manual clock (at the end, the core of it again
// against every backend's boundary: dgram, batched with one and two workers). This is the contract every I/O backend
// relies on: coalescing, prefetch, stale, malformed answers, the failure
// order, drain and abort, buffer ownership; plus the cache, health,
// lifecycle and clock parts it is built from.
import t from 'tap';
import * as dnsPacket from 'dns-packet';
import { DnsCache, ENTRY_OVERHEAD_BYTES, type CacheOptions, type HitCache } from '../src/cache/cache.js';
import { CacheReader } from '../src/cache/reader.js';
import { CACHE_COUNTERS } from '../src/cache/stats.js';
import { ManualClock, SWEEP_MS } from '../src/clock.js';
import { scanAnswer } from '../src/dns/answer.js';
import { parseQuery } from '../src/dns/query.js';
import { ComponentStack, StartCut, StartupError } from '../src/lifecycle.js';
import { createLogger, silentLogger } from '../src/log.js';
import { ClientMissLimiter, MAX_CLIENTS } from '../src/server/client-limit.js';
import { HitPath, MAX_WAITERS_PER_QUESTION, type MissGate, type MissOutcome } from '../src/server/hit-path.js';
import { scrubCounted } from '../src/server/scrub.js';
import { MissExchange, type MissReturn } from '../src/server/batched/miss-exchange.js';
import { OUTCOMES, OUTCOME_INDEX, Packer, itemBytes, itemTag, itemToken } from '../src/server/batched/protocol.js';
import { BATCHED_COUNTERS } from '../src/server/batched/stats.js';
import { Transport, type ClientChannel, type ClientPeer } from '../src/server/listener.js';
import { RESOLVER_COUNTERS, Resolver, type MissCompleter } from '../src/server/resolver.js';
import { UpstreamLoad } from '../src/server/upstream-load.js';
import type { LocalAnswerer, Route } from '../src/server/route.js';
import { SERVER_COUNTERS, type ServerCounterName } from '../src/server/stats.js';
import { Counters } from '../src/stats/counters.js';
import { FAIL_STREAK, UpstreamHealth } from '../src/upstream/health.js';
import { ZoneRouter } from '../src/upstream/router.js';
import type { Upstream, UpstreamExchange } from '../src/upstream/types.js';
import { ViewAnswerer } from '../src/kube/local-answerer.js';
import type { SlimEndpointSlice, SlimService } from '../src/kube/types.js';
import { ClusterView } from '../src/kube/view.js';
import { loadConfig } from '../src/config.js';
import { clientLimiter } from '../src/agent-config.js';
import { ForwardDurations } from '../src/upstream/forward-durations.js';
import { hostResolversCounters } from '../src/upstream/host-resolvers.js';
import { tcpPoolCounters } from '../src/upstream/tcp-pool-counters.js';
import { buildRouting } from '../src/routing.js';
import { loadHostServers } from '../src/upstream/host-route.js';
import { HealthProbe, PROBE_COUNTERS, PROBE_INTERVAL_MS } from '../src/upstream/probe.js';
import { a, answer, query, rcodeOf, soa, tsigRr, ttlOf, withAdditional } from './kit/dns.js';

class FakeChannel implements ClientChannel {
  readonly transport: Transport;
  readonly sent: Buffer[] = [];
  discarded = 0;
  constructor(transport: Transport = Transport.UDP) {
    this.transport = transport;
  }
  send(answer: Buffer, _peer: ClientPeer): void {
    this.sent.push(answer);
  }
  discard(): void {
    this.discarded++;
  }
  decoded(i: number): dnsPacket.DecodedPacket {
    return dnsPacket.decode(this.sent[i]!);
  }
}

/** An upstream the test completes by hand. */
class FakeUpstream implements Upstream {
  readonly name = 'fake';
  readonly health: UpstreamHealth;
  readonly exchanges: UpstreamExchange[] = [];
  rejectWith: 'overloaded' | null = null;
  constructor(clock: ManualClock) {
    this.health = new UpstreamHealth('fake', silentLogger, clock.now());
  }
  send(ex: UpstreamExchange): void {
    if (this.rejectWith !== null) {
      ex.reject(this.rejectWith);
      return;
    }
    this.exchanges.push(ex);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  abort(): void {}
  /** Answers the n-th exchange with `msg` (id rewritten, as a transport does). */
  answer(n: number, msg: Buffer): void {
    this.exchanges[n]!.resolve(msg);
  }
}

const PEER: ClientPeer = { address: '127.0.0.1', port: 40000 };
/** Client `i` of many, each its own address: one address holds at most MAX_WAITERS_PER_CLIENT of a question's slots. */
function peerN(i: number): ClientPeer {
  return { address: `10.2.${i >> 8}.${i & 255}`, port: 40000 };
}
const CACHE_OPTS: CacheOptions = {
  positiveCapacity: 100, negativeCapacity: 100, maxBytes: 1 << 24, successTtl: 30, denialTtl: 5, minHits: 3, percent: 10, staleMs: 3_600_000,
};

function rig(opts: { cache?: Partial<CacheOptions>; local?: LocalAnswerer; fallbackAfterMs?: number; localNegative?: boolean; queryLog?: string[]; maxConcurrent?: number; clientLimit?: ClientMissLimiter; remoteWaiters?: boolean; gate?: MissGate; load?: UpstreamLoad } = {}) {
  const clock = new ManualClock();
  const cache = new DnsCache({ ...CACHE_OPTS, ...opts.cache }, new Counters(CACHE_COUNTERS));
  const logger = opts.queryLog === undefined ? silentLogger : createLogger('info', (l) => opts.queryLog!.push(l));
  const hits = new HitPath({ cache, clock, logger, counters: new Counters(SERVER_COUNTERS), maxUdpSize: 1232, queryLogEvery: opts.queryLog === undefined ? 0 : 2, clientLimit: opts.clientLimit ?? null,
    remoteWaiters: opts.remoteWaiters ?? false, gate: opts.gate ?? null,
  });
  const cluster = new FakeUpstream(clock);
  const external = new FakeUpstream(clock);
  const router = new ZoneRouter<Route>(
    [{ zone: 'cluster.local', target: { upstream: cluster, timeoutMs: 2000, local: opts.local ?? null } }],
    { upstream: external, timeoutMs: 4500, local: null },
  );
  const resolver = new Resolver({
    router, clock, counters: new Counters(RESOLVER_COUNTERS), hits, fallbackAfterMs: opts.fallbackAfterMs ?? 1000, localNegative: opts.localNegative ?? false,
    maxConcurrent: opts.maxConcurrent ?? 1000, load: opts.load ?? null,
  });
  hits.connect(resolver, scrubCounted);
  return { clock, cache, hits, resolver, cluster, external, router };
}

const SVC = 'web.default.svc.cluster.local';

t.test('reload: a query the retired upstream gives back as closed goes to the new upstream, not to SERVFAIL', async (t) => {
  // A reload retires the old upstream, whose close() rejects what it still queued with 'closed' (types.ts). That is
  // no shutdown: the new routes are in place, so the question is asked again there.
  const r = rig();
  const ch = new FakeChannel();
  r.hits.handle(query({ name: SVC, id: 7 }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 1, 'queued at the old cluster upstream');
  const next = new FakeUpstream(r.clock);
  const router = new ZoneRouter<Route>([{ zone: 'cluster.local', target: { upstream: next, timeoutMs: 2000, local: null } }], { upstream: r.external, timeoutMs: 4500, local: null });
  r.resolver.configure({ router, fallbackAfterMs: 1000, localNegative: false, maxConcurrent: 1000 });
  r.cluster.exchanges[0]!.reject('closed');
  t.equal(ch.sent.length, 0, 'no SERVFAIL for it');
  t.equal(next.exchanges.length, 1, 'asked again of the new cluster upstream');
  next.answer(0, answer(SVC, [a(SVC, '10.96.0.9', 20)]));
  t.equal(ch.sent.length, 1);
  t.same(ch.decoded(0).answers?.map((x) => (x as { data: string }).data), ['10.96.0.9']);
  t.equal(r.resolver.inflight, 0, 'both exchanges released');

  // At shutdown (the resolver closed) 'closed' ends the question as before: stale or SERVFAIL, never a resend.
  r.hits.handle(query({ name: 'db.default.svc.cluster.local', id: 8 }), ch, PEER);
  t.equal(next.exchanges.length, 2);
  r.resolver.close();
  next.exchanges[1]!.reject('closed');
  t.equal(next.exchanges.length, 2, 'not sent again');
  t.equal((ch.decoded(1) as { rcode?: string }).rcode, 'SERVFAIL', 'SERVFAIL (nothing stale)');
});

t.test('a miss goes upstream once; the answer is cached and served with each client\'s id and spelling', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'WEB.default.svc.cluster.local', id: 1 }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 1, 'cluster zone routed to the cluster upstream');
  t.equal(r.external.exchanges.length, 0);
  t.equal(ch.sent.length, 0, 'nothing sent before the answer');
  r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.5', 20)], { aa: true }));
  t.equal(ch.sent.length, 1);
  const first = ch.decoded(0);
  t.equal(first.id, 1);
  t.equal(first.questions?.[0]?.name, 'WEB.default.svc.cluster.local', '0x20 spelling echoed');
  t.same(first.answers?.map((x) => (x as { data: string }).data), ['10.96.0.5']);

  r.clock.advance(5_000);
  r.hits.handle(query({ name: SVC, id: 2 }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 1, 'the second query is a hit');
  t.equal(ch.decoded(1).id, 2);
  t.equal(ttlOf(ch.decoded(1).answers![0]!), 15, 'TTL counted down by age');
  t.equal(r.hits.counters.get('misses'), 1);
  t.equal(r.cache.counters.get('hitPositive'), 1);
});

t.test('coalescing: identical misses share one upstream query', async (t) => {
  const r = rig();
  const chans = [new FakeChannel(), new FakeChannel(), new FakeChannel(Transport.TCP)];
  chans.forEach((ch, i) => r.hits.handle(query({ name: i === 1 ? 'Web.Default.svc.cluster.local' : SVC, id: 100 + i }), ch, PEER));
  t.equal(r.cluster.exchanges.length, 1, 'one exchange for three clients');
  t.equal(r.hits.counters.get('coalesced'), 2);
  t.equal(r.hits.inflight, 1);
  r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.5')]));
  chans.forEach((ch, i) => {
    t.equal(ch.decoded(0).id, 100 + i, `client ${i} gets its own id`);
  });
  t.equal(chans[1]!.decoded(0).questions?.[0]?.name, 'Web.Default.svc.cluster.local', 'and its own spelling');
  t.equal(r.hits.inflight, 0);
});

t.test('shedding: past MAX_WAITERS_PER_QUESTION clients on one question, the next is answered at once (stale, else SERVFAIL)', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  for (let i = 0; i < MAX_WAITERS_PER_QUESTION; i++) r.hits.handle(query({ name: SVC, id: i }), ch, peerN(i));
  t.equal(ch.sent.length, 0, 'every client up to the cap waits');
  r.hits.handle(query({ name: SVC, id: 60_000 }), ch, peerN(60_000));
  t.equal(ch.sent.length, 1, 'the one past the cap is answered at once');
  t.equal(ch.decoded(0).id, 60_000);
  t.equal(rcodeOf(ch.sent[0]!), 2, 'nothing cached: SERVFAIL');
  t.equal(r.hits.counters.get('shed'), 1);
  t.equal(r.cluster.exchanges.length, 1, 'still one upstream query');
  r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.5', 5)]));
  t.equal(ch.sent.length, MAX_WAITERS_PER_QUESTION + 1, 'the waiters get the answer');

  // Expired now, and the refresh stalls: the shed client gets the stale answer instead.
  r.clock.advance(10_000);
  const ch2 = new FakeChannel();
  for (let i = 0; i <= MAX_WAITERS_PER_QUESTION; i++) r.hits.handle(query({ name: SVC, id: i }), ch2, peerN(i));
  t.equal(ch2.sent.length, 1);
  t.same(dataOf(ch2.decoded(0)), ['10.96.0.5'], 'stale data for the shed client');
  t.equal(ttlOf(ch2.decoded(0).answers![0]!), 30, 'with the stale TTL');
  t.equal(r.hits.counters.get('shed'), 2);
});

t.test('remoteWaiters: clients waiting on a miss are counted, not kept (the sink\'s side answers them); the cap and the shutdown count include them; a logged one is kept', async (t) => {
  const queryLog: string[] = [];
  const r = rig({ remoteWaiters: true, queryLog });
  const ch = new FakeChannel();
  // Every second query is logged (queryLog set: one in 2): those are kept here.
  for (let i = 0; i < MAX_WAITERS_PER_QUESTION; i++) {
    r.hits.handle(query({ name: SVC, id: i }), ch, peerN(i));
    t.equal(r.hits.waitsLocally, i % 2 === 1, `client ${i}: kept here only when logged`);
  }
  t.equal(ch.sent.length, 0, 'every client up to the cap waits');
  r.hits.handle(query({ name: SVC, id: 60_000 }), ch, peerN(60_000));
  t.equal(ch.sent.length, 1, 'the cap counts the clients held elsewhere: the next is answered at once');
  r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.5', 5)]));
  t.equal(ch.sent.length, 1 + MAX_WAITERS_PER_QUESTION / 2, 'the answer goes only to the clients kept here');
  t.equal(queryLog.filter((l) => l.includes('"source":"upstream"')).length, MAX_WAITERS_PER_QUESTION / 2, 'and they are logged');
  for (let i = 0; i < 3; i++) r.hits.handle(query({ name: 'other.default.svc.cluster.local', id: i }), ch, PEER);
  t.equal(r.hits.abortAll(), 3, 'at shutdown every client waiting is counted, wherever it is held');
});

t.test('shedding: one client cannot take every waiting slot of a question; another client asking it still waits for the answer', async (t) => {
  for (const remoteWaiters of [false, true]) {
    const r = rig({ remoteWaiters });
    const ch = new FakeChannel();
    // One pod (one address, any port) asks the same name again and again while it is in flight.
    for (let i = 0; i < MAX_WAITERS_PER_QUESTION; i++) r.hits.handle(query({ name: SVC, id: i }), ch, { address: '10.1.0.9', port: 30000 + i });
    const hogShed = ch.sent.length;
    t.ok(hogShed > 0, `remoteWaiters ${remoteWaiters}: the busy client is shed past its share`);
    const other = new FakeChannel();
    r.hits.handle(query({ name: SVC, id: 7 }), other, { address: '10.1.0.10', port: 53000 });
    t.equal(other.sent.length, 0, `remoteWaiters ${remoteWaiters}: another client joins the question and waits`);
    t.equal(r.cluster.exchanges.length, 1, 'still one upstream query');
    r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.5', 5)]));
    if (!remoteWaiters) t.same(dataOf(other.decoded(0)), ['10.96.0.5'], 'and gets the answer');
    t.equal(r.hits.inflight, 0);
  }
});

t.test('buffer ownership: a waiter keeps its own copy; the receive buffer may be reused at once', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  const ring = query({ name: 'WeB.default.svc.cluster.local', id: 77 });
  r.hits.handle(ring, ch, PEER);
  // A batched backend overwrites its receive slot with the next datagram.
  ring.fill(0x41);
  r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.5')]));
  const d = ch.decoded(0);
  t.equal(d.id, 77);
  t.equal(d.questions?.[0]?.name, 'WeB.default.svc.cluster.local', 'answer built from the waiter\'s copy, not the reused buffer');
});

t.test('prefetch: a popular entry is refreshed before it expires; clients never miss', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  r.hits.handle(query({ name: SVC }), ch, PEER);
  r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.5', 10)]));
  for (let i = 0; i < 3; i++) r.hits.handle(query({ name: SVC }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 1, 'hits early in the TTL start no refresh');
  r.clock.advance(9_200);
  r.hits.handle(query({ name: SVC }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 2, 'a hit in the last second starts one refresh');
  t.equal(ch.sent.length, 5, 'and is itself answered from the old entry');
  r.hits.handle(query({ name: SVC }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 2, 'only one refresh at a time');
  r.cluster.answer(1, answer(SVC, [a(SVC, '10.96.0.6', 10)]));
  r.clock.advance(1_500);
  r.hits.handle(query({ name: SVC }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 2, 'the refreshed entry answers after the old one would have expired');
  t.same(ch.decoded(ch.sent.length - 1).answers?.map((x) => (x as { data: string }).data), ['10.96.0.6']);
  t.equal(r.cache.counters.get('prefetch'), 1);
});

t.test('failure order: local answerer, then stale, then SERVFAIL', async (t) => {
  let localCalls = 0;
  let localAnswer: Buffer | null = null;
  const local: LocalAnswerer = {
    answer: () => {
      localCalls++;
      return localAnswer === null ? null : { answer: localAnswer, chase: '' };
    },
    deniesForSure: () => false,
  };
  const r = rig({ local });
  const ch = new FakeChannel();

  // 1. Nothing cached, the local answerer has nothing: SERVFAIL.
  r.hits.handle(query({ name: SVC, id: 1, edns: true }), ch, PEER);
  r.cluster.exchanges[0]!.reject('timeout');
  t.equal(localCalls, 1, 'the local answerer was asked first');
  t.equal(rcodeOf(ch.sent[0]!), 2, 'SERVFAIL');
  t.ok(ch.decoded(0).additionals?.some((x) => x.type === 'OPT'), 'with OPT, as the query had one (RFC 6891 7)');

  // 2. The local answerer knows the name: its answer is served and cached like any other.
  localAnswer = answer(SVC, [a(SVC, '10.96.0.9', 5)], { aa: true });
  r.hits.handle(query({ name: SVC, id: 2 }), ch, PEER);
  r.cluster.exchanges[1]!.reject('network');
  t.same(ch.decoded(1).answers?.map((x) => (x as { data: string }).data), ['10.96.0.9'], 'answered from the local view');
  t.equal(r.resolver.counters.get('localOnFailure'), 1);
  r.hits.handle(query({ name: SVC, id: 3 }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 2, 'and cached');

  // 3. Expired entry, the local answerer has nothing: stale.
  localAnswer = null;
  r.clock.advance(6_000);
  r.hits.handle(query({ name: SVC, id: 4 }), ch, PEER);
  r.cluster.exchanges[2]!.reject('timeout');
  const stale = ch.decoded(3);
  t.same(stale.answers?.map((x) => (x as { data: string }).data), ['10.96.0.9'], 'stale answer');
  t.equal(ttlOf(stale.answers![0]!), 30, 'with the stale TTL (RFC 8767)');
  t.equal(r.cache.counters.get('stale'), 1);

  // 4. External names have no local answerer.
  r.hits.handle(query({ name: 'example.org', id: 5 }), ch, PEER);
  r.external.exchanges[0]!.reject('timeout');
  t.equal(rcodeOf(ch.sent[4]!), 2);
  t.equal(localCalls, 3, 'never asked for a name outside its route');
});

t.test('coredns_cache_served_stale_total counts every stale answer given, one per client of a failed question', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  r.hits.handle(query({ name: SVC, id: 1 }), ch, PEER);
  r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.5', 5)]));
  r.clock.advance(6_000);
  // Three clients wait on the refetch of the expired entry; the upstream fails.
  for (let id = 2; id <= 4; id++) r.hits.handle(query({ name: SVC, id }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 2, 'one refetch for the three');
  r.cluster.exchanges[1]!.reject('timeout');
  t.same(ch.sent.slice(1).map((m) => (dnsPacket.decode(m).answers ?? []).map((x) => (x as { data: string }).data)), [['10.96.0.5'], ['10.96.0.5'], ['10.96.0.5']], 'each of the three got the stale answer');
  t.equal(r.cache.counters.get('stale'), 3, 'three stale answers given, three counted (a shed client\'s stale answer counts one too)');
});

/** A synced view with one ClusterIP service (web.default) and one ExternalName (ext.default -> www.example.org). */
function syncedView(clock: ManualClock): ClusterView {
  const view = new ClusterView();
  const web: SlimService = {
    namespace: 'default', name: 'web', kind: 'ClusterIP', clusterIPs: ['10.96.0.5'], externalName: '',
    ports: [{ name: 'http', port: 80, protocol: 'TCP' }], publishNotReadyAddresses: false,
  };
  const ext: SlimService = { ...web, name: 'ext', kind: 'ExternalName', clusterIPs: [], externalName: 'www.example.org', ports: [] };
  view.touch(clock.now());
  view.replace('namespaces', [{ name: 'default' }, { name: 'kube-system' }]);
  view.replace('services', [web, ext]);
  view.replace('endpointslices', []);
  for (const k of ['namespaces', 'services', 'endpointslices'] as const) view.markSynced(k);
  return view;
}

function viewRig(opts: { localNegative?: boolean; fallbackAfterMs?: number; maxConcurrent?: number; load?: UpstreamLoad } = {}) {
  const clock0 = new ManualClock();
  const view = syncedView(clock0);
  // The answerer reads the rig's own clock: build the rig first, then point a view answerer at it.
  let answerer: ViewAnswerer | null = null;
  const local: LocalAnswerer = {
    answer: (key) => answerer!.answer(key),
    deniesForSure: (key) => answerer!.deniesForSure(key),
  };
  const r = rig({ local, ...opts });
  view.touch(r.clock.now());
  answerer = new ViewAnswerer({ view, clock: r.clock, zone: 'cluster.local', ttl: 5, maxSilenceMs: 300_000 });
  return { ...r, view, answerer };
}

/** Five timeouts in a row: the cluster upstream's health says failing (the view answers from then on). */
function failClusterDns(r: ReturnType<typeof rig>): void {
  for (let i = 0; i < 5; i++) r.cluster.health.record('timeout', r.clock.now());
}

function dataOf(p: dnsPacket.DecodedPacket): unknown[] {
  return (p.answers ?? []).map((x) => (x as { data: unknown }).data);
}

t.test('cluster DNS failing: cluster names come from the view at once, nothing is forwarded', async (t) => {
  const r = viewRig();
  failClusterDns(r);
  t.equal(r.cluster.health.state, 'failing');
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'Web.Default.svc.cluster.local', id: 11 }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 0, 'not forwarded');
  t.same(dataOf(ch.decoded(0)), ['10.96.0.5'], 'answered from the view');
  t.equal(ch.decoded(0).id, 11);
  t.equal(ch.decoded(0).questions?.[0]?.name, 'Web.Default.svc.cluster.local', 'in the client\'s spelling');
  t.equal(r.resolver.counters.get('localFailing'), 1);
  r.hits.handle(query({ name: 'nope.default.svc.cluster.local', id: 12 }), ch, PEER);
  t.equal(rcodeOf(ch.sent[1]!), 3, 'a name the synced view lacks: NXDOMAIN');
  t.ok(ch.decoded(1).authorities?.some((x) => x.type === 'SOA'), 'with the zone SOA');
  r.hits.handle(query({ name: 'www.example.org' }), ch, PEER);
  t.equal(r.external.exchanges.length, 1, 'external names still go to their own upstream');
  r.cluster.health.record('answered', r.clock.now());
  r.hits.handle(query({ name: 'other.default.svc.cluster.local' }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 1, 'healthy again: forwarding resumes');
});

t.test('cluster DNS late: a forward unanswered after --fallback-after is answered from the view; the late answer is ignored', async (t) => {
  const r = viewRig({ fallbackAfterMs: 1000 });
  const ch = new FakeChannel();
  r.hits.handle(query({ name: SVC, id: 5 }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 1, 'forwarded while healthy');
  r.clock.advance(900);
  t.equal(ch.sent.length, 0, 'not yet');
  r.clock.advance(200);
  t.equal(ch.sent.length, 1, 'answered within a sweep of the fallback delay');
  t.same(dataOf(ch.decoded(0)), ['10.96.0.5']);
  t.equal(r.resolver.counters.get('localLate'), 1);
  r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.77')]));
  t.equal(ch.sent.length, 1, 'the upstream answer that came later sends nothing more');
  t.equal(r.hits.inflight, 0);
});

t.test('an answered forward leaves the --fallback-after watch as it completes, not at the next sweep', async (t) => {
  // Held until the sweep, each outlived young-generation collections under a miss load and was promoted with its query.
  const r = viewRig({ fallbackAfterMs: 1000 });
  const ch = new FakeChannel();
  const names = ['a', 'b', 'c'].map((n) => `${n}-svc.default.svc.cluster.local`);
  names.forEach((name, i) => r.hits.handle(query({ name, id: 20 + i }), ch, PEER));
  t.equal(r.cluster.exchanges.length, 3, 'three forwarded');
  t.equal(r.resolver.watched, 3, 'all three watched');
  r.cluster.answer(1, answer(names[1]!, [a(names[1]!, '10.96.1.2')]));
  t.equal(r.resolver.watched, 3, 'answered behind an older unanswered one: stays until the front moves');
  r.cluster.answer(0, answer(names[0]!, [a(names[0]!, '10.96.1.1')]));
  t.equal(r.resolver.watched, 1, 'the front answered: it and the answered one behind it leave at once');
  r.cluster.answer(2, answer(names[2]!, [a(names[2]!, '10.96.1.3')]));
  t.equal(r.resolver.watched, 0, 'the last answered: nothing watched, no sweep ran');
  t.equal(ch.sent.length, 3, 'each client answered');
  r.clock.advance(1100);
  t.equal(r.resolver.counters.get('localLate'), 0, 'none answered from the view later');
});

t.test('reload to --fallback-after 0: queries already in flight wait for their upstream, not for the view', async (t) => {
  const r = viewRig({ fallbackAfterMs: 1000 });
  const ch = new FakeChannel();
  r.hits.handle(query({ name: SVC, id: 6 }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 1, 'forwarded and watched under --fallback-after 1s');
  const router = new ZoneRouter<Route>(
    [{ zone: 'cluster.local', target: { upstream: r.cluster, timeoutMs: 2000, local: { answer: (k) => r.answerer.answer(k), deniesForSure: (k) => r.answerer.deniesForSure(k) } } }],
    { upstream: r.external, timeoutMs: 4500, local: null },
  );
  r.resolver.configure({ router, fallbackAfterMs: 0, localNegative: false, maxConcurrent: 1000 });
  r.clock.advance(1500);
  t.equal(ch.sent.length, 0, 'fallback is off now: the view does not answer it');
  t.equal(r.resolver.counters.get('localLate'), 0);
  r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.77')]));
  t.same(dataOf(ch.decoded(0)), ['10.96.0.77'], 'the upstream\'s answer');
});

t.test('failure recheck with remoteWaiters: a timeout whose clients were answered elsewhere (release) still opens the window', async (t) => {
  // The batched worker closes such a question with release(), never complete(): the main thread answered its clients.
  const r = rig({ remoteWaiters: true });
  const ch = new FakeChannel();
  const EXT = 'www.example.org';
  r.hits.handle(query({ name: EXT, id: 1 }), ch, PEER);
  t.equal(ch.sent.length, 0, 'the client is held elsewhere: nothing sent from here');
  r.cache.insert(parseQuery(query({ name: EXT })).key, answer(EXT, [a(EXT, '192.0.2.7', 5)]), scanAnswer(answer(EXT, [a(EXT, '192.0.2.7', 5)]))!, r.clock.now());
  t.ok(r.hits.release(r.hits.waitsOn, () => true, 'upstream'), 'closed by release');
  r.clock.advance(6_000);
  r.hits.handle(query({ name: EXT, id: 2 }), ch, PEER);
  t.equal(r.external.exchanges.length, 2, 'expired: asked again');
  // As the worker's Completions.apply: release() declines a timeout, complete() then records it and sends nothing.
  const token = r.hits.waitsOn;
  t.notOk(r.hits.release(token, () => true, 'timeout'), 'a timeout is not simply released');
  r.hits.complete(token, null, 'timeout', () => true);
  t.equal(ch.sent.length, 0, 'its client answered elsewhere: nothing sent from here');
  r.clock.advance(10_000);
  r.hits.handle(query({ name: EXT, id: 3 }), ch, PEER);
  t.equal(r.external.exchanges.length, 2, 'within the recheck window: not asked again');
  t.same(dataOf(ch.decoded(0)), ['192.0.2.7'], 'stale at once');
});

t.test('failure recheck (RFC 8767 5): for 30 s after a name\'s upstream timed out, its stale answer is served at once, not after another timeout', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  const EXT = 'www.example.org';
  r.hits.handle(query({ name: EXT, id: 1 }), ch, PEER);
  r.external.answer(0, answer(EXT, [a(EXT, '192.0.2.7', 5)]));
  r.clock.advance(6_000);
  r.hits.handle(query({ name: EXT, id: 2 }), ch, PEER);
  t.equal(r.external.exchanges.length, 2, 'expired: asked again');
  r.external.exchanges[1]!.reject('timeout');
  t.same(dataOf(ch.decoded(1)), ['192.0.2.7'], 'the failure answered stale');
  r.clock.advance(10_000);
  r.hits.handle(query({ name: EXT, id: 3 }), ch, PEER);
  t.equal(r.external.exchanges.length, 2, 'within the recheck window: not asked again');
  t.equal(ch.sent.length, 3, 'answered at once');
  t.same(dataOf(ch.decoded(2)), ['192.0.2.7']);
  t.equal(ttlOf(ch.decoded(2).answers![0]!), 30, 'stale, TTL 30');
  t.equal(ch.decoded(2).id, 3);
  // A name that failed with nothing stale to give is still asked: there is nothing to lose.
  r.hits.handle(query({ name: 'new.example.org', id: 4 }), ch, PEER);
  r.external.exchanges[2]!.reject('timeout');
  t.equal(rcodeOf(ch.sent[3]!), 2);
  r.hits.handle(query({ name: 'new.example.org', id: 5 }), ch, PEER);
  t.equal(r.external.exchanges.length, 4, 'no stale entry: asked again, not SERVFAIL at once');
  r.external.answer(3, answer('new.example.org', [a('new.example.org', '192.0.2.8', 60)]));
  // Past the window the name is asked again, and an answer ends the window.
  r.clock.advance(21_000);
  r.hits.handle(query({ name: EXT, id: 6 }), ch, PEER);
  t.equal(r.external.exchanges.length, 5, 'after 30 s: asked again');
  r.external.answer(4, answer(EXT, [a(EXT, '192.0.2.9', 1)]));
  t.same(dataOf(ch.decoded(5)), ['192.0.2.9']);
  // Shutdown's aborts and local limits are not upstream failures: no window after them.
  r.clock.advance(2_000);
  r.hits.handle(query({ name: EXT, id: 7 }), ch, PEER);
  t.equal(r.external.exchanges.length, 6, 'expired again: asked');
  r.external.exchanges[5]!.reject('overloaded');
  r.hits.handle(query({ name: EXT, id: 8 }), ch, PEER);
  t.equal(r.external.exchanges.length, 7, 'an overloaded refusal opens no window');
  r.external.exchanges[6]!.reject('network');
  r.hits.handle(query({ name: EXT, id: 9 }), ch, PEER);
  t.equal(r.external.exchanges.length, 8, 'nor a fast failure (refused, reset): a retry costs no wait');
});

t.test('view not synced: no invented negative answer (SERVFAIL), positive answers still served', async (t) => {
  const r = viewRig();
  // The API server has been silent past --max-api-silence.
  r.clock.advance(400_000);
  t.notOk(r.answerer.authoritative);
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'nope.default.svc.cluster.local' }), ch, PEER);
  r.cluster.exchanges[0]!.reject('network');
  t.equal(rcodeOf(ch.sent[0]!), 2, 'SERVFAIL, not NXDOMAIN');
  r.hits.handle(query({ name: SVC }), ch, PEER);
  r.cluster.exchanges[1]!.reject('network');
  t.same(dataOf(ch.decoded(1)), ['10.96.0.5'], 'a name the (stale) view holds is still answered');
});

t.test('--local-negative: search-path junk under the cluster zone is answered NXDOMAIN without the upstream', async (t) => {
  const r = viewRig({ localNegative: true });
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'api.github.com.default.svc.cluster.local' }), ch, PEER);
  r.hits.handle(query({ name: 'api.github.com.svc.cluster.local' }), ch, PEER);
  r.hits.handle(query({ name: 'api.github.com.cluster.local' }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 0, 'none forwarded');
  t.same(ch.sent.map(rcodeOf), [3, 3, 3]);
  t.equal(r.resolver.counters.get('localNegative'), 3);
  r.hits.handle(query({ name: SVC }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 1, 'names that exist are still forwarded (the cluster DNS stays the source of truth)');
  const off = viewRig({ localNegative: false });
  off.hits.handle(query({ name: 'api.github.com.default.svc.cluster.local' }), new FakeChannel(), PEER);
  t.equal(off.cluster.exchanges.length, 1, 'off by default: forwarded');
});

t.test('ExternalName from the view: the CNAME plus the target resolved through the external route', async (t) => {
  const r = viewRig();
  failClusterDns(r);
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'ext.default.svc.cluster.local', id: 9 }), ch, PEER);
  t.equal(r.external.exchanges.length, 1, 'the target is looked up externally');
  t.equal(ch.sent.length, 0, 'the client waits for it');
  r.external.answer(0, answer('www.example.org', [a('www.example.org', '192.0.2.44', 60)]));
  const d = ch.decoded(0);
  t.equal(d.id, 9);
  t.same(d.answers?.map((x) => x.type), ['CNAME', 'A']);
  t.same(dataOf(d), ['www.example.org', '192.0.2.44']);
  t.equal(r.resolver.counters.get('chases'), 1);
  // Target lookup failing: the CNAME alone is still true.
  r.hits.handle(query({ name: 'ext.default.svc.cluster.local', type: 'AAAA', id: 10 }), ch, PEER);
  r.external.exchanges[1]!.reject('timeout');
  t.same(ch.decoded(1).answers?.map((x) => x.type), ['CNAME']);
});

t.test('ExternalName from the view: a target answered with an rcode that says nothing of the name (FORMERR) gets the CNAME alone, NOERROR', async (t) => {
  // FORMERR is about our query to the target's server, not about the client's: joined, the client read its own
  // query as malformed. Only NOERROR and NXDOMAIN speak of the target (an NXDOMAIN joins: RFC 6604).
  const r = viewRig();
  failClusterDns(r);
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'ext.default.svc.cluster.local', id: 11 }), ch, PEER);
  r.external.answer(0, answer('www.example.org', [], { rcode: 'FORMERR' }));
  const d = ch.decoded(0);
  t.equal(rcodeOf(ch.sent[0]!), 0, 'NOERROR, not the target server\'s FORMERR');
  t.same(d.answers?.map((x) => x.type), ['CNAME'], 'the CNAME alone');
  r.hits.handle(query({ name: 'ext.default.svc.cluster.local', type: 'AAAA', id: 12 }), ch, PEER);
  r.external.answer(1, answer('www.example.org', [], { type: 'AAAA', rcode: 'NXDOMAIN', authorities: [soa('example.org', 60, 60)] }));
  t.equal(rcodeOf(ch.sent[1]!), 3, 'an NXDOMAIN target still joins');
  t.same(ch.decoded(1).answers?.map((x) => x.type), ['CNAME']);
});

t.test('ExternalName from the view: a target answered with an extended RCODE in its OPT (BADVERS: 0 in the header) gets the CNAME alone, not a NODATA join', async (t) => {
  // As scanAnswer for any upstream answer (RFC 6891 6.1.3): the header's four bits alone are not the rcode, and the
  // OPT that holds the rest is not relayed. Joined, BADVERS would read as NOERROR with the target's SOA: NODATA.
  const r = viewRig();
  failClusterDns(r);
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'ext.default.svc.cluster.local', id: 11 }), ch, PEER);
  const opt = { type: 'OPT', name: '.', udpPayloadSize: 1232, extendedRcode: 1, ednsVersion: 0, flags: 0, options: [] } as unknown as dnsPacket.Answer;
  r.external.answer(0, answer('www.example.org', [], { authorities: [soa('example.org', 60, 60)], additionals: [opt] }));
  const d = ch.decoded(0);
  t.equal(rcodeOf(ch.sent[0]!), 0, 'NOERROR');
  t.same(d.answers?.map((x) => x.type), ['CNAME'], 'the CNAME alone');
  t.same(d.authorities ?? [], [], 'no SOA of the target joined: the client is not told the target has no address');
});

t.test('ExternalName from the view after the cluster DNS failed or was late: the target lookup gets what is left of the client\'s 4.5 s, not a fresh deadline (musl gives up at 5 s)', async (t) => {
  const EXT = 'ext.default.svc.cluster.local';
  // Failed: the cluster DNS timed out at 2 s; the target may take what is left, 2.5 s, not the route's whole 4.5 s.
  const r = viewRig({ fallbackAfterMs: 0 });
  const ch = new FakeChannel();
  const t0 = r.clock.now();
  r.hits.handle(query({ name: EXT, id: 1 }), ch, PEER);
  t.equal(r.cluster.exchanges.length, 1, 'forwarded to the cluster DNS first');
  r.clock.advance(2000);
  r.cluster.exchanges[0]!.reject('timeout');
  t.equal(r.external.exchanges.length, 1, 'then the view answers and its target is looked up');
  t.equal(r.external.exchanges[0]!.deadline, t0 + 4500, 'by the client\'s 4.5 s, counted from its question');
  r.external.exchanges[0]!.reject('timeout');
  t.same(ch.decoded(0).answers?.map((x) => x.type), ['CNAME'], 'the CNAME alone in time');
  // Late: the view answered at --fallback-after; the target's deadline is still counted from the question.
  const late = viewRig({ fallbackAfterMs: 1000 });
  const t1 = late.clock.now();
  late.hits.handle(query({ name: EXT, id: 2 }), new FakeChannel(), PEER);
  late.clock.advance(1100);
  t.equal(late.external.exchanges.length, 1, 'late: the view answers and its target is looked up');
  t.equal(late.external.exchanges[0]!.deadline, t1 + 4500, 'late: by the client\'s 4.5 s too');
  // Nothing left (a cluster DNS that failed only after 4.5 s): the CNAME alone at once, no lookup the client cannot wait for.
  const none = viewRig({ fallbackAfterMs: 0 });
  const ch2 = new FakeChannel();
  none.hits.handle(query({ name: EXT, id: 3 }), ch2, PEER);
  none.clock.advance(4600);
  none.cluster.exchanges[0]!.reject('network');
  t.equal(none.external.exchanges.length, 0, 'no lookup');
  t.same(ch2.decoded(0).answers?.map((x) => x.type), ['CNAME'], 'the CNAME alone at once');
  // A question the view answers on arrival (cluster DNS failing) keeps the route's whole deadline.
  const now = viewRig();
  failClusterDns(now);
  const t2 = now.clock.now();
  now.hits.handle(query({ name: EXT, id: 4 }), new FakeChannel(), PEER);
  t.equal(now.external.exchanges[0]!.deadline, t2 + 4500, 'answered on arrival: the whole 4.5 s');
});

/** A reload that retires the view rig's cluster upstream for a new one (returned), with `fallbackAfterMs`. */
function reloadCluster(r: ReturnType<typeof viewRig>, fallbackAfterMs: number): FakeUpstream {
  const next = new FakeUpstream(r.clock);
  const router = new ZoneRouter<Route>([{ zone: 'cluster.local', target: { upstream: next, timeoutMs: 2000, local: r.answerer } }], { upstream: r.external, timeoutMs: 4500, local: null });
  r.resolver.configure({ router, fallbackAfterMs, localNegative: false, maxConcurrent: 1000 });
  return next;
}

t.test('reload: a question asked again after its retired upstream closed keeps the client\'s deadline, not a fresh one (and an ExternalName target its budget)', async (t) => {
  // The old upstream gave it back as 'closed' 1.5 s into its 2 s: asked again on the new route, it has what is left, 0.5 s.
  const EXT = 'ext.default.svc.cluster.local';
  const r = viewRig({ fallbackAfterMs: 0 });
  const ch = new FakeChannel();
  const t0 = r.clock.now();
  r.hits.handle(query({ name: EXT, id: 1 }), ch, PEER);
  t.equal(r.cluster.exchanges[0]!.deadline, t0 + 2000, 'sent with the route\'s 2 s');
  r.clock.advance(1500);
  const next = reloadCluster(r, 0);
  r.cluster.exchanges[0]!.reject('closed');
  t.equal(next.exchanges.length, 1, 'asked again of the new cluster upstream');
  t.equal(next.exchanges[0]!.deadline, t0 + 2000, 'by the client\'s deadline, not 2 s from the retry');
  r.clock.advance(500);
  next.exchanges[0]!.reject('timeout');
  t.equal(r.external.exchanges.length, 1, 'the view answers and its target is looked up');
  t.equal(r.external.exchanges[0]!.deadline, t0 + 4500, 'by the client\'s 4.5 s, counted from its question, not from the retry');
  r.external.exchanges[0]!.reject('timeout');
  t.same(ch.decoded(0).answers?.map((x) => x.type), ['CNAME'], 'the CNAME alone in time');
});

t.test('reload: a question asked again after its retired upstream closed is answered from the view --fallback-after its client asked, not after the retry', async (t) => {
  // Asked at t0, given back as 'closed' 800 ms in: the client has waited 800 ms of its 1 s --fallback-after. The
  // watch timed it from the retry (p.sentAt), so the view answered it 1.8 s after the question, not 1 s.
  const r = viewRig({ fallbackAfterMs: 1000 });
  const ch = new FakeChannel();
  r.hits.handle(query({ name: SVC, id: 1 }), ch, PEER);
  r.clock.advance(800);
  const next = reloadCluster(r, 1000);
  r.cluster.exchanges[0]!.reject('closed');
  t.equal(next.exchanges.length, 1, 'asked again of the new cluster upstream');
  t.equal(ch.sent.length, 0, 'still waiting on it');
  r.clock.advance(200 + 2 * SWEEP_MS);
  t.equal(ch.sent.length, 1, 'answered from the view once its client has waited --fallback-after (and a sweep)');
  t.equal(r.resolver.counters.get('localLate'), 1);
});

t.test('ExternalName target lookups are upstream queries: counted in flight and forwarded, and held to --max-concurrent (the CNAME alone at the cap)', async (t) => {
  // The batched workers read the count and the cap where the resolver publishes them (upstream-load.ts).
  const load = new UpstreamLoad({ workers: 1 });
  const r = viewRig({ maxConcurrent: 2, load });
  failClusterDns(r);
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'one.example', id: 1 }), ch, PEER);
  t.notOk(load.atCap, 'one of two: the workers see room');
  r.hits.handle(query({ name: 'ext.default.svc.cluster.local', id: 2 }), ch, PEER);
  t.equal(r.external.exchanges.length, 2, 'the target is looked up');
  t.equal(r.resolver.inflight, 2, 'and counted in flight with the other miss');
  t.ok(load.atCap, 'the workers see the cap reached by the chase too');
  t.equal(r.resolver.counters.get('forwarded'), 2, 'both handed to an upstream');
  r.hits.handle(query({ name: 'ext.default.svc.cluster.local', type: 'AAAA', id: 3 }), ch, PEER);
  t.equal(r.external.exchanges.length, 2, 'at the cap the next target is not looked up');
  t.same(ch.decoded(0).answers?.map((x) => x.type), ['CNAME'], 'its client gets the CNAME alone at once');
  t.equal(r.resolver.counters.get('maxConcurrentRejects'), 1, 'counted as a rejection at the cap');
  r.external.answer(1, answer('www.example.org', [a('www.example.org', '192.0.2.44', 60)]));
  t.equal(r.resolver.inflight, 1, 'the answered lookup frees its slot');
  t.notOk(load.atCap, 'and the workers see it free');
  t.same(ch.decoded(1).answers?.map((x) => x.type), ['CNAME', 'A']);
  r.resolver.configure({ router: r.router, fallbackAfterMs: 1000, localNegative: false, maxConcurrent: 1 });
  t.ok(load.atCap, 'a reload that lowers the cap is published too');
});

t.test('--max-concurrent: a miss shed at the cap whose view answer is an ExternalName counts one rejection, not a second for its target', async (t) => {
  const r = viewRig({ maxConcurrent: 1 });
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'one.example', id: 1 }), ch, PEER);
  t.equal(r.resolver.inflight, 1, 'at the cap');
  r.hits.handle(query({ name: 'ext.default.svc.cluster.local', id: 2 }), ch, PEER);
  t.equal(r.cluster.exchanges.length + r.external.exchanges.length, 1, 'neither the name nor its target is sent');
  t.same(ch.decoded(0).answers?.map((x) => x.type), ['CNAME'], 'the view\'s CNAME alone');
  t.equal(r.resolver.counters.get('maxConcurrentRejects'), 1, 'one client query, one rejection');
});

t.test('nodelocal_externalname_chases_total counts target lookups made: none at the cap, none for a target routed back to a cluster zone or one that cannot be encoded', async (t) => {
  const EXT_SVC = 'ext.default.svc.cluster.local';
  let target = 'www.example.org';
  const local: LocalAnswerer = {
    answer: () => ({ answer: answer(EXT_SVC, [{ name: EXT_SVC, type: 'CNAME', ttl: 5, data: target }]), chase: target }),
    deniesForSure: () => false,
  };
  const r = rig({ local, maxConcurrent: 1 });
  failClusterDns(r);
  const ch = new FakeChannel();
  target = 'web.default.svc.cluster.local';
  r.hits.handle(query({ name: EXT_SVC, id: 1 }), ch, PEER);
  target = 'a..example.org';
  r.hits.handle(query({ name: EXT_SVC, type: 'AAAA', id: 2 }), ch, PEER);
  t.equal(ch.sent.length, 2, 'both answered with the CNAME alone at once');
  t.equal(r.cluster.exchanges.length + r.external.exchanges.length, 0, 'neither target looked up');
  t.equal(r.resolver.counters.get('chases'), 0, 'so no lookup counted');
  target = 'www.example.org';
  r.hits.handle(query({ name: EXT_SVC, type: 'TXT', id: 3 }), ch, PEER);
  t.equal(r.external.exchanges.length, 1, 'this target is looked up');
  t.equal(r.resolver.counters.get('chases'), 1, 'and counted');
  r.hits.handle(query({ name: EXT_SVC, type: 'MX', id: 4 }), ch, PEER);
  t.equal(r.external.exchanges.length, 1, 'at the cap the next one is not');
  t.equal(r.resolver.counters.get('chases'), 1, 'nor counted');
});

t.test('a headless service whose answer is over 64 KiB, answered from the view: every client gets a well-formed answer of its own addresses, and the next query is a plain hit', async (t) => {
  const r = viewRig();
  const big = 'big.default.svc.cluster.local';
  // 1,600 ready endpoints (two slices: the API caps one at 1,000): about 72 KB of A records, as dns-packet writes them (no compression).
  const ips = Array.from({ length: 1600 }, (_, i) => `10.244.${i >> 8}.${i & 255}`);
  const headless: SlimService = {
    namespace: 'default', name: 'big', kind: 'Headless', clusterIPs: [], externalName: '', ports: [], publishNotReadyAddresses: false,
  };
  const slice = (name: string, part: string[]): SlimEndpointSlice => ({
    namespace: 'default', name, serviceName: 'big', addressType: 'IPv4', ports: [], endpoints: part.map((ip) => ({ addresses: [ip], ready: true, hostname: '' })),
  });
  r.view.replace('services', [headless]);
  r.view.replace('endpointslices', [slice('big-a', ips.slice(0, 1000)), slice('big-b', ips.slice(1000))]);
  failClusterDns(r);
  t.equal(r.cluster.health.state, 'failing', 'the cluster DNS is failing: the view answers');

  const known = new Set(ips);
  const check = (msg: Buffer | undefined, limit: number, what: string): void => {
    if (msg === undefined) {
      t.fail(`${what}: no answer`);
      return;
    }
    t.ok(msg.length <= limit, `${what}: ${msg.length} bytes, within ${limit}`);
    let d: dnsPacket.DecodedPacket;
    try {
      d = dnsPacket.decode(msg);
    } catch (err) {
      t.fail(`${what}: the answer does not decode (${String(err)}); header ${msg.subarray(0, 12).toString('hex')}`);
      return;
    }
    const records = d.answers ?? [];
    t.ok(records.length > 0, `${what}: carries address records (${records.length}), header ${msg.subarray(0, 12).toString('hex')}`);
    const foreign = records.filter((x) => x.type !== 'A' || x.name !== big || !known.has((x as { data: string }).data));
    t.same(foreign.slice(0, 3), [], `${what}: every record is one of the service's addresses`);
  };
  const udp = new FakeChannel();
  const tcp = new FakeChannel(Transport.TCP);
  r.hits.handle(query({ name: big, id: 1, edns: true }), udp, PEER);
  check(udp.sent[0], 1232, 'UDP');
  r.hits.handle(query({ name: big, id: 2 }), tcp, PEER);
  check(tcp.sent[0], 65535, 'TCP');
  r.clock.advance(1_000);
  r.hits.handle(query({ name: big, id: 3, edns: true }), udp, PEER);
  check(udp.sent[1], 1232, 'UDP, a second later');
  const hits = r.cache.counters.get('hitPositive');
  const forwarded = r.hits.counters.get('misses');
  t.equal(hits + forwarded, 3, `each query is a cache hit or a miss handed on, never both (hits ${hits}, handed on ${forwarded})`);
  t.equal(r.resolver.counters.get('localFailing'), 1, 'the view was asked once; the answer it gave was cached and served from then on');
});

t.test('health probe: one query a second while failing, none in flight twice, none once healthy', async (t) => {
  const clock = new ManualClock();
  const up = new FakeUpstream(clock);
  const probe = new HealthProbe(up, clock, query({ name: 'kubernetes.default.svc.cluster.local' }));
  clock.advance(3 * PROBE_INTERVAL_MS);
  t.equal(probe.sent, 0, 'healthy: no probes');
  up.health.record('unreachable', clock.now());
  clock.advance(100);
  t.equal(probe.sent, 1, 'failing: a probe at once');
  clock.advance(3 * PROBE_INTERVAL_MS);
  t.equal(probe.sent, 1, 'never a second while one is in flight');
  up.exchanges[0]!.reject('timeout');
  clock.advance(PROBE_INTERVAL_MS);
  t.equal(probe.sent, 2, 'the next one a second later');
  up.health.record('answered', clock.now());
  up.exchanges[1]!.resolve(answer('kubernetes.default.svc.cluster.local', [a('kubernetes.default.svc.cluster.local', '10.96.0.1')]));
  clock.advance(3 * PROBE_INTERVAL_MS);
  t.equal(probe.sent, 2, 'healthy again: probing stops');
  probe.stop();
});

t.test('upstream SERVFAIL and REFUSED become our SERVFAIL (or stale); never passed on or cached', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'refused.example', id: 9 }), ch, PEER);
  r.external.answer(0, answer('refused.example', [], { rcode: 'REFUSED' }));
  t.equal(rcodeOf(ch.sent[0]!), 2, 'REFUSED -> SERVFAIL (musl would wait out its timeout on REFUSED)');
  t.equal(ch.decoded(0).id, 9);
  r.hits.handle(query({ name: 'refused.example', id: 10 }), ch, PEER);
  t.equal(r.external.exchanges.length, 2, 'not cached');
  r.external.answer(1, answer('refused.example', [], { rcode: 'SERVFAIL' }));
  t.equal(rcodeOf(ch.sent[1]!), 2);
  t.equal(r.resolver.counters.get('failServfail'), 2);
});

/** A rig whose cluster view holds SVC (10.96.0.9, TTL 5) and answers it whenever asked, and a channel. */
function viewAnswerRig(): { r: ReturnType<typeof rig>; ch: FakeChannel } {
  const viewAnswer = answer(SVC, [a(SVC, '10.96.0.9', 5)], { aa: true });
  const local: LocalAnswerer = { answer: () => ({ answer: viewAnswer, chase: '' }), deniesForSure: () => false };
  return { r: rig({ local }), ch: new FakeChannel() };
}

t.test('a malformed cluster DNS answer for a name the view knows: the view answers (README: the view answers when a forward fails, malformed included)', async (t) => {
  const { r, ch } = viewAnswerRig();
  r.hits.handle(query({ name: SVC, id: 3 }), ch, PEER);
  const bad = answer(SVC, [a(SVC, '10.96.0.1')]);
  r.cluster.answer(0, bad.subarray(0, bad.length - 3));
  t.equal(ch.sent.length, 1, 'one answer');
  t.equal(rcodeOf(ch.sent[0]!), 0, 'not SERVFAIL');
  t.same(ch.decoded(0).answers?.map((x) => (x as { data: string }).data), ['10.96.0.9'], "the view's answer");
  t.equal(ch.decoded(0).id, 3);
  t.equal(r.resolver.counters.get('localOnFailure'), 1);

  // A name the view has nothing for: as before, SERVFAIL, and the malformed answer counted.
  const none: LocalAnswerer = { answer: () => null, deniesForSure: () => false };
  const r2 = rig({ local: none });
  r2.hits.handle(query({ name: SVC, id: 4 }), ch, PEER);
  r2.cluster.answer(0, bad.subarray(0, bad.length - 3));
  t.equal(rcodeOf(ch.sent[1]!), 2, 'SERVFAIL');
  t.equal(r2.hits.counters.get('upstreamMalformed'), 1);
});

t.test('malformed upstream answer: SERVFAIL, counted, nothing cached', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'bad.example', id: 3 }), ch, PEER);
  const bad = answer('bad.example', [a('bad.example', '192.0.2.1')]);
  r.external.answer(0, bad.subarray(0, bad.length - 3));
  t.equal(rcodeOf(ch.sent[0]!), 2);
  t.equal(r.hits.counters.get('upstreamMalformed'), 1);
  t.equal(r.cache.positiveSize + r.cache.negativeSize, 0);
});

t.test('a local limit (overloaded) answers SERVFAIL at once', async (t) => {
  const r = rig();
  r.external.rejectWith = 'overloaded';
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'x.example' }), ch, PEER);
  t.equal(rcodeOf(ch.sent[0]!), 2, 'synchronously');
  t.equal(r.hits.inflight, 0);
  t.equal(r.resolver.counters.get('failOverloaded'), 1);
});

t.test('drain and abort: nothing in flight goes unanswered at shutdown', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'one.example', id: 1 }), ch, PEER);
  r.hits.handle(query({ name: 'two.example', id: 2 }), ch, PEER);
  let drained = false;
  void r.hits.drain().then(() => {
    drained = true;
  });
  r.external.answer(0, answer('one.example', [a('one.example', '192.0.2.1')]));
  await Promise.resolve();
  t.notOk(drained, 'one still in flight');
  t.equal(r.hits.abortAll(), 1, 'the grace period ran out with one client waiting');
  t.equal(rcodeOf(ch.sent[1]!), 2, 'it gets SERVFAIL');
  await new Promise((resolve) => setImmediate(resolve));
  t.ok(drained, 'drain() resolves once nothing is left');
  r.external.answer(1, answer('two.example', [a('two.example', '192.0.2.2')]));
  t.equal(ch.sent.length, 2, 'a late upstream answer after the abort sends nothing more');
  t.equal(r.hits.counters.get('abortedAtShutdown'), 1);
});

t.test('bad queries: dropped or answered with an error by the hit path alone', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  r.hits.handle(Buffer.alloc(5), ch, PEER);
  t.equal(ch.discarded, 1, 'shorter than a header: dropped');
  const notimp = query({ name: 'x.example' });
  notimp[2] = notimp[2]! | 0x10; // opcode 2 (STATUS)
  r.hits.handle(notimp, ch, PEER);
  t.equal(rcodeOf(ch.sent[0]!), 4, 'NOTIMP');
  t.equal(r.cluster.exchanges.length + r.external.exchanges.length, 0, 'nothing forwarded');
});

t.test('answers carry AA=1 as node-cache\'s do, on the miss and on every hit', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'www.example.org' }), ch, PEER);
  r.external.answer(0, answer('www.example.org', [a('www.example.org', '192.0.2.8')], { aa: false }));
  r.hits.handle(query({ name: 'www.example.org' }), ch, PEER);
  t.ok(ch.decoded(0).flag_aa, 'the miss');
  t.ok(ch.decoded(1).flag_aa, 'the hit');
  t.ok(ch.decoded(1).flag_ra && ch.decoded(1).flag_rd, 'RA offered, RD echoed');
});

t.test('a TSIG-signed query gets NOTAUTH with an unsigned TSIG saying BADKEY, and is never forwarded', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  r.hits.handle(withAdditional(query({ name: SVC, id: 321 }), tsigRr({ origId: 321 })), ch, PEER);
  t.equal(r.cluster.exchanges.length, 0, 'not forwarded');
  const reply = ch.sent[0]!;
  t.equal(rcodeOf(reply), 9, 'NOTAUTH');
  t.equal(reply.readUInt16BE(0), 321);
  t.equal(reply.readUInt16BE(10), 1, 'one additional record: the TSIG');
  t.equal(reply.readUInt16BE(reply.length - 4), 17, 'TSIG error BADKEY (Original ID, Error, Other Len close the record)');
});

t.test('a TSIG NOTAUTH too long for a client without EDNS is cut to its question with TC, never over 512 bytes', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  const long = (c: string): string => Array.from({ length: 4 }, () => c.repeat(60)).join('.');
  // A question and a key name of 244 bytes each: the NOTAUTH with its TSIG is over 512 bytes.
  r.hits.handle(withAdditional(query({ name: long('q'), id: 77 }), tsigRr({ key: long('k'), origId: 77 })), ch, PEER);
  const reply = ch.sent[0]!;
  t.ok(reply.length <= 512, `within the classic UDP limit (${reply.length} B)`);
  t.equal(rcodeOf(reply), 9, 'still NOTAUTH');
  t.ok((reply[2]! & 0x02) !== 0, 'TC: ask again over TCP');
  t.equal(reply.readUInt16BE(4), 1, 'the question echoed');
  t.equal(r.cluster.exchanges.length + r.external.exchanges.length, 0, 'not forwarded');
  const tcp = new FakeChannel(Transport.TCP);
  r.hits.handle(withAdditional(query({ name: long('q'), id: 78 }), tsigRr({ key: long('k'), origId: 78 })), tcp, PEER);
  t.ok(tcp.sent[0]!.length > 512, 'over TCP the whole NOTAUTH');
  t.equal(tcp.sent[0]!.readUInt16BE(10), 1, 'with its TSIG');
});

t.test('cache: TTL countdown, expiry, negative store, prefetch claim, eviction', async (t) => {
  const clock = new ManualClock();
  const cache = new DnsCache({ ...CACHE_OPTS, positiveCapacity: 2, negativeCapacity: 2, minHits: 2, staleMs: 0 }, new Counters(CACHE_COUNTERS));
  const up = answer('a.example', [a('a.example', '192.0.2.1', 10)]);
  const q = parseQuery(query({ name: 'A.example' }));
  cache.insert(q.key, up, scanAnswer(up)!, clock.now());
  clock.advance(4_500);
  const e = cache.lookup(q.key, clock.now())!;
  t.ok(e);
  t.equal(dnsPacket.decode(e.serve(q, clock.now(), 512, 1232)).answers?.map(ttlOf)[0], 6, '10 s - 4 s');
  t.notOk(cache.claimPrefetch(e, clock.now()), 'not yet in the window');
  clock.advance(5_000);
  const e2 = cache.lookup(q.key, clock.now())!;
  t.ok(cache.claimPrefetch(e2, clock.now()), 'popular and near expiry');
  t.notOk(cache.claimPrefetch(e2, clock.now()), 'only one refresh at a time');
  clock.advance(2_000);
  t.equal(cache.lookup(q.key, clock.now()), undefined, 'expired');
  t.equal(cache.counters.get('miss'), 1);
  t.equal(cache.counters.get('hitPositive'), 2);

  const nx = answer('n.example', [], { rcode: 'NXDOMAIN', authorities: [soa('example', 300, 300)] });
  const nq = parseQuery(query({ name: 'n.example' }));
  cache.insert(nq.key, nx, scanAnswer(nx)!, clock.now());
  t.equal(cache.negativeSize, 1);
  t.equal(cache.positiveSize, 0);
  const ne = cache.lookup(nq.key, clock.now())!;
  t.equal(dnsPacket.decode(ne.serve(nq, clock.now(), 512, 1232)).authorities?.map(ttlOf)[0], 5, 'SOA TTL capped to the denial TTL');
  clock.advance(5_000);
  t.equal(cache.lookup(nq.key, clock.now()), undefined, 'negative entry expires at 5 s');

  for (const n of ['x1', 'x2', 'x3']) {
    const up2 = answer(`${n}.example`, [a(`${n}.example`, '192.0.2.9', 10)]);
    cache.insert(parseQuery(query({ name: `${n}.example` })).key, up2, scanAnswer(up2)!, clock.now());
  }
  t.equal(cache.positiveSize, 2, 'capacity holds');
  t.equal(cache.counters.get('evictPositive'), 1);
  const sf = answer('s.example', [], { rcode: 'SERVFAIL' });
  cache.insert(parseQuery(query({ name: 's.example' })).key, sf, scanAnswer(sf)!, clock.now());
  t.equal(cache.counters.get('uncacheable'), 1, 'SERVFAIL is not stored');
});

t.test('cache: stale window (RFC 8767)', async (t) => {
  const clock = new ManualClock();
  const cache = new DnsCache({ ...CACHE_OPTS, minHits: 0, staleMs: 60_000 }, new Counters(CACHE_COUNTERS));
  const up = answer('a.example', [a('a.example', '192.0.2.1', 10)]);
  const q = parseQuery(query({ name: 'a.example' }));
  cache.insert(q.key, up, scanAnswer(up)!, clock.now());
  t.equal(cache.stale(q.key, clock.now()), undefined, 'a fresh entry is not stale');
  clock.advance(30_000);
  t.equal(cache.lookup(q.key, clock.now()), undefined, 'expired: a miss');
  const s = cache.stale(q.key, clock.now())!;
  t.ok(s, 'but kept for the stale window');
  t.equal(dnsPacket.decode(s.serveStale(q, 30, 512, 1232)).answers?.map(ttlOf)[0], 30);
  t.equal(cache.counters.get('stale'), 1);
  clock.advance(45_000);
  t.equal(cache.lookup(q.key, clock.now()), undefined);
  t.equal(cache.stale(q.key, clock.now()), undefined, 'past the window: gone');
  t.equal(cache.positiveSize, 0, 'and deleted');
});

t.test('cache: the byte budget bounds memory whatever the answers weigh', async (t) => {
  const clock = new ManualClock();
  const budget = 4 << 20;
  const cache = new DnsCache({ ...CACHE_OPTS, positiveCapacity: 9984, negativeCapacity: 9984, maxBytes: budget }, new Counters(CACHE_COUNTERS));
  // Answers of about 60 KB: 100 of them would be 6 MB, over the budget, though far under the entry count.
  const records = Array.from({ length: 2000 }, (_, i) => a('big.example', `10.${(i >> 8) & 255}.${i & 255}.1`));
  for (let i = 0; i < 100; i++) {
    const name = `big${i}.example`;
    const up = answer(name, records.map((r) => ({ ...r, name })));
    const scan = scanAnswer(up);
    if (scan === undefined) throw new Error('test bug: answer did not scan');
    cache.insert(parseQuery(query({ name })).key, up, scan, clock.now());
  }
  t.ok(cache.bytes <= budget, `charged bytes ${cache.bytes} within the budget ${budget}`);
  t.ok(cache.positiveSize < 100, `entries were evicted to stay inside it (${cache.positiveSize} kept)`);
  t.ok(cache.counters.get('evictPositive') > 0);
  t.ok(cache.bytes >= cache.positiveSize * ENTRY_OVERHEAD_BYTES, 'each entry is charged its overhead too');
});

t.test('health: a failure streak or unreachable makes it failing, one answer makes it healthy; each transition logged once', async (t) => {
  const lines: string[] = [];
  const log = createLogger('info', (line) => lines.push(line));
  const h = new UpstreamHealth('tcp://10.96.0.10:53', log, 0);
  const changes: string[] = [];
  h.onChange((s) => changes.push(s));
  for (let i = 0; i < FAIL_STREAK - 1; i++) h.record('timeout', i);
  t.equal(h.state, 'healthy', 'a few lost queries are normal');
  h.record('answered', 10);
  for (let i = 0; i < FAIL_STREAK - 1; i++) h.record('timeout', 20 + i);
  t.equal(h.state, 'healthy', 'an answer resets the streak');
  h.record('servfail', 30);
  t.equal(h.state, 'failing');
  t.equal(h.lastCause, 'servfail');
  for (let i = 0; i < 100; i++) h.record('timeout', 40 + i);
  h.record('connected', 200);
  t.equal(h.state, 'failing', 'a connect alone proves nothing (black hole)');
  h.record('answered', 300);
  t.equal(h.state, 'healthy');
  h.record('unreachable', 400);
  t.equal(h.state, 'failing', 'unreachable is certain at once');
  t.same(changes, ['failing', 'healthy', 'failing']);
  t.equal(lines.length, 3, 'one log line per transition, not per query');
});

t.test('lifecycle: start in order, stop in reverse, roll back a failed start with its cause', async (t) => {
  const events: string[] = [];
  const part = (name: string, fail = false) => ({
    name,
    start: async () => {
      events.push(`start ${name}`);
      if (fail) throw new Error('address in use');
    },
    stop: async (deadline: number) => {
      events.push(`stop ${name} ${deadline}`);
    },
  });
  const ok = new ComponentStack(silentLogger);
  ok.add(part('interface'));
  ok.add(part('listeners'));
  await ok.start(() => 0);
  await ok.stop(99);
  t.same(events, ['start interface', 'start listeners', 'stop listeners 99', 'stop interface 99']);

  events.length = 0;
  const bad = new ComponentStack(silentLogger);
  bad.add(part('interface'));
  bad.add(part('listeners', true));
  bad.add(part('interception'));
  const err = await bad.start(() => 7).then(() => null, (e: unknown) => e);
  t.ok(err instanceof StartupError);
  t.match((err as Error).message, /^listeners: address in use/);
  t.match(((err as Error).cause as Error).message, 'address in use', 'the cause is kept');
  t.same(events, ['start interface', 'start listeners', 'stop interface 7'], 'what started is stopped; what did not start is not');
});

t.test('lifecycle: a stop during the start cuts it short: the part starting is told, later parts never start, started ones stop as at a stop', async (t) => {
  const events: string[] = [];
  const stack = new ComponentStack(silentLogger);
  let reached = (): void => {};
  const atInterception = new Promise<void>((resolve) => {
    reached = resolve;
  });
  const stop = (name: string) => async (deadline: number, why?: string) => {
    events.push(`stop ${name} ${deadline} ${why ?? 'stop'}`);
  };
  stack.add({ name: 'interface', start: async () => void events.push('start interface'), stop: stop('interface') });
  stack.add({
    name: 'interception',
    // Waits (a firewall command) until told of the cut, then undoes its own half and throws, as interceptionPart does.
    start: (cut?: AbortSignal) => new Promise<void>((_resolve, reject) => {
      events.push('start interception');
      cut?.addEventListener('abort', () => reject(new Error('cut short')));
      reached();
    }),
    stop: stop('interception'),
  });
  stack.add({ name: 'ops', start: async () => void events.push('start ops'), stop: stop('ops') });
  const starting = stack.start(() => 7).then(() => null, (e: unknown) => e);
  await atInterception;
  stack.cutStart(50);
  const err = await starting;
  t.ok(err instanceof StartCut, 'start() says it was cut, not that it failed');
  t.notOk(err instanceof StartupError);
  t.same(events, ['start interface', 'start interception', 'stop interface 50 stop'], 'the stop\'s deadline, not a rollback\'s');

  // A cut that comes while a part that does not wait starts: that part started, so it is stopped too.
  events.length = 0;
  const quick = new ComponentStack(silentLogger);
  quick.add({ name: 'listeners', start: async () => {
    events.push('start listeners');
    quick.cutStart(60);
  }, stop: stop('listeners') });
  quick.add({ name: 'ops', start: async () => void events.push('start ops'), stop: stop('ops') });
  t.ok(await quick.start(() => 7).then(() => null, (e: unknown) => e) instanceof StartCut);
  t.same(events, ['start listeners', 'stop listeners 60 stop']);
});

t.test('lifecycle: a part that fails while a stop cuts the start short is logged, naming it and its error', async (t) => {
  // The cut wins (start() throws StartCut, main exits 0 with "stopped"), but the part's own failure, one that may have
  // nothing to do with the stop (a listener's address in use), was dropped without a word: the operator of a pod
  // deleted during a start that was failing anyway never learnt why it failed.
  const lines: string[] = [];
  const stack = new ComponentStack(createLogger('info', (l) => lines.push(l)));
  stack.add({ name: 'interface', start: async () => {}, stop: async () => {} });
  stack.add({ name: 'listeners', start: async () => {
    stack.cutStart(50);
    throw new Error('udp 10.0.0.10:53: address in use');
  }, stop: async () => {} });
  const err = await stack.start(() => 7).then(() => null, (e: unknown) => e);
  t.ok(err instanceof StartCut, 'the cut wins');
  const said = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.part === 'listeners');
  t.match(said, { error: 'udp 10.0.0.10:53: address in use' }, 'the part and its error are logged');
});

t.test('stop signals: one that comes while starting is held and stops the agent once started; a second while starting exits', async (t) => {
  const { EventEmitter } = await import('node:events');
  const { StopSignals } = await import('../src/stop-signals.js');
  const source = new EventEmitter();
  const early: string[] = [];
  const signals = new StopSignals(source as unknown as import('../src/stop-signals.js').SignalSource, (s, repeated) => early.push(`${s}${repeated ? ' again' : ''}`));
  source.emit('SIGTERM', 'SIGTERM');
  t.same(early, ['SIGTERM'], 'heard while starting, nothing stopped yet');
  const handled: string[] = [];
  signals.handle((s) => handled.push(s));
  t.same(handled, ['SIGTERM'], 'the held signal stops the agent as soon as it has started');
  source.emit('SIGINT', 'SIGINT');
  t.same(handled, ['SIGTERM', 'SIGINT'], 'later ones go to the handler');
  t.same(early, ['SIGTERM']);
  const quiet = new StopSignals(source as unknown as import('../src/stop-signals.js').SignalSource, (s, repeated) => early.push(`${s}${repeated ? ' again' : ''}`));
  early.length = 0;
  source.emit('SIGINT', 'SIGINT');
  source.emit('SIGTERM', 'SIGTERM');
  t.same(early, ['SIGINT', 'SIGTERM again'], 'a second signal while starting is told apart');
  const none: string[] = [];
  new StopSignals(new EventEmitter() as unknown as import('../src/stop-signals.js').SignalSource, () => none.push('x')).handle((s) => none.push(s));
  t.same(none, [], 'no signal: nothing runs');
  t.ok(quiet);
});

t.test('clock: sweeps run as a manual clock advances, and stop when removed', async (t) => {
  const clock = new ManualClock(0);
  const seen: number[] = [];
  const off = clock.sweep((now) => seen.push(now));
  clock.advance(SWEEP_MS * 3);
  t.same(seen, [SWEEP_MS, SWEEP_MS * 2, SWEEP_MS * 3]);
  off();
  clock.advance(SWEEP_MS * 3);
  t.equal(seen.length, 3);
});

t.test('sampled query log: one query in N, with client, name, type, rcode, duration and the answer\'s source', async (t) => {
  const lines: string[] = [];
  const r = rig({ queryLog: lines });
  const ch = new FakeChannel();
  for (let i = 0; i < 4; i++) r.hits.handle(query({ name: SVC }), ch, PEER); // miss + 3 coalesced: queries 1-4, 2 and 4 sampled
  r.clock.advance(7);
  r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.5')]));
  for (let i = 0; i < 4; i++) r.hits.handle(query({ name: SVC }), ch, PEER); // hits: 6 and 8 sampled
  const logged = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['msg'] === 'query');
  t.equal(logged.length, 4, 'every second query (sample 0.5)');
  t.same(logged.map((l) => l['source']), ['upstream', 'upstream', 'cache', 'cache']);
  t.same(logged[0], { ts: logged[0]!['ts'], level: 'info', msg: 'query', client: '127.0.0.1', name: SVC, type: 1, rcode: 0, durationMs: 7, source: 'upstream' });
});

t.test('--max-concurrent: upstream queries in flight are capped across upstreams; beyond it SERVFAIL at once, hits still served', async (t) => {
  const r = rig({ maxConcurrent: 2 });
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'cached.example', id: 1 }), ch, PEER);
  r.external.answer(0, answer('cached.example', [a('cached.example', '192.0.2.1')]));
  r.hits.handle(query({ name: 'one.example', id: 2 }), ch, PEER);
  r.hits.handle(query({ name: 'two.default.svc.cluster.local', id: 3 }), ch, PEER);
  t.equal(r.resolver.inflight, 2);
  r.hits.handle(query({ name: 'three.example', id: 4 }), ch, PEER);
  t.equal(r.external.exchanges.length, 2, 'the third is not sent');
  t.equal(rcodeOf(ch.sent[1]!), 2, 'SERVFAIL at once');
  t.equal(r.resolver.counters.get('maxConcurrentRejects'), 1);
  r.hits.handle(query({ name: 'cached.example', id: 5 }), ch, PEER);
  t.equal(ch.decoded(2).id, 5, 'a hit is still served at the cap');
  r.external.answer(1, answer('one.example', [a('one.example', '192.0.2.2')]));
  t.equal(r.resolver.inflight, 1, 'a slot frees when the upstream answers');
  r.hits.handle(query({ name: 'four.example', id: 6 }), ch, PEER);
  t.equal(r.external.exchanges.length, 3, 'and the next miss goes out');
});

t.test('--client-miss-rate: one client cannot hold all of --max-concurrent with its burst; another client\'s new question still goes out', async (t) => {
  const { config } = loadConfig(['--upstream-addr', '127.0.0.1:1053', '--client-miss-rate', '1000', '--max-concurrent', '8'], { env: {} });
  const limit = clientLimiter(config);
  t.ok(limit !== null);
  const r = rig({ maxConcurrent: 8, clientLimit: limit! });
  const ch = new FakeChannel();
  const pod = { address: '10.244.0.7', port: 5000 };
  // Well inside its rate and burst (1,000), but against a stalled upstream its questions stay in flight.
  for (let i = 0; i < 8; i++) r.hits.handle(query({ name: `n${i}.example`, id: i }), ch, pod);
  t.ok(r.resolver.inflight <= 2, `${r.resolver.inflight} of its questions in flight: at most a quarter of --max-concurrent`);
  t.equal(r.hits.counters.get('clientLimited'), 8 - r.resolver.inflight, 'the rest refused as over its limit, nothing sent');
  const other = new FakeChannel();
  r.hits.handle(query({ name: 'other.example', id: 9 }), other, { address: '10.244.0.8', port: 5000 });
  t.equal(other.sent.length, 0, 'another pod\'s miss is not refused at the cap');
  t.equal(r.external.exchanges.length, r.resolver.inflight, 'it went upstream');
  // Answered: the pod's questions in flight free its room again.
  r.external.answer(0, answer('n0.example', [a('n0.example', '192.0.2.1')]));
  r.hits.handle(query({ name: 'later.example', id: 10 }), ch, pod);
  t.equal(r.external.exchanges.at(-1) !== undefined && dnsPacket.decode(r.external.exchanges.at(-1)!.query).questions?.[0]?.name, 'later.example', 'one answered: the pod may ask again');
});

t.test('--client-miss-rate: a miss the gate turns away (a batched worker shedding for load) neither takes a token nor holds the client\'s room in flight', async (t) => {
  let admit = false;
  const r = rig({ clientLimit: new ClientMissLimiter(1, 1, 1), gate: { admits: () => admit } });
  const ch = new FakeChannel();
  for (let i = 0; i < 3; i++) r.hits.handle(query({ name: `shed${i}.example`, id: i }), ch, PEER);
  t.equal(ch.sent.length, 3, 'shed by the gate');
  admit = true;
  r.hits.handle(query({ name: 'admitted.example', id: 9 }), ch, PEER);
  t.equal(r.external.exchanges.length, 1, 'the next miss past the gate still goes out');
  t.equal(r.hits.counters.get('clientLimited'), 0, 'the client was never over its limit');
});

t.test('--client-miss-rate: a client\'s room in flight comes back however its question closes (answered, failed, timed out, across a reload, aborted), never below none', async (t) => {
  const r = rig({ clientLimit: new ClientMissLimiter(1000, 1000, 1) });
  const ch = new FakeChannel();
  const pod = { address: '10.244.0.7', port: 5000 };
  let n = 0;
  /** A new question of the pod's: true when it went upstream. */
  const ask = (): boolean => {
    const before = r.external.exchanges.length;
    r.hits.handle(query({ name: `q${n}.example`, id: n++ }), ch, pod);
    return r.external.exchanges.length > before;
  };
  const closers: [string, (i: number) => void][] = [
    ['answered', (i) => r.external.answer(i, answer(`q${n - 2}.example`, [a(`q${n - 2}.example`, '192.0.2.1')]))],
    ['failed', (i) => r.external.exchanges[i]!.reject('network')],
    ['timed out', (i) => r.external.exchanges[i]!.reject('timeout')],
    ['across a reload', (i) => {
      r.hits.configure({ maxUdpSize: 1232, queryLogEvery: 0, clientLimit: new ClientMissLimiter(1000, 1000, 1) });
      t.notOk(ask(), 'a reload keeps its question counted');
      r.external.exchanges[i]!.reject('network');
    }],
  ];
  for (const [how, close] of closers) {
    t.ok(ask(), `${how}: its question goes out`);
    const i = r.external.exchanges.length - 1;
    t.notOk(ask(), `${how}: one in flight is its most`);
    close(i);
    t.equal(r.hits.inflight, 0, `${how}: closed`);
  }
  t.ok(ask(), 'the last goes out');
  r.hits.abortAll();
  t.ok(ask(), 'aborted: its room is back');
  t.notOk(ask(), 'and it is one question again, not two (nothing went below none)');
});

t.test('--client-miss-rate: a miss refused unsent for our load (--max-concurrent, a worker\'s limit) gives its client its token back', async (t) => {
  const r = rig({ maxConcurrent: 1, clientLimit: new ClientMissLimiter(1, 2, 10) });
  const ch = new FakeChannel();
  const pod = { address: '10.244.0.7', port: 5000 };
  r.hits.handle(query({ name: 'hold.example', id: 1 }), ch, { address: '10.244.0.8', port: 5000 });
  // The cap is full: each is refused at once, nothing sent.
  for (let i = 0; i < 3; i++) r.hits.handle(query({ name: `capped${i}.example`, id: 10 + i }), ch, pod);
  t.equal(r.resolver.counters.get('maxConcurrentRejects'), 3, 'refused at --max-concurrent');
  t.equal(r.hits.counters.get('clientLimited'), 0, 'as over our cap, not its own limit');
  r.external.answer(0, answer('hold.example', [a('hold.example', '192.0.2.1')]));
  // The clock has not moved: only tokens given back let it ask now.
  for (let i = 0; i < 2; i++) r.hits.handle(query({ name: `later${i}.example`, id: 20 + i }), ch, pod);
  t.equal(r.hits.counters.get('clientLimited'), 0, 'its burst is whole: nothing it asked was sent');
  t.equal(r.external.exchanges.length, 2, 'its next question goes out');
  // A worker's own limit refuses with 'overloaded' (loop.ts forward): also unsent, also given back.
  const l = new ClientMissLimiter(1, 1, 10);
  const w = rig({ clientLimit: l });
  w.hits.connect({ forward: (token) => w.hits.complete(token, null, 'overloaded') }, scrubCounted);
  w.hits.handle(query({ name: 'refused.example', id: 30 }), ch, pod);
  t.ok(l.take(pod.address, w.clock.now()) !== null, 'the token is back');
  // A batched worker's question the main thread refused at the cap, its clients answered there: closed by release().
  const lb = new ClientMissLimiter(1, 1, 10);
  const b = rig({ clientLimit: lb, remoteWaiters: true });
  b.hits.connect({ forward: () => {} }, null);
  b.hits.handle(query({ name: 'held.example', id: 40 }), ch, pod);
  t.ok(b.hits.release(b.hits.waitsOn, () => true, 'capped'), 'released');
  t.ok(lb.take(pod.address, b.clock.now()) !== null, 'refused at the cap on the main thread: the token is back');
});

t.test('--client-miss-rate: one client over its miss budget gets SERVFAIL without upstream traffic; others, hits and joins are free', async (t) => {
  const r = rig({ clientLimit: new ClientMissLimiter(1, 2) });
  const ch = new FakeChannel();
  const pod = { address: '10.244.0.7', port: 5000 };
  const other = { address: '10.244.0.8', port: 5000 };
  r.hits.handle(query({ name: 'a.example', id: 1 }), ch, pod);
  r.hits.handle(query({ name: 'b.example', id: 2 }), ch, pod);
  r.hits.handle(query({ name: 'a.example', id: 3 }), ch, pod); // joins a miss in flight: free
  r.hits.handle(query({ name: 'c.example', id: 4 }), ch, pod);
  t.equal(r.external.exchanges.length, 2, 'the burst of 2, then nothing more sent for this client');
  t.equal(rcodeOf(ch.sent[0]!), 2, 'the third new miss: SERVFAIL at once');
  t.equal(r.hits.counters.get('clientLimited'), 1);
  r.hits.handle(query({ name: 'c.example', id: 5 }), ch, other);
  t.equal(r.external.exchanges.length, 3, 'another pod is not affected');
  r.external.answer(0, answer('a.example', [a('a.example', '192.0.2.1')]));
  for (let i = 0; i < 5; i++) r.hits.handle(query({ name: 'a.example', id: 10 + i }), ch, pod);
  t.equal(ch.sent.filter((m) => rcodeOf(m) === 0).length, 7, 'hits are never limited (2 waiters + 5 hits)');
  r.clock.advance(1000);
  r.hits.handle(query({ name: 'd.example', id: 20 }), ch, pod);
  t.equal(r.external.exchanges.length, 4, 'a second later the bucket has a token again');
  const l = new ClientMissLimiter(1, 1);
  for (let i = 0; i < MAX_CLIENTS + 100; i++) l.take(`10.0.${i >> 8}.${i & 255}`, 0);
  t.equal(l.clients, MAX_CLIENTS, 'the table of clients is bounded');
});

t.test('bailiwick: records outside the question are removed before caching and never served; chains and glue stay', async (t) => {
  const r = rig();
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'www.example.com', id: 1 }), ch, PEER);
  r.external.answer(0, answer('www.example.com', [
    { type: 'CNAME', name: 'www.example.com', ttl: 60, data: 'edge.cdn.example.net' },
    a('edge.cdn.example.net', '192.0.2.10'),
    a('bank.example.org', '203.0.113.66'), // poison: an unrelated name in the answer section
  ], {
    authorities: [
      { type: 'NS', name: 'cdn.example.net', ttl: 60, data: 'ns1.cdn.example.net' },
      { type: 'NS', name: 'example.org', ttl: 60, data: 'ns.evil.example' }, // not an ancestor of any name asked
    ],
    additionals: [a('ns1.cdn.example.net', '192.0.2.53'), a('ns.evil.example', '203.0.113.53'), a('mail.example.org', '203.0.113.25')],
  }));
  const served = ch.decoded(0);
  t.same(served.answers?.map((x) => `${x.type} ${x.name}`), ['CNAME www.example.com', 'A edge.cdn.example.net'], 'the chain stays, the intruder goes');
  t.same(served.authorities?.map((x) => x.name), ['cdn.example.net'], 'the zone NS of a chain target stays');
  t.same(served.additionals?.filter((x) => x.type === 'A').map((x) => x.name), ['ns1.cdn.example.net'], 'glue only for kept NS targets');
  t.equal(r.hits.counters.get('scrubbedRecords'), 4);
  r.hits.handle(query({ name: 'www.example.com', id: 2 }), ch, PEER);
  t.same(ch.decoded(1).answers?.map((x) => x.name), ['www.example.com', 'edge.cdn.example.net'], 'and the cached entry is the scrubbed one');
  r.hits.handle(query({ name: 'bank.example.org', id: 3 }), ch, PEER);
  t.equal(r.external.exchanges.length, 2, 'the poisoned name was never cached: a real miss');

  r.hits.handle(query({ name: '_http._tcp.svc.example', type: 'SRV', id: 4 }), ch, PEER);
  r.external.answer(2, answer('_http._tcp.svc.example', [
    { type: 'SRV', name: '_http._tcp.svc.example', ttl: 60, data: { priority: 0, weight: 1, port: 80, target: 'pod-1.svc.example' } },
  ], { type: 'SRV', additionals: [a('pod-1.svc.example', '10.0.0.1')] }));
  t.same(ch.decoded(2).additionals?.filter((x) => x.type === 'A').map((x) => x.name), ['pod-1.svc.example'], 'SRV target addresses stay');
  t.equal(r.hits.counters.get('scrubbedAnswers'), 1, 'a clean answer is not rewritten');
});

t.test('bailiwick: an ExternalName target\'s answer is scrubbed too before it is merged, served and cached', async (t) => {
  const r = viewRig();
  failClusterDns(r);
  const ch = new FakeChannel();
  r.hits.handle(query({ name: 'ext.default.svc.cluster.local', id: 1 }), ch, PEER);
  t.equal(r.external.exchanges.length, 1, 'the target is looked up externally');
  r.external.answer(0, answer('www.example.org', [
    a('www.example.org', '192.0.2.44', 60),
    a('bank.example.org', '203.0.113.66'), // poison: an unrelated name in the answer section
    a('ext.default.svc.cluster.local', '203.0.113.67'), // poison: an address for the very name the client asked
  ]));
  const names = (d: dnsPacket.DecodedPacket): string[] => (d.answers ?? []).map((x) => `${x.type} ${x.name}`);
  t.same(names(ch.decoded(0)), ['CNAME ext.default.svc.cluster.local', 'A www.example.org'], 'the chain stays, the intruders go');
  r.hits.handle(query({ name: 'ext.default.svc.cluster.local', id: 2 }), ch, PEER);
  t.equal(r.external.exchanges.length, 1, 'the second query is a hit');
  t.same(names(ch.decoded(1)), ['CNAME ext.default.svc.cluster.local', 'A www.example.org'], 'and the cached entry is the scrubbed one');
});

// The same contract through the batched backend's boundary, socket-free: worker
// hit paths (each reading the one cache the main thread writes, cache/reader.ts) hand
// misses to the main thread's MissExchange as a worker does, one Resolver
// serves them and the main thread's hit path through the MissMux, and
// outcomes come back through the packed form they travel in; the main
// thread's hit path (TCP) asks through the same exchange. Queries go to
// the workers in turn (the kernel's spreading), or to one named worker.

interface BackendRig {
  readonly clock: ManualClock;
  readonly resolver: Resolver;
  readonly cluster: FakeUpstream;
  readonly external: FakeUpstream;
  /** Query to the next worker in turn (or `worker`; -1: the main thread's hit path, i.e. TCP). */
  handle(msg: Buffer, ch: FakeChannel, worker?: number, peer?: ClientPeer): void;
  counter(name: ServerCounterName): number;
  readonly inflight: number;
  abortAll(): number;
}

/** What a completion looks like after the trip through the worker port: packed, then read back as a view. */
function throughPort(token: number, answer: Buffer | null, outcome: MissOutcome): [number, Buffer | null, MissOutcome] {
  const p = new Packer(false);
  p.push(token, OUTCOME_INDEX[outcome], answer, null);
  const items = p.take();
  return [itemToken(items, 0), itemBytes(items, 0), OUTCOMES[itemTag(items, 0)]!];
}

function backendRig(workers: number, opts: { clientLimit?: { rate: number; burst: number }; maxConcurrent?: number } = {}): BackendRig {
  const clock = new ManualClock();
  const limiter = (share: number): ClientMissLimiter | null => (opts.clientLimit === undefined ? null : new ClientMissLimiter(opts.clientLimit.rate / share, Math.max(1, opts.clientLimit.burst / share)));
  const hitPath = (cache: HitCache, share: number): HitPath =>
    new HitPath({ cache, clock, logger: silentLogger, counters: new Counters(SERVER_COUNTERS), maxUdpSize: 1232, queryLogEvery: 0, clientLimit: limiter(share) });
  // Batched: the one cache, on this thread, which the workers read (as the listener wires it).
  const store = new DnsCache(CACHE_OPTS, new Counters(CACHE_COUNTERS), { shared: workers > 0 });
  const main = hitPath(store, 1);
  const cluster = new FakeUpstream(clock);
  const external = new FakeUpstream(clock);
  const router = new ZoneRouter<Route>([{ zone: 'cluster.local', target: { upstream: cluster, timeoutMs: 2000, local: null } }], { upstream: external, timeoutMs: 4500, local: null });
  const make = (hits: MissCompleter): Resolver =>
    new Resolver({ router, clock, counters: new Counters(RESOLVER_COUNTERS), hits, fallbackAfterMs: 1000, localNegative: false, maxConcurrent: opts.maxConcurrent ?? 1000 });
  if (workers === 0) {
    const resolver = make(main);
    main.connect(resolver, scrubCounted);
    return {
      clock, resolver, cluster, external,
      handle: (msg, ch, _w, peer = PEER) => main.handle(msg, ch, peer),
      counter: (name) => main.counters.get(name),
      get inflight() {
        return main.inflight;
      },
      abortAll: () => main.abortAll(),
    };
  }
  const exchange = new MissExchange({ counters: new Counters(BATCHED_COUNTERS), server: main.counters, shared: store.exchangeView(new Counters(CACHE_COUNTERS)), clock });
  const resolver = make(exchange);
  exchange.connect(resolver);
  // The main thread's hit path (TCP) asks through the same exchange, answered synchronously; the exchange scrubs and stores (as agent.ts wires it).
  main.connect(exchange.sinkFor({ listening: true, deliver: (token, answer, outcome) => main.complete(token, answer, outcome), refusedForLoad: () => {} }), null);
  const paths = Array.from({ length: workers }, () => hitPath(new CacheReader(store.layout, CACHE_OPTS, new Counters(CACHE_COUNTERS)), workers));
  for (const w of paths) {
    const link: MissReturn = { listening: true, deliver: (token, answer, outcome) => w.complete(...throughPort(token, answer, outcome)), refusedForLoad: () => {} };
    w.connect({
      forward: (token, key, query, refresh) => {
        // As listener.ts: a worker's refresh is claimed on the main thread; refused, it goes to the exchange as a plain miss.
        exchange.forward(link, token, key, Buffer.from(query), refresh === true && store.claimRefresh(key, clock.now()));
      },
    }, scrubCounted);
  }
  let next = 0;
  return {
    clock, resolver, cluster, external,
    handle: (msg, ch, worker, peer = PEER) => {
      if (worker === -1) return main.handle(msg, ch, peer);
      const i = worker ?? next++ % workers;
      paths[i]!.handle(msg, ch, peer);
    },
    counter: (name) => [main, ...paths].reduce((n, p) => n + p.counters.get(name), 0),
    get inflight() {
      return [main, ...paths].reduce((n, p) => n + p.inflight, 0);
    },
    abortAll: () => [main, ...paths].reduce((n, p) => n + p.abortAll(), 0),
  };
}

const RIG_BACKENDS = [
  { name: 'dgram', workers: 0 },
  { name: 'batched-1', workers: 1 },
  { name: 'batched-2', workers: 2 },
] as const;

for (const b of RIG_BACKENDS) {
  t.test(`[${b.name}] one upstream query per name, each client its own id and spelling, TTLs aged, hits after`, async (t) => {
    const r = backendRig(b.workers);
    const ch = new FakeChannel();
    r.handle(query({ name: 'WEB.default.svc.cluster.local', id: 1 }), ch);
    r.handle(query({ name: SVC, id: 2 }), ch);
    r.handle(query({ name: SVC, id: 3 }), ch, -1);
    t.equal(r.cluster.exchanges.length, 1, 'three clients (workers and TCP), one upstream question');
    t.equal(ch.sent.length, 0);
    r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.5', 20)], { aa: true }));
    t.same(ch.sent.map((m) => m.readUInt16BE(0)).sort(), [1, 2, 3], 'each answered');
    t.equal(ch.decoded(ch.sent.findIndex((m) => m.readUInt16BE(0) === 1)).questions?.[0]?.name, 'WEB.default.svc.cluster.local', '0x20 spelling echoed');
    r.clock.advance(5_000);
    for (let i = 0; i < 4; i++) r.handle(query({ name: SVC, id: 10 + i }), ch);
    t.equal(r.cluster.exchanges.length, 1, 'hits on every worker');
    t.ok(ch.sent.slice(3).every((m) => ttlOf(dnsPacket.decode(m).answers![0]!) === 15), 'TTL counted down by age');
    t.equal(r.inflight, 0);
  });

  t.test(`[${b.name}] failures: stale from the cache that held it, else SERVFAIL; malformed answers are not cached`, async (t) => {
    const r = backendRig(b.workers);
    const ch = new FakeChannel();
    r.handle(query({ name: SVC, id: 1 }), ch, 0);
    r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.5', 5)]));
    r.clock.advance(6_000);
    r.handle(query({ name: SVC, id: 2 }), ch, 0);
    r.cluster.exchanges[1]!.reject('timeout');
    t.equal(ttlOf(ch.decoded(1).answers![0]!), 30, 'stale, with the stale TTL');
    r.handle(query({ name: 'x.example', id: 3 }), ch);
    r.external.exchanges[0]!.reject('network');
    t.equal(rcodeOf(ch.sent[2]!), 2, 'nothing stale: SERVFAIL');
    r.handle(query({ name: 'bad.example', id: 4 }), ch);
    const bad = Buffer.from(answer('bad.example', [a('bad.example', '192.0.2.1')]));
    r.external.answer(1, bad.subarray(0, bad.length - 3));
    t.equal(rcodeOf(ch.sent[3]!), 2, 'malformed: SERVFAIL');
    r.handle(query({ name: 'bad.example', id: 5 }), ch);
    t.equal(r.external.exchanges.length, 3, 'and not cached');
    t.equal(r.counter('upstreamMalformed'), 1);
  });

  t.test(`[${b.name}] overloaded: SERVFAIL at once, hits still served; abort answers every waiting client`, async (t) => {
    const r = backendRig(b.workers, { maxConcurrent: 2 });
    const ch = new FakeChannel();
    r.handle(query({ name: 'one.example', id: 1 }), ch);
    r.handle(query({ name: 'two.example', id: 2 }), ch);
    r.handle(query({ name: 'three.example', id: 3 }), ch);
    t.equal(ch.sent.length, 1);
    t.equal(ch.sent[0]!.readUInt16BE(0), 3, 'the third, over --max-concurrent');
    t.equal(rcodeOf(ch.sent[0]!), 2);
    r.external.answer(0, answer('one.example', [a('one.example', '192.0.2.1')]));
    r.handle(query({ name: 'one.example', id: 4 }), ch, 0);
    t.equal(ch.sent.length, 3, 'the answer, then a hit');
    t.equal(r.inflight, 1);
    t.equal(r.abortAll(), 1, 'one client still waiting at the end of the grace');
    t.equal(rcodeOf(ch.sent[3]!), 2, 'it gets SERVFAIL');
    r.external.answer(1, answer('two.example', [a('two.example', '192.0.2.2')]));
    t.equal(ch.sent.length, 4, 'a late answer after the abort sends nothing');
  });

  t.test(`[${b.name}] --client-miss-rate: a client over its budget gets SERVFAIL without upstream traffic; hits and other clients are free`, async (t) => {
    const r = backendRig(b.workers, { clientLimit: { rate: 1, burst: 4 } });
    const ch = new FakeChannel();
    for (let i = 0; i < 12; i++) r.handle(query({ name: `n${i}.example`, id: i }), ch);
    t.equal(r.external.exchanges.length, 4, 'the burst (split evenly over the workers when the queries are)');
    t.equal(r.counter('clientLimited'), 8);
    t.equal(ch.sent.filter((m) => rcodeOf(m) === 2).length, 8, 'the rest SERVFAIL at once');
    r.handle(query({ name: 'other.example', id: 50 }), ch, undefined, { address: '10.0.0.9', port: 5353 });
    t.equal(r.external.exchanges.length, 5, 'another client has its own budget');
    r.external.answer(0, answer('n0.example', [a('n0.example', '192.0.2.1')]));
    r.handle(query({ name: 'n0.example', id: 60 }), ch, 0);
    t.equal(ch.decoded(ch.sent.length - 1).id, 60, 'a hit is never limited');
    t.equal(rcodeOf(ch.sent[ch.sent.length - 1]!), 0);
  });
  t.test(`[${b.name}] bailiwick: a poisoned answer is scrubbed once, whoever waited on it, and only the scrubbed form is served and cached`, async (t) => {
    const r = backendRig(b.workers);
    const ch = new FakeChannel();
    // Every thread waits on the one question: each worker, and the main thread's TCP path.
    const waiters = [...Array.from({ length: Math.max(1, b.workers) }, (_v, i) => (b.workers === 0 ? undefined : i)), -1];
    waiters.forEach((w, i) => r.handle(query({ name: 'www.example.com', id: 1 + i }), ch, w));
    t.equal(r.external.exchanges.length, 1, 'one upstream question');
    r.external.answer(0, answer('www.example.com', [
      { type: 'CNAME', name: 'www.example.com', ttl: 60, data: 'edge.cdn.example.net' },
      a('edge.cdn.example.net', '192.0.2.10'),
      a('bank.example.org', '203.0.113.66'),
    ], { additionals: [a('mail.example.org', '203.0.113.25')] }));
    t.equal(ch.sent.length, waiters.length, 'every waiter answered');
    for (let i = 0; i < ch.sent.length; i++) {
      const m = ch.decoded(i);
      t.same(m.answers?.map((x) => x.name), ['www.example.com', 'edge.cdn.example.net'], `waiter ${m.id}: the chain, not the intruder`);
      t.notOk(m.additionals?.some((x) => x.type === 'A'), `waiter ${m.id}: no unrelated glue`);
    }
    t.equal(r.counter('scrubbedAnswers'), 1, 'scrubbed (and counted) once, not once per thread that waited');
    t.equal(r.counter('scrubbedRecords'), 2);
    for (const w of waiters) r.handle(query({ name: 'www.example.com', id: 50 }), ch, w);
    const hits = ch.sent.slice(waiters.length).map((m) => dnsPacket.decode(m).answers?.map((x) => x.name));
    t.same(hits, waiters.map(() => ['www.example.com', 'edge.cdn.example.net']), 'hits on every thread serve the scrubbed entry');
    t.equal(r.external.exchanges.length, 1, 'from the cache');
  });
}

t.test('routing: the zones a local answerer covers (what batched workers never shed), as the router resolves them', async (t) => {
  const build = (argv: string[], view: ClusterView | null) => {
    const { config } = loadConfig(['--upstream-addr', '127.0.0.1:1053', '--upstream-nameservers', '127.0.0.1:1054', ...argv], { env: {} });
    const host = loadHostServers(config.upstreamNameservers, config.resolvConf, () => '');
    const counters = {
      pool: () => new Counters(tcpPoolCounters), host: () => new Counters(hostResolversCounters), durations: (to: string) => new ForwardDurations(to), probe: () => new Counters(PROBE_COUNTERS),
    };
    return buildRouting(config, host, { clock: new ManualClock(), logger: silentLogger, view, counters }, null);
  };
  t.same(build([], new ClusterView()).localZones, ['cluster.local', 'in-addr.arpa', 'ip6.arpa'], 'with the view: the cluster domain and the reverse zones');
  // A stub domain for a whole local zone is refused (config.ts validate); one under it leaves the zone to the view.
  t.same(build(['--stub-domain', '10.in-addr.arpa=127.0.0.1:1055'], new ClusterView()).localZones, ['cluster.local', 'in-addr.arpa', 'ip6.arpa'], 'a stub domain under a reverse zone leaves the zone to the view');
  t.same(build([], null).localZones, [], 'no view (--no-kube): none');
});

t.test('upstream NOTIMP is a failure as SERVFAIL and REFUSED are (as the upstream health counts it): the view answers first, else stale, else SERVFAIL', async (t) => {
  // musl ignores a NOTIMP as it does a REFUSED and waits out its whole timeout; glibc moves on from all three alike.
  const { r, ch } = viewAnswerRig();
  r.hits.handle(query({ name: SVC, id: 1 }), ch, PEER);
  r.cluster.answer(0, answer(SVC, [], { rcode: 'NOTIMP' }));
  t.equal(rcodeOf(ch.sent[0]!), 0, `kube-dns NOTIMP: the view's answer (got rcode ${rcodeOf(ch.sent[0]!)})`);
  t.same(ch.decoded(0).answers?.map((x) => (x as { data: string }).data), ['10.96.0.9'], 'the address the view holds');
  t.equal(r.resolver.counters.get('localOnFailure'), 1, 'counted as an answer on failure');
  r.hits.handle(query({ name: 'lame.example', id: 2 }), ch, PEER);
  r.external.answer(0, answer('lame.example', [], { rcode: 'NOTIMP' }));
  t.equal(rcodeOf(ch.sent[1]!), 2, 'an external NOTIMP with nothing stale: SERVFAIL, as after REFUSED');
  t.equal(r.resolver.counters.get('failServfail'), 2, 'both counted as failed answers');
});

t.test('kube-dns answers FORMERR (a failure to refresh, RFC 8767 4) for a name the view knows: the view answers before a stale entry, as the failure order says', async (t) => {
  let viewAnswer: Buffer | null = null;
  const local: LocalAnswerer = { answer: () => (viewAnswer === null ? null : { answer: viewAnswer, chase: '' }), deniesForSure: () => false };
  const r = rig({ local });
  const ch = new FakeChannel();
  r.hits.handle(query({ name: SVC, id: 1 }), ch, PEER);
  r.cluster.answer(0, answer(SVC, [a(SVC, '10.96.0.1', 5)]));
  r.clock.advance(6_000);
  // The service moved: the view holds its new address, the cache an expired entry with the old one.
  viewAnswer = answer(SVC, [a(SVC, '10.96.0.9', 5)], { aa: true });
  r.hits.handle(query({ name: SVC, id: 2 }), ch, PEER);
  r.cluster.answer(1, answer(SVC, [], { rcode: 'FORMERR' }));
  t.equal(ch.sent.length, 2, 'one answer');
  t.equal(rcodeOf(ch.sent[1]!), 0);
  t.same(ch.decoded(1).answers?.map((x) => (x as { data: string }).data), ['10.96.0.9'], "the view's fresh answer, not the stale one");
  t.equal(r.resolver.counters.get('localOnFailure'), 1);
  t.equal(r.cache.counters.get('stale'), 0, 'no stale answer served');

  // Nothing in the view: stale, as before.
  viewAnswer = null;
  r.clock.advance(6_000);
  r.hits.handle(query({ name: SVC, id: 3 }), ch, PEER);
  r.cluster.answer(2, answer(SVC, [], { rcode: 'FORMERR' }));
  t.same(ch.decoded(2).answers?.map((x) => (x as { data: string }).data), ['10.96.0.9'], 'stale');
  t.equal(ttlOf(ch.decoded(2).answers![0]!), 30);
});
