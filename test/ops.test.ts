// Operations surface: the Prometheus registry that publishes the agent's
// counter blocks and typed histograms at scrape time (names, labels, values,
// merging of blocks of one schema, cumulative buckets), and the HTTP server
// for /metrics, /health and /ready on loopback (status codes, bodies, 404,
// the connection cap and the header deadline).
import t, { type Test } from 'tap';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { createLogger, silentLogger } from '../src/log.js';
import { ManualClock } from '../src/clock.js';
import { HEAP_TRIM_COUNTERS, HeapTrimmer } from '../src/ops/heap-trim.js';
import { loadMallocTrim, type MallocTrim } from '../src/sys/malloc-trim.js';
import { EXE_TRIM_COUNTERS, ExeTrimmer } from '../src/ops/exe-trim.js';
import { droppableRanges, loadExePages, type ExePages, type ExeRange } from '../src/sys/exe-pages.js';
import { Counters, defineCounters } from '../src/stats/counters.js';
import { SERVER_COUNTERS } from '../src/server/stats.js';
import { CACHE_COUNTERS } from '../src/cache/stats.js';
import { tcpPoolCounters } from '../src/upstream/tcp-pool-counters.js';
import { tcpListenerCounters } from '../src/server/tcp-stats.js';
import { DurationHistogram, REQUEST_DURATION, TIME_BUCKETS, TypedHistogram, requestSizeDef, responseSizeDef } from '../src/ops/histogram.js';
import { MetricsRegistry } from '../src/ops/metrics.js';
import { OPS_HTTP_LIMITS, OpsServer, createOpsServers, defaultOpsHost, readinessOf, type OpsHandlers, type OpsRoute, type Readiness } from '../src/ops/http.js';

const HOST = '127.0.0.1';
const SERVER = 'dns://169.254.20.10:53';

// ------------------------------------------------------------------ helpers

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request on its own connection (no agent: nothing lingers after the test). */
function request(url: string, opts: { method?: string; body?: string } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.setTimeout(5_000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    if (opts.body !== undefined) req.end(opts.body);
    else req.end();
  });
}

interface Parsed {
  /** `name{a="1",b="2"}` (labels sorted) -> value. */
  readonly samples: Map<string, number>;
  /** family -> type from # TYPE; and how many # TYPE lines each family had. */
  readonly types: Map<string, string>;
  readonly typeLines: Map<string, number>;
  readonly help: Map<string, string>;
}

function unescapeLabel(v: string): string {
  return v.replace(/\\(["\\n])/g, (_, c: string) => (c === 'n' ? '\n' : c));
}

/** The Prometheus text format (0.0.4), enough of it for what we publish; throws on a line it cannot read. */
function parseExposition(text: string): Parsed {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  const typeLines = new Map<string, number>();
  const help = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (m !== null) {
      types.set(m[1]!, m[2]!);
      typeLines.set(m[1]!, (typeLines.get(m[1]!) ?? 0) + 1);
      continue;
    }
    m = /^# HELP (\S+) (.*)$/.exec(line);
    if (m !== null) {
      help.set(m[1]!, m[2]!);
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null) throw new Error(`unreadable line: ${line}`);
    const labels: string[] = [];
    const body = m[2] ?? '';
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)/g;
    let consumed = 0;
    for (let l = re.exec(body); l !== null; l = re.exec(body)) {
      labels.push(`${l[1]}="${unescapeLabel(l[2]!)}"`);
      consumed = re.lastIndex;
    }
    if (consumed !== body.length) throw new Error(`unreadable labels: ${line}`);
    labels.sort();
    const v = m[3]!;
    samples.set(`${m[1]}{${labels.join(',')}}`, v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v));
  }
  return { samples, types, typeLines, help };
}

/** Sample key as parseExposition makes it. */
function key(name: string, labels: Record<string, string> = {}): string {
  return `${name}{${Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
    .join(',')}}`;
}

async function withServer(
  t: Test,
  handlers: OpsHandlers,
  routes: readonly OpsRoute[] = ['metrics', 'health', 'ready'],
  limits?: ConstructorParameters<typeof OpsServer>[0]['limits'],
): Promise<OpsServer> {
  const s = new OpsServer({ address: { host: HOST, port: 0 }, routes, handlers, logger: silentLogger, limits });
  await s.start();
  t.teardown(() => s.stop());
  return s;
}

async function scrape(t: Test, reg: MetricsRegistry): Promise<Parsed> {
  const s = await withServer(t, { metrics: reg }, ['metrics']);
  const r = await request(`${s.url}/metrics`);
  t.equal(r.status, 200, 'scrape answered 200');
  t.match(r.headers['content-type'], /^text\/plain; version=0\.0\.4/, 'Prometheus text content type');
  return parseExposition(r.body);
}

function bump(values: Float64Array, slot: number, n: number): void {
  values[slot] = (values[slot] ?? 0) + n;
}

// ------------------------------------------------------------------ registry

t.test('counter blocks are published with their names, labels and values, over real HTTP', async (t) => {
  const reg = new MetricsRegistry({ buildInfo: { version: '9.8.7', revision: 'abc123' } });
  const server = new Counters(SERVER_COUNTERS);
  const cache = new Counters(CACHE_COUNTERS);
  reg.addCounters(server, { server: SERVER });
  reg.addCounters(cache, { server: SERVER });
  const S = SERVER_COUNTERS.slot;
  bump(server.values, S.req_udp_1_A, 41);
  bump(server.values, S.req_tcp_2_other, 2);
  bump(server.values, S.requestsUdp, 41);
  bump(server.values, S.rcode3, 7);
  bump(server.values, S.rcode2, 1);
  bump(server.values, S.dropped, 3);
  bump(cache.values, CACHE_COUNTERS.slot.hitPositive, 30);
  bump(cache.values, CACHE_COUNTERS.slot.miss, 11);

  const p = await scrape(t, reg);
  const z = { server: SERVER, zone: '.' };
  t.equal(p.samples.get(key('coredns_dns_requests_total', { ...z, proto: 'udp', family: '1', type: 'A' })), 41);
  t.equal(p.samples.get(key('coredns_dns_requests_total', { ...z, proto: 'tcp', family: '2', type: 'other' })), 2);
  t.equal(p.samples.get(key('coredns_dns_requests_total', { ...z, proto: 'udp', family: '2', type: 'SVCB' })), 0, 'every (proto, family, type) published');
  t.equal([...p.samples.keys()].filter((k) => k.startsWith('coredns_dns_requests_total{')).length, 2 * 2 * 20, 'bounded: 2 protos x 2 families x 20 types');
  t.equal(p.samples.get(key('nodelocal_requests_total', { server: SERVER, proto: 'udp' })), 41);
  t.equal(p.samples.get(key('coredns_dns_responses_total', { ...z, rcode: 'NXDOMAIN' })), 7);
  t.equal(p.samples.get(key('coredns_dns_responses_total', { ...z, rcode: 'SERVFAIL' })), 1);
  t.equal(p.samples.get(key('coredns_dns_responses_total', { ...z, rcode: 'NOERROR' })), 0, 'untouched slots are published as 0, not left out');
  t.equal(p.samples.get(key('nodelocal_dropped_total', { server: SERVER, reason: 'invalid_query' })), 3, 'no constant zone label outside the CoreDNS families');
  t.equal(p.samples.get(key('coredns_cache_hits_total', { server: SERVER, type: 'success', zones: '.' })), 30);
  t.equal(p.samples.get(key('coredns_cache_misses_total', { server: SERVER, zones: '.' })), 11);
  // CoreDNS 1.9+ has it (and deprecates misses for it): dashboards derive the hit ratio as hits / requests.
  t.equal(p.samples.get(key('coredns_cache_requests_total', { server: SERVER, zones: '.' })), 41, 'coredns_cache_requests_total: hits + misses');
  t.equal(p.types.get('coredns_cache_requests_total'), 'counter');
  t.equal(p.types.get('coredns_dns_requests_total'), 'counter');
  t.equal(p.help.get('coredns_dns_requests_total'), 'Counter of DNS requests made per zone, protocol and family.', "CoreDNS's help text");
  t.equal(p.samples.get(key('coredns_build_info', { version: '9.8.7', revision: 'abc123', goversion: `node${process.versions.node}` })), 1);
  t.equal(p.types.get('coredns_build_info'), 'gauge');
  t.ok(p.samples.has(key('process_cpu_user_seconds_total')), 'prom-client process_* metrics');
  t.ok([...p.samples.keys()].some((k) => k.startsWith('nodejs_heap_size_total_bytes')), 'prom-client nodejs_* metrics');

  // The registry can also be read directly, without HTTP.
  const json = await reg.registry.getMetricsAsJSON();
  const req = json.find((m) => m.name === 'nodelocal_requests_total');
  t.same(
    req?.values.map((v) => [v.labels, v.value]),
    [
      [{ server: SERVER, proto: 'udp' }, 41],
      [{ server: SERVER, proto: 'tcp' }, 0],
    ],
  );
});

t.test('gauges in a block are typed gauge; callback gauges and counters read at scrape time', async (t) => {
  const reg = new MetricsRegistry({ defaultMetrics: false });
  const tcp = new Counters(tcpListenerCounters);
  reg.addCounters(tcp, { server: SERVER });
  tcp.values[tcpListenerCounters.slot.open] = 5;
  let healthy = 1;
  reg.addGauge('nodelocal_upstream_healthy', 'Whether the upstream is healthy (1) or failing (0).', ['upstream'], () => [
    [{ upstream: 'tcp://10.96.0.10:53' }, healthy],
    [{ upstream: 'host-resolvers' }, 1],
  ]);
  let entries = 10;
  reg.addGauge('coredns_cache_entries', 'The number of elements in the cache.', ['server', 'type'], () => [
    [{ server: SERVER, type: 'success' }, entries],
    [{ server: SERVER, type: 'denial' }, 2],
  ]);
  let total = 4;
  reg.addCounter('nodelocal_test_total', 'A counter kept by some object.', [], () => [[{}, total]]);

  let p = await scrape(t, reg);
  t.equal(p.types.get('nodelocal_tcp_connections'), 'gauge');
  t.equal(p.samples.get(key('nodelocal_tcp_connections', { server: SERVER })), 5);
  t.equal(p.samples.get(key('nodelocal_upstream_healthy', { upstream: 'tcp://10.96.0.10:53' })), 1);
  t.equal(p.samples.get(key('coredns_cache_entries', { server: SERVER, type: 'success', zones: '.' })), 10, 'constant zones label added to callback series too');
  t.equal(p.types.get('nodelocal_test_total'), 'counter');
  t.equal(p.samples.get(key('nodelocal_test_total')), 4);

  healthy = 0;
  entries = 12;
  total = 9;
  tcp.values[tcpListenerCounters.slot.open] = 3;
  p = await scrape(t, reg);
  t.equal(p.samples.get(key('nodelocal_upstream_healthy', { upstream: 'tcp://10.96.0.10:53' })), 0, 'callbacks run again at each scrape');
  t.equal(p.samples.get(key('coredns_cache_entries', { server: SERVER, type: 'success', zones: '.' })), 12);
  t.equal(p.samples.get(key('nodelocal_test_total')), 9);
  t.equal(p.samples.get(key('nodelocal_tcp_connections', { server: SERVER })), 3);
  t.same(
    reg.families().find((f) => f.name === 'coredns_cache_entries'),
    { name: 'coredns_cache_entries', type: 'gauge', help: 'The number of elements in the cache.', labelNames: ['zones', 'server', 'type'] },
    'families() describes what is published',
  );
});

t.test('blocks of one schema merge into one family: per-instance labels apart, identical labels summed', async (t) => {
  const reg = new MetricsRegistry({ defaultMetrics: false });
  const a = new Counters(tcpPoolCounters);
  const b = new Counters(tcpPoolCounters);
  const c = new Counters(tcpPoolCounters);
  reg.addCounters(a, { to: 'tcp://10.96.0.10:53' });
  reg.addCounters(b, { to: 'tcp://10.96.0.11:53' });
  // A third instance with b's labels (e.g. a pool replaced on reload, both alive for a moment): summed with b.
  reg.addCounters(c, { to: 'tcp://10.96.0.11:53' });
  const S = tcpPoolCounters.slot;
  bump(a.values, S.sent, 100);
  bump(b.values, S.sent, 20);
  bump(c.values, S.sent, 3);
  bump(a.values, S.responsesNxDomain, 5);
  bump(b.values, S.responsesNxDomain, 6);
  bump(a.values, S.late, 1);

  const p = await scrape(t, reg);
  t.equal(p.typeLines.get('coredns_forward_requests_total'), 1, 'one # TYPE line: one family, registered once');
  t.equal(p.samples.get(key('coredns_forward_requests_total', { to: 'tcp://10.96.0.10:53' })), 100);
  t.equal(p.samples.get(key('coredns_forward_requests_total', { to: 'tcp://10.96.0.11:53' })), 23, 'same labels: summed');
  t.equal(p.samples.get(key('coredns_forward_responses_total', { to: 'tcp://10.96.0.10:53', rcode: 'NXDOMAIN' })), 5);
  t.equal(p.samples.get(key('coredns_forward_responses_total', { to: 'tcp://10.96.0.11:53', rcode: 'NXDOMAIN' })), 6);
  t.equal(p.samples.get(key('nodelocal_upstream_ignored_answers_total', { to: 'tcp://10.96.0.10:53', reason: 'late' })), 1);
  const forward = [...p.samples.keys()].filter((k) => k.startsWith('coredns_forward_requests_total{'));
  t.equal(forward.length, 2, 'two series, not three');
  t.same(reg.warnings, [], 'one schema: nothing to warn about');

  // Taken out (an upstream no longer configured): its series go, the others' values stay.
  reg.removeCounters(a);
  reg.removeCounters(c);
  const q = await scrape(t, reg);
  t.same([...q.samples.keys()].filter((k) => k.includes('10.96.0.10')), [], 'every series of the block taken out is gone');
  t.equal(q.samples.get(key('coredns_forward_requests_total', { to: 'tcp://10.96.0.11:53' })), 20, 'one of two summed blocks taken out: the other\'s count');
  t.equal(q.samples.get(key('coredns_forward_responses_total', { to: 'tcp://10.96.0.11:53', rcode: 'NXDOMAIN' })), 6);
  t.equal(q.typeLines.get('coredns_forward_requests_total'), 1, 'the family still registered once');
  const cache = new Counters(CACHE_COUNTERS);
  reg.addCounters(cache, { server: SERVER });
  reg.removeCounters(cache);
  t.notOk([...(await scrape(t, reg)).samples.keys()].some((k) => k.startsWith('coredns_cache_')), 'a derived family\'s series (coredns_cache_requests_total) go too');
});

t.test('two schemas sharing a family: one family; disagreements become warnings, conflicts throw', async (t) => {
  const reg = new MetricsRegistry({ defaultMetrics: false });
  const one = defineCounters({
    x: { name: 'nodelocal_shared_total', help: 'First help.', labels: { reason: 'a' } },
    g: { name: 'nodelocal_level', help: 'A gauge.', type: 'gauge' },
  });
  const two = defineCounters({
    x: { name: 'nodelocal_shared_total', help: 'Other help.', labels: { reason: 'b' } },
  });
  const b1 = new Counters(one);
  const b2 = new Counters(two);
  reg.addCounters(b1, { server: SERVER });
  reg.addCounters(b2);
  b1.values[one.slot.x] = 1;
  b2.values[two.slot.x] = 2;
  const p = await scrape(t, reg);
  t.equal(p.help.get('nodelocal_shared_total'), 'First help.', 'the first help text is kept');
  t.equal(p.samples.get(key('nodelocal_shared_total', { server: SERVER, reason: 'a' })), 1);
  t.equal(p.samples.get(key('nodelocal_shared_total', { reason: 'b' })), 2);
  t.equal(reg.warnings.length, 2);
  t.match(reg.warnings[0], /^nodelocal_shared_total: help "Other help\." differs/);
  t.match(reg.warnings[1], /^nodelocal_shared_total: series carry different label names: \{reason,server\} and \{reason\}/);

  const asCounter = defineCounters({ g: { name: 'nodelocal_level', help: 'A gauge.' } });
  t.throws(() => reg.addCounters(new Counters(asCounter)), /nodelocal_level: declared as gauge and as counter/);
  t.throws(() => reg.addCounters(new Counters(two), { reason: 'x' }), /extra label "reason" collides/);
  t.throws(() => reg.addCounters(new Counters(two), { 'bad-name': 'x' }), /invalid label name "bad-name"/);
  t.throws(() => reg.addGauge('nodelocal_shared_total', 'x', [], () => []), /declared as counter and as gauge/);
  t.throws(() => reg.addGauge('not a name', 'x', [], () => []), /Invalid metric name/);
  t.doesNotThrow(() => reg.addGauge('process_cpu_seconds_total', 'x', [], () => []), 'with default metrics off that name is free');
  const withDefaults = new MetricsRegistry();
  t.throws(() => withDefaults.addGauge('process_cpu_seconds_total', 'x', [], () => []), /already been registered/);
});

t.test('a scrape changes no counter value', async (t) => {
  const reg = new MetricsRegistry({ defaultMetrics: false });
  const server = new Counters(SERVER_COUNTERS);
  const pool = new Counters(tcpPoolCounters);
  reg.addCounters(server, { server: SERVER });
  reg.addCounters(pool, { to: 'tcp://10.96.0.10:53' });
  const h = new DurationHistogram();
  reg.addHistogram(h, { server: SERVER });
  server.values.forEach((_, i) => (server.values[i] = i + 1));
  pool.values.forEach((_, i) => (pool.values[i] = 10 * i));
  h.observe(0.001);
  h.observe(3);
  const before = [Float64Array.from(server.values), Float64Array.from(pool.values), Float64Array.from(h.values)];
  const first = await scrape(t, reg);
  const second = await scrape(t, reg);
  await reg.metrics();
  await reg.registry.getMetricsAsJSON();
  t.same([...server.values], [...before[0]!]);
  t.same([...pool.values], [...before[1]!]);
  t.same([...h.values], [...before[2]!]);
  t.same([...first.samples], [...second.samples], 'two scrapes, the same text values');
  t.equal(first.samples.get(key('nodelocal_requests_total', { server: SERVER, proto: 'udp' })), SERVER_COUNTERS.slot.requestsUdp + 1);
});

// ------------------------------------------------------------------ histograms

t.test('CoreDNS duration buckets: 0.25 ms doubling to 8.192 s, printed as CoreDNS prints them', async (t) => {
  t.equal(TIME_BUCKETS.length, 16);
  t.same(
    TIME_BUCKETS.map(String),
    ['0.00025', '0.0005', '0.001', '0.002', '0.004', '0.008', '0.016', '0.032', '0.064', '0.128', '0.256', '0.512', '1.024', '2.048', '4.096', '8.192'],
  );
  t.equal(REQUEST_DURATION.name, 'coredns_dns_request_duration_seconds');
});

t.test('typed histogram: le buckets, cumulative when published, sum and count', async (t) => {
  const h = new TypedHistogram({ name: 'nodelocal_test_seconds', help: 'Test.', bounds: [0.1, 1, 10] });
  for (const v of [0, 0.05, 0.1, 0.5, 1, 1.0000001, 10, 11, 1e9]) h.observe(v);
  h.observe(-1);
  h.observe(NaN);
  t.same([...h.values.subarray(0, 4)], [3, 2, 2, 2], 'own shares: <=0.1 {0,0.05,0.1}, <=1 {0.5,1}, <=10 {1.0000001,10}, above {11,1e9}');
  t.same(h.cumulative(), [3, 5, 7, 9]);
  t.equal(h.count, 9, 'negative and NaN dropped');
  t.equal(h.sum, 0 + 0.05 + 0.1 + 0.5 + 1 + 1.0000001 + 10 + 11 + 1e9);

  const reg = new MetricsRegistry({ defaultMetrics: false });
  reg.addHistogram(h, { server: SERVER });
  const p = await scrape(t, reg);
  t.equal(p.types.get('nodelocal_test_seconds'), 'histogram');
  const L = { server: SERVER };
  t.equal(p.samples.get(key('nodelocal_test_seconds_bucket', { ...L, le: '0.1' })), 3);
  t.equal(p.samples.get(key('nodelocal_test_seconds_bucket', { ...L, le: '1' })), 5);
  t.equal(p.samples.get(key('nodelocal_test_seconds_bucket', { ...L, le: '10' })), 7);
  t.equal(p.samples.get(key('nodelocal_test_seconds_bucket', { ...L, le: '+Inf' })), 9);
  t.equal(p.samples.get(key('nodelocal_test_seconds_count', L)), 9);
  t.equal(p.samples.get(key('nodelocal_test_seconds_sum', L)), h.sum);
});

t.test('duration histogram published as coredns_dns_request_duration_seconds; same labels summed; bounds must agree', async (t) => {
  const reg = new MetricsRegistry({ defaultMetrics: false });
  const a = new DurationHistogram();
  const b = new DurationHistogram();
  const other = new DurationHistogram();
  reg.addHistogram(a, { server: SERVER });
  reg.addHistogram(b, { server: SERVER });
  reg.addHistogram(other, { server: 'dns://10.0.0.10:53' });
  a.observeMs(0.1); // 0.0001 s: first bucket
  a.observeMs(3); // 0.003 s: le 0.004
  b.observeMs(0.25); // exactly the first bound: le is inclusive
  b.observeMs(20_000); // above 8.192 s: +Inf only
  other.observe(0.5);
  const p = await scrape(t, reg);
  const L = { server: SERVER, zone: '.' };
  const bucket = (le: string, labels = L): number | undefined => p.samples.get(key('coredns_dns_request_duration_seconds_bucket', { ...labels, le }));
  t.equal(bucket('0.00025'), 2);
  t.equal(bucket('0.002'), 2);
  t.equal(bucket('0.004'), 3);
  t.equal(bucket('8.192'), 3);
  t.equal(bucket('+Inf'), 4);
  t.equal(p.samples.get(key('coredns_dns_request_duration_seconds_count', L)), 4);
  t.ok(Math.abs(p.samples.get(key('coredns_dns_request_duration_seconds_sum', L))! - (0.0001 + 0.003 + 0.00025 + 20)) < 1e-9);
  const O = { server: 'dns://10.0.0.10:53', zone: '.' };
  t.equal(bucket('0.256', O), 0);
  t.equal(bucket('0.512', O), 1);
  // Every bucket line is cumulative: never smaller than the one before.
  const les = [...TIME_BUCKETS.map(String), '+Inf'];
  const counts = les.map((le) => bucket(le)!);
  t.ok(counts.every((c, i) => i === 0 || c >= counts[i - 1]!), 'monotone');

  const sizes = new TypedHistogram(requestSizeDef('udp'));
  reg.addHistogram(sizes, { server: SERVER });
  t.throws(
    () => reg.addHistogram(new TypedHistogram({ ...REQUEST_DURATION, bounds: [1, 2] }), { server: 'x' }),
    /same bounds/,
  );
  t.throws(() => new TypedHistogram({ name: 'x', help: 'x', bounds: [1, 1] }), /strictly ascending/);
  t.throws(() => reg.addHistogram(new TypedHistogram({ name: 'nodelocal_h', help: 'h', bounds: [1] }), { le: '1' }), /"le" is reserved/);
  sizes.observe(60);
  const answers = new TypedHistogram(responseSizeDef('tcp'));
  reg.addHistogram(answers, { server: SERVER });
  answers.observe(1500);
  const q = await scrape(t, reg);
  t.equal(q.samples.get(key('coredns_dns_response_size_bytes_bucket', { server: SERVER, zone: '.', proto: 'tcp', le: '1023' })), 0);
  t.equal(q.samples.get(key('coredns_dns_response_size_bytes_bucket', { server: SERVER, zone: '.', proto: 'tcp', le: '2047' })), 1);
  t.equal(q.samples.get(key('coredns_dns_request_size_bytes_bucket', { server: SERVER, zone: '.', proto: 'udp', le: '100' })), 1);
  t.equal(q.samples.get(key('coredns_dns_request_size_bytes_bucket', { server: SERVER, zone: '.', proto: 'udp', le: '0' })), 0);

  // Taken out: a series two histograms fed goes on with the other's counts; one fed by it alone goes.
  reg.removeHistogram(a);
  reg.removeHistogram(other);
  const r = await scrape(t, reg);
  t.equal(r.samples.get(key('coredns_dns_request_duration_seconds_count', L)), 2, 'b\'s two observations');
  t.equal(r.samples.get(key('coredns_dns_request_duration_seconds_count', O)), undefined, 'the other server\'s series gone');
  t.notOk([...r.samples.keys()].some((k) => k.includes('10.0.0.10')), 'every line of it (buckets, sum, count)');
});

t.test('a histogram in shared memory: observed through one view, published through another', async (t) => {
  const buf = new SharedArrayBuffer(8 + TypedHistogram.byteLength(TIME_BUCKETS.length));
  const worker = new DurationHistogram(REQUEST_DURATION, buf, 8);
  const main = new DurationHistogram(REQUEST_DURATION, buf, 8);
  worker.observe(0.003);
  t.equal(main.count, 1);
  t.equal(main.sum, 0.003);
});

// ------------------------------------------------------------------ HTTP

t.test('/health follows serving(): 200 OK, else 503', async (t) => {
  let serving = true;
  const s = await withServer(t, { serving: () => serving }, ['health']);
  let r = await request(`${s.url}/health`);
  t.equal(r.status, 200);
  t.equal(r.body, 'OK');
  r = await request(`${s.url}/health?verbose=1`);
  t.equal(r.status, 200, 'a query string does not change the path');
  serving = false;
  r = await request(`${s.url}/health`);
  t.equal(r.status, 503);
  t.equal(r.body, 'not serving\n');

  const broken = await withServer(t, { serving: () => { throw new Error('boom'); } }, ['health']);
  r = await request(`${broken.url}/health`);
  t.equal(r.status, 503, 'a throwing check is not healthy');
  t.match(r.body, /boom/);
});

t.test('/ready: 200 when ready, else 503 with a JSON body naming what is missing', async (t) => {
  let listeners = false;
  let view = false;
  const s = await withServer(
    t,
    { readiness: () => readinessOf({ listeners: () => listeners, 'view or cluster DNS': () => view }) },
    ['health', 'ready'],
  );
  let r = await request(`${s.url}/ready`);
  t.equal(r.status, 503);
  t.equal(r.headers['content-type'], 'application/json');
  t.same(JSON.parse(r.body), { ready: false, missing: ['listeners', 'view or cluster DNS'] });
  listeners = true;
  r = await request(`${s.url}/ready`);
  t.same(JSON.parse(r.body), { ready: false, missing: ['view or cluster DNS'] });
  view = true;
  r = await request(`${s.url}/ready`);
  t.equal(r.status, 200);
  t.same(JSON.parse(r.body), { ready: true });
  r = await request(`${s.url}/health`);
  t.equal(r.status, 200, 'no serving() callback: alive while the process answers');

  const bare: Readiness = { ready: false };
  const s2 = await withServer(t, { readiness: () => bare }, ['ready']);
  r = await request(`${s2.url}/ready`);
  t.same(JSON.parse(r.body), { ready: false, missing: [] });
  t.same(readinessOf({ a: () => { throw new Error('x'); }, b: () => true }), { ready: false, missing: ['a'] });
  const s3 = await withServer(t, { readiness: () => { throw new Error('view gone'); } }, ['ready']);
  r = await request(`${s3.url}/ready`);
  t.equal(r.status, 503, 'a throwing readiness check is not ready');
  t.same(JSON.parse(r.body), { ready: false, missing: ['readiness check failed: view gone'] });
});

t.test('unknown paths and paths of the other listener are 404; other methods 405; HEAD has no body', async (t) => {
  const reg = new MetricsRegistry({ defaultMetrics: false });
  const metricsOnly = await withServer(t, { metrics: reg, serving: () => true, readiness: () => ({ ready: true }) }, ['metrics']);
  for (const path of ['/', '/health', '/ready', '/metricsx', '/metrics/', '/debug/pprof']) {
    const r = await request(`${metricsOnly.url}${path}`);
    t.equal(r.status, 404, `${path} on the metrics listener`);
  }
  const healthOnly = await withServer(t, { metrics: reg, serving: () => true, readiness: () => ({ ready: true }) }, ['health', 'ready']);
  t.equal((await request(`${healthOnly.url}/metrics`)).status, 404, '/metrics on the health listener');
  const post = await request(`${healthOnly.url}/health`, { method: 'POST', body: 'x'.repeat(1000) });
  t.equal(post.status, 405);
  t.equal(post.headers.allow, 'GET, HEAD');
  t.equal(post.headers.connection, 'close', 'a request with a body is answered, never read, and its connection closed');
  const head = await request(`${healthOnly.url}/health`, { method: 'HEAD' });
  t.equal(head.status, 200);
  t.equal(head.body, '');
  t.equal(head.headers['content-length'], '2');
  // RFC 9112 3.2.2: a server must accept a request target in absolute-form (as a client sends it through a proxy).
  const u = new URL(healthOnly.url);
  for (const [path, want] of [[`${healthOnly.url}/health?verbose`, 200], [`${healthOnly.url.replace('http:', 'HTTP:')}/ready`, 200], [`${healthOnly.url}/metrics`, 404], [`${healthOnly.url}`, 404]] as const) {
    const status = await new Promise<number>((resolve, reject) => {
      http.get({ host: u.hostname, port: u.port, path, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on('error', reject);
    });
    t.equal(status, want, `absolute-form ${path}`);
  }
});

t.test('a failing metrics source is a 500, not a crash', async (t) => {
  const s = await withServer(t, { metrics: { contentType: 'text/plain', metrics: () => Promise.reject(new Error('collector broke')) } }, ['metrics']);
  const r = await request(`${s.url}/metrics`);
  t.equal(r.status, 500);
  t.match(r.body, /collector broke/);

  // A source that throws before it returns a promise (AgentMetrics runs its pre-scrape sums synchronously).
  const sync = await withServer(t, { metrics: { contentType: 'text/plain', metrics: () => { throw new Error('sums broke'); } } }, ['metrics']);
  const r2 = await request(`${sync.url}/metrics`);
  t.equal(r2.status, 500, 'a synchronous throw is a 500 too, not an uncaught exception');
  t.match(r2.body, /sums broke/);
});

/** Resolves true once the socket closes, false if it is still open at the deadline. */
function closedWithin(sock: net.Socket, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (sock.destroyed) {
      resolve(true);
      return;
    }
    const timer = setTimeout(() => resolve(false), ms);
    sock.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

function connect(url: string): Promise<net.Socket> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: u.hostname, port: Number(u.port) }, () => resolve(s));
    s.on('error', reject);
  });
}

t.test('bounded: past the cap a newcomer closes a connection owing no answer; when every one is being answered it is closed on accept', async (t) => {
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => (release = r));
  let renders = 0;
  const source = {
    contentType: 'text/plain; version=0.0.4; charset=utf-8',
    metrics: async (): Promise<string> => {
      renders++;
      await gate;
      return 'nodelocal_x_total 1\n';
    },
  };
  const s = await withServer(t, { serving: () => true, metrics: source }, ['metrics', 'health'], { maxConnections: 2 });
  const a = await connect(s.url);
  const b = await connect(s.url);
  t.teardown(() => {
    a.destroy();
    b.destroy();
  });
  const answered = (sock: net.Socket): Promise<string> =>
    new Promise((resolve) => {
      let got = '';
      sock.on('data', (d: Buffer) => {
        got += d.toString();
        if (got.includes('nodelocal_x_total 1')) resolve(got);
      });
      sock.once('close', () => resolve(got));
    });
  const aAnswer = answered(a);
  const bAnswer = answered(b);
  // Both owe a scrape that is held: neither may make room.
  a.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n');
  b.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n');
  // Both requests taken before c connects (a fixed 50 ms after the first render was not always enough under load:
  // b, its request not yet read, was quiet, and c's arrival closed b instead of c).
  for (let i = 0; i < 500 && (renders === 0 || s.answersOwed < 2); i++) await new Promise((r) => setTimeout(r, 20));
  const c = await connect(s.url);
  c.on('error', () => {});
  c.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
  t.ok(await closedWithin(c, 5_000), 'the third connection is closed while both others are being answered');
  release();
  t.match(await aAnswer, /^HTTP\/1\.1 200/, 'the held scrapes are answered');
  t.match(await bAnswer, /^HTTP\/1\.1 200/);
  // Both now idle (keep-alive): a newcomer closes the one quiet longest and is served.
  const r = await request(`${s.url}/health`);
  t.equal(r.status, 200, 'a newcomer is served once a connection owes no answer');
  t.ok(await closedWithin(a, 5_000), 'by closing the connection quiet longest');
  t.notOk(b.destroyed, 'the other is left open');
});

t.test('bounded: a client that never finishes its headers is cut off (slow-loris)', async (t) => {
  const s = await withServer(t, { serving: () => true }, ['health'], { headersTimeoutMs: 200, requestTimeoutMs: 200, checkIntervalMs: 50 });
  const sock = await connect(s.url);
  sock.on('error', () => {});
  t.teardown(() => sock.destroy());
  let got = '';
  sock.on('data', (d: Buffer) => (got += d.toString()));
  sock.write('GET /health HTTP/1.1\r\nHost: x\r\n'); // no blank line: headers never end
  t.ok(await closedWithin(sock, 10_000), 'closed by the server');
  t.match(got, /^HTTP\/1\.1 408/, 'with 408 Request Timeout');
});

t.test('start fails with the address when it is taken; stop closes open connections and may repeat', async (t) => {
  const s = await withServer(t, { serving: () => true }, ['health']);
  const clash = new OpsServer({ address: s.address, routes: ['health'], handlers: {}, logger: silentLogger });
  await t.rejects(clash.start(), new RegExp(`cannot listen on 127\\.0\\.0\\.1:${s.address.port} for /health: .*EADDRINUSE`));
  await clash.stop();

  const idle = await connect(s.url);
  idle.on('error', () => {});
  idle.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n'); // keep-alive: the server keeps it open after answering
  await new Promise((r) => idle.once('data', r));
  await s.stop();
  t.ok(await closedWithin(idle, 5_000), 'keep-alive connection closed by stop()');
  await s.stop();
  await t.rejects(request(`${s.url}/health`), /ECONNREFUSED/);
});

t.test('upgrade: a second agent on the same probe port gets every new connection, so the new pod is not marked ready by the old agent', async (t) => {
  // An address of this file's own and a port below the ephemeral range: found free by a listen of port 0 on
  // 127.0.0.1 and closed, the port could be an outgoing connection's local port by the time old.start() binds it.
  const host = '127.0.44.40';
  const port = 20_000 + (process.pid % 10_000);
  const old = new OpsServer({ address: { host, port }, routes: ['ready'], handlers: { readiness: () => ({ ready: true, missing: [] }) }, logger: silentLogger, reusePort: true });
  await old.start();
  t.teardown(() => old.stop());
  const fresh = new OpsServer({ address: { host, port }, routes: ['ready'], handlers: { readiness: () => ({ ready: false, missing: ['listeners'] }) }, logger: silentLogger, reusePort: true });
  await fresh.start();
  t.teardown(() => fresh.stop());
  const during: number[] = [];
  for (let i = 0; i < 20; i++) during.push((await request(`http://${host}:${port}/ready`)).status);
  t.same(during, Array(20).fill(503), 'all 20 probes reach the newest agent (starting: 503), none the old one\'s 200');
  await fresh.stop();
  const after: number[] = [];
  for (let i = 0; i < 5; i++) after.push((await request(`http://${host}:${port}/ready`)).status);
  t.same(after, Array(5).fill(200), 'with the newest gone, the one left answers');
});

t.test('createOpsServers: the node-cache pair, or one server when both share an address', async (t) => {
  const reg = new MetricsRegistry({ defaultMetrics: false });
  const handlers: OpsHandlers = { metrics: reg, serving: () => true, readiness: () => ({ ready: true }) };
  const two = createOpsServers({ metrics: { host: HOST, port: 0 }, health: { host: HOST, port: 0 }, handlers, logger: silentLogger });
  t.same(two.map((s) => s.routes), [['metrics'], ['health', 'ready']]);
  const one = createOpsServers({ metrics: { host: HOST, port: 18080 }, health: { host: HOST, port: 18080 }, handlers, logger: silentLogger });
  t.same(one.map((s) => s.routes), [['metrics', 'health', 'ready']]);
  t.equal(one[0]!.name, 'http 127.0.0.1:18080 (/metrics /health /ready)');
  t.same(createOpsServers({ metrics: null, health: { host: HOST, port: 0 }, handlers: { serving: () => true }, logger: silentLogger }).map((s) => s.routes), [['health']]);
  t.same(createOpsServers({ metrics: null, health: null, handlers, logger: silentLogger }), []);
  t.throws(() => new OpsServer({ address: { host: HOST, port: 0 }, routes: ['metrics'], handlers: {}, logger: silentLogger }), /needs a metrics source/);

  for (const s of two) {
    await s.start();
    t.teardown(() => s.stop());
  }
  t.equal((await request(`${two[0]!.url}/metrics`)).status, 200);
  t.equal((await request(`${two[1]!.url}/ready`)).status, 200);
  t.equal((await request(`${two[1]!.url}/metrics`)).status, 404);
});

t.test('defaultOpsHost: the first DNS address, never a wildcard', async (t) => {
  t.equal(defaultOpsHost([{ host: '169.254.20.10', port: 53 }, { host: '10.96.0.10', port: 53 }]), '169.254.20.10');
  t.equal(defaultOpsHost([{ host: '0.0.0.0', port: 53 }]), '127.0.0.1');
  t.equal(defaultOpsHost([{ host: '::', port: 53 }]), '::1');
  t.equal(defaultOpsHost([{ host: 'fd00::10', port: 53 }]), 'fd00::10');
  t.equal(defaultOpsHost([]), '127.0.0.1');
});

// ------------------------------------------------------------------ deploy/

/**
 * The metric names of a real scrape of a running agent: cluster DNS, host
 * resolvers, a stub domain, the API watch and the view all on, so every
 * block and gauge the agent registers is there.
 */
async function agentShapedNames(t: Test): Promise<Set<string>> {
  const { SimDnsServer, staticHandler } = await import('../testkit/dns-server.js');
  const { FakeApiServer } = await import('../testkit/fake-apiserver.js');
  const { loadSampleCluster, writeKubeconfig, SAMPLE_RECORDS } = await import('../testkit/cluster.js');
  const { startAgent } = await import('./helpers/agent.js');
  const api = new FakeApiServer({ token: 'sample-token' });
  await api.start();
  loadSampleCluster(api);
  const kubeDns = await SimDnsServer.start({ handler: staticHandler(SAMPLE_RECORDS, { soaZone: 'cluster.local' }) });
  const external = await SimDnsServer.start({ handler: staticHandler({}) });
  const agent = await startAgent('127.0.44.1', [
    '--upstream-addr', `127.0.0.1:${kubeDns.port}`, '--upstream-nameservers', `127.0.0.1:${external.port}`,
    '--stub-domain', `corp.example=127.0.0.1:${external.port}`, '--kubeconfig', writeKubeconfig(api.url),
    '--metrics-listen-address', `127.0.44.1:${19000 + (process.pid % 1000)}`, '--health-port', String(18000 + (process.pid % 1000)),
  ]);
  t.teardown(async () => {
    await agent.stop();
    await Promise.all([api.close(), kubeDns.close(), external.close()]);
  });
  const metricsServer = agent.agent.opsServers.find((o) => o.routes.includes('metrics'))!;
  const health = agent.agent.opsServers.find((o) => o.routes.includes('ready'))!;
  for (let i = 0; i < 500 && agent.agent.view?.synced !== true; i++) await new Promise((r) => setTimeout(r, 20));
  const ready = await fetch(`${health.url}/ready`);
  t.equal(ready.status, 200, 'the running agent is ready');
  t.equal((await fetch(`${health.url}/health`)).status, 200, 'and healthy');
  const text = await (await fetch(`${metricsServer.url}/metrics`)).text();
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/.exec(line);
    if (m !== null) names.add(m[1]!);
    // Series only where the agent manages the link and rules (not on loopback): their families are still declared.
    const declared = /^# TYPE (nodelocal_interface_up|nodelocal_interception_active) gauge$/.exec(line);
    if (declared !== null) names.add(declared[1]!);
  }
  t.ok(names.has('coredns_dns_requests_total') && names.has('coredns_cache_entries') && names.has('nodelocal_view_synced'), 'a real scrape of the agent');
  return names;
}

const METRIC_NAME = /\b((?:coredns|nodelocal|process|nodejs)_[a-z0-9_]+)/g;

t.test('deploy/: the dashboard and the alert rules parse, and use only metrics the agent publishes', async (t) => {

  const { parse } = await import('yaml');
  const published = await agentShapedNames(t);

  const dashboard = JSON.parse(readFileSync(new URL('../deploy/grafana-dashboard.json', import.meta.url), 'utf8')) as {
    panels: Array<{ title: string; type: string; targets?: Array<{ expr: string }> }>;
  };
  const used = new Set<string>();
  for (const p of dashboard.panels) {
    if (p.type === 'row') continue;
    t.ok((p.targets ?? []).length > 0, `panel "${p.title}" has a query`);
    for (const target of p.targets ?? []) for (const m of target.expr.matchAll(METRIC_NAME)) used.add(m[1]!);
  }

  const rules = parse(readFileSync(new URL('../deploy/prometheus-rules.yaml', import.meta.url), 'utf8')) as {
    groups: Array<{ name: string; rules: Array<{ alert?: string; expr: string; labels?: { severity?: string }; annotations?: { summary?: string } }> }>;
  };
  t.ok(rules.groups.length > 0);
  const alerts = rules.groups.flatMap((g) => g.rules);
  for (const r of alerts) {
    t.ok(r.alert !== undefined && r.labels?.severity !== undefined && r.annotations?.summary !== undefined, `rule ${r.alert}: alert, severity, summary`);
    for (const m of r.expr.matchAll(METRIC_NAME)) used.add(m[1]!);
    t.equal(r.expr.split('(').length, r.expr.split(')').length, `rule ${r.alert}: balanced parentheses`);
  }
  // A refused reload leaves the old configuration serving, and the next start of the pod failing: someone must hear of it.
  t.ok(alerts.some((r) => r.expr.includes('nodelocal_config_reload_refused')), 'a refused reload raises an alert');
  t.ok(used.size > 20, `${used.size} metric names used`);
  const missing = [...used].filter((n) => !published.has(n));
  t.same(missing, [], 'every metric the dashboard and rules use is published');
});

// ------------------------------------------------------------------ the agent's own series, from real traffic

t.test('qtype and client address to the coredns_dns_requests_total slots: CoreDNS\'s bounded type set, family as Go sees it', async (t) => {
  const { REQUEST_TYPES, requestTypeIndex, addressFamilyIndex, peerFamilyIndex } = await import('../src/server/stats.js');
  t.equal(REQUEST_TYPES[requestTypeIndex(1)], 'A');
  t.equal(REQUEST_TYPES[requestTypeIndex(28)], 'AAAA');
  t.equal(REQUEST_TYPES[requestTypeIndex(65)], 'HTTPS');
  t.equal(REQUEST_TYPES[requestTypeIndex(255)], 'ANY');
  for (const other of [0, 35, 99, 250, 256, 0xffff]) t.equal(REQUEST_TYPES[requestTypeIndex(other)], 'other', `qtype ${other} is "other"`);
  t.equal(addressFamilyIndex('127.0.0.1'), 0);
  t.equal(addressFamilyIndex('::1'), 1);
  t.equal(addressFamilyIndex('fd00::10'), 1);
  t.equal(addressFamilyIndex('::ffff:10.1.2.3'), 0, 'IPv4-mapped is IPv4 (Go To4())');
  t.equal(peerFamilyIndex({ address: '10.0.0.1' }), 0, 'no family given: from the address');
  t.equal(peerFamilyIndex({ address: 'fd00::1' }), 1);
  const lazy = {
    get address(): string {
      throw new Error('address read');
    },
    port: 1,
    family: 'IPv6',
  };
  t.equal(peerFamilyIndex(lazy), 1, "the peer's family when given, without reading its address");
  const lazy4 = {
    get address(): string {
      throw new Error('address read');
    },
    family: 'IPv4',
  };
  t.equal(peerFamilyIndex(lazy4), 0);
});

/** One scrape of a running agent's /metrics, parsed. */
async function scrapeUrl(url: string): Promise<Parsed> {
  const r = await request(url);
  if (r.status !== 200) throw new Error(`scrape: ${r.status}`);
  return parseExposition(r.body);
}

const rcodeOf = (p: { flags?: number }): number => (p.flags ?? 0) & 0xf;

function sumOf(p: Parsed, name: string, match: Record<string, string> = {}): number {
  let s = 0;
  for (const [k, v] of p.samples) {
    if (!k.startsWith(`${name}{`)) continue;
    if (Object.entries(match).every(([l, val]) => k.includes(`${l}="${val}"`))) s += v;
  }
  return s;
}

t.test('a real agent: requests by proto, family and type; forward latency per upstream server and rcode; upstream gauges; health-check failures', async (t) => {
  const { SimDnsServer, staticHandler } = await import('../testkit/dns-server.js');
  const { FakeApiServer } = await import('../testkit/fake-apiserver.js');
  const { loadSampleCluster, writeKubeconfig, SAMPLE_RECORDS } = await import('../testkit/cluster.js');
  const { startAgent } = await import('./helpers/agent.js');
  const { udpQuery, tcpQuery } = await import('./helpers/dns-client.js');
  const api = new FakeApiServer({ token: 'sample-token' });
  await api.start();
  loadSampleCluster(api);
  // 30 ms before each cluster answer: every forward observation lands above the 16 ms bucket.
  const kubeDns = await SimDnsServer.start({ handler: staticHandler(SAMPLE_RECORDS, { soaZone: 'cluster.local' }), faults: { latencyMs: 30 } });
  const external = await SimDnsServer.start({ handler: staticHandler({ 'www.example.com': { A: ['192.0.2.1'] } }) });
  const v6Port = 17000 + (process.pid % 1000);
  const metricsPort = 19500 + (process.pid % 400);
  const agent = await startAgent('127.0.44.3', [
    '--listen', `[::1]:${v6Port}`,
    '--upstream-addr', `127.0.0.1:${kubeDns.port}`, '--upstream-nameservers', `127.0.0.1:${external.port}`,
    '--kubeconfig', writeKubeconfig(api.url), '--metrics-listen-address', `127.0.44.3:${metricsPort}`,
  ]);
  t.teardown(async () => {
    await agent.stop();
    await Promise.all([api.close(), kubeDns.close(), external.close()]);
  });
  const url = `http://127.0.44.3:${metricsPort}/metrics`;
  const v4 = agent.target;
  const v6 = { host: '::1', port: v6Port };
  const sent = { udp4A: 5, udp4AAAA: 3, tcp4TXT: 2, udp4Other: 1, udp6A: 2, udp4ExternalA: 2 };
  for (let i = 0; i < sent.udp4A; i++) t.equal(rcodeOf(await udpQuery(v4, 'web.shop.svc.cluster.local', { type: 'A' })), 0);
  for (let i = 0; i < sent.udp4AAAA; i++) t.equal(rcodeOf(await udpQuery(v4, 'web.shop.svc.cluster.local', { type: 'AAAA' })), 0);
  for (let i = 0; i < sent.tcp4TXT; i++) t.equal(rcodeOf(await tcpQuery(v4, 'cart.shop.svc.cluster.local', { type: 'TXT' })), 0);
  t.equal(rcodeOf(await udpQuery(v4, 'cart.shop.svc.cluster.local', { type: 'NAPTR' })), 0);
  for (let i = 0; i < sent.udp6A; i++) t.equal(rcodeOf(await udpQuery(v6, 'cart.shop.svc.cluster.local', { type: 'A' })), 0);
  t.equal(rcodeOf(await udpQuery(v4, 'www.example.com', { type: 'A' })), 0);
  t.equal(rcodeOf(await udpQuery(v4, 'nx.example.com', { type: 'A' })), 3);

  const p = await scrapeUrl(url);
  const server = `dns://127.0.44.3:${v4.port}`;
  const req = (proto: string, family: string, type: string): number | undefined =>
    p.samples.get(key('coredns_dns_requests_total', { server, zone: '.', proto, family, type }));
  t.equal(req('udp', '1', 'A'), sent.udp4A + sent.udp4ExternalA, 'UDP from 127.0.0.1, type A');
  t.equal(req('udp', '1', 'AAAA'), sent.udp4AAAA);
  t.equal(req('tcp', '1', 'TXT'), sent.tcp4TXT);
  t.equal(req('udp', '1', 'other'), sent.udp4Other, 'NAPTR is "other"');
  t.equal(req('udp', '2', 'A'), sent.udp6A, 'UDP from ::1: family 2');
  t.equal(req('tcp', '2', 'A'), 0);
  const total = Object.values(sent).reduce((a, b) => a + b, 0);
  t.equal(sumOf(p, 'coredns_dns_requests_total'), total, 'every query counted once');
  t.equal(sumOf(p, 'nodelocal_requests_total'), total, 'the per-transport totals agree');

  // Forward latency: one observation per answer the upstream gave, labelled by the server's IP:port.
  const cluster = `127.0.0.1:${kubeDns.port}`;
  const fwd = (to: string, rcode: string, suffix: string, extra: Record<string, string> = {}): number =>
    p.samples.get(key(`coredns_forward_request_duration_seconds_${suffix}`, { to, rcode, ...extra })) ?? NaN;
  const clusterAnswers = kubeDns.stats.tcpQueries;
  t.ok(clusterAnswers >= 4, `the cluster DNS got ${clusterAnswers} questions (A, AAAA, TXT, NAPTR, A of cart, and the view's nothing)`);
  t.equal(fwd(cluster, 'NOERROR', 'count'), clusterAnswers, 'one observation per cluster DNS answer');
  t.equal(p.samples.get(key('coredns_forward_responses_total', { to: `tcp://${cluster}`, rcode: 'NOERROR' })), clusterAnswers, 'as many as coredns_forward_responses_total');
  t.equal(fwd(cluster, 'NOERROR', 'bucket', { le: '0.016' }), 0, 'none faster than the 30 ms the fake upstream waits');
  t.equal(fwd(cluster, 'NOERROR', 'bucket', { le: '+Inf' }), clusterAnswers);
  t.ok(fwd(cluster, 'NOERROR', 'sum') >= clusterAnswers * 0.016, 'the sum is in seconds');
  t.equal(fwd(cluster, 'SERVFAIL', 'count'), 0, 'every rcode class published, zero until seen');
  const ext = `127.0.0.1:${external.port}`;
  t.equal(fwd(ext, 'NOERROR', 'count'), 1, 'host resolvers: per server too');
  t.equal(fwd(ext, 'NXDOMAIN', 'count'), 1);
  t.equal(p.types.get('coredns_forward_request_duration_seconds'), 'histogram');
  // The heap trimmer is on by default (glibc here): its counter and gauge are published from the start.
  t.equal(p.types.get('nodelocal_malloc_trims_total'), 'counter');
  t.equal(p.types.get('nodelocal_malloc_free_bytes'), 'gauge');

  const poolName = `tcp://${cluster}`;
  const conns = p.samples.get(key('nodelocal_upstream_connections', { to: poolName })) ?? NaN;
  t.ok(conns >= 1 && conns <= 2, `connections open to the cluster DNS: ${conns} (pool of 2)`);
  t.equal(p.samples.get(key('nodelocal_upstream_exchanges_inflight', { to: poolName })), 0, 'nothing in flight once answered');
  t.equal(p.samples.get(key('nodelocal_upstream_exchanges_inflight', { to: 'host-resolvers' })), 0);
  t.equal(p.samples.get(key('nodelocal_upstream_queued', { to: poolName })), 0);
  t.equal(p.samples.get(key('coredns_forward_healthcheck_failures_total', { to: cluster })), 0, 'no failed check while healthy');
  t.notOk([...p.samples.keys()].some((k) => k.startsWith('nodelocal_interface_up') || k.startsWith('nodelocal_interception_active')), 'no interface or interception series when the agent manages neither');

  // The cluster DNS goes away: it is marked failing, the probe checks it once a second, each check fails.
  await kubeDns.stop();
  await udpQuery(v4, 'db.shop.svc.cluster.local', { type: 'A' });
  let failures = 0;
  for (let i = 0; i < 100 && failures < 2; i++) {
    await new Promise((r) => setTimeout(r, 100));
    failures = (await scrapeUrl(url)).samples.get(key('coredns_forward_healthcheck_failures_total', { to: cluster })) ?? 0;
  }
  t.ok(failures >= 2, `failed health checks counted: ${failures}`);
  const down = await scrapeUrl(url);
  t.equal(down.samples.get(key('nodelocal_upstream_healthy', { to: poolName })), 0, 'and the upstream is failing');
  t.equal(down.samples.get(key('nodelocal_upstream_connections', { to: poolName })), 0, 'with no connection open');
});

t.test('interface and interception gauges follow the node parts the agent manages', async (t) => {
  const { AgentMetrics } = await import('../src/ops/agent-metrics.js');
  const { DnsCache } = await import('../src/cache/cache.js');
  const { ManualClock } = await import('../src/clock.js');
  const cache = new DnsCache({ positiveCapacity: 10, negativeCapacity: 10, maxBytes: 1 << 20, staleMs: 0 } as ConstructorParameters<typeof DnsCache>[0], new Counters(CACHE_COUNTERS));
  const parts: Array<{ name: string; inPlace: boolean; mode?: string }> = [];
  const m = new AgentMetrics({ server: SERVER, cache, clock: new ManualClock(), upstreams: () => [], view: () => null, nodeParts: () => parts }, { version: 't', revision: '' });
  const read = async (): Promise<Parsed> => parseExposition(await m.registry.metrics());
  let p = await read();
  t.notOk([...p.samples.keys()].some((k) => k.startsWith('nodelocal_interface_up') || k.startsWith('nodelocal_interception_active')), 'absent when not ours');
  const iface = { name: 'interface', inPlace: true };
  const rules = { name: 'interception', inPlace: false, mode: 'iptables-nft' };
  parts.push(iface, rules);
  p = await read();
  t.equal(p.samples.get(key('nodelocal_interface_up')), 1);
  t.equal(p.samples.get(key('nodelocal_interception_active', { mode: 'iptables-nft' })), 0);
  iface.inPlace = false;
  rules.inPlace = true;
  p = await read();
  t.equal(p.samples.get(key('nodelocal_interface_up')), 0, 'read at each scrape');
  t.equal(p.samples.get(key('nodelocal_interception_active', { mode: 'iptables-nft' })), 1);
  t.equal(p.types.get('nodelocal_interception_active'), 'gauge');
});

t.test('health probe: each failed check counted (timeout, network, SERVFAIL answer), a good answer, a shutdown or a local cap not', async (t) => {
  const { HealthProbe, PROBE_COUNTERS, PROBE_INTERVAL_MS } = await import('../src/upstream/probe.js');
  const { UpstreamHealth } = await import('../src/upstream/health.js');
  const { ManualClock } = await import('../src/clock.js');
  const clock = new ManualClock();
  const health = new UpstreamHealth('fake', silentLogger, clock.now());
  health.record('unreachable', clock.now());
  type Ex = import('../src/upstream/types.js').UpstreamExchange;
  const sentEx: Ex[] = [];
  const upstream = { name: 'fake', health, send: (ex: Ex) => sentEx.push(ex), close: () => Promise.resolve(), abort: () => {} };
  const counters = new Counters(PROBE_COUNTERS);
  const probe = new HealthProbe(upstream, clock, Buffer.alloc(12), counters);
  t.teardown(() => probe.stop());
  const answer = (rcode: number): Buffer => {
    const b = Buffer.alloc(12);
    b[3] = rcode;
    return b;
  };
  const step = (): Ex => {
    clock.advance(PROBE_INTERVAL_MS);
    const ex = sentEx.at(-1);
    if (ex === undefined) throw new Error('no probe sent');
    return ex;
  };
  step().reject('timeout');
  t.equal(counters.get('failures'), 1, 'timeout');
  step().reject('network');
  t.equal(counters.get('failures'), 2, 'network');
  step().resolve(answer(2));
  t.equal(counters.get('failures'), 3, 'SERVFAIL answer');
  step().reject('closed');
  t.equal(counters.get('failures'), 3, 'shutdown: not a failed check');
  step().reject('overloaded');
  t.equal(counters.get('failures'), 3, 'a local cap (never sent): no check made, not a failed one');
  const n = sentEx.length;
  step().resolve(answer(0));
  t.equal(sentEx.length, n + 1);
  t.equal(counters.get('failures'), 3, 'a good answer: no failure');
});

t.test('malloc_trim: holes below a live chunk are handed back to the kernel (real glibc, through koffi)', async (t) => {
  const sys = await loadMallocTrim();
  if (typeof sys === 'string') {
    t.fail(`glibc's malloc_trim should bind on this machine: ${sys}`);
    return;
  }
  const koffi = (await import('koffi')).default;
  const libc = koffi.load('libc.so.6');
  const malloc = libc.func('void *malloc(size_t)') as (n: number) => unknown;
  const free = libc.func('void free(void *)') as (p: unknown) => void;
  const memset = libc.func('void *memset(void *, int, size_t)') as (p: unknown, c: number, n: number) => unknown;
  // 1,000 chunks of 32 KiB (under the mmap threshold: they come from the heap), every page touched; then every chunk but
  // the last freed, so the ~31 MiB free lies below a live chunk, where glibc's own trimming of the heap top cannot reach.
  const CHUNK = 32 * 1024;
  const chunks = Array.from({ length: 1000 }, () => {
    const p = malloc(CHUNK);
    memset(p, 1, CHUNK);
    return p;
  });
  const rssAnon = (): number => Number(/RssAnon:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]) * 1024;
  for (let i = 0; i < chunks.length - 1; i++) free(chunks[i]);
  const before = sys.stats();
  t.ok(before.inUse > 0 && before.free - before.top >= 24 * 2 ** 20, `the heaps hold the freed chunks below their tops (${Math.round((before.free - before.top) / 2 ** 20)} MiB)`);
  const rssBefore = rssAnon();
  const released = await new Promise<boolean>((resolve, reject) => sys.trimAsync((err, r) => (err === null ? resolve(r) : reject(err))));
  const rssAfter = rssAnon();
  t.equal(released, true, 'malloc_trim says it released memory');
  t.ok(rssBefore - rssAfter >= 16 * 2 ** 20, `resident anonymous memory fell by ${Math.round((rssBefore - rssAfter) / 2 ** 20)} MiB`);
  free(chunks[chunks.length - 1]);
});

t.test('heap trimmer: trims on its interval only past the free threshold, one at a time; a broken call stops it', async (t) => {
  const clock = new ManualClock();
  let free = 0;
  let pending: ((err: Error | null, released: boolean) => void) | null = null;
  let calls = 0;
  const sys: MallocTrim = {
    stats: () => ({ inUse: 50 * 2 ** 20, free, top: 2 ** 20 }),
    trimAsync: (done) => {
      calls++;
      pending = done;
    },
  };
  const warnings: string[] = [];
  const logger = createLogger('warn', (line) => warnings.push(line));
  const counters = new Counters(HEAP_TRIM_COUNTERS);
  const trimmer = new HeapTrimmer({ sys, clock, intervalMs: 10_000, counters, logger, minFreeBytes: 4 * 2 ** 20 });
  trimmer.start();
  free = 3 * 2 ** 20;
  clock.advance(10_000);
  t.equal(calls, 0, 'nothing to give back: 2 MiB of holes');
  t.equal(counters.get('freeBytes'), 2 * 2 ** 20, 'gauge: the holes at the last check');
  free = 20 * 2 ** 20;
  clock.advance(5_000);
  t.equal(calls, 0, 'not before the interval');
  clock.advance(5_000);
  t.equal(calls, 1, '19 MiB of holes: one trim');
  clock.advance(10_000);
  t.equal(calls, 1, 'not a second one while the first runs');
  pending!(null, true);
  t.equal(counters.get('trims'), 1, 'counted when it finished');
  clock.advance(10_000);
  t.equal(calls, 2, 'next interval: again');
  pending!(new Error('boom'), false);
  t.match(warnings.join('\n'), /malloc_trim failed/, 'a failure is logged');
  clock.advance(30_000);
  t.equal(calls, 2, 'and trimming stops');
  trimmer.stop();
});

t.test('exe pages: only the binary\'s read-only mappings with no private page and none locked are droppable', async (t) => {
  const exe = '/usr/bin/node';
  const mapping = (range: string, perms: string, path: string, rss: number, anon: number, locked = 0): string =>
    `${range} ${perms} 00000000 fe:01 1234    ${path}\nSize:   100 kB\nRss:   ${rss} kB\nPss:   ${rss} kB\nAnonymous:   ${anon} kB\nLocked:   ${locked} kB\nVmFlags: rd mr mw me\n`;
  const smaps = [
    mapping('00400000-00b6f000', 'r--p', exe, 6844, 0),
    mapping('00b72000-025fe000', 'r-xp', exe, 20852, 0),
    mapping('025fe000-02601000', 'r--p', exe, 12, 12), // relocated (RELRO): a private copy
    mapping('02601000-0563a000', 'r--p', exe, 12540, 0),
    mapping('0563a000-05650000', 'rw-p', exe, 88, 40), // data
    mapping('05650000-05660000', 'r--p', exe, 0, 0), // nothing resident
    mapping('05660000-05670000', 'r-xp', exe, 64, 0, 64), // locked
    mapping('7f3090764000-7f30908ba000', 'r-xp', '/usr/lib/x86_64-linux-gnu/libc.so.6', 1172, 0),
    mapping('7f3060000000-7f3060603000', 'rw-p', '', 4540, 4540),
    mapping('7f3087e40000-7f3087fd2000', 'r-xp', exe, 1024, 0),
  ].join('');
  const got = droppableRanges(smaps, exe);
  t.same(got.map((r) => r.start.toString(16)), ['400000', 'b72000', '2601000', '7f3087e40000'], 'the binary\'s clean read-only mappings, nothing else');
  t.equal(got[1]!.bytes, 0x25fe000 - 0xb72000, 'the whole mapping');
  t.equal(got[1]!.resident, 20852 * 1024, 'its resident bytes');
  t.same(droppableRanges(smaps.replace(/^Anonymous:.*\n/gm, ''), exe), [], 'without the Anonymous field nothing counts as safe');
  t.same(droppableRanges(smaps, '/usr/local/bin/node'), [], 'another binary: nothing');
});

t.test('exe pages: dropping the test process\'s own start-up pages takes them out of its RSS, and it runs on', async (t) => {
  const sys = await loadExePages();
  if (typeof sys === 'string') return t.fail(`exe pages unavailable here: ${sys}`);
  const read = (): Promise<readonly ExeRange[]> => new Promise((resolve, reject) => sys.read((err, r) => (err === null ? resolve(r) : reject(err))));
  const resident = (rs: readonly ExeRange[]): number => rs.reduce((a, r) => a + r.resident, 0);
  const before = await read();
  t.ok(resident(before) >= 8 * 2 ** 20, `the loaded test process holds ${Math.round(resident(before) / 2 ** 20)} MiB of the node binary`);
  const failed = await new Promise<number>((resolve) => sys.drop(before, resolve));
  t.equal(failed, 0, 'madvise took every range');
  const after = await read();
  t.ok(resident(after) < resident(before) / 2, `resident ${Math.round(resident(before) / 2 ** 20)} MiB before, ${Math.round(resident(after) / 2 ** 20)} MiB after`);
  // Code and read-only data come back from the file as it is touched: compile, parse, hash, compress.
  const zlib = await import('node:zlib');
  const data = Buffer.from(JSON.stringify({ a: [1, 2, 3], b: 'x'.repeat(1000) }));
  t.same(zlib.inflateSync(zlib.deflateSync(data)), data, 'the process still runs code it had dropped');
  t.equal(new Intl.NumberFormat('en-US').format(1234567), '1,234,567', 'and reads ICU data');
});

t.test('exe trimmer: the first check trims whatever the load; later only at rest and past the growth mark; a failure stops it', async (t) => {
  const clock = new ManualClock();
  const MiB = 2 ** 20;
  let resident = 40 * MiB;
  let quiet = false;
  let reads = 0;
  let drops = 0;
  let dropFails = 0;
  let readFails = false;
  const ranges = (): ExeRange[] => [{ start: 0x400000n, bytes: 64 * MiB, resident }];
  const sys: ExePages = {
    read: (done) => {
      reads++;
      if (readFails) return done(new Error('EACCES'), []);
      done(null, ranges());
    },
    drop: (rs, done) => {
      drops++;
      t.equal(rs.length, 1, 'the ranges it read');
      resident = 12 * MiB; // what stays: the hot pages that come straight back
      done(dropFails);
    },
  };
  const warnings: string[] = [];
  const counters = new Counters(EXE_TRIM_COUNTERS);
  const trimmer = new ExeTrimmer({ sys, clock, intervalMs: 10_000, counters, logger: createLogger('warn', (l) => warnings.push(l)), quiet: () => quiet });
  trimmer.start();
  clock.advance(9_999);
  t.equal(reads, 0, 'nothing before the interval');
  clock.advance(1);
  t.equal(drops, 1, 'the first check trims the start-up pages though the agent is busy');
  t.equal(counters.get('trims'), 1, 'counted');
  t.equal(counters.get('residentBytes'), 12 * MiB, 'the gauge: what the trim left');
  resident = 30 * MiB; // a burst ran cold code
  clock.advance(10_000);
  t.equal(drops, 1, 'busy: no trim');
  quiet = true;
  resident = 15 * MiB;
  clock.advance(10_000);
  t.equal(drops, 1, 'at rest, but 3 MiB over what the last trim left: not worth it');
  t.equal(counters.get('residentBytes'), 15 * MiB, 'read all the same');
  resident = 17 * MiB;
  clock.advance(10_000);
  t.equal(drops, 2, 'at rest and 5 MiB over: trimmed');
  dropFails = 1;
  resident = 30 * MiB;
  clock.advance(10_000);
  t.equal(drops, 3, 'tried again');
  t.match(warnings.join('\n'), /madvise failed/, 'every range refused: logged');
  resident = 30 * MiB;
  clock.advance(30_000);
  t.equal(drops, 3, 'and trimming stops');
  trimmer.stop();

  const quietTrimmer = new ExeTrimmer({ sys, clock, intervalMs: 10_000, counters, logger: createLogger('warn', (l) => warnings.push(l)), quiet: () => true });
  readFails = true;
  t.equal(quietTrimmer.check(), true, 'a check starts');
  t.equal(quietTrimmer.check(), false, 'a failed reading ends trimming');
  t.match(warnings.join('\n'), /could not read \/proc\/self\/smaps/, 'and says why');
});

// ------------------------------------------------------------------ review: defects (each test fails until fixed)

/** Polls `read` every 100 ms until two looks in a row agree, or `ms` passes; returns the last value. */
async function settled(read: () => number, ms: number): Promise<number> {
  let last = read();
  for (let waited = 0; waited < ms; waited += 100) {
    await new Promise((r) => setTimeout(r, 100));
    const now = read();
    if (now === last) return now;
    last = now;
  }
  return last;
}

t.test('bounded: a client that pipelines scrapes and never reads the answers gets only a few of them rendered and held', async (t) => {
  // Any pod on the node reaches the metrics port (the node-local IP). One connection, one write of pipelined
  // GET /metrics: the HTTP parser takes every request in the chunk and the handler renders each one, so the
  // answers (about 60 kB each for the real agent) pile up in memory behind a client that reads nothing.
  let renders = 0;
  const source = {
    contentType: 'text/plain; version=0.0.4; charset=utf-8',
    metrics: async (): Promise<string> => {
      renders++;
      await new Promise((r) => setImmediate(r));
      return `# ${renders}\n${'x'.repeat(60_000)}\n`;
    },
  };
  const s = await withServer(t, { metrics: source }, ['metrics']);
  const sock = await connect(s.url);
  sock.on('error', () => {});
  t.teardown(() => sock.destroy());
  sock.pause();
  sock.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(1_000));
  const n = await settled(() => renders, 5_000);
  t.ok(n <= 8, `at most a few scrapes rendered for one connection that reads nothing (rendered ${n} of 1000 pipelined)`);
});

t.test('bounded: a client scraping in a loop gets a few renders a second; the rest wait for the next second\'s render', async (t) => {
  // Any pod reaches the metrics port; a render costs the main thread milliseconds (it also serves TCP and every
  // miss), so one asking back-to-back must not have the agent render without end. A scrape past the bound is never
  // answered with text older than itself (what happened before it, a query or a reload, must be in its answer).
  let renders = 0;
  const source = {
    contentType: 'text/plain; version=0.0.4; charset=utf-8',
    metrics: async (): Promise<string> => `nodelocal_render_total ${++renders}\n`,
  };
  const clock = new ManualClock();
  const limits: Record<string, number> = { maxRendersPerSecond: 3 };
  const s = new OpsServer({ address: { host: HOST, port: 0 }, routes: ['metrics'], handlers: { metrics: source }, logger: silentLogger, limits, renderClock: clock });
  await s.start();
  t.teardown(() => s.stop());
  for (let i = 1; i <= 3; i++) t.equal((await request(`${s.url}/metrics`)).body, `nodelocal_render_total ${i}\n`);
  const late = [request(`${s.url}/metrics`), request(`${s.url}/metrics`), request(`${s.url}/metrics`)];
  // All three taken before the second turns: one that arrives after it is a scrape of the new second, with a render of its own.
  for (let i = 0; i < 1000 && s.answersOwed < 3; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(s.answersOwed, 3, 'the three late scrapes are taken');
  t.ok(s.scrapesWaiting, 'the fourth scrape in the second waits');
  t.equal(renders, 3, 'three renders in the second, however many scrapes');
  clock.advance(1_000);
  const bodies = (await Promise.all(late)).map((r) => `${r.status} ${r.body}`);
  t.same(bodies, Array(3).fill('200 nodelocal_render_total 4\n'), 'the waiting scrapes share the next second\'s render');
  t.equal(renders, 4);
});

t.test('an agent under a ManualClock: a scrape after many others still shows what happened since (the render bound must not freeze the text)', async (t) => {
  // The bound on renders guards the main thread's real time. Measured on the agent's clock, a test's ManualClock
  // (which only moves when told) turns "10 a second" into "10, ever": every later scrape gets the tenth text, and a
  // test polling /metrics for a value (ns-metrics.test.ts's until()) waits out its whole loop and fails. On any
  // clock, the text past the bound was older than the scrape: a query made before it was missing from its answer.
  const { SimDnsServer, staticHandler } = await import('../testkit/dns-server.js');
  const { startAgent } = await import('./helpers/agent.js');
  const { udpQuery } = await import('./helpers/dns-client.js');
  const external = await SimDnsServer.start({ handler: staticHandler({ 'www.example.com': { A: ['192.0.2.1'] } }) });
  const clock = new ManualClock();
  const host = '127.0.44.13';
  const agent = await startAgent(host, ['--upstream-nameservers', `127.0.0.1:${external.port}`, '--no-kube', '--metrics-listen-address', `${host}:9253`], { clock });
  t.teardown(async () => {
    await agent.stop();
    await external.close();
  });
  const ops = agent.agent.opsServers.find((s) => s.routes.includes('metrics'));
  if (ops === undefined) throw new Error('no metrics server');
  const requests = async (): Promise<number> => {
    let n = 0;
    for (const [k, v] of parseExposition((await request(`${ops.url}/metrics`)).body).samples) if (k.startsWith('coredns_dns_requests_total{')) n += v;
    return n;
  };
  const before = await requests();
  for (let i = 0; i < OPS_HTTP_LIMITS.maxRendersPerSecond + 2; i++) await requests();
  t.equal(rcodeOf(await udpQuery(agent.target, 'www.example.com')), 0, 'answered');
  t.equal(await requests(), before + 1, 'the query is in the next scrape');
});

t.test('coredns_cache_requests_total: one per client lookup (a miss, then a hit), --io dgram and batched', async (t) => {
  // CoreDNS counts a request each time a query reaches its cache (getIgnoreTTL), then a hit or a miss: requests =
  // hits + misses. In batched mode the main thread asks the shared store again for each worker miss; that second
  // look must not count as a second request (or a hit no client got).
  const { SimDnsServer, staticHandler } = await import('../testkit/dns-server.js');
  const { startAgent } = await import('./helpers/agent.js');
  const { udpQuery } = await import('./helpers/dns-client.js');
  const external = await SimDnsServer.start({ handler: staticHandler({ 'www.example.com': { A: ['192.0.2.1'] } }) });
  t.teardown(() => external.close());
  for (const [i, io] of (['dgram', 'batched'] as const).entries()) {
    const agent = await startAgent(`127.0.44.${30 + i}`, ['--io', io, ...(io === 'batched' ? ['--workers', '1'] : []), '--upstream-nameservers', `127.0.0.1:${external.port}`, '--no-kube']);
    t.teardown(() => agent.stop());
    const sum = async (name: string): Promise<number> => {
      let n = 0;
      for (const [k, v] of parseExposition(await agent.agent.metrics.metrics()).samples) if (k.startsWith(`${name}{`)) n += v;
      return n;
    };
    const before = { requests: await sum('coredns_cache_requests_total'), hits: await sum('coredns_cache_hits_total'), misses: await sum('coredns_cache_misses_total') };
    await udpQuery(agent.target, 'www.example.com', { timeoutMs: 3_000 });
    await udpQuery(agent.target, 'www.example.com', { timeoutMs: 3_000 });
    t.equal((await sum('coredns_cache_misses_total')) - before.misses, 1, `${io}: one miss`);
    t.equal((await sum('coredns_cache_hits_total')) - before.hits, 1, `${io}: one hit`);
    t.equal((await sum('coredns_cache_requests_total')) - before.requests, 2, `${io}: two requests`);
  }
});

/**
 * One connection per address of `from` (to `s`, from that local address), each sending a scrape; each taken (its
 * answer owed) before the next connects. Resolves to each one's answer: what it read by the metrics line or its close.
 */
async function scrapesFrom(t: Test, s: OpsServer, from: readonly string[]): Promise<Array<Promise<string>>> {
  const u = new URL(s.url);
  const answers: Array<Promise<string>> = [];
  for (const localAddress of from) {
    const w = await new Promise<net.Socket>((resolve, reject) => {
      const c = net.connect({ host: u.hostname, port: Number(u.port), localAddress }, () => resolve(c));
      c.once('error', reject);
    });
    t.teardown(() => void w.destroy());
    w.on('error', () => {});
    answers.push(new Promise((resolve) => {
      let got = '';
      w.on('data', (d: Buffer) => {
        got += d.toString();
        if (got.includes('nodelocal_render_total')) resolve(got);
      });
      w.once('close', () => resolve(got));
    }));
    const owed = s.answersOwed;
    w.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n');
    // Taken before the next connects: one whose request is not yet read would be quiet, made room from by the older rule.
    for (let j = 0; j < 500 && s.answersOwed <= owed; j++) await new Promise((r) => setTimeout(r, 10));
  }
  return answers;
}

/**
 * A metrics server capped at 3 connections and one render a second, whose render of this second is spent, and
 * three scrapes from `from` waiting for the next: the rig of the waiting-scrapes tests.
 */
async function waitingScrapes(
  t: Test, metrics: () => Promise<string>, from: readonly string[], limits: { maxConnectionsPerPeer?: number } = {},
): Promise<{ s: OpsServer; clock: ManualClock; answers: Array<Promise<string>> }> {
  const source = { contentType: 'text/plain; version=0.0.4; charset=utf-8', metrics };
  const clock = new ManualClock();
  const s = new OpsServer({
    address: { host: HOST, port: 0 }, routes: ['metrics', 'health'], handlers: { metrics: source, serving: () => true }, logger: silentLogger,
    limits: { maxConnections: 3, maxRendersPerSecond: 1, ...limits }, renderClock: clock,
  });
  await s.start();
  t.teardown(() => s.stop());
  t.equal((await request(`${s.url}/metrics`)).status, 200, 'the render of this second');
  return { s, clock, answers: await scrapesFrom(t, s, from) };
}

t.test('bounded: connections whose scrapes wait for the next second\'s render do not lock a newcomer out (a probe on a shared address, Prometheus)', async (t) => {
  // A pod scraping back-to-back on every connection it may hold (8 per address, a few addresses fill all 32) spends
  // the renders of each second, so its scrapes wait for the next one almost all the time: answers owed, read at
  // once, never quiet. Were they never made room from, every newcomer would be closed on accept: Prometheus, and
  // on a shared metrics and health address the kubelet's probe (the agent restarted after three).
  let renders = 0;
  const { s, clock, answers } = await waitingScrapes(t, async () => `nodelocal_render_total ${++renders}\n`, [HOST, HOST, HOST]);
  t.equal(s.answersOwed, 3, 'each request taken before the newcomer connects');
  t.ok(s.scrapesWaiting, 'the scrapes wait for the next second');
  const probe = await request(`${s.url}/health`).catch((err: Error) => ({ status: 0, body: err.message }));
  t.equal(probe.status, 200, `the newcomer is answered (got: ${probe.status === 0 ? probe.body : probe.status})`);
  clock.advance(1_000);
  const got = await Promise.all(answers);
  t.equal(got.filter((a) => /^HTTP\/1\.1 200/.test(a)).length, 2, 'one waiting connection made room; the others get the next second\'s render');
});

t.test('bounded: at the cap, a waiting scrape of the address holding the most connections makes room, not a lone Prometheus\'s that began waiting last', async (t) => {
  // Pods scraping back-to-back fill the slots and spend each second's renders; Prometheus's scrape comes between
  // their turns, so it is most often the one that began waiting last. A newcomer (another scraper reconnecting,
  // the probe) must close one of theirs: were it the last to wait, every scrape of Prometheus's could be cut so.
  const { s, clock, answers } = await waitingScrapes(t, async () => 'nodelocal_render_total 1\n', [HOST, HOST, '127.0.0.2'], { maxConnectionsPerPeer: 2 });
  const [a1, a2, prometheus] = answers;
  t.equal(s.answersOwed, 3, 'three scrapes wait, Prometheus\'s the last');
  const probe = await new Promise<number>((resolve) => {
    const req = http.request(`${s.url}/health`, { agent: false, localAddress: '127.0.0.3' }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(0));
    req.end();
  });
  t.equal(probe, 200, 'the newcomer is answered');
  clock.advance(1_000);
  t.match(await prometheus!, /^HTTP\/1\.1 200/, 'Prometheus gets the next second\'s render');
  t.equal((await Promise.all([a1!, a2!])).filter((a) => /^HTTP\/1\.1 200/.test(a)).length, 1, 'one of the busy address\'s two made room');
});

t.test('bounded: a scrape whose wait is over (its render running) no longer makes room: the render it waited for is not thrown away', async (t) => {
  // Waiting scrapes may make room until the next second's render starts; from then on they are being answered, and
  // closing one would cut a scrape that waited its second for nothing.
  let release: () => void = () => {};
  let renders = 0;
  const render = async (): Promise<string> => {
    if (++renders > 1) await new Promise<void>((r) => (release = r));
    return `nodelocal_render_total ${renders}\n`;
  };
  const { s, clock, answers } = await waitingScrapes(t, render, [HOST, HOST, HOST]);
  t.equal(s.answersOwed, 3, 'three scrapes wait');
  clock.advance(1_000);
  t.equal(renders, 2, 'the next second\'s render runs for them');
  const newcomer = await request(`${s.url}/health`).catch((err: Error) => ({ status: 0, body: err.message }));
  t.equal(newcomer.status, 0, 'a newcomer now is closed on accept: every one is being answered');
  release();
  const got = await Promise.all(answers);
  t.equal(got.filter((a) => /^HTTP\/1\.1 200/.test(a)).length, 3, 'each waiting scrape gets the render it waited for');
});

t.test('bounded: one client holding every connection slot does not lock the kubelet\'s probe out', async (t) => {
  // The cap (32) is global: a pod that opens 32 keep-alive connections to the node-local IP's probe port and
  // sends a request on each now and then (so keepAliveTimeout never fires) makes every new connection, the
  // kubelet's liveness probe among them, closed on accept; three failed probes and the agent is restarted.
  const s = await withServer(t, { serving: () => true, readiness: () => ({ ready: true }) }, ['health', 'ready']);
  const u = new URL(s.url);
  const hogs: net.Socket[] = [];
  t.teardown(() => {
    for (const h of hogs) h.destroy();
  });
  for (let i = 0; i < OPS_HTTP_LIMITS.maxConnections; i++) {
    const h = net.connect({ host: u.hostname, port: Number(u.port), localAddress: '127.0.0.2' });
    h.on('error', () => {});
    hogs.push(h);
    await new Promise<void>((resolve) => {
      const done = (): void => resolve();
      h.once('data', done);
      h.once('close', done);
      h.once('connect', () => h.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n'));
      setTimeout(done, 2_000);
    });
  }
  const probe = await request(`${s.url}/health`).catch((err: Error) => ({ status: 0, body: err.message }));
  t.equal(probe.status, 200, `a probe from another address is answered (got: ${probe.status === 0 ? probe.body : probe.status})`);
});

t.test('stop answers a scrape already in flight before it closes the connection', async (t) => {
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => (release = r));
  let entered: () => void = () => {};
  const inScrape = new Promise<void>((r) => (entered = r));
  const source = {
    contentType: 'text/plain; version=0.0.4; charset=utf-8',
    metrics: async (): Promise<string> => {
      entered();
      await gate;
      return 'nodelocal_last_words_total 7\n';
    },
  };
  const s = new OpsServer({ address: { host: HOST, port: 0 }, routes: ['metrics'], handlers: { metrics: source }, logger: silentLogger });
  await s.start();
  t.teardown(() => s.stop());
  const scrape = request(`${s.url}/metrics`).catch((err: Error) => ({ status: 0, headers: {}, body: err.message }));
  await inScrape;
  const stopped = s.stop();
  // The render finishes a moment after the stop began (a scrape of the real agent takes milliseconds).
  setTimeout(release, 50);
  const r = await scrape;
  await stopped;
  t.equal(r.status, 200, `the scrape in flight is answered (got: ${r.status === 0 ? r.body : r.status})`);
  t.equal(r.body, 'nodelocal_last_words_total 7\n');
  await t.rejects(request(`${s.url}/metrics`), /ECONNREFUSED/, 'and nothing new is accepted after stop');
});

t.test('nodelocal_upstream_healthy stays 0 or 1 across a reload that replaces an upstream with queries in flight', async (t) => {
  // Every reload builds new host resolvers under the same name ("host-resolvers"); the old ones stay listed
  // (retired) until their queries in flight finish, and the gauge sums series of identical labels: 1 + 1 = 2.
  // Anything reading it as "is it healthy" (== 0, == 1, a count of healthy upstreams) is misled meanwhile.
  const { SimDnsServer, staticHandler } = await import('../testkit/dns-server.js');
  const { startAgent } = await import('./helpers/agent.js');
  const { udpQuery } = await import('./helpers/dns-client.js');
  const { loadConfig } = await import('../src/config.js');
  const external = await SimDnsServer.start({ handler: staticHandler({ 'www.example.com': { A: ['192.0.2.1'] } }), faults: { latencyMs: 1_500 } });
  const agent = await startAgent('127.0.44.5', ['--upstream-nameservers', `127.0.0.1:${external.port}`, '--no-kube']);
  t.teardown(async () => {
    await agent.stop();
    await external.close();
  });
  const healthy = async (): Promise<number | undefined> => parseExposition(await agent.agent.metrics.metrics()).samples.get(key('nodelocal_upstream_healthy', { to: 'host-resolvers' }));
  t.equal(await healthy(), 1, 'before: one upstream, healthy');
  const answer = udpQuery(agent.target, 'www.example.com', { timeoutMs: 5_000 });
  for (let i = 0; i < 1000 && agent.agent.inflight === 0; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(agent.agent.inflight, 1, 'a query waits on the host resolvers');
  t.equal(agent.agent.reload(loadConfig(agent.argv, { env: {} }).config).applied, true, 'reloaded (same settings)');
  t.equal(await healthy(), 1, 'after the reload, while the replaced resolvers finish their query: still one healthy upstream');
  t.equal(rcodeOf(await answer), 0, 'the query in flight is answered');
});

t.test('a reload that drops upstream servers drops their series; a server kept keeps its series, continuous', async (t) => {
  // Every series of an upstream was kept for the life of the process: after the cluster DNS moved or a stub domain
  // went away, nodelocal_upstream_open_sockets, coredns_forward_* and the latency histograms of the old servers
  // stayed on /metrics at their last values (alerts and dashboards about servers no longer used), growing with each change.
  const { SimDnsServer, staticHandler } = await import('../testkit/dns-server.js');
  const { startAgent } = await import('./helpers/agent.js');
  const { udpQuery } = await import('./helpers/dns-client.js');
  const { loadConfig } = await import('../src/config.js');
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const clusterRecords = { 'web.default.svc.cluster.local': { A: ['10.96.1.10'] } };
  const [oldCluster, newCluster, external, stub] = await Promise.all([
    SimDnsServer.start({ handler: staticHandler(clusterRecords, { soaZone: 'cluster.local' }) }),
    SimDnsServer.start({ handler: staticHandler(clusterRecords, { soaZone: 'cluster.local' }) }),
    SimDnsServer.start({ handler: staticHandler({ 'www.example.com': { A: ['192.0.2.1'] } }) }),
    SimDnsServer.start({ handler: staticHandler({ 'db.corp.example': { A: ['192.0.2.2'] } }, { soaZone: 'corp.example' }) }),
  ]);
  const file = join(mkdtempSync(join(tmpdir(), 'nldns-series-')), 'agent.yaml');
  const write = (cluster: number, withStub: boolean): void => writeFileSync(file, [
    `upstreamAddr: "127.0.0.1:${cluster}"`, `upstreamNameservers: ["127.0.0.1:${external.port}"]`,
    ...(withStub ? ['stubDomains:', `  corp.example: ["127.0.0.1:${stub.port}"]`] : []), '',
  ].join('\n'));
  write(oldCluster.port, true);
  const agent = await startAgent('127.0.44.6', ['--config', file, '--no-kube']);
  t.teardown(async () => {
    await agent.stop();
    await Promise.all([oldCluster.close(), newCluster.close(), external.close(), stub.close()]);
  });
  for (const name of ['web.default.svc.cluster.local', 'www.example.com', 'db.corp.example']) t.equal(rcodeOf(await udpQuery(agent.target, name)), 0, name);
  const scrape = async (): Promise<Parsed> => parseExposition(await agent.agent.metrics.metrics());
  const withTo = (p: Parsed, to: string): string[] => [...p.samples.keys()].filter((k) => k.includes(`to="${to}"`));
  const before = await scrape();
  const oldTo = [`tcp://127.0.0.1:${oldCluster.port}`, `127.0.0.1:${oldCluster.port}`, 'stub:corp.example', `127.0.0.1:${stub.port}`];
  for (const to of oldTo) t.ok(withTo(before, to).length > 0, `series of ${to} before the reload`);
  const ext = key('coredns_forward_requests_total', { to: 'host-resolvers' });
  const extLatency = key('coredns_forward_request_duration_seconds_count', { to: `127.0.0.1:${external.port}`, rcode: 'NOERROR' });
  t.equal(before.samples.get(ext), 1, 'the host resolvers asked once');

  write(newCluster.port, false);
  t.equal(agent.agent.reload(loadConfig(agent.argv, { env: {} }).config).applied, true, 'reloaded: another cluster DNS, no stub domain');
  const after = await scrape();
  for (const to of oldTo) t.same(withTo(after, to), [], `no series of ${to} after the reload that dropped it`);
  t.equal(after.samples.get(ext), 1, 'the host resolvers, kept: their counter goes on from where it was');
  t.equal(after.samples.get(extLatency), before.samples.get(extLatency), 'and their server\'s latency histogram too');
  t.equal(rcodeOf(await udpQuery(agent.target, 'www.example.com', { type: 'AAAA' })), 0);
  t.equal(rcodeOf(await udpQuery(agent.target, 'web.default.svc.cluster.local', { type: 'AAAA' })), 0);
  const later = await scrape();
  t.equal(later.samples.get(ext), 2, 'and counts on');
  t.equal(later.samples.get(key('coredns_forward_requests_total', { to: `tcp://127.0.0.1:${newCluster.port}` })), 1, 'the new cluster DNS has series of its own');
  t.equal(later.samples.get(key('nodelocal_upstream_healthy', { to: `tcp://127.0.0.1:${newCluster.port}` })), 1);

  // And back: a server configured again starts afresh (a counter reset, which rate() handles), with no stale gauge.
  write(oldCluster.port, true);
  t.equal(agent.agent.reload(loadConfig(agent.argv, { env: {} }).config).applied, true, 'reloaded: the first settings again');
  const back = await scrape();
  t.same(withTo(back, `tcp://127.0.0.1:${newCluster.port}`), [], 'the second cluster DNS gone in its turn');
  t.equal(back.samples.get(key('coredns_forward_requests_total', { to: `tcp://127.0.0.1:${oldCluster.port}` })), 0, 'the first one back, from zero');
  t.equal(back.samples.get(key('nodelocal_upstream_open_sockets', { to: 'stub:corp.example' })), 0, 'the stub domain back, with no socket open yet');
});

t.test('bounded: a connection that never sends a byte is cut off at the header deadline, not held for the idle-socket timeout', async (t) => {
  // headersTimeout starts with a request's first byte: a connection that sends nothing at all keeps its slot
  // until the 30 s socket timeout. 32 such connections, renewed every 30 s, lock every probe out for the price
  // of 32 connects (no request, no byte).
  const s = await withServer(t, { serving: () => true }, ['health'], { headersTimeoutMs: 200, requestTimeoutMs: 200, checkIntervalMs: 50 });
  const sock = await connect(s.url);
  sock.on('error', () => {});
  // Read what comes: Node's own deadline check (every 50 ms here) may close it first with a 408, and a socket
  // holding unread data never emits 'end', so 'close' would not come however the server closed it.
  sock.resume();
  t.teardown(() => sock.destroy());
  t.ok(await closedWithin(sock, 5_000), 'closed by the server within the header deadline (plus checks), long before 30 s');
});

t.test('bounded: connections that have sent no request yet do not lock the kubelet\'s probe out', async (t) => {
  // OpsConnections makes room at a cap only by closing a connection in #idle, and a connection joins #idle only
  // once it has been answered. One that has sent nothing (or half a request) is never evicted: it holds its slot
  // until the 5 s header deadline, and its owner simply opens it again. The kubelet's probe of the node-local
  // address comes from that address itself (169.254.20.10 -> 169.254.20.10), which every hostNetwork process
  // connecting there shares: 8 silent connections from any of them fill that per-address cap, and 32 from four
  // pods fill the total; either way the probe is closed on accept, every time, and the agent is restarted.
  const s = await withServer(t, { serving: () => true }, ['health']);
  const u = new URL(s.url);
  const hogs: net.Socket[] = [];
  t.teardown(() => {
    for (const h of hogs) h.destroy();
  });
  const open = async (localAddress: string, n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      const h = net.connect({ host: u.hostname, port: Number(u.port), localAddress });
      h.on('error', () => {});
      hogs.push(h);
      await new Promise<void>((resolve) => {
        h.once('connect', () => resolve());
        h.once('close', () => resolve());
      });
    }
    // Accepts are taken in order: once a later connection (another address, closing) is answered, these were accepted.
    const marker = net.connect({ host: u.hostname, port: Number(u.port), localAddress: '127.0.0.9' });
    marker.on('error', () => {});
    await new Promise<void>((resolve) => {
      marker.once('connect', () => marker.write('GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
      marker.once('close', () => resolve());
      marker.resume();
    });
  };
  const probe = async (): Promise<string> => {
    const r = await request(`${s.url}/health`).catch((err: Error) => ({ status: 0, body: err.message }));
    return r.status === 0 ? r.body : String(r.status);
  };
  // The probe's own address (the test's requests leave from 127.0.0.1, as the kubelet's from the node-local IP).
  await open('127.0.0.1', OPS_HTTP_LIMITS.maxConnectionsPerPeer);
  t.equal(await probe(), '200', 'a probe from an address with silent connections open is answered');
  for (const h of hogs.splice(0)) h.destroy();
  // The total cap, from four other addresses (four pods).
  const per = OPS_HTTP_LIMITS.maxConnectionsPerPeer;
  for (let i = 0; i < OPS_HTTP_LIMITS.maxConnections / per; i++) await open(`127.0.0.${20 + i}`, per);
  t.equal(await probe(), '200', 'a probe while other addresses hold every slot with silent connections is answered');
});

t.test('bounded: connections whose clients do not read their answers do not lock the kubelet\'s probe out', async (t) => {
  // A connection is "being answered" from its request until its answer is handed to the kernel. A client that
  // asks for /metrics (or pipelines /health) and never reads leaves the answer stuck in the socket's buffer, so
  // it is never quiet and never evictable until the 30 s socket timeout: a few such connections from the node's
  // own address (which the kubelet's probe shares) close every probe on accept, renewed every 30 s.
  const big = 'x'.repeat(16 * 1024 * 1024);
  let renders = 0;
  const source = {
    contentType: 'text/plain; version=0.0.4; charset=utf-8',
    metrics: async (): Promise<string> => {
      renders++;
      return big;
    },
  };
  const s = await withServer(t, { serving: () => true, metrics: source }, ['metrics', 'health'], { maxConnectionsPerPeer: 2 });
  const hogs: net.Socket[] = [];
  t.teardown(() => {
    for (const h of hogs) h.destroy();
  });
  for (let i = 0; i < 2; i++) {
    const h = await connect(s.url);
    h.on('error', () => {});
    h.pause();
    h.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n');
    hogs.push(h);
  }
  for (let i = 0; i < 500 && renders === 0; i++) await new Promise((r) => setTimeout(r, 20));
  // Let the server fill both sockets' kernel buffers (16 MiB each cannot fit: the clients read nothing).
  await new Promise((r) => setTimeout(r, 300));
  const probe = await request(`${s.url}/health`).catch((err: Error) => ({ status: 0, body: err.message }));
  t.equal(probe.status, 200, `a probe from the same address is answered (got: ${probe.status === 0 ? probe.body : probe.status})`);
});

/** Families of a scrape whose series carry different sets of label names (le aside), as "name: {a,b} {a}". */
function mixedLabelSets(text: string): string[] {
  const labelSets = new Map<string, Set<string>>();
  for (const line of text.split('\n')) {
    const m = /^(nodelocal_\w+|coredns_\w+)(?:\{(.*)\})? \S+$/.exec(line);
    if (m === null) continue;
    const names = [...(m[2] ?? '').matchAll(/([a-zA-Z_]\w*)="/g)].map((l) => l[1]!).filter((n) => n !== 'le').sort().join(',');
    const base = m[1]!.replace(/_(bucket|sum|count)$/, '');
    (labelSets.get(base) ?? labelSets.set(base, new Set()).get(base)!).add(names);
  }
  return [...labelSets].filter(([, s]) => s.size > 1).map(([name, s]) => `${name}: {${[...s].join('} {')}}`);
}

t.test('a real agent\'s families each carry one set of label names and one help text (the registry warns of nothing)', async (t) => {
  // MetricsRegistry records a family given two help texts, or series with different label names (a sum() by a
  // label some series lack mixes totals with parts), in `warnings` "for a start-up log" that nothing logs. The
  // batched backend adds nodelocal_dropped_total{reason="oversize_query"|"stale_query"} beside the hit path's
  // nodelocal_dropped_total{server} (no reason), and nodelocal_coalesced_total{across="workers"} beside the plain
  // one; the HELP kept ("unreadable header, a response sent to us, or a source port of 0") then describes
  // neither stale nor oversize drops, and `sum by (reason)` shows the hit path's drops under no reason at all.
  const { startAgent } = await import('./helpers/agent.js');
  const agent = await startAgent('127.0.44.9', ['--io', 'batched', '--workers', '1', '--no-kube']);
  t.teardown(() => agent.stop());
  t.same(agent.agent.metrics.registry.warnings, [], 'no family with two help texts or two sets of label names');
  const text = await agent.agent.metrics.metrics();
  const mixed = mixedLabelSets(text);
  t.same(mixed, [], 'every series of a family has the same label names in a scrape');
});

t.test('after traffic (hits, misses, TCP, drops, NXDOMAIN), each family still has one set of label names, --io dgram and batched', async (t) => {
  // Series that appear only with traffic (a drop's reason, an rcode, a TCP listener's counters) are where a
  // family can gain a second label set that a scrape at start never shows.
  const { SimDnsServer, staticHandler } = await import('../testkit/dns-server.js');
  const { startAgent } = await import('./helpers/agent.js');
  const { udpQuery, udpExchange, tcpQuery } = await import('./helpers/dns-client.js');
  const external = await SimDnsServer.start({ handler: staticHandler({ 'www.example.com': { A: ['192.0.2.1'] } }) });
  t.teardown(() => external.close());
  for (const [i, io] of (['dgram', 'batched'] as const).entries()) {
    const host = `127.0.44.${20 + i}`;
    const agent = await startAgent(host, ['--io', io, ...(io === 'batched' ? ['--workers', '1'] : []), '--upstream-nameservers', `127.0.0.1:${external.port}`, '--no-kube']);
    t.teardown(() => agent.stop());
    for (let k = 0; k < 2; k++) {
      await udpQuery(agent.target, 'www.example.com', { timeoutMs: 3_000 });
      await udpQuery(agent.target, 'nothing.example.com', { timeoutMs: 3_000 });
      await tcpQuery(agent.target, 'www.example.com');
      await udpExchange(agent.target, Buffer.from([1, 2, 3]), 300);
    }
    const text = await agent.agent.metrics.metrics();
    const mixed = mixedLabelSets(text);
    t.same(mixed, [], `--io ${io}: every series of a family has the same label names after traffic`);
    t.same(agent.agent.metrics.registry.warnings, [], `--io ${io}: the registry warns of nothing`);
  }
});

t.test('a family the registry warns of is logged when the agent starts, not only kept in a list', async (t) => {
  const { Agent } = await import('../src/agent.js');
  const { loadConfig } = await import('../src/config.js');
  const { writeResolvConf } = await import('./helpers/agent.js');
  const argv = ['--listen', '127.0.44.11:15299', '--resolv-conf', writeResolvConf('nameserver 127.0.0.254\n'), '--metrics-listen-address', 'off', '--health-port', '0', '--io', 'dgram', '--no-kube'];
  const logs: Array<{ msg: string; warning?: unknown }> = [];
  const agent = new Agent(loadConfig(argv, { env: {} }).config, { logger: createLogger('info', (l) => logs.push(JSON.parse(l) as { msg: string; warning?: unknown })) });
  // A second help text for a family the agent publishes: what two schemas disagreeing looks like.
  agent.metrics.registry.addGauge('nodelocal_cache_bytes', 'Another meaning.', ['server'], () => []);
  await agent.start();
  t.teardown(() => agent.stop(1000));
  const warned = logs.filter((l) => l.msg === 'metric family inconsistent');
  t.equal(warned.length, 1, 'one warning logged');
  t.match(String(warned[0]?.warning), /nodelocal_cache_bytes: help "Another meaning\." differs/);
});
