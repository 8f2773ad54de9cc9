// Upstream transports against the simulated DNS server on loopback:
// resolv.conf parsing, the pipelined TCP pool (cluster DNS) and the host
// resolvers (UDP with TCP fallback and failover).
import { readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import dgram from 'node:dgram';
import net from 'node:net';
import t, { type Test } from 'tap';
import dnsPacket from 'dns-packet';
import type { DecodedPacket, Packet, StringAnswer } from 'dns-packet';
import { parseResolvConf } from '../src/upstream/resolv-conf.js';
import { TcpPool } from '../src/upstream/tcp-pool.js';
import { Fifo } from '../src/upstream/fifo.js';
import { tcpPoolCounters } from '../src/upstream/tcp-pool-counters.js';
import { HostResolvers, hostResolversCounters, type HostResolversCounter, type HostResolversOptions } from '../src/upstream/host-resolvers.js';
import { Counters } from '../src/stats/counters.js';
import type { Logger, LogFields } from '../src/log.js';
import type { Upstream, UpstreamExchange, UpstreamFailure } from '../src/upstream/types.js';
import { ManualClock, systemClock, type Clock } from '../src/clock.js';
import { FrameDecoder, frame } from '../src/dns/framing.js';
import { SimDnsServer, staticHandler, type SimContext, type SimHandler } from '../testkit/dns-server.js';
import { responseFlags } from '../testkit/static-handler.js';
import { loadConfig } from '../src/config.js';
import { buildRouting } from '../src/routing.js';
import { loadHostServers } from '../src/upstream/host-route.js';
import { ForwardDurations } from '../src/upstream/forward-durations.js';
import { PROBE_COUNTERS } from '../src/upstream/probe.js';
import { parseQuery } from '../src/dns/query.js';
import { silentLogger } from '../src/log.js';
import { questionMessage, upstreamQuery } from '../src/dns/build.js';
import { QType } from '../src/dns/constants.js';
import { nameToWire } from '../src/dns/name.js';

// ---------------------------------------------------------------- helpers

// A bound against hangs, not a speed: the file's network-namespace cases take seconds each, and the whole file ran
// 115 s of the default 120 under a loaded machine (two files at once on two cores).
t.setTimeout(300_000);

interface Outcome {
  answer: DecodedPacket | null;
  reason: UpstreamFailure | 'never completed' | null;
  /** resolve + reject calls: must end at exactly 1. */
  calls: number;
  /** Completed inside send() itself. */
  sync: boolean;
}

function queryBytes(name: string, type: 'A' | 'AAAA' = 'A'): Buffer {
  const q = dnsPacket.encode({ type: 'query', id: 0, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type, class: 'IN' }] });
  // The transport must write its own id; put garbage here to make sure it does not rely on ours.
  q.writeUInt16BE(0xbeef, 0);
  return q;
}

/** Sends one exchange; the promise settles on its first completion (or on a hang, which fails the test). */
function ask(
  up: Upstream,
  name: string,
  opts: { type?: 'A' | 'AAAA'; timeoutMs?: number; clock?: Clock } = {},
): { outcome: Outcome; done: Promise<Outcome> } {
  const timeoutMs = opts.timeoutMs ?? 1000;
  const outcome: Outcome = { answer: null, reason: null, calls: 0, sync: false };
  let inSend = true;
  let finish: (o: Outcome) => void = () => {};
  const done = new Promise<Outcome>((resolve) => {
    finish = resolve;
  });
  // Ref'd on purpose: the transports' sweep timers are unref'd, and a test waiting on a deadline must not let the process exit.
  const hang = setTimeout(() => {
    outcome.reason = 'never completed';
    finish(outcome);
  }, timeoutMs + 3000);
  const complete = (): void => {
    outcome.calls++;
    if (outcome.calls > 1) return;
    outcome.sync = inSend;
    clearTimeout(hang);
    finish(outcome);
  };
  up.send({
    query: queryBytes(name, opts.type ?? 'A'),
    deadline: (opts.clock ?? systemClock).now() + timeoutMs,
    resolve(answer: Buffer) {
      outcome.answer = dnsPacket.decode(answer);
      complete();
    },
    reject(reason: UpstreamFailure) {
      outcome.reason = reason;
      complete();
    },
  });
  inSend = false;
  return { outcome, done };
}

function addresses(p: DecodedPacket | null): string[] {
  return (p?.answers ?? []).filter((a): a is StringAnswer => a.type === 'A' || a.type === 'AAAA').map((a) => a.data);
}

function rcodeOf(p: DecodedPacket | null): string | undefined {
  return (p as (DecodedPacket & { rcode?: string }) | null)?.rcode;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls a condition a bounded number of times (the state it waits for is reached asynchronously). */
async function until(cond: () => boolean, tries = 100, everyMs = 20): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    if (cond()) return true;
    await sleep(everyMs);
  }
  return cond();
}

/** name-i.test -> 10.0.(i>>8).(i&255) */
function manyNames(n: number): { names: string[]; records: Record<string, { A: string[] }> } {
  const names: string[] = [];
  const records: Record<string, { A: string[] }> = {};
  for (let i = 0; i < n; i++) {
    const name = `name-${i}.test`;
    names.push(name);
    records[name] = { A: [`10.0.${i >> 8}.${i & 255}`] };
  }
  return { names, records };
}

const base = staticHandler({ 'www.example.com': { A: ['192.0.2.1'], AAAA: ['2001:db8::1'] } }, { soaZone: 'example.com' });

// ---------------------------------------------------------------- resolv.conf


/** The routing `args` give (real counters, the system clock), its upstreams closed at teardown. */
function routingOf(t: Test, args: string[], previous: ReturnType<typeof buildRouting> | null = null): ReturnType<typeof buildRouting> {
  const { config } = loadConfig(args, { env: {} });
  // With tls:// upstreams no host resolvers (as the agent's hostServers()).
  const host = config.upstreamTls.length > 0
    ? { servers: [], source: 'tls', attemptMs: undefined, attempts: 1, rotate: false, warnings: [] }
    : loadHostServers(config.upstreamNameservers, config.resolvConf, () => '');
  const counters = {
    pool: () => new Counters(tcpPoolCounters), host: () => new Counters(hostResolversCounters), durations: (to: string) => new ForwardDurations(to), probe: () => new Counters(PROBE_COUNTERS),
  };
  const routing = buildRouting(config, host, { clock: systemClock, logger: silentLogger, view: null, counters }, previous);
  t.teardown(() => Promise.all(routing.upstreams.map((u) => u.close())));
  return routing;
}

/** A query for db.corp.example A and its route, which must be the corp.example stub domain's. */
function stubRoute(t: Test, routing: ReturnType<typeof buildRouting>): { msg: Buffer; route: ReturnType<ReturnType<typeof buildRouting>['router']['route']> } {
  const msg = dnsPacket.encode({ type: 'query', id: 0, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: 'db.corp.example', type: 'A', class: 'IN' }] });
  const route = routing.router.route(parseQuery(msg).key);
  t.equal(route.upstream.name, 'stub:corp.example');
  return { msg, route };
}

t.test('parseResolvConf: a kubelet-style file', async (t) => {
  const rc = parseResolvConf(
    'nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n',
  );
  t.same(rc.nameservers, [{ host: '10.96.0.10', port: 53 }]);
  t.same(rc.search, ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local']);
  t.same(rc.options, { timeoutMs: undefined, attempts: undefined, rotate: false, ndots: 5 });
  t.same(rc.warnings, []);
});

t.test('parseResolvConf: comments, last search/domain wins, IPv6 with zone, CRLF', async (t) => {
  const rc = parseResolvConf(
    [
      '# generated',
      '; another comment',
      'search a.example b.example',
      'domain corp.example',
      'nameserver 192.0.2.53 # trailing comment',
      'nameserver fe80::1%eth0',
      'nameserver 2001:db8::53\r',
      '',
    ].join('\n'),
  );
  t.same(rc.search, ['corp.example']);
  t.same(rc.nameservers.map((n) => n.host), ['192.0.2.53', 'fe80::1%eth0', '2001:db8::53']);
  t.ok(rc.nameservers.every((n) => n.port === 53));
  t.same(rc.warnings, []);
  t.same(parseResolvConf('domain x.example\nsearch y.example z.example\n').search, ['y.example', 'z.example']);
});

t.test('parseResolvConf: no inline comments but at the start of a line, as glibc reads it (res_init.c)', async (t) => {
  // glibc cuts a nameserver's address at whitespace only: "10.0.0.1;x" fails inet_aton_exact and the line is skipped;
  // res_setoptions reads every blank-separated word of an options line, after a "#" too; a search line is split at blanks.
  const rc = parseResolvConf(['nameserver 10.0.0.1;x', 'nameserver 10.0.0.2#y', 'nameserver 10.0.0.3 # here a comment', 'options ndots:2 # timeout:5', 'search a.example ; b.example', ''].join('\n'));
  t.same(rc.nameservers.map((n) => n.host), ['10.0.0.3'], 'an address with ";" or "#" in it is no address');
  t.match(rc.warnings.join('\n'), /10\.0\.0\.1;x[^\n]*skipped[\s\S]*10\.0\.0\.2#y[^\n]*skipped/);
  t.equal(rc.options.ndots, 2);
  t.equal(rc.options.timeoutMs, 5000, 'an option after "#" on an options line is applied');
  t.same(rc.search, ['a.example', ';', 'b.example']);
});

t.test('parseResolvConf: options clamp like glibc and accumulate', async (t) => {
  const rc = parseResolvConf('options timeout:60 attempts:9\noptions ndots:20 rotate edns0\nnameserver 127.0.0.1\n');
  t.equal(rc.options.timeoutMs, 30_000);
  t.equal(rc.options.attempts, 5);
  t.equal(rc.options.ndots, 15);
  t.equal(rc.options.rotate, true);
  t.equal(rc.warnings.length, 3, 'one warning per clamp, none for edns0');
  const low = parseResolvConf('options timeout:0 attempts:0 ndots:0\n');
  t.equal(low.options.timeoutMs, 1000, 'glibc waits at least 1 s');
  t.equal(low.options.attempts, 1);
  t.equal(low.options.ndots, 0);
  const bad = parseResolvConf('options ndots:x frobnicate timeout:2\n');
  t.equal(bad.options.ndots, undefined);
  t.equal(bad.options.timeoutMs, 2000);
  t.equal(bad.warnings.length, 2);
});

t.test('parseResolvConf: invalid addresses, too many servers, unknown lines', async (t) => {
  const rc = parseResolvConf(
    [
      'nameserver 10.0.0.1',
      'nameserver 10.0.0.256',
      'nameserver dns.example',
      'nameserver 10.0.0.2',
      'nameserver 10.0.0.3',
      'nameserver 10.0.0.4',
      'lookup file bind',
      '  nameserver 10.0.0.9',
      'nameserver',
    ].join('\n'),
  );
  t.same(rc.nameservers.map((n) => n.host), ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4'], 'all valid ones kept, beyond glibc MAXNS too');
  const w = rc.warnings.join('\n');
  t.match(w, /10\.0\.0\.256/);
  t.match(w, /dns\.example/);
  t.match(w, /lookup file bind/);
  t.match(w, /nameserver 10\.0\.0\.9/, 'indented line ignored, as glibc does');
  t.match(w, /first 3/);
  t.equal(rc.warnings.length, 6);
});

t.test('parseResolvConf: "more than 3 nameservers" counts distinct servers, not lines (duplicates are kept once)', async (t) => {
  const ns = (...hosts: string[]) => hosts.map((h) => `nameserver ${h}`).join('\n');
  // One server on four lines is one server, and glibc's first 3 lines hold it: the warning was about lines, and false.
  const same = parseResolvConf(ns('10.0.0.1', '10.0.0.1', '10.0.0.1', '10.0.0.1'));
  t.same(same.nameservers.map((n) => n.host), ['10.0.0.1']);
  t.same(same.warnings, [], 'one server four times: nothing to say');
  t.same(parseResolvConf(ns('10.0.0.1', '10.0.0.2', '10.0.0.1', '10.0.0.2', '10.0.0.3')).warnings.length, 1, 'a third server glibc never reaches (lines 1-3 hold two) is named');
  t.same(parseResolvConf(ns('10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.2', '::1', '0:0::1')).warnings, [
    '4 distinct nameservers: glibc uses only the first 3 nameserver lines, so not ::1; all are used here',
  ], 'four distinct (::1 in two spellings is one): warned, naming the one glibc leaves out');
  t.same(parseResolvConf(ns('10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.3', '10.0.0.1')).warnings, [], 'three distinct on five lines: glibc uses them all');
});

// ---------------------------------------------------------------- counter schemas

t.test('upstream counter schemas: one help, type and label set per metric name, across both transports', async (t) => {
  const byName = new Map<string, { help: string; type: string; labelKeys: string }>();
  for (const schema of [tcpPoolCounters, hostResolversCounters]) {
    const seen = new Set<string>();
    for (const d of schema.defs) {
      const labels = JSON.stringify(d.labels ?? {});
      const key = `${d.name} ${labels}`;
      t.notOk(seen.has(key), `${key}: one slot per name and labels`);
      seen.add(key);
      const shape = { help: d.help, type: d.type ?? 'counter', labelKeys: Object.keys(d.labels ?? {}).sort().join(',') };
      const prev = byName.get(d.name);
      if (prev === undefined) byName.set(d.name, shape);
      else t.same(shape, prev, d.name);
      t.match(d.name, /^(coredns_forward|nodelocal_upstream)_[a-z_]+$/);
      if ((d.type ?? 'counter') === 'counter') t.match(d.name, /_total$/, `${d.name}: counters end in _total`);
    }
  }
});

// ---------------------------------------------------------------- TCP pool

t.test('TcpPool: many queries pipelined on one connection, ids unique on it', async (t) => {
  const { names, records } = manyNames(300);
  const zone = staticHandler(records);
  const idsByConn = new Map<number, number[]>();
  const handler: SimHandler = (q: Packet, ctx: SimContext) => {
    const ids = idsByConn.get(ctx.remotePort) ?? [];
    ids.push(q.id ?? -1);
    idsByConn.set(ctx.remotePort, ids);
    return zone(q, ctx);
  };
  // Latency keeps all 300 in flight at once, so id uniqueness is tested while they coexist.
  const sim = await SimDnsServer.start({ handler, udp: false, faults: { latencyMs: 50 } });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1 });
  t.teardown(() => pool.close());

  const results = await Promise.all(names.map((n) => ask(pool, n, { timeoutMs: 5000 }).done));
  t.equal(sim.stats.tcpConnections, 1);
  t.equal(sim.stats.tcpQueries, 300);
  for (let i = 0; i < names.length; i++) {
    const r = results[i]!;
    if (r.reason !== null || r.calls !== 1) t.fail(`query ${i}: ${String(r.reason)} calls=${r.calls}`);
    t.same(addresses(r.answer), [records[names[i]!]!.A[0]], names[i]!);
  }
  t.equal(pool.counters.get('sent'), 300);
  t.equal(pool.counters.get('answered'), 300);
  t.equal(pool.counters.get('responsesNoError'), 300, 'answers counted by rcode');
  t.equal(pool.counters.get('mismatched'), 0);
  t.equal(idsByConn.size, 1);
  const ids = [...idsByConn.values()][0]!;
  t.equal(new Set(ids).size, 300, 'no id reused among queries in flight together');
  t.equal(pool.inFlight, 0);
  t.equal(pool.openConnections, 1);
});

t.test('TcpPool: the queries of one event-loop turn leave in one write per connection, each answered under its own id', async (t) => {
  const { names, records } = manyNames(60);
  const sim = await SimDnsServer.start({ handler: staticHandler(records), udp: false, faults: { latencyMs: 20 } });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1 });
  t.teardown(() => pool.close());
  // Count write() calls on sockets to this server (the pool's only); restored at the end of the test.
  const proto = net.Socket.prototype;
  const original = proto.write;
  let writes = 0;
  proto.write = function (this: net.Socket, ...args: Parameters<typeof original>): boolean {
    if (this.remotePort === sim.port) writes++;
    return original.apply(this, args);
  } as typeof original;
  t.teardown(() => {
    proto.write = original;
  });

  // Turn 1, while connecting: the queue goes out on connect, in one write.
  const first = names.slice(0, 20).map((n) => ask(pool, n, { timeoutMs: 5000 }));
  t.ok(await until(() => pool.openConnections === 1), 'connected');
  t.ok(await until(() => writes > 0), 'the queued queries were written');
  t.equal(writes, 1, 'twenty queued queries, one write');
  // Turn 2, on the open connection: forty queries in one synchronous loop, one write.
  const second = names.slice(20).map((n) => ask(pool, n, { timeoutMs: 5000 }));
  t.equal(writes, 1, 'nothing written inside send()');
  t.ok(await until(() => writes > 1), 'flushed after the turn');
  await sleep(5);
  t.equal(writes, 2, 'forty queries of one turn, one write');
  const results = await Promise.all([...first, ...second].map((x) => x.done));
  for (let i = 0; i < names.length; i++) {
    const r = results[i]!;
    if (r.reason !== null || r.calls !== 1) t.fail(`query ${i}: ${String(r.reason)} calls=${r.calls}`);
    t.same(addresses(r.answer), [records[names[i]!]!.A[0]], names[i]!);
  }
  t.equal(sim.stats.tcpQueries, 60);
  t.equal(pool.counters.get('mismatched'), 0);
  // The caller's buffer is read, never written (the id goes into the staging copy).
  const mine = queryBytes(names[0]!);
  const got = await new Promise<Buffer | UpstreamFailure>((resolve) => {
    pool.send({ query: mine, deadline: systemClock.now() + 5000, resolve, reject: resolve });
  });
  t.ok(Buffer.isBuffer(got), 'answered');
  t.equal(mine.readUInt16BE(0), 0xbeef, 'the caller\'s query buffer is untouched');
});

t.test('TcpPool: answers out of order are matched to their queries', async (t) => {
  const { names, records } = manyNames(20);
  const zone = staticHandler(records);
  // A barrier: nothing is answered until all 20 queries are in, so the reversal covers all of them.
  let arrived = 0;
  let release: () => void = () => {};
  const all = new Promise<void>((r) => {
    release = r;
  });
  const handler: SimHandler = async (q, ctx) => {
    if (++arrived === names.length) release();
    await all;
    return zone(q, ctx);
  };
  const sim = await SimDnsServer.start({ handler, udp: false, faults: { reorderTcp: true } });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1 });
  t.teardown(() => pool.close());

  const order: number[] = [];
  const results = await Promise.all(
    names.map((n, i) =>
      ask(pool, n, { timeoutMs: 5000 }).done.then((r) => {
        order.push(i);
        return r;
      }),
    ),
  );
  for (let i = 0; i < names.length; i++) t.same(addresses(results[i]!.answer), records[names[i]!]!.A, names[i]!);
  t.same(order, names.map((_, i) => names.length - 1 - i), 'answers arrived (and were accepted) in reverse order');
  t.equal(sim.stats.tcpConnections, 1);
});

t.test('TcpPool: server closes a connection with queries in flight; they are retried on a new one', async (t) => {
  const { names, records } = manyNames(8);
  const sim = await SimDnsServer.start({ handler: staticHandler(records), udp: false, faults: { closeAfterQueries: 5 } });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1 });
  t.teardown(() => pool.close());

  // All 8 are written at once on connect: the server answers 4, closes on the 5th, ignores the rest.
  const results = await Promise.all(names.map((n) => ask(pool, n, { timeoutMs: 3000 }).done));
  for (let i = 0; i < names.length; i++) {
    t.equal(results[i]!.reason, null, names[i]!);
    t.same(addresses(results[i]!.answer), records[names[i]!]!.A);
  }
  t.equal(sim.stats.tcpConnections, 2);
  t.equal(pool.counters.get('retried'), 4);
  t.equal(pool.counters.get('reconnects'), 1);
  t.equal(pool.counters.get('networkErrors'), 0);
});

t.test('TcpPool: no answer -> timeout at the deadline', async (t) => {
  const sim = await SimDnsServer.start({ handler: base, udp: false, faults: { dropAll: true } });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port } });
  t.teardown(() => pool.close());
  const r = await ask(pool, 'www.example.com', { timeoutMs: 300 }).done;
  t.equal(r.reason, 'timeout');
  t.equal(r.calls, 1);
  t.equal(pool.counters.get('timeouts'), 1);
  t.equal(pool.inFlight, 0);
  t.equal(sim.stats.tcpQueries, 1);
});

t.test('TcpPool: a full queue rejects with overloaded at once', async (t) => {
  const sim = await SimDnsServer.start({ handler: base, udp: false, faults: { dropAll: true } });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1, maxInFlightPerConnection: 2, maxQueued: 3 });
  t.teardown(() => pool.close());
  // Nothing is connected yet, so all go to the queue: 3 fit, 3 do not.
  const asks = Array.from({ length: 6 }, () => ask(pool, 'www.example.com', { timeoutMs: 300 }));
  t.same(asks.map((a) => a.outcome.reason), [null, null, null, 'overloaded', 'overloaded', 'overloaded']);
  t.ok(asks.slice(3).every((a) => a.outcome.sync), 'rejected inside send()');
  t.equal(pool.queued, 3);
  t.ok(await until(() => pool.inFlight === 2), 'two sent once connected, the cap holds the third back');
  t.equal(pool.queued, 1);
  const rest = await Promise.all(asks.slice(0, 3).map((a) => a.done));
  t.same(rest.map((r) => r.reason), ['timeout', 'timeout', 'timeout']);
  t.equal(pool.counters.get('overloaded'), 3);
  t.equal(pool.counters.get('timeouts'), 3);
  // The third may still go out once the first two time out (its own deadline is a sweep away): never more than that.
  t.ok(sim.stats.tcpQueries >= 2 && sim.stats.tcpQueries <= 3, `${sim.stats.tcpQueries} sent: the overloaded three never were`);
});

t.test('TcpPool: a job cancelled while queued leaves the queue at once (nodelocal_upstream_queued, room for the next)', async (t) => {
  const sim = await SimDnsServer.start({ handler: base, udp: false, faults: { dropAll: true } });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1, maxQueued: 2 });
  t.teardown(() => pool.close());
  const failures: string[] = [];
  const exchange = (): UpstreamExchange => ({
    query: queryBytes('www.example.com', 'A'), deadline: Date.now() + 300, resolve: () => {}, reject: (r) => void failures.push(r),
  });
  // Nothing is connected yet: both wait in the queue.
  const first = pool.send(exchange());
  pool.send(exchange());
  t.equal(pool.queued, 2);
  pool.cancel(first);
  t.equal(pool.queued, 1, 'the cancelled job no longer counts as queued');
  pool.send(exchange());
  t.same(failures, [], 'and its room takes the next job: none refused as overloaded');
  t.equal(pool.queued, 2);
});

t.test('TcpPool: cancelling a queued job does not walk the queue (DNS over TLS cancels the other servers\' tries on every answer), and it is never sent', async (t) => {
  // Each cancel went through the whole queue (48 us at 4,096 queued): a burst of answers against a full queue at
  // another server was quadratic.
  const sim = await SimDnsServer.start({ handler: base, udp: false });
  t.teardown(() => sim.close());
  // Never stalled: a loaded machine's slow answers must not move queries to another connection (sent twice, reordered).
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1, maxQueued: 1000, stallMs: null });
  t.teardown(() => pool.close());
  const answered: number[] = [];
  const failed: string[] = [];
  // Nothing is connected yet: all wait in the queue.
  const jobs = Array.from({ length: 1000 }, (_, i) => pool.send({
    query: queryBytes(`q${i}.example.com`, 'A'), deadline: Date.now() + 20_000, resolve: () => void answered.push(i), reject: (r) => void failed.push(r),
  }));
  t.equal(pool.queued, 1000);
  const shift = Fifo.prototype.shift;
  let visited = 0;
  Fifo.prototype.shift = function <T>(this: Fifo<T>): T | undefined {
    visited++;
    return shift.call(this) as T | undefined;
  };
  try {
    pool.cancel(jobs[500]!);
    pool.cancel(jobs[0]!);
  } finally {
    Fifo.prototype.shift = shift;
  }
  t.equal(visited, 0, 'no queued job visited');
  t.equal(pool.queued, 998, 'both no longer count as queued');
  t.ok(await until(() => answered.length + failed.length === 998, 1000), 'the others are answered');
  t.same(failed, []);
  t.notOk(answered.includes(500) || answered.includes(0), 'the cancelled ones never complete');
  t.same(answered.slice(0, 3), [1, 2, 3], 'in the order queued');
  t.equal(sim.stats.tcpQueries, 998, 'and were never sent');
});

t.test('TcpPool: rotation after N queries moves to a new connection', async (t) => {
  const sim = await SimDnsServer.start({ handler: base, udp: false });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1, rotateAfterQueries: 5 });
  t.teardown(() => pool.close());
  for (let i = 0; i < 12; i++) {
    const r = await ask(pool, 'www.example.com').done;
    t.same(addresses(r.answer), ['192.0.2.1']);
  }
  t.equal(pool.counters.get('rotations'), 2);
  t.equal(sim.stats.tcpConnections, 3);
  t.ok(await until(() => sim.openTcpConnections === 1), 'drained connections were closed');
  t.equal(pool.openConnections, 1);
});

t.test('TcpPool: an answer with the wrong question is dropped and counted', async (t) => {
  // The server mixes up its pipelined answers: "evil.test" gets an answer about another name under the right id.
  const handler: SimHandler = (q, ctx) => {
    if (q.questions?.[0]?.name === 'evil.test') return { questions: [{ name: 'victim.test', type: 'A', class: 'IN' }], answers: [{ type: 'A', name: 'victim.test', ttl: 60, data: '6.6.6.6' }] };
    return base(q, ctx);
  };
  const sim = await SimDnsServer.start({ handler, udp: false });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1 });
  t.teardown(() => pool.close());
  const [evil, good] = await Promise.all([ask(pool, 'evil.test', { timeoutMs: 300 }).done, ask(pool, 'www.example.com', { timeoutMs: 300 }).done]);
  t.equal(evil!.reason, 'timeout');
  t.equal(evil!.answer, null);
  t.same(addresses(good!.answer), ['192.0.2.1'], 'the connection stays usable');
  t.equal(pool.counters.get('mismatched'), 1);
  t.equal(pool.counters.get('answered'), 1);
});

t.test('TcpPool: rotation by age (ManualClock)', async (t) => {
  const sim = await SimDnsServer.start({ handler: base, udp: false });
  t.teardown(() => sim.close());
  const clock = new ManualClock();
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1, rotateAfterMs: 60_000, clock });
  t.teardown(() => pool.close());
  t.same(addresses((await ask(pool, 'www.example.com', { clock }).done).answer), ['192.0.2.1']);
  clock.advance(59_000);
  t.same(addresses((await ask(pool, 'www.example.com', { clock }).done).answer), ['192.0.2.1']);
  t.equal(sim.stats.tcpConnections, 1, 'young connection reused');
  clock.advance(1_000);
  t.same(addresses((await ask(pool, 'www.example.com', { clock }).done).answer), ['192.0.2.1']);
  t.equal(sim.stats.tcpConnections, 2, 'old connection drained, new one opened');
  t.equal(pool.counters.get('rotations'), 1);
  // The drained connection is closed by the pool's sweep, which runs as the (manual) clock moves.
  t.ok(await until(() => {
    clock.advance(50);
    return sim.openTcpConnections === 1;
  }));
});

t.test('TcpPool: server down, then back: fails, backs off, recovers', async (t) => {
  const sim = await SimDnsServer.start({ handler: base, udp: false });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1 });
  t.teardown(() => pool.close());
  t.same(addresses((await ask(pool, 'www.example.com').done).answer), ['192.0.2.1']);

  await sim.stop();
  // A deadline the test never waits out: failing is only possible by failing fast.
  const down = await ask(pool, 'www.example.com', { timeoutMs: 60_000 }).done;
  t.equal(down.reason, 'network', 'refused reconnect: failed at once, not at the deadline');
  t.ok(pool.counters.get('connectFailures') >= 1);
  t.equal(pool.openConnections, 0);
  const during = ask(pool, 'www.example.com', { timeoutMs: 60_000 });
  t.equal((await during.done).reason, 'network', 'while backing off with nothing open: failed at once');

  await sim.restart();
  let up: Awaited<ReturnType<typeof ask>['done']> | null = null;
  // Backoff is at most 5 s: ask a bounded number of times until a reconnect succeeds.
  for (let i = 0; i < 60; i++) {
    up = await ask(pool, 'www.example.com', { timeoutMs: 2000 }).done;
    if (up.answer !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.same(addresses(up!.answer), ['192.0.2.1'], 'answered once the backoff lets it reconnect');
  t.ok(pool.counters.get('reconnects') >= 1);
});

/** A socket that starts connecting to `to` only after `ms`: a pool's connect that lands after whatever the test does first. */
function laterConnect(t: Test, to: { host: string; port: number }, ms: number): net.Socket {
  const s = new net.Socket();
  const timer = setTimeout(() => s.connect({ host: to.host, port: to.port }), ms);
  t.teardown(() => clearTimeout(timer));
  return s;
}

/** A loopback port nothing listens on (a stale endpoint): a connect to it is refused. */
async function refusedPort(): Promise<number> {
  const dead = net.createServer();
  await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', () => resolve()));
  const port = (dead.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => dead.close(() => resolve()));
  return port;
}

t.test('TcpPool: a refused connect while another connect to the same address is still under way does not fail the queued queries', async (t) => {
  // A ClusterIP fronts several kube-dns pods and each connect may land on another one: a stale endpoint (a pod just
  // deleted, its IP not listening) refuses while the pool's other connect is on its way to a live pod. The pool
  // declares the server unreachable as soon as a connect fails with nothing *open* (tcp-reachability.ts lost()),
  // ignoring the connect still in progress: everything queued is failed 'network' at once (SERVFAIL, or the view),
  // the health goes failing, and a moment later the other connect succeeds and would have answered them all.
  const sim = await SimDnsServer.start({ handler: base, udp: false });
  t.teardown(() => sim.close());
  const deadPort = await refusedPort();
  let connects = 0;
  // The first connect lands on the stale endpoint (refused at once); the second on a live pod a little later.
  const connect = (): net.Socket => (++connects === 1 ? net.connect({ host: '127.0.0.1', port: deadPort }) : laterConnect(t, sim, 200));
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 2, connect });
  t.teardown(() => pool.abort());
  const q = ask(pool, 'www.example.com', { timeoutMs: 3000 });
  t.equal(connects, 2, 'both connects started for the first query');
  const r = await q.done;
  t.equal(r.reason, null, 'answered on the connection that did connect, not failed while it was still connecting');
  t.same(addresses(r.answer), ['192.0.2.1']);
  t.equal(pool.counters.get('networkErrors'), 0, 'no network error for a server that answers');
});

t.test('TcpPool: an answer clears a connect backoff left by another connection\'s refused connect', async (t) => {
  // answered() reset the backoff step but not the time before which no connect may start: one refused connect (a
  // stale endpoint) beside a connection that answers still held back the next connect, here a rotation's
  // replacement, by up to the 5 s backoff cap while queries waited in the queue. The clock stands still: only a
  // connect allowed at once starts.
  const clock = new ManualClock();
  const sim = await SimDnsServer.start({ handler: base, udp: false });
  t.teardown(() => sim.close());
  const deadPort = await refusedPort();
  let connects = 0;
  // The first connection opens a little later, so the second's refusal comes before its answer.
  const connect = (): net.Socket => {
    connects++;
    if (connects === 1) return laterConnect(t, sim, 100);
    return net.connect({ host: '127.0.0.1', port: connects === 2 ? deadPort : sim.port });
  };
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 2, rotateAfterQueries: 1, connect, clock });
  t.teardown(() => pool.abort());
  const first = await ask(pool, 'www.example.com', { clock, timeoutMs: 3000 }).done;
  t.equal(first.reason, null, 'the first connection answers (and is rotated after it)');
  t.equal(pool.counters.get('connectFailures'), 1, 'the other connect was refused meanwhile');
  const second = ask(pool, 'www.example.com', { clock, timeoutMs: 3000 });
  t.ok(connects > 2, `the replacement connect starts at once (${connects} connects)`);
  clock.advance(200);
  const r = await second.done;
  t.equal(r.reason, null, 'answered');
});

t.test('TcpPool: close() rejects queued, lets in-flight finish, refuses new', async (t) => {
  const sim = await SimDnsServer.start({ handler: base, udp: false, faults: { latencyMs: 150 } });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1 });
  const inflight = ask(pool, 'www.example.com', { timeoutMs: 3000 });
  t.ok(await until(() => sim.stats.tcpQueries === 1), 'query reached the server');
  const queuedBehindClose = ask(pool, 'www.example.com');
  const closing = pool.close();
  t.equal(queuedBehindClose.outcome.reason, null, 'sent before close: on the open connection, not queued');
  const after = ask(pool, 'www.example.com');
  t.equal(after.outcome.reason, 'closed');
  t.ok(after.outcome.sync);
  t.same(addresses((await inflight.done).answer), ['192.0.2.1']);
  t.same(addresses((await queuedBehindClose.done).answer), ['192.0.2.1']);
  await closing;
  t.equal(pool.openConnections, 0);
  t.ok(await until(() => sim.openTcpConnections === 0));

  // Before any connection is open everything is queued, so close() rejects it.
  const pool2 = new TcpPool({ server: { host: sim.host, port: sim.port } });
  const q = ask(pool2, 'www.example.com');
  await pool2.close();
  t.equal((await q.done).reason, 'closed');
});

/**
 * A healthy TCP DNS server that, like CoreDNS (its first read waits `read` of the timeouts plugin, 3 s, then
 * the connection is closed), closes on command the connections on which no query has arrived.
 */
async function idleClosingServer(t: Test): Promise<{ port: number; accepted: () => number; unused: () => number; closeUnused: () => number }> {
  const conns = new Map<net.Socket, number>();
  let accepted = 0;
  const server = net.createServer((s) => {
    accepted++;
    conns.set(s, 0);
    s.on('error', () => {});
    s.on('close', () => conns.delete(s));
    const dec = new FrameDecoder((f) => {
      conns.set(s, (conns.get(s) ?? 0) + 1);
      const q = dnsPacket.decode(Buffer.from(f));
      const question = q.questions![0]!;
      const answers = question.type === 'A' ? [{ type: 'A' as const, name: question.name, ttl: 60, class: 'IN' as const, data: '192.0.2.1' }] : [];
      s.write(frame(dnsPacket.encode({ type: 'response', id: q.id ?? 0, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE, questions: [question], answers })));
    });
    s.on('data', (c: Buffer) => dec.push(c));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => {
    for (const s of conns.keys()) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    accepted: () => accepted,
    unused: () => [...conns.values()].filter((queries) => queries === 0).length,
    closeUnused: () => {
      let n = 0;
      for (const [s, queries] of conns) {
        if (queries === 0) {
          s.end();
          n++;
        }
      }
      return n;
    },
  };
}

t.test('TcpPool: a healthy server closing a connection we never used does not hold back the next connect', async (t) => {
  // A pod's A and AAAA arrive together: the second finds the first connection busy and opens the second one, but
  // both go out on the first (the second is still connecting). On a quiet node the second then carries nothing
  // until the server's first-read timeout closes it. The pool counts that as "accepted and dropped before
  // answering" (tcp-reachability.ts lost(): c.answered === 0) and backs off, doubling each time, never reset while
  // the first connection lives on. When that one rotates, the replacement may not connect for up to 5 s.
  const server = await idleClosingServer(t);
  const clock = new ManualClock();
  const rotateAfterMs = 7 * 6000 + 1;
  const pool = new TcpPool({ server: { host: '127.0.0.1', port: server.port }, connections: 2, rotateAfterMs, clock });
  t.teardown(() => pool.abort());
  for (let round = 0; round < 8; round++) {
    if (round > 0) clock.advance(6000); // past any backoff (at most 5 s): each round may connect again
    const pair = [ask(pool, 'www.example.com', { clock, timeoutMs: 2000 }), ask(pool, 'www.example.com', { type: 'AAAA', clock, timeoutMs: 2000 })];
    const got = await Promise.all(pair.map((p) => p.done));
    t.same(got.map((r) => r.reason), [null, null], `round ${round}: both answered`);
    t.ok(await until(() => pool.openConnections === 2 && server.unused() === 1), `round ${round}: the second connection opened, unused`);
    t.equal(server.closeUnused(), 1, `round ${round}: the server closes the one that carried nothing`);
    t.ok(await until(() => pool.openConnections === 1), `round ${round}: the pool saw it close`);
  }
  t.equal(pool.counters.get('connectFailures'), 0, 'every connect succeeded');
  t.equal(pool.counters.get('timeouts') + pool.counters.get('networkErrors'), 0, 'and every query was answered');
  // The first connection reaches its age: the next query drains it and needs a new connection to a server that is fine.
  clock.advance(1);
  const accepted = server.accepted();
  const q = ask(pool, 'www.example.com', { clock, timeoutMs: 2000 });
  // The manual clock no faster than real time: at 50 ms a 10 ms step, a stall of 0.4 s of this process (a loaded
  // machine) spent the query's 2 s before the new connection's answer could be read.
  for (let i = 0; i < 44 && q.outcome.calls === 0; i++) {
    clock.advance(50);
    await sleep(50);
  }
  const r = await q.done;
  t.equal(pool.counters.get('rotations'), 1, 'the first connection was rotated');
  t.ok(server.accepted() > accepted, 'a new connection was made within the query\'s 2 s');
  t.equal(r.reason, null, 'the query is answered, not failed at its deadline');
  t.same(addresses(r.answer), ['192.0.2.1']);
});

/**
 * A TCP DNS server that handles the queries of one connection one at a time, in order, as CoreDNS (miekg/dns
 * Server.serveTCPConn: read a message, run the plugin chain, write the answer, then read the next) and kube-dns's
 * dnsmasq do. `slow` names take `slowMs` (an outside reverse lookup CoreDNS forwards to its own upstream); the rest
 * are answered at once.
 */
async function sequentialServer(t: Test, slow: (name: string) => boolean, slowMs: number): Promise<{ port: number; received: () => number }> {
  const sockets = new Set<net.Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let received = 0;
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    const waiting: Buffer[] = [];
    let busy = false;
    const next = (): void => {
      const f = waiting.shift();
      if (f === undefined || s.destroyed) {
        busy = false;
        return;
      }
      busy = true;
      const q = dnsPacket.decode(f);
      const question = q.questions![0]!;
      const reply = (): void => {
        const answers = question.type === 'A' ? [{ type: 'A' as const, name: question.name, ttl: 60, class: 'IN' as const, data: '192.0.2.1' }] : [];
        if (!s.destroyed) s.write(frame(dnsPacket.encode({ type: 'response', id: q.id ?? 0, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE, questions: [question], answers })));
        next();
      };
      if (!slow(question.name)) return reply();
      const timer = setTimeout(() => {
        timers.delete(timer);
        reply();
      }, slowMs);
      timers.add(timer);
    };
    const dec = new FrameDecoder((f) => {
      received++;
      waiting.push(Buffer.from(f));
      if (!busy) next();
    });
    s.on('data', (c: Buffer) => dec.push(c));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => {
    for (const x of timers) clearTimeout(x);
    for (const s of sockets) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { port: (server.address() as net.AddressInfo).port, received: () => received };
}

t.test('TcpPool: against a cluster DNS that serves each connection in order (CoreDNS, dnsmasq), slow lookups do not hold up the queries queued behind them', async (t) => {
  // CoreDNS reads, answers and only then reads the next query of a TCP connection; pipelined queries wait for the
  // ones before them. The cluster pool also carries the reverse zones, whose outside addresses CoreDNS forwards to
  // its own upstream (seconds for a lame PTR delegation). Two such lookups, one on each of the two connections, and
  // every cluster name pipelined behind them waits seconds and times out (or is answered from the view), while the
  // cluster DNS itself would answer it at once on a connection of its own.
  const server = await sequentialServer(t, (name) => name.startsWith('slow'), 4000);
  const pool = new TcpPool({ server: { host: '127.0.0.1', port: server.port }, connections: 2 });
  t.teardown(() => pool.abort());
  const slow1 = ask(pool, 'slow1.test', { timeoutMs: 6000 });
  t.ok(await until(() => pool.openConnections === 2 && server.received() === 1), 'the first slow lookup is on one connection, the second connection open');
  const slow2 = ask(pool, 'slow2.test', { timeoutMs: 6000 });
  t.ok(await until(() => server.received() === 2), 'the second slow lookup reached the server (on the other, idle connection: least-loaded)');
  const fast = await ask(pool, 'www.example.com', { timeoutMs: 1500 }).done;
  t.equal(fast.reason, null, 'a cluster name the server answers at once is answered, not left behind a slow lookup until its deadline');
  t.same(addresses(fast.answer), ['192.0.2.1']);
  await Promise.all([slow1.done, slow2.done]);
});


t.test('TcpPool: a cluster DNS slow for every query (overloaded) is not sent the queries waiting on each connection a second time', async (t) => {
  // An overloaded kube-dns answers every query slowly, each connection in order. Every connection with queries
  // waiting then looks stalled (300 ms with nothing read), and the queries behind each one's oldest were all moved
  // and sent again: the server answers both copies (the first is already in its socket buffer), so its load nearly
  // doubles, and the queries are answered no sooner on a new connection that is just as slow.
  const server = await sequentialServer(t, () => true, 1000);
  const pool = new TcpPool({ server: { host: '127.0.0.1', port: server.port }, connections: 2 });
  t.teardown(() => pool.abort());
  const asks = [0, 1, 2, 3, 4, 5].map((i) => ask(pool, `q${i}.example.com`, { timeoutMs: 10_000 }));
  const results = await Promise.all(asks.map((a) => a.done));
  t.same(results.map((r) => r.reason), [null, null, null, null, null, null], 'all answered');
  t.ok(server.received() <= 7, `each query was sent once, at most one a second time to learn whether another connection is faster (the server received ${server.received()} for 6)`);
});

t.test('TcpPool: a query moved off a stalled connection and sent again is counted as sent again', async (t) => {
  // nodelocal_upstream_tcp_retries_total counts queries sent again on another connection; a query moved off a
  // stalled connection is sent again too (the server answers both copies), but only coredns_forward_requests_total
  // rose: an operator saw more requests than exchanges and no reason for it.
  const server = await sequentialServer(t, (name) => name.startsWith('slow'), 1000);
  const pool = new TcpPool({ server: { host: '127.0.0.1', port: server.port }, connections: 1 });
  t.teardown(() => pool.abort());
  const slow = ask(pool, 'slow.example.com', { timeoutMs: 3000 });
  const behind = ask(pool, 'www.example.com', { timeoutMs: 3000 });
  const b = await behind.done;
  t.equal(b.reason, null, 'the query behind the slow one is answered');
  t.equal(server.received(), 3, 'it was sent twice');
  t.equal(pool.counters.get('sent'), 3, 'both sends counted as requests');
  t.equal(pool.counters.get('retried'), 1, 'the second one counted as sent again');
  await slow.done;
});

t.test('TcpPool: a query staged on a connection the server closes before the write is counted as sent once, where it is written', async (t) => {
  // The server's FIN read in the same turn as a query staged on that connection: the staging is dropped and the query
  // re-sent on a new connection. coredns_forward_requests_total counted it at staging too: two requests for one write.
  const sim = await SimDnsServer.start({ handler: base, udp: false });
  t.teardown(() => sim.close());
  const sockets: net.Socket[] = [];
  const connect = (s: { host: string; port: number }): net.Socket => {
    const sock = net.connect({ host: s.host, port: s.port, noDelay: true });
    sockets.push(sock);
    return sock;
  };
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1, connect });
  t.teardown(() => pool.close());
  t.equal((await ask(pool, 'www.example.com').done).reason, null, 'the first connection answers');
  const second = ask(pool, 'www.example.com');
  // End of stream read before the once-per-turn flush (what a FIN read in this turn's poll phase does).
  sockets[0]!.push(null);
  const r = await second.done;
  t.equal(r.reason, null, 'the query is answered on a new connection');
  t.equal(sockets.length, 2);
  t.equal(sim.stats.tcpQueries, 2, 'the server received two queries');
  t.equal(pool.counters.get('sent'), 2, 'two requests counted, one per write');
  t.equal(pool.counters.get('retried'), 0, 'not counted as sent again: it was never written to the first connection');
});

t.test('TcpPool: a query staged on a connection that closes before the write, having answered nothing, still has its one more try', async (t) => {
  // A connection that answered nothing gives what it was sent one more try only (it may be failing on those very
  // queries). A query only staged there was never sent: its one more try must be left for a connection it reaches.
  const sim = await SimDnsServer.start({ handler: base, udp: false, faults: { closeAfterQueries: 1 } });
  t.teardown(() => sim.close());
  const { connect } = endsFirstOnConnect();
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1, connect });
  t.teardown(() => pool.close());
  const r = await ask(pool, 'www.example.com', { timeoutMs: 3000 }).done;
  t.equal(r.reason, 'network', 'the server closes every connection on its query');
  t.equal(sim.stats.tcpQueries, 2, 'written twice: once, then once more on another connection');
  t.equal(pool.counters.get('retried'), 1, 'and that once more counted as sent again');
});

t.test('TcpPool: a new connection the server closes before the query staged on it was written does not hold back the next connect', async (t) => {
  // A connection that carried nothing says nothing of the server (tcp-reachability.ts lost()): no backoff. One whose
  // only query was staged, not yet written, when the server's FIN was read carried nothing either, but it counted
  // as "sent queries and answered none": the next connect waited out a backoff (the clock here never moves).
  const sim = await SimDnsServer.start({ handler: base, udp: false });
  t.teardown(() => sim.close());
  const { sockets, connect } = endsFirstOnConnect();
  const clock = new ManualClock();
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1, connect, clock });
  t.teardown(() => pool.abort());
  const r = await ask(pool, 'www.example.com', { clock, timeoutMs: 1000 }).done;
  t.equal(r.reason, null, 'answered on the next connection, made at once');
  t.equal(sockets.length, 2);
  t.equal(sim.stats.tcpQueries, 1, 'the query was written once');
});

t.test('TcpPool: a server that closes every connection before the query staged on it is written is not reconnected to in a tight loop', async (t) => {
  // The first such connection is free (tcp-reachability.ts lost(): the FIN may have crossed the query), but one after
  // another with no answer between is a server whose closes keep racing our writes: the query is never written, so it
  // never uses up a try, and without a backoff the pool connected again as fast as connects complete until the query's
  // deadline (the clock here never moves: forever). Now the second such connection backs off, as one that was written
  // to and answered nothing does. (A TLS server that ends each connection right after its handshake does not make
  // this race on loopback: the flush runs before the end is read.)
  const sim = await SimDnsServer.start({ handler: base, udp: false });
  t.teardown(() => sim.close());
  const { sockets, connect } = endsFirstOnConnect(Infinity);
  const clock = new ManualClock();
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1, connect, clock });
  t.teardown(() => pool.abort());
  const q = ask(pool, 'www.example.com', { clock, timeoutMs: 1000 });
  // Bounded: 100 real-time checks; a tight loop makes 10 connects long before that.
  for (let i = 0; i < 100 && sockets.length <= 10; i++) await new Promise((r) => setTimeout(r, 10));
  t.ok(sockets.length <= 2, `connects made: ${sockets.length} (the second one lost backs off, and the clock never moves)`);
  t.equal(sim.stats.tcpQueries, 0, 'nothing written');
  t.equal(q.outcome.calls, 0, 'the query still waits within its deadline');
});

/**
 * A TcpPool's connect (its sockets kept) whose first `ending` connections read their end of stream right after the
 * pool's own 'connect' listener staged a query: the server's FIN read in the same turn, before the once-per-turn flush.
 */
function endsFirstOnConnect(ending = 1): { sockets: net.Socket[]; connect: (s: { host: string; port: number }) => net.Socket } {
  const sockets: net.Socket[] = [];
  const connect = (s: { host: string; port: number }): net.Socket => {
    const sock = net.connect({ host: s.host, port: s.port, noDelay: true });
    if (sockets.length < ending) sock.on('connect', () => sock.push(null));
    sockets.push(sock);
    return sock;
  };
  return { sockets, connect };
}

t.test('TcpPool: a connection that answers nothing (its pod gone, packets black-holed) is not kept as the first choice for every query', async (t) => {
  // Both connections go to the ClusterIP; the first reached a kube-dns pod whose node then died: no RST, no FIN, the
  // connection stays ESTABLISHED (TCP retransmits for ~15 minutes), every query on it times out. The second reached a
  // live pod. On a quiet node each query finds both connections with nothing in flight, and the least-loaded pick's
  // tie goes to the first: every query lands on the dead connection until its age rotation (--upstream-rotate-after,
  // 60 s by default, up to a day), the health goes failing and the probe lands there too, while the other connection
  // would answer at once. (CoreDNS's forward plugin drops a connection on a read timeout.)
  const good = await SimDnsServer.start({ handler: base, udp: false });
  t.teardown(() => good.close());
  const dead = await SimDnsServer.start({ handler: base, udp: false, faults: { dropAll: true } });
  t.teardown(() => dead.close());
  let connects = 0;
  // The live pod's connection opens a little later, so the dead one is first in the pool and takes the first query.
  const connect = (): net.Socket => (++connects === 1 ? net.connect({ host: dead.host, port: dead.port }) : laterConnect(t, good, 100));
  const pool = new TcpPool({ server: { host: good.host, port: good.port }, connections: 2, connect });
  t.teardown(() => pool.abort());
  const reasons: Array<UpstreamFailure | 'never completed' | null> = [];
  for (let i = 0; i < 8; i++) {
    const r = await ask(pool, `q${i}.example.com`, { timeoutMs: 400 }).done;
    reasons.push(r.reason);
    if (i === 0) t.ok(await until(() => pool.openConnections === 2), 'both connections open');
  }
  t.ok(good.stats.tcpQueries > 0, `the live connection was used (${good.stats.tcpQueries} queries; the dead one got ${dead.stats.tcpQueries})`);
  t.same(reasons.slice(-3), [null, null, null], `after a few timeouts on the dead connection, queries are answered (got ${reasons.join(', ')})`);
});

t.test('TcpPool: a connection whose answers all come after their deadline (a slow cluster DNS) is not closed as silent', async (t) => {
  // A connection on which 2 queries in a row time out with nothing read is taken for dead (its pod's node gone, no
  // RST) and replaced. An answer after its deadline (counted late) is something read: the server is alive, only slow
  // (kube-dns overloaded). It did not count, so such a connection was closed every 2 timeouts, logged as "nothing
  // read", its other queries sent again to the slow server on a new connection, and the server's work on them lost.
  const server = await sequentialServer(t, () => true, 600);
  const replaced: string[] = [];
  const logger: Logger = { debug() {}, warn() {}, error() {}, info: (msg) => void (msg.includes('replaced') && replaced.push(msg)) };
  const pool = new TcpPool({ server: { host: '127.0.0.1', port: server.port }, connections: 1, logger });
  t.teardown(() => pool.abort());
  for (let i = 0; i < 4; i++) {
    const r = await ask(pool, `q${i}.example.com`, { timeoutMs: 300 }).done;
    t.equal(r.reason, 'timeout', `round ${i}: the query timed out`);
    t.ok(await until(() => pool.counters.get('late') === i + 1), `round ${i}: its answer was read, late`);
  }
  t.same(replaced, [], 'no connection was replaced as silent: every query was answered, if late');
  t.equal(server.received(), 4, 'each query reached the server once');
});

t.test('TcpPool: queries that time out together on a slow cluster DNS (answers after their deadline) do not close the connection as silent', async (t) => {
  // The silent rule (2 timeouts with nothing read: a black-holed pod) waits for a late answer to tell a slow server
  // from a dead one. Under load, queries are in flight together: two that time out in the same sweep (or a few ms
  // apart) gave the late answer no time to come, and the connection was closed as silent, logged "nothing read", and
  // the query still in time on it sent again to the same slow server on a new connection. No stall rule here (as for
  // a DNS-over-TLS resolver), so only the silent rule decides.
  const server = await SimDnsServer.start({ handler: base, udp: false, faults: { latencyMs: 600 } });
  t.teardown(() => server.close());
  const replaced: string[] = [];
  const logger: Logger = { debug() {}, warn() {}, error() {}, info: (msg) => void (msg.includes('replaced') && replaced.push(msg)) };
  const pool = new TcpPool({ server: { host: server.host, port: server.port }, connections: 1, stallMs: null, logger });
  t.teardown(() => pool.abort());
  const short = [ask(pool, 'q0.example.com', { timeoutMs: 300 }), ask(pool, 'q1.example.com', { timeoutMs: 300 })];
  const long = ask(pool, 'www.example.com', { timeoutMs: 3000 });
  for (const [i, q] of short.entries()) t.equal((await q.done).reason, 'timeout', `short query ${i} timed out`);
  const r = await long.done;
  t.same(addresses(r.answer), ['192.0.2.1'], 'the query still in time was answered');
  t.same(replaced, [], 'no connection was replaced as silent');
  t.equal(server.stats.tcpQueries, 3, 'each query reached the server once');
  t.ok(await until(() => pool.counters.get('late') === 2), 'both late answers were read');
});

t.test('TcpPool: a black-holed connection is still replaced after a burst: the queries in flight together count once, the next one sent after them makes it silent', async (t) => {
  // No stall rule (as for a DNS-over-TLS resolver): only the silent rule takes a dead connection out. Since a timeout
  // counts only if its query was sent after the last one counted, a burst that times out together counts once.
  const sim = await SimDnsServer.start({ handler: base, udp: false, faults: { dropAll: true } });
  t.teardown(() => sim.close());
  const replaced: string[] = [];
  const logger: Logger = { debug() {}, warn() {}, error() {}, info: (msg) => void (msg.includes('replaced') && replaced.push(msg)) };
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1, stallMs: null, logger });
  t.teardown(() => pool.abort());
  const burst = await Promise.all(Array.from({ length: 5 }, (_, i) => ask(pool, `b${i}.example.com`, { timeoutMs: 300 }).done));
  t.same(burst.map((r) => r.reason), ['timeout', 'timeout', 'timeout', 'timeout', 'timeout'], 'the burst times out');
  t.same(replaced, [], 'counted once: not yet taken for dead');
  t.equal((await ask(pool, 'next.example.com', { timeoutMs: 300 }).done).reason, 'timeout', 'the next query times out too');
  t.ok(await until(() => replaced.length === 1), 'and the connection is replaced as silent');
  t.equal(sim.stats.tcpQueries, 6, 'each query sent once');
});

t.test('TcpPool: the server closing a draining connection during close() fails its queries closed, not network', async (t) => {
  // A reload retires the old pool with close(): its in-flight queries may finish. If the server closes that draining
  // connection first, they cannot be re-sent (the pool takes nothing new) and were failed 'network', so the resolver
  // answered from the view or SERVFAIL instead of asking again on the new route; nor is it the server's fault.
  const sim = await SimDnsServer.start({ handler: base, udp: false, faults: { dropAll: true } });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1 });
  t.teardown(() => pool.abort());
  const q = ask(pool, 'www.example.com', { timeoutMs: 3000 });
  t.ok(await until(() => sim.stats.tcpQueries === 1), 'the query is in flight');
  const closing = pool.close();
  await sim.stop();
  const r = await q.done;
  t.equal(r.reason, 'closed', 'closed: the caller may ask again elsewhere');
  t.equal(pool.counters.get('networkErrors'), 0, 'no network error');
  await closing;
});

t.test('TcpPool: close() while a connection is stalled behind a slow query still completes the queries behind it', async (t) => {
  // A reload retires the pool with close(): what is in flight may finish on its connection, now draining. When that
  // connection stalled behind a slow lookup, the sweep still moved the query behind it to the queue, where nothing
  // would send it (the pool takes no new connection), and once the slow answer closed the last connection the pool
  // finished closing and stopped its sweep: the query was never answered nor failed (its client waits, the
  // resolver's in-flight count never comes down).
  const server = await sequentialServer(t, (name) => name.startsWith('slow'), 1000);
  const pool = new TcpPool({ server: { host: '127.0.0.1', port: server.port }, connections: 1 });
  t.teardown(() => pool.abort());
  const slow = ask(pool, 'slow.example.com', { timeoutMs: 3000 });
  const behind = ask(pool, 'www.example.com', { timeoutMs: 3000 });
  t.ok(await until(() => server.received() === 2), 'both are on the one connection, the second behind the slow one');
  const closing = pool.close();
  const [s, b] = await Promise.all([slow.done, behind.done]);
  t.equal(s.reason, null, 'the slow query is answered');
  t.not(b.reason, 'never completed', 'the query behind it completes');
  t.equal(b.reason, null, 'answered on its connection, after the slow one');
  await closing;
});

t.test('TcpPool: abort() rejects what is in flight with closed: no network error, no health failure', async (t) => {
  // Shutdown past its grace: types.ts says abort() rejects in-flight exchanges with 'closed' (HostResolvers does).
  const sim = await SimDnsServer.start({ handler: base, udp: false, faults: { dropAll: true } });
  t.teardown(() => sim.close());
  const pool = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1 });
  const asks = ['a.example.com', 'b.example.com', 'c.example.com'].map((n) => ask(pool, n, { timeoutMs: 60_000 }));
  t.ok(await until(() => sim.stats.tcpQueries === 3), 'all three reached the server');
  t.equal(pool.inFlight, 3);
  pool.abort();
  const results = await Promise.all(asks.map((a) => a.done));
  t.same(results.map((r) => r.reason), ['closed', 'closed', 'closed'], 'rejected as closed, as the Upstream contract says');
  t.ok(results.every((r) => r.calls === 1));
  t.equal(pool.counters.get('networkErrors'), 0, 'a shutdown is not a network error of the upstream');
  t.ok(pool.health.healthy, 'a shutdown does not mark the upstream failing');
});

// ---------------------------------------------------------------- host resolvers

async function twoServers(
  t: Test,
  faults1: Parameters<typeof SimDnsServer.start>[0]['faults'] = {},
  faults2: Parameters<typeof SimDnsServer.start>[0]['faults'] = {},
  host = '127.0.0.1',
): Promise<[SimDnsServer, SimDnsServer]> {
  const a = await SimDnsServer.start({ host, handler: base, faults: faults1 });
  const b = await SimDnsServer.start({ host, handler: base, faults: faults2 });
  t.teardown(() => a.close());
  t.teardown(() => b.close());
  return [a, b];
}

function resolvers(sims: SimDnsServer[], opts: Omit<HostResolversOptions, 'servers'> = {}): HostResolvers {
  return new HostResolvers({
    ...opts,
    servers: sims.map((s) => ({ host: s.host, port: s.port })),
    attemptTimeoutMs: opts.attemptTimeoutMs ?? 1000,
    attempts: opts.attempts ?? 2,
    rotate: opts.rotate ?? false,
  });
}

t.test('HostResolvers: answers over UDP from the first server, fresh source ports', async (t) => {
  const ports = new Set<number>();
  const sim = await SimDnsServer.start({
    handler: (q, ctx) => {
      ports.add(ctx.remotePort);
      return base(q, ctx);
    },
  });
  t.teardown(() => sim.close());
  const other = await SimDnsServer.start({ handler: base });
  t.teardown(() => other.close());
  const up = resolvers([sim, other]);
  t.teardown(() => up.close());
  for (let i = 0; i < 5; i++) {
    const r = await ask(up, 'WWW.Example.com').done;
    t.same(addresses(r.answer), ['192.0.2.1']);
    t.equal(r.calls, 1);
  }
  const v6 = await ask(up, 'www.example.com', { type: 'AAAA' }).done;
  t.same(addresses(v6.answer), ['2001:db8::1']);
  const nx = await ask(up, 'nope.example.com').done;
  t.equal(rcodeOf(nx.answer), 'NXDOMAIN');
  t.equal(sim.stats.udpQueries, 7);
  t.equal(other.stats.udpQueries, 0, 'without rotate, server 0 first');
  t.ok(ports.size > 1, 'source port not reused for every query');
  t.equal(up.counters.get('answered'), 7);
  t.equal(up.counters.get('sent'), 7);
  t.equal(up.counters.get('responsesNoError'), 6);
  t.equal(up.counters.get('responsesNxDomain'), 1);
});

t.test('HostResolvers: tries share a few sockets, ids unique on each, every answer to its own query', async (t) => {
  const { names, records } = manyNames(40);
  const seen: Array<{ port: number; id: number; name: string }> = [];
  const zone = staticHandler(records);
  // Latency keeps all 40 in flight together, so they share sockets at once.
  const sim = await SimDnsServer.start({
    handler: (q, ctx) => {
      seen.push({ port: ctx.remotePort, id: q.id ?? -1, name: q.questions?.[0]?.name ?? '' });
      return zone(q, ctx);
    },
    faults: { latencyMs: 30 },
  });
  t.teardown(() => sim.close());
  const up = resolvers([sim], { udpSocketsPerServer: 2 });
  t.teardown(() => up.close());
  const results = await Promise.all(names.map((n) => ask(up, n, { timeoutMs: 3000 }).done));
  for (let i = 0; i < names.length; i++) {
    const r = results[i]!;
    if (r.reason !== null || r.calls !== 1) t.fail(`query ${i}: ${String(r.reason)} calls=${r.calls}`);
    t.same(addresses(r.answer), [records[names[i]!]!.A[0]], names[i]!);
  }
  const ports = new Set(seen.map((x) => x.port));
  t.equal(ports.size, 2, 'forty tries, two sockets');
  for (const port of ports) {
    const ids = seen.filter((x) => x.port === port).map((x) => x.id);
    t.equal(new Set(ids).size, ids.length, `ids unique on port ${port}`);
  }
  t.equal(up.counters.get('sent'), 40);
  t.equal(up.counters.get('spoofed'), 0);
  t.ok(up.udpSockets <= 2, 'no socket beyond the slots');
  t.equal(up.counters.get('udpSockets'), up.udpSockets, 'the gauge follows');
});

t.test('HostResolvers: a socket is replaced after its tries or its age; every replacement has a new port', async (t) => {
  const ports: number[] = [];
  const sim = await SimDnsServer.start({
    handler: (q, ctx) => {
      ports.push(ctx.remotePort);
      return base(q, ctx);
    },
  });
  t.teardown(() => sim.close());
  const clock = new ManualClock();
  const up = resolvers([sim], { udpSocketsPerServer: 1, udpRotateAfterTries: 3, udpRotateAfterMs: 1000, clock });
  t.teardown(() => up.close());
  for (let i = 0; i < 9; i++) t.same(addresses((await ask(up, 'www.example.com', { clock }).done).answer), ['192.0.2.1']);
  t.equal(ports.length, 9);
  t.equal(new Set(ports).size, 3, 'nine tries, three tries per socket');
  for (let k = 0; k < 9; k += 3) t.ok(ports[k] === ports[k + 1] && ports[k] === ports[k + 2], `tries ${k}..${k + 2} on one socket`);
  t.ok(ports[0] !== ports[3] && ports[3] !== ports[6] && ports[0] !== ports[6], 'each replacement on a port of its own');
  t.ok(await until(() => up.udpSockets === 1), 'the used-up ones closed');

  // Age: the next try after T ms goes out on a fresh socket, even though this one has tries left.
  t.same(addresses((await ask(up, 'www.example.com', { clock }).done).answer), ['192.0.2.1']);
  const before = ports.at(-1)!;
  clock.advance(1000);
  t.ok(await until(() => up.udpSockets === 0), 'an idle socket past its age is closed by the sweep');
  t.same(addresses((await ask(up, 'www.example.com', { clock }).done).answer), ['192.0.2.1']);
  t.not(ports.at(-1), before, 'a new port after the age limit');

  // Round-robin over the slots: back-to-back tries leave from different ports.
  const rr = resolvers([sim], { udpSocketsPerServer: 2 });
  t.teardown(() => rr.close());
  ports.length = 0;
  for (let i = 0; i < 4; i++) await ask(rr, 'www.example.com').done;
  t.ok(ports[0] !== ports[1] && ports[0] === ports[2] && ports[1] === ports[3], 'alternates between its two sockets');
});

t.test('HostResolvers: an answer forged from another port or address is never taken', async (t) => {
  let query: { port: number; id: number } | null = null;
  // The real server answers late; the forgeries arrive first, with the right id and question.
  const sim = await SimDnsServer.start({
    handler: (q, ctx) => {
      query = { port: ctx.remotePort, id: q.id ?? -1 };
      return base(q, ctx);
    },
    faults: { latencyMs: 150 },
  });
  t.teardown(() => sim.close());
  const up = resolvers([sim]);
  t.teardown(() => up.close());
  const pending = ask(up, 'www.example.com', { timeoutMs: 3000 });
  t.ok(await until(() => query !== null), 'the query reached the server');
  const target = query as unknown as { port: number; id: number };
  const forged = dnsPacket.encode({
    type: 'response',
    id: target.id,
    flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE,
    questions: [{ name: 'www.example.com', type: 'A', class: 'IN' }],
    answers: [{ name: 'www.example.com', type: 'A', ttl: 300, data: '203.0.113.66' }],
  });
  // From another port of the server's address, and from another loopback address.
  for (const from of ['127.0.0.1', '127.0.0.2']) {
    const s = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => s.bind(0, from, resolve));
    await new Promise<void>((resolve) => s.send(forged, target.port, '127.0.0.1', () => resolve()));
    s.close();
  }
  const r = await pending.done;
  t.same(addresses(r.answer), ['192.0.2.1'], 'the server\'s answer, not the forged one');
  t.equal(r.calls, 1);
});

t.test('HostResolvers: TC=1 -> the same server over TCP', async (t) => {
  const [a, b] = await twoServers(t, { truncateUdp: true });
  const up = resolvers([a, b]);
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com').done;
  t.same(addresses(r.answer), ['192.0.2.1']);
  t.equal(r.answer?.flag_tc, false);
  t.equal(up.counters.get('tcpFallbacks'), 1);
  t.equal(a.stats.udpQueries, 1);
  t.equal(a.stats.tcpQueries, 1);
  t.equal(b.stats.udpQueries + b.stats.tcpQueries, 0);
});

t.test('HostResolvers: first server silent -> fails over to the second', async (t) => {
  const [a, b] = await twoServers(t, { dropAll: true });
  // A try long enough for the live server's answer on a loaded machine: a 150 ms stall of this process made its
  // answer late too (a second timeout, a second round).
  const up = resolvers([a, b], { attemptTimeoutMs: 1000 });
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com', { timeoutMs: 5000 }).done;
  t.same(addresses(r.answer), ['192.0.2.1']);
  t.equal(a.stats.udpQueries, 1);
  t.equal(b.stats.udpQueries, 1);
  t.equal(up.counters.get('failovers'), 1);
  t.equal(up.counters.get('attemptTimeouts'), 1);
});

t.test('HostResolvers: spoofed answers are ignored and counted', async (t) => {
  const [a, b] = await twoServers(t, { spoofFirst: true });
  const up = resolvers([a, b]);
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com').done;
  t.same(addresses(r.answer), ['192.0.2.1']);
  t.equal(r.answer?.questions?.[0]?.name.toLowerCase(), 'www.example.com');
  t.equal(up.counters.get('spoofed'), 2, 'wrong id and wrong question');
  t.equal(up.counters.get('answered'), 1);
  t.equal(b.stats.udpQueries, 0);
});

t.test('HostResolvers: everything silent -> timeout after attempts x servers tries', async (t) => {
  const [a, b] = await twoServers(t, { dropAll: true }, { dropAll: true });
  const up = resolvers([a, b], { attemptTimeoutMs: 100, attempts: 2 });
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com', { timeoutMs: 3000 }).done;
  t.equal(r.reason, 'timeout');
  t.equal(r.calls, 1);
  t.equal(a.stats.udpQueries, 2);
  t.equal(b.stats.udpQueries, 2);
  t.equal(up.counters.get('attemptTimeouts'), 4);
  t.equal(up.counters.get('timeouts'), 1);
});

t.test('HostResolvers: never past the exchange deadline', async (t) => {
  const [a, b] = await twoServers(t, { dropAll: true }, { dropAll: true });
  const up = resolvers([a, b], { attemptTimeoutMs: 2000, attempts: 2 });
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com', { timeoutMs: 250 }).done;
  t.equal(r.reason, 'timeout');
  t.equal(a.stats.udpQueries + b.stats.udpQueries, 1, 'the deadline cut the first try short; no second try');
});

t.test('HostResolvers: nobody listening (ICMP port unreachable) -> network', async (t) => {
  const gone1 = await SimDnsServer.start({ handler: base });
  const gone2 = await SimDnsServer.start({ handler: base });
  const servers = [gone1, gone2].map((s) => ({ host: s.host, port: s.port }));
  await gone1.close();
  await gone2.close();
  const up = new HostResolvers({ servers, attemptTimeoutMs: 1000, attempts: 2, rotate: false });
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com', { timeoutMs: 3000 }).done;
  t.equal(r.reason, 'network');
  t.equal(up.counters.get('attemptErrors'), 4);
  t.equal(up.counters.get('networkErrors'), 1);
});

t.test('HostResolvers: a port-unreachable error that a later send on the socket picks up fails every try on it, not only that one', async (t) => {
  // Linux reports a connected UDP socket's ICMP error once, to the next syscall on it: recvmsg (the socket's 'error',
  // every try on it fails) or, when a try sends first, that sendmsg (ECONNREFUSED through the send's callback). The
  // try whose datagram drew the error then waited out its whole timeout. Eight queries at once: two per socket.
  const gone = await SimDnsServer.start({ handler: base });
  const server = { host: gone.host, port: gone.port };
  await gone.close();
  const up = new HostResolvers({ servers: [server], attemptTimeoutMs: 2000, attempts: 1, rotate: false });
  t.teardown(() => up.close());
  const outcomes = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((i) => ask(up, `n${i}.example.com`, { timeoutMs: 4000 }).done));
  t.same(outcomes.map((o) => o.reason), Array(8).fill('network'), 'every query failed on the port-unreachable error');
  t.equal(up.counters.get('attemptTimeouts'), 0, 'no try waited out its timeout');
  t.equal(up.counters.get('attemptErrors'), 8);
});

t.test('HostResolvers: SERVFAIL moves on; if every server fails, its answer is passed on', async (t) => {
  const [a, b] = await twoServers(t, { rcode: 'SERVFAIL' });
  const up = resolvers([a, b]);
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com').done;
  t.same(addresses(r.answer), ['192.0.2.1'], 'second server answered');
  t.equal(up.counters.get('responsesServfail'), 1);
  t.equal(up.counters.get('responsesNoError'), 1);
  t.equal(up.counters.get('failovers'), 1);

  b.faults.rcode = 'REFUSED';
  const both = await ask(up, 'www.example.com').done;
  t.equal(both.reason, null);
  t.equal(rcodeOf(both.answer), 'REFUSED', 'the last bad answer');
  t.equal(up.counters.get('responsesServfail'), 2);
  t.equal(up.counters.get('responsesRefused'), 1);
  t.equal(a.stats.udpQueries, 2, 'a server that said SERVFAIL is not asked again for the same query');
  t.equal(b.stats.udpQueries, 2);
});

t.test('HostResolvers: rotate spreads first tries round-robin', async (t) => {
  const [a, b] = await twoServers(t);
  const up = resolvers([a, b], { rotate: true });
  t.teardown(() => up.close());
  for (let i = 0; i < 4; i++) t.same(addresses((await ask(up, 'www.example.com').done).answer), ['192.0.2.1']);
  t.equal(a.stats.udpQueries, 2);
  t.equal(b.stats.udpQueries, 2);
});

t.test('HostResolvers over IPv6 (::1): answer, TCP fallback, failover', async (t) => {
  const [a, b] = await twoServers(t, { dropAll: true }, { truncateUdp: true }, '::1');
  const up = resolvers([a, b], { attemptTimeoutMs: 1000 }); // long enough for b's UDP and TCP answers under load
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com', { type: 'AAAA', timeoutMs: 5000 }).done;
  t.same(addresses(r.answer), ['2001:db8::1']);
  t.equal(a.stats.udpQueries, 1);
  t.equal(b.stats.udpQueries, 1);
  t.equal(b.stats.tcpQueries, 1);
  t.equal(up.counters.get('tcpFallbacks'), 1);
});

t.test('HostResolvers: close() lets in-flight finish and refuses new', async (t) => {
  const [a, b] = await twoServers(t, { latencyMs: 100 });
  const up = resolvers([a, b]);
  const inflight = ask(up, 'www.example.com');
  const closing = up.close();
  const after = ask(up, 'www.example.com');
  t.equal(after.outcome.reason, 'closed');
  t.ok(after.outcome.sync);
  t.same(addresses((await inflight.done).answer), ['192.0.2.1']);
  await closing;
  t.equal(up.inFlight, 0);
});

// ---------------------------------------------------------------- host resolvers: limits and late answers

/** A logger that keeps warnings, to count rate-limited lines. */
function warnRecorder(): { logger: Logger; warnings: Array<{ msg: string; fields: LogFields | undefined }> } {
  const warnings: Array<{ msg: string; fields: LogFields | undefined }> = [];
  const none = (): void => {};
  return { warnings, logger: { debug: none, info: none, error: none, warn: (msg, fields) => warnings.push({ msg, fields }) } };
}

const openFds = (): number => readdirSync('/proc/self/fd').length;

t.test('HostResolvers: over maxInFlight, rejected with overloaded at once, counted, warned first and every 1000th', async (t) => {
  const sim = await SimDnsServer.start({ handler: base, faults: { dropAll: true } });
  t.teardown(() => sim.close());
  const { logger, warnings } = warnRecorder();
  const counters = new Counters(hostResolversCounters);
  const up = resolvers([sim], { attemptTimeoutMs: 100, attempts: 2, maxInFlight: 20, logger, counters });
  t.teardown(() => up.close());
  t.equal(up.counters, counters, 'counts into the block it was given');

  const admitted = Array.from({ length: 20 }, (_, i) => ask(up, `name-${i}.test`, { timeoutMs: 2000 }));
  t.ok(admitted.every((a) => a.outcome.reason === null), 'up to the cap: in flight');
  t.equal(up.inFlight, 20);
  const over = Array.from({ length: 1001 }, (_, i) => ask(up, `over-${i}.test`, { timeoutMs: 2000 }));
  t.ok(over.every((a) => a.outcome.reason === 'overloaded' && a.outcome.sync && a.outcome.calls === 1), 'over the cap: overloaded inside send()');
  t.equal(counters.get('overloaded'), 1001);
  t.equal(up.inFlight, 20, 'rejected ones hold nothing');
  t.equal(warnings.length, 2, 'the first reject warns, then the 1001st');
  t.match(warnings[0], { fields: { upstream: 'host-resolvers', maxInFlight: 20, rejected: 1 } });
  t.match(warnings[1], { fields: { rejected: 1001 } });

  const results = await Promise.all(admitted.map((a) => a.done));
  t.ok(results.every((r) => r.reason === 'timeout'), 'admitted ones run their course');
  t.equal(up.inFlight, 0);
  t.equal(up.openSockets, 0);
  const again = ask(up, 'again.test', { timeoutMs: 2000 });
  t.equal(again.outcome.reason, null, 'room again once the in-flight ones are done');
  t.equal((await again.done).reason, 'timeout');
  t.equal(sim.stats.udpQueries, 21 * 2, 'rejected queries were never sent');
});

t.test('HostResolvers: a silent resolver holds at most maxInFlight x maxSocketsPerExchange sockets', async (t) => {
  const [a, b] = await twoServers(t, { dropAll: true }, { dropAll: true });
  const maxInFlight = 40;
  const perExchange = 3;
  const bound = maxInFlight * perExchange;
  // 2 servers x 3 rounds = 6 tries of 100 ms: each exchange lives ~600 ms and, from its 3rd try on, holds 3 sockets.
  const up = resolvers([a, b], { attemptTimeoutMs: 100, attempts: 3, maxInFlight, maxSocketsPerExchange: perExchange });
  t.teardown(() => up.close());
  const fd0 = openFds();
  let maxFds = 0;
  let maxSockets = 0;
  const sample = (): void => {
    maxFds = Math.max(maxFds, openFds() - fd0);
    maxSockets = Math.max(maxSockets, up.openSockets);
  };

  // Lockstep: all start together, so all reach their 3 sockets together (one sweep tick moves every one of them).
  const first = Array.from({ length: maxInFlight }, (_, i) => ask(up, `first-${i}.test`, { timeoutMs: 5000 }));
  t.ok(
    await until(() => {
      sample();
      return up.openSockets === bound;
    }),
    'every exchange reaches its socket limit',
  );
  sample();
  t.ok(openFds() - fd0 <= bound + 10, `descriptors follow the socket count (${openFds() - fd0} new)`);

  // A flood of new names, as in the incident (40 every 20 ms, many times the cap): the bound holds throughout.
  const flood: Array<ReturnType<typeof ask>> = [];
  for (let round = 0; round < 40; round++) {
    for (let i = 0; i < 40; i++) flood.push(ask(up, `flood-${round}-${i}.test`, { timeoutMs: 5000 }));
    sample();
    await sleep(20);
  }
  await Promise.all([...first, ...flood].map((x) => x.done));
  t.ok(maxSockets <= bound, `open sockets peaked at ${maxSockets} <= ${bound}`);
  t.ok(maxFds <= bound + 10, `new descriptors peaked at ${maxFds} <= ${bound} (+10 for the test's own)`);
  t.ok(up.counters.get('overloaded') > 0, 'the flood was cut at the cap');
  t.equal(up.counters.get('overloaded') + up.counters.get('timeouts'), maxInFlight + flood.length, 'every exchange accounted for');
  t.equal(up.openSockets, 0);
  t.equal(up.counters.get('openSockets'), 0, 'the gauge is back to zero');
  t.ok(await until(() => openFds() - fd0 <= 2), 'every socket closed');
});

t.test('HostResolvers: a reload\'s old and new instance share a counter block: the socket gauges still tell what is open', async (t) => {
  // A reload builds a new HostResolvers under the same name, and agent-metrics hands it the same block (host(name));
  // the old one keeps finishing its exchanges meanwhile. The gauges are assigned, not added, by each instance.
  const sim = await SimDnsServer.start({ handler: base, faults: { dropAll: true } });
  t.teardown(() => sim.close());
  const counters = new Counters(hostResolversCounters);
  const old = resolvers([sim], { attemptTimeoutMs: 30_000, attempts: 1, counters });
  const next = resolvers([sim], { attemptTimeoutMs: 30_000, attempts: 1, counters });
  t.teardown(() => next.abort());
  const retiring = ask(old, 'old.example.com', { timeoutMs: 60_000 });
  const current = ['a.example.com', 'b.example.com'].map((n) => ask(next, n, { timeoutMs: 60_000 }));
  t.ok(await until(() => sim.stats.udpQueries === 3), 'all three tries sent');
  // The old instance finishes (here at once) while the new one still has its tries listening.
  old.abort();
  t.equal((await retiring.done).reason, 'closed');
  t.equal(next.openSockets, 2);
  t.ok(next.udpSockets >= 1);
  t.equal(counters.get('openSockets'), next.openSockets, 'nodelocal_upstream_open_sockets counts the tries still listening');
  t.equal(counters.get('udpSockets'), next.udpSockets, 'nodelocal_upstream_udp_sockets counts the sockets still open');
  next.abort();
  t.same((await Promise.all(current.map((c) => c.done))).map((r) => r.reason), ['closed', 'closed']);
});

t.test('HostResolvers: an answer slower than the try timeout still gets through (late answer to an earlier try)', async (t) => {
  // Every answer comes 1.5 try timeouts after its query: each try is superseded before its answer arrives.
  const slow = await SimDnsServer.start({ handler: base, faults: { latencyMs: 600 } });
  t.teardown(() => slow.close());
  const up = resolvers([slow], { attemptTimeoutMs: 400, attempts: 3 });
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com', { timeoutMs: 5000 }).done;
  t.same(addresses(r.answer), ['192.0.2.1'], 'the first try\'s answer, after its try timed out');
  t.equal(r.calls, 1);
  t.ok(up.counters.get('attemptTimeouts') >= 1, 'the first try had timed out');
  t.ok(slow.stats.udpQueries >= 2, 'and a second one was sent meanwhile');
  t.equal(up.counters.get('answered'), 1);
  t.equal(up.openSockets, 0, 'the other tries closed with the exchange');

  // The limit is what makes it work: one socket per exchange is the old behaviour, and never hears the answer.
  const one = resolvers([slow], { attemptTimeoutMs: 400, attempts: 3, maxSocketsPerExchange: 1 });
  t.teardown(() => one.close());
  t.equal((await ask(one, 'www.example.com', { timeoutMs: 5000 }).done).reason, 'timeout');
});

t.test('HostResolvers: a slow first server answers after the failover to a silent second one', async (t) => {
  const slow = await SimDnsServer.start({ handler: base, faults: { latencyMs: 600 } });
  const silent = await SimDnsServer.start({ handler: base, faults: { dropAll: true } });
  t.teardown(() => slow.close());
  t.teardown(() => silent.close());
  // One round: slow, then silent; the answer to the first try comes while the second waits.
  const up = resolvers([slow, silent], { attemptTimeoutMs: 400, attempts: 1 });
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com', { timeoutMs: 5000 }).done;
  t.same(addresses(r.answer), ['192.0.2.1']);
  t.equal(slow.stats.udpQueries, 1);
  t.equal(silent.stats.udpQueries, 1, 'the second server was tried');
  t.equal(up.counters.get('failovers'), 1);
  t.equal(up.openSockets, 0);
});

t.test('routing: reverse lookups of outside addresses that the cluster DNS passes on as SERVFAIL do not make the cluster DNS failing', async (t) => {
  // All of in-addr.arpa goes to the cluster DNS (it owns the Service and Pod PTRs), which forwards the rest to its own
  // upstream. PTR lookups of outside addresses whose reverse zones are broken are everyday traffic (a web server or a
  // log shipper resolving client IPs), and CoreDNS passes their failure on as SERVFAIL. Those answers say the cluster
  // DNS is up and answering; they say nothing of its cluster records. Yet three in a row share the cluster route's
  // health: the cluster DNS turns 'failing' (warning, nodelocal_upstream_healthy 0, not ready without a synced view), and
  // cluster names are answered from the view without asking it (wrong for any record only CoreDNS holds) until the probe.
  const handler: SimHandler = (q: Packet, ctx: SimContext) => {
    const name = q.questions?.[0]?.name ?? '';
    if (name.endsWith('.in-addr.arpa')) return { flags: responseFlags(q, 2) };
    return staticHandler({ 'kubernetes.default.svc.cluster.local': { A: ['10.96.0.1'] } })(q, ctx);
  };
  const sim = await SimDnsServer.start({ handler, udp: false });
  t.teardown(() => sim.close());
  const routing = routingOf(t, ['--upstream-addr', `${sim.host}:${sim.port}`, '--upstream-nameservers', '127.0.0.1:1054']);
  const wire = (name: string, type: 'A' | 'PTR'): Buffer =>
    dnsPacket.encode({ type: 'query', id: 0, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type, class: 'IN' }] });
  const routeOf = (msg: Buffer): Upstream => routing.router.route(parseQuery(msg).key).upstream;
  const exchange = (msg: Buffer): Promise<string> =>
    new Promise((resolve) => {
      routeOf(msg).send({
        query: msg, deadline: systemClock.now() + 2000,
        resolve: (answer) => resolve(rcodeOf(dnsPacket.decode(answer)) ?? '?'),
        reject: (reason) => resolve(reason),
      });
    });
  for (const ip of ['203.0.113.7', '198.51.100.23', '192.0.2.200']) {
    const ptr = `${ip.split('.').reverse().join('.')}.in-addr.arpa`;
    t.equal(await exchange(wire(ptr, 'PTR')), 'SERVFAIL', `${ptr}: the cluster DNS answered, SERVFAIL`);
  }
  const cluster = routeOf(wire('kubernetes.default.svc.cluster.local', 'A'));
  t.equal(cluster.health.state, 'healthy', 'the cluster DNS answered every question it was asked: it is not failing');
  t.equal(await exchange(wire('kubernetes.default.svc.cluster.local', 'A')), 'NOERROR', 'and it answers cluster names');
});

t.test('routing: a stub domain\'s servers that failed and came back are healthy again without waiting for a client to ask', async (t) => {
  // A stub domain is often asked rarely. After a short outage (three exchanges timed out) its upstream is 'failing',
  // and nothing probes it: its health changes only with the next client exchange, so a recovered, idle stub domain stays
  // nodelocal_upstream_healthy 0 for as long as nobody asks, and NodeLocalDNSExternalUpstreamFailing fires ("have not
  // answered for 5 minutes") about servers that are answering. The cluster DNS and each tls:// server are probed once a
  // second while failing; a stub domain's (and the host resolvers') health should come back the same way.
  const sim = await SimDnsServer.start({ handler: staticHandler({ 'db.corp.example': { A: ['192.0.2.5'] } }), faults: { dropAll: true } });
  t.teardown(() => sim.close());
  const routing = routingOf(t, ['--stub-domain', `corp.example=${sim.host}:${sim.port}`, '--upstream-nameservers', '127.0.0.1:1054', '--timeout', '200ms']);
  const { msg, route } = stubRoute(t, routing);
  const outcomes = await Promise.all([0, 1, 2].map(() => new Promise<string>((resolve) => {
    route.upstream.send({ query: msg, deadline: systemClock.now() + route.timeoutMs, resolve: () => resolve('answered'), reject: (reason) => resolve(reason) });
  })));
  t.same(outcomes, ['timeout', 'timeout', 'timeout'], 'the servers were down');
  t.equal(route.upstream.health.state, 'failing', 'three failures in a row: failing');
  sim.faults.dropAll = false;
  // No client asks anything from here on; a probe once a second would find the servers within a few seconds.
  t.ok(await until(() => route.upstream.health.healthy, 200, 20), 'healthy again once the servers answer, with no client traffic');
});

t.test('HostResolvers: a late answer from the server we asked is not counted as spoofed', async (t) => {
  // The first server is slower than the try timeout: the second one answers first and completes the exchange, and the
  // first one's genuine answer (right source, id and question) arrives after. RFC 5452's counter must tell an operator
  // of forgeries; a slow resolver is not one (TcpPool counts these as reason="late").
  const slow = await SimDnsServer.start({ handler: base, faults: { latencyMs: 400 } });
  const fast = await SimDnsServer.start({ handler: base });
  t.teardown(() => slow.close());
  t.teardown(() => fast.close());
  const up = resolvers([slow, fast], { attemptTimeoutMs: 150, attempts: 1 });
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com', { timeoutMs: 3000 }).done;
  t.same(addresses(r.answer), ['192.0.2.1']);
  t.equal(fast.stats.udpQueries, 1, 'the second server answered');
  t.ok(await until(() => slow.stats.answered === 1), 'the slow server sent its answer');
  await sleep(100);
  t.equal(up.counters.get('spoofed'), 0, 'nothing forged reached us: no reason="spoofed"');
});

t.test('HostResolvers: NOTIMP from one server moves on to the next, as glibc does', async (t) => {
  // glibc res_send (send_dg) goes to the next server on SERVFAIL, NOTIMP and REFUSED alike; a server that does not
  // implement a query must not decide the answer while another one can give it.
  const [a, b] = await twoServers(t, { rcode: 'NOTIMP' });
  const up = resolvers([a, b]);
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com').done;
  t.equal(rcodeOf(r.answer), 'NOERROR', 'the second server\'s answer');
  t.same(addresses(r.answer), ['192.0.2.1']);
  t.equal(b.stats.udpQueries, 1, 'the second server was asked');
});

t.test('routing: a stub domain whose first server stays silent is healthy again once its second server answers, with no client traffic', async (t) => {
  // The probe is one exchange with a deadline of PROBE_INTERVAL_MS (1 s), and the first try of an exchange waits the
  // try timeout (--timeout, 2 s by default) on the first server: the probe never gets past a silent first server.
  // A stub domain asked rarely then stays 'failing' (nodelocal_upstream_healthy 0, the alert) while its second server
  // answers, and every probe counts as a failed health check.
  const first = await SimDnsServer.start({ handler: staticHandler({ 'db.corp.example': { A: ['192.0.2.5'] } }), faults: { dropAll: true } });
  const second = await SimDnsServer.start({ handler: staticHandler({ 'db.corp.example': { A: ['192.0.2.5'] } }, { soaZone: 'corp.example' }), faults: { dropAll: true } });
  t.teardown(() => first.close());
  t.teardown(() => second.close());
  const routing = routingOf(t, ['--stub-domain', `corp.example=${first.host}:${first.port},${second.host}:${second.port}`, '--upstream-nameservers', '127.0.0.1:1054']);
  const { msg, route } = stubRoute(t, routing);
  // Both servers down: three exchanges time out (short deadlines, to keep the test short), the route is failing.
  const outcomes = await Promise.all([0, 1, 2].map(() => new Promise<string>((resolve) => {
    route.upstream.send({ query: msg, deadline: systemClock.now() + 300, resolve: () => resolve('answered'), reject: (reason) => resolve(reason) });
  })));
  t.same(outcomes, ['timeout', 'timeout', 'timeout'], 'the servers were down');
  t.equal(route.upstream.health.state, 'failing');
  // The second server comes back; the first stays silent (its host is gone). No client asks anything.
  second.faults.dropAll = false;
  t.ok(await until(() => route.upstream.health.healthy, 400, 20), 'healthy again once a server of the route answers the probe');
  t.ok(second.stats.udpQueries > 0, 'the probe reached the server that answers');
});

t.test('buildRouting: a reload that leaves a route\'s host servers and options as they were keeps its resolvers (their health, a silent server\'s place last); a changed route gets new ones', async (t) => {
  // A reload comes with any change of the config file, resolv.conf or the kube-dns ConfigMap, and with SIGHUP. New
  // resolvers start healthy and with the configured order: a route that was failing read as healthy again, and every
  // node's miss waited a try timeout on a dead first server once more, after every reload. The cluster pool and the
  // DNS-over-TLS upstreams are kept when their settings are unchanged.
  const external = dnsPacket.encode({ type: 'query', id: 0, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: 'www.example.com', type: 'A', class: 'IN' }] });
  const externalOf = (r: ReturnType<typeof buildRouting>): Upstream => r.router.route(parseQuery(external).key).upstream;
  const args = ['--stub-domain', 'corp.example=127.0.0.1:1055', '--upstream-nameservers', '127.0.0.1:1054'];
  const first = routingOf(t, args);
  const same = routingOf(t, args, first);
  t.equal(stubRoute(t, same).route.upstream, stubRoute(t, first).route.upstream, 'the stub domain\'s resolvers kept');
  t.equal(externalOf(same), externalOf(first), 'the external names\' resolvers kept');
  t.equal(same.upstreams.length, first.upstreams.length, 'each listed once');
  const moved = routingOf(t, ['--stub-domain', 'corp.example=127.0.0.1:1056', '--upstream-nameservers', '127.0.0.1:1054'], same);
  t.not(stubRoute(t, moved).route.upstream, stubRoute(t, same).route.upstream, 'a stub domain with another server: new resolvers');
  t.equal(externalOf(moved), externalOf(same), 'the unchanged route kept');
  const slower = routingOf(t, ['--stub-domain', 'corp.example=127.0.0.1:1056', '--upstream-nameservers', '127.0.0.1:1054', '--timeout', '1s'], moved);
  t.not(externalOf(slower), externalOf(moved), 'another try timeout: new resolvers');
  t.not(stubRoute(t, slower).route.upstream, stubRoute(t, moved).route.upstream);
});

t.test('buildRouting: the series each routing\'s upstreams publish (what a reload keeps on /metrics), kept routes\' included', async (t) => {
  // AgentMetrics.retain() drops every per-upstream series a reload's routing does not name here: a name missing
  // would drop the series of an upstream in use (its counters reset, its gauges gone).
  const sorted = (r: ReturnType<typeof buildRouting>): Record<string, string[]> => Object.fromEntries(Object.entries(r.series).map(([k, v]) => [k, [...v].sort()]));
  const tls = routingOf(t, ['--upstream-addr', '127.0.0.1:1053', '--upstream-nameservers', 'tls://127.0.0.1:1853@dns.example,tls://127.0.0.2', '--stub-domain', 'corp.example=127.0.0.1:1055', '--no-kube']);
  t.same(sorted(tls), {
    pool: ['tcp://127.0.0.1:1053', 'tls://127.0.0.1:1853@dns.example', 'tls://127.0.0.2:853'],
    host: ['stub:corp.example'],
    durations: ['127.0.0.1:1053', '127.0.0.1:1055', '127.0.0.1:1853', '127.0.0.2:853'],
    probe: ['127.0.0.1:1853', '127.0.0.2:853', 'stub:corp.example'],
  }, 'the cluster pool, each tls:// server, the stub domain and its server');
  const kept = routingOf(t, ['--upstream-addr', '127.0.0.1:1053', '--upstream-nameservers', 'tls://127.0.0.1:1853@dns.example,tls://127.0.0.2', '--no-kube'], tls);
  t.equal(kept.tls, tls.tls, 'the tls:// upstreams kept');
  t.same(sorted(kept), { ...sorted(tls), host: [], durations: ['127.0.0.1:1053', '127.0.0.1:1853', '127.0.0.2:853'], probe: ['127.0.0.1:1853', '127.0.0.2:853'] }, 'kept upstreams keep their series; the stub domain\'s go');
  const plain = routingOf(t, ['--upstream-nameservers', '127.0.0.1:1054,127.0.0.1:1057', '--no-kube'], kept);
  t.same(sorted(plain), { pool: [], host: ['host-resolvers'], durations: ['127.0.0.1:1054', '127.0.0.1:1057'], probe: ['host-resolvers'] }, 'local mode, plain host resolvers');
});

t.test('HostResolvers: a first server that never answers is not waited on by every new query', async (t) => {
  // The node's first resolver is gone (its host black-holes port 53) and the second answers. Every exchange starts at
  // server 0 (without `options rotate`), so every cache miss of the node waits a whole try timeout (2 s by default) on
  // the dead server before it is sent to the live one, for as long as the agent runs: the agent keeps no memory of which
  // server answers. CoreDNS forward, which NodeLocal DNSCache used, marks such a server down after max_fails and skips
  // it until its health check succeeds; systemd-resolved moves its current server. Here a few exchanges may still
  // find out, but not all of them.
  const [a, b] = await twoServers(t, { dropAll: true });
  const up = resolvers([a, b], { attemptTimeoutMs: 200 });
  t.teardown(() => up.close());
  const n = 8;
  for (let i = 0; i < n; i++) {
    const r = await ask(up, 'www.example.com', { timeoutMs: 3000 }).done;
    t.same(addresses(r.answer), ['192.0.2.1'], `query ${i} answered by the live server`);
  }
  t.equal(b.stats.udpQueries, n, 'the live server answered every query');
  t.ok(a.stats.udpQueries < n, `the silent server was not asked first by every query (asked ${a.stats.udpQueries} of ${n} times)`);
  t.ok(up.counters.get('attemptTimeouts') < n, `not every query waited out a try timeout (${up.counters.get('attemptTimeouts')} of ${n})`);
});

t.test('HostResolvers: the probe of a failing route counts its failed checks where it was told to', async (t) => {
  const sim = await SimDnsServer.start({ handler: base, faults: { dropAll: true } });
  t.teardown(() => sim.close());
  const probeCounters = new Counters(PROBE_COUNTERS);
  const up = resolvers([sim], { attemptTimeoutMs: 100, attempts: 1, probeQuery: queryBytes('.'), probeCounters });
  t.teardown(() => up.close());
  for (let i = 0; i < 3; i++) t.equal((await ask(up, 'www.example.com', { timeoutMs: 150 }).done).reason, 'timeout');
  t.equal(up.health.state, 'failing');
  t.ok(await until(() => probeCounters.get('failures') >= 1, 100, 20), 'coredns_forward_healthcheck_failures_total counts the probe that timed out');
});

t.test('HostResolvers: a server moved back for its silence is rechecked beside client queries and takes its place back once it answers', async (t) => {
  const [a, b] = await twoServers(t, { dropAll: true });
  const up = resolvers([a, b], { attemptTimeoutMs: 150 });
  t.teardown(() => up.close());
  for (let i = 0; i < 2; i++) t.same(addresses((await ask(up, 'www.example.com', { timeoutMs: 3000 }).done).answer), ['192.0.2.1']);
  t.equal(a.stats.udpQueries, 2, 'two try timeouts in a row at the first server');
  t.same(addresses((await ask(up, 'www.example.com').done).answer), ['192.0.2.1']);
  t.equal(a.stats.udpQueries, 2, 'then it is asked after the second, which answers');
  a.faults.dropAll = false;
  await sleep(1100);
  const timeouts = up.counters.get('attemptTimeouts');
  t.same(addresses((await ask(up, 'www.example.com').done).answer), ['192.0.2.1'], 'answered by the second server without waiting');
  t.ok(await until(() => a.stats.answered === 1 && up.inFlight === 0), 'a copy of the query rechecked the first server');
  t.equal(up.counters.get('attemptTimeouts'), timeouts, 'nobody waited a try timeout');
  const bBefore = b.stats.udpQueries;
  t.same(addresses((await ask(up, 'www.example.com').done).answer), ['192.0.2.1']);
  t.equal(a.stats.answered, 2, 'the first server is asked first again');
  t.equal(b.stats.udpQueries, bBefore);
  t.equal(up.counters.get('answered'), 5, 'the recheck is no exchange of its own');
  t.equal(up.health.state, 'healthy');
});

t.test('HostResolvers: a quick SERVFAIL from the last server does not cut short an earlier try still listening', async (t) => {
  // One round: a slow first server (its try times out first), then one that says SERVFAIL at once. The first server's
  // answer comes within the time the last try would have waited had it been silent: it is the one passed on.
  const slow = await SimDnsServer.start({ handler: base, faults: { latencyMs: 250 } });
  const failing = await SimDnsServer.start({ handler: base, faults: { rcode: 'SERVFAIL' } });
  t.teardown(() => slow.close());
  t.teardown(() => failing.close());
  const up = resolvers([slow, failing], { attemptTimeoutMs: 150, attempts: 1 });
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com', { timeoutMs: 3000 }).done;
  t.same(addresses(r.answer), ['192.0.2.1'], 'the slow server\'s answer, not the SERVFAIL');
  t.equal(failing.stats.udpQueries, 1, 'the second server was asked and said SERVFAIL');
  t.equal(up.openSockets, 0);

  // Slower than that: the SERVFAIL is passed on when the last try would have timed out, not at the deadline.
  slow.faults.latencyMs = 2000;
  const began = Date.now();
  const late = await ask(up, 'www.example.com', { timeoutMs: 3000 }).done;
  t.equal(rcodeOf(late.answer), 'SERVFAIL');
  t.ok(Date.now() - began < 1500, `passed on after the last try's timeout (${Date.now() - began} ms)`);
  t.equal(up.openSockets, 0);
});

t.test('HostResolvers: a TCP read carrying two answer frames is one answer of the try', async (t) => {
  // A server that truncates over UDP, then writes its TCP answer (SERVFAIL) twice in one write: the second frame
  // belongs to a try already over and must not be taken (or counted) again.
  const port = await sameUdpTcpPort(t, (udp, m, r) => {
    const reply = Buffer.from(m);
    reply[2] = 0x80 | 0x02 | (reply[2]! & 0x01); // QR, TC, RD kept
    udp.send(reply, r.port, r.address);
  }, (sock) => {
    sock.on('error', () => {});
    const decoder = new FrameDecoder((q) => {
      const reply = Buffer.from(q);
      reply[2] = 0x80 | (reply[2]! & 0x01);
      reply[3] = 0x80 | 2; // RA, SERVFAIL
      sock.write(Buffer.concat([frame(reply), frame(reply)]));
    });
    sock.on('data', (chunk: Buffer) => decoder.push(chunk));
  });
  const good = await SimDnsServer.start({ handler: base });
  t.teardown(() => good.close());
  const up = new HostResolvers({ servers: [{ host: '127.0.0.1', port }, { host: good.host, port: good.port }], attemptTimeoutMs: 1000, attempts: 1 });
  t.teardown(() => up.close());
  const r = await ask(up, 'www.example.com').done;
  t.same(addresses(r.answer), ['192.0.2.1'], 'the second server answered');
  t.equal(up.counters.get('tcpFallbacks'), 1);
  t.equal(up.counters.get('responsesServfail'), 1, 'one SERVFAIL counted');
  t.equal(up.counters.get('spoofed'), 0);
});

/**
 * A UDP socket and a TCP listener on one ephemeral port of 127.0.0.1 (closed at teardown). The TCP listener goes
 * first and UDP follows on its port; a port some other socket already holds (an outgoing connection's local port
 * on a busy machine) is given up and another one tried.
 */
async function sameUdpTcpPort(
  t: Test,
  onUdp: (udp: dgram.Socket, m: Buffer, r: dgram.RemoteInfo) => void,
  onConnection: (sock: net.Socket) => void,
): Promise<number> {
  for (let tries = 0; ; tries++) {
    const tcp = net.createServer(onConnection);
    const udp = dgram.createSocket('udp4');
    try {
      await new Promise<void>((resolve, reject) => { tcp.once('error', reject); tcp.listen(0, '127.0.0.1', resolve); });
      const port = (tcp.address() as net.AddressInfo).port;
      await new Promise<void>((resolve, reject) => { udp.once('error', reject); udp.bind(port, '127.0.0.1', resolve); });
      udp.on('message', (m, r) => onUdp(udp, m, r));
      t.teardown(() => { udp.close(); tcp.close(); });
      return port;
    } catch (err) {
      tcp.close();
      try { udp.close(); } catch { /* never bound */ }
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || tries >= 20) throw err;
    }
  }
}

/** What test/helpers/netns-host-resolvers.ts reports. */
interface NetnsOutcome {
  outcome?: string;
  host?: string;
  udp?: number[];
  tcp?: number[];
  sent?: number;
  attemptErrors?: number;
  attemptNoFds?: number;
  attemptTimeouts?: number;
  failovers?: number;
  connectFailures?: number;
  connectNoFds?: number;
  /** underFewFds: the outcome of asking again once the descriptors are back. */
  after?: string;
  warnings?: string[];
  started?: Record<string, string>;
  error?: string;
}

/**
 * A network namespace of the test's own (deleted at teardown) with lo up, `ip` inside it, and a run of
 * test/helpers/netns-host-resolvers.ts there; null (the test planned as skipped) without root or namespaces.
 */
function netnsRig(t: Test, tag: string): { ns: string; ip: (...args: string[]) => string; run: (...args: string[]) => NetnsOutcome } | null {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) {
    t.plan(0, 'needs root on Linux (ip netns)');
    return null;
  }
  const ns = `hf-${tag}-${process.pid}`;
  const ip = (...args: string[]): string => {
    const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 });
    if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr || r.error?.message || `status ${r.status}`}`);
    return r.stdout;
  };
  try {
    ip('netns', 'add', ns);
  } catch (err) {
    t.plan(0, `no network namespace: ${(err as Error).message}`);
    return null;
  }
  t.teardown(() => {
    spawnSync('ip', ['netns', 'del', ns], { timeout: 10_000 });
  });
  // lo carries the namespace's traffic to its own addresses.
  ip('-n', ns, 'link', 'set', 'lo', 'up');
  const helper = fileURLToPath(new URL('./helpers/netns-host-resolvers.ts', import.meta.url));
  const loader = import.meta.resolve('@tapjs/typescript/import');
  const run = (...args: string[]): NetnsOutcome => {
    const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, `--import=${loader}`, helper, ...args], {
      encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', TS_NODE_TRANSPILE_ONLY: '1' },
    });
    const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
    return line !== undefined ? (JSON.parse(line) as NetnsOutcome) : { error: `no output: ${r.stderr} ${r.error?.message ?? ''}` };
  };
  return { ns, ip, run };
}

/** netnsRig with a veth v0 holding fe80::53, and v0's interface index. */
function linkLocalRig(t: Test, tag: string): { run: (...args: string[]) => NetnsOutcome; index: string } | null {
  const rig = netnsRig(t, tag);
  if (rig === null) return null;
  const { ns, ip, run } = rig;
  ip('-n', ns, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1');
  ip('-n', ns, 'link', 'set', 'v0', 'up');
  ip('-n', ns, 'link', 'set', 'v1', 'up');
  ip('-n', ns, 'addr', 'add', 'fe80::53/64', 'dev', 'v0', 'nodad');
  const index = /^(\d+):/.exec(ip('-n', ns, '-o', 'link', 'show', 'v0'))?.[1];
  t.ok(index !== undefined, 'v0 has an index');
  return { run, index: index! };
}

t.test('HostResolvers: a link-local nameserver whose zone is an interface index (fe80::53%3, as systemd-resolved writes it) is reached over UDP and TCP, as through its name', async (t) => {
  // glibc reads "%3" as interface index 3 (__inet6_scopeid_pton); Node's sockets take only a name there and send
  // with scope 0 (EINVAL): every try to such a server failed at once, and a node whose only resolver it is got
  // SERVFAIL for every external name.
  const rig = linkLocalRig(t, 'scope');
  if (rig === null) return;
  const { run, index } = rig;
  const byName = run('scope', 'v0');
  t.equal(byName.outcome, 'answer rcode=0 ancount=1', `by name: ${JSON.stringify(byName)}`);
  const byIndex = run('scope', index);
  t.equal(byIndex.outcome, 'answer rcode=0 ancount=1', `by index: ${JSON.stringify(byIndex)}`);
  t.same(byIndex.udp, [1], 'asked over UDP (TC=1)');
  t.same(byIndex.tcp, [1], 'then over TCP');
  t.equal(byIndex.attemptErrors, 0);
});

t.test('TcpPool: a cluster DNS at a link-local address whose zone is an interface index ([fe80::53%3]:53) is connected to, as through its name', async (t) => {
  // --upstream-addr takes a zone as a name or an index (addr.ts); Node's net.connect reads it with if_nametoindex()
  // only, so "%3" went out with scope 0: every connect failed (EINVAL) and every cluster name got SERVFAIL.
  const rig = linkLocalRig(t, 'pool');
  if (rig === null) return;
  const byName = rig.run('pool', 'v0');
  t.equal(byName.outcome, 'answer rcode=0 ancount=1', `by name: ${JSON.stringify(byName)}`);
  const byIndex = rig.run('pool', rig.index);
  t.equal(byIndex.outcome, 'answer rcode=0 ancount=1', `by index: ${JSON.stringify(byIndex)}`);
  t.same(byIndex.tcp, [1], 'asked over TCP');
  t.equal(byIndex.connectFailures, 0);
});

t.test('listeners and the ops HTTP server bound the plain way (--no-reuse-port, no koffi) on a link-local address whose zone is an interface index start, as through its name', async (t) => {
  // --listen and --metrics-listen-address take a zone as a name or an index (addr.ts), and the SO_REUSEPORT bind
  // (reuseport.ts sockaddr) reads either; Node's bind() reads a name only, so "%3" bound with scope 0: EINVAL at start.
  const rig = linkLocalRig(t, 'listen');
  if (rig === null) return;
  const want = { udp: 'ok', tcp: 'ok', http: 'ok' };
  const byName = rig.run('listen', 'v0');
  t.same(byName.started, want, `by name: ${JSON.stringify(byName)}`);
  const byIndex = rig.run('listen', rig.index);
  t.same(byIndex.started, want, `by index: ${JSON.stringify(byIndex)}`);
});

t.test('dialableHost: an interface index names its interface when that interface has no IPv6 address (address generation off)', async (t) => {
  // os.networkInterfaces() lists an interface only through its addresses, and its IPv6 ones alone carry the index
  // (scopeid): with IPv6 address generation off (addrgenmode none) the index was found nowhere and stayed "%N",
  // which Node's sockets refuse (EINVAL).
  const rig = netnsRig(t, 'ifindex');
  if (rig === null) return;
  const { ns, ip, run } = rig;
  // A veth pair (no dummy driver on every kernel): d0 makes no IPv6 address, its peer does.
  ip('-n', ns, 'link', 'add', 'd0', 'type', 'veth', 'peer', 'name', 'd1');
  ip('-n', ns, 'link', 'set', 'd0', 'addrgenmode', 'none');
  ip('-n', ns, 'link', 'set', 'd0', 'up');
  ip('-n', ns, 'link', 'set', 'd1', 'up');
  t.notMatch(ip('-n', ns, '-6', '-o', 'addr', 'show', 'dev', 'd0'), /inet6/, 'd0 has no IPv6 address');
  const index = /^(\d+):/.exec(ip('-n', ns, '-o', 'link', 'show', 'd0'))?.[1];
  t.ok(index !== undefined, 'd0 has an index');
  const r = run('dialable', index!);
  t.equal(r.host, 'fe80::53%d0', `the index became the name: ${JSON.stringify(r)}`);
  t.equal(run('dialable', 'd0').host, 'fe80::53%d0', 'a name stays as it is');
  t.equal(run('dialable', '999').host, 'fe80::53%999', 'an index no interface has stays as it is');
});

t.test('HostResolvers: a try that fails for want of a file descriptor (EMFILE) is counted as such, not as any error', async (t) => {
  // The process out of descriptors (a leak, a flood of TCP clients, a low LimitNOFILE): every try fails at once
  // and the node's external names get SERVFAIL. Counted only as reason="error", beside ICMP errors and resets, with
  // a debug line: nothing told an operator the agent itself was out of descriptors. Run in a child under a small
  // `ulimit -n` (the built dist/), every descriptor it may open taken before it asks a resolver of its own.
  const got = underFewFds(
    `import { HostResolvers } from ${JSON.stringify(distPath('src/upstream/host-resolvers.js'))};`,
    'const up = new HostResolvers({ servers: [{ host: sim.host, port: sim.port }], attemptTimeoutMs: 1000, attempts: 1 });',
    { udp: true, tcp: false },
  );
  t.equal(got.outcome, 'network', `the try failed at once: ${JSON.stringify(got)}`);
  t.same(got.udp, [0], 'nothing reached the server');
  t.equal(got.attemptNoFds, 1, 'counted as a try failed for want of a descriptor');
  t.equal(got.attemptErrors, 0, 'not as any other error');
});

t.test('TcpPool: a connect that fails for want of a file descriptor (EMFILE) says the agent is out of descriptors, not that the server is unreachable', async (t) => {
  // The process out of descriptors: every connect to the cluster DNS fails at once. It was logged as the cluster DNS
  // being unreachable and counted with refused connects: an operator looked at kube-dns, not at the agent's limit.
  const got = underFewFds(
    `import { TcpPool } from ${JSON.stringify(distPath('src/upstream/tcp-pool.js'))};`,
    'const up = new TcpPool({ server: { host: sim.host, port: sim.port }, connections: 1, logger });',
    { udp: false, tcp: true },
  );
  t.equal(got.outcome, 'network', `the query failed at once: ${JSON.stringify(got)}`);
  t.same(got.tcp, [0], 'nothing reached the server');
  t.equal(got.connectNoFds, 1, 'counted as a connect failed for want of a descriptor');
  t.equal(got.connectFailures, 0, 'not as the server failing the connect');
  const warnings = got.warnings ?? [];
  t.ok(warnings.some((w) => /out of file descriptors/.test(w)), `a warning says the agent is out of file descriptors: ${JSON.stringify(warnings)}`);
  t.notOk(warnings.some((w) => /unreachable/.test(w)), 'none says the server is unreachable');
  t.equal(got.after, 'answer', 'descriptors back: answered once its backoff has passed, the pool does not stay away');
});

function distPath(path: string): string {
  return fileURLToPath(new URL(`../dist/${path}`, import.meta.url));
}

/**
 * Runs, in a child under `ulimit -n 64` (the built dist/), a SimDnsServer (`listen`) and an upstream (`make`, as
 * `up`, its warnings in `logger`), every descriptor the child may open taken, and one query through it: the outcome,
 * the server's query counts and the upstream's counters.
 */
function underFewFds(imports: string, make: string, listen: { udp: boolean; tcp: boolean }): NetnsOutcome {
  const script = `
    import { closeSync, openSync } from 'node:fs';
    import { SimDnsServer, staticHandler } from ${JSON.stringify(distPath('testkit/dns-server.js'))};
    ${imports}
    const sim = await SimDnsServer.start({ ...${JSON.stringify(listen)}, handler: staticHandler({ 'www.example.com': { A: ['192.0.2.1'] } }) });
    const warnings = [];
    const none = () => {};
    const logger = { debug: none, info: none, error: none, warn: (msg, fields) => warnings.push(msg + ' ' + JSON.stringify(fields ?? {})) };
    ${make}
    const taken = [];
    try { for (let i = 0; i < 4096; i++) taken.push(openSync('/dev/null', 'r')); } catch {}
    const query = Buffer.from('00000100000100000000000003777777076578616d706c6503636f6d0000010001', 'hex');
    const ask = () => new Promise((resolve) => up.send({ query, deadline: Date.now() + 3000, resolve: () => resolve('answer'), reject: resolve }));
    const outcome = await ask();
    const counts = { udp: [sim.stats.udpQueries], tcp: [sim.stats.tcpQueries], warnings, ...up.counters.snapshot() };
    // Descriptors back: asked again (bounded, 5 s of tries past the backoff), to see the shortage outlasted by nothing.
    for (const fd of taken) closeSync(fd);
    let after = 'not asked';
    for (let i = 0; i < 50 && after !== 'answer'; i++) {
      after = await ask();
      if (after !== 'answer') await new Promise((r) => setTimeout(r, 100));
    }
    process.stdout.write(JSON.stringify({ outcome, after, ...counts }) + '\\n');
    process.exit(0);
  `;
  const r = spawnSync('bash', ['-c', 'ulimit -n 64 && exec "$@"', 'bash', process.execPath, '--input-type=module', '-e', script], {
    encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL',
  });
  const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
  return (line !== undefined ? JSON.parse(line) : { error: `no output: ${r.stderr}` }) as NetnsOutcome;
}

t.test('HostResolvers: a datagram the kernel refuses to send (a firewall rule: EPERM) fails its try at once, on to the next server', async (t) => {
  // dgram's send() without a callback drops a send error silently (no 'error' event): such a try waited out its
  // whole timeout for an answer to a query that never left, counted as a timeout, where glibc's
  // sendto() error moves on to the next server at once.
  const rig = netnsRig(t, 'eperm');
  if (rig === null) return;
  const ipt = spawnSync('ip', ['netns', 'exec', rig.ns, 'iptables', '-A', 'OUTPUT', '-p', 'udp', '--dport', '5301', '-j', 'DROP'], { encoding: 'utf8', timeout: 10_000 });
  if (ipt.status !== 0) {
    t.plan(0, `no iptables in the namespace: ${ipt.stderr || ipt.error?.message || ''}`);
    return;
  }
  const r = rig.run('blocked');
  t.equal(r.outcome, 'answer rcode=0 ancount=1', `the second server answered: ${JSON.stringify(r)}`);
  t.same(r.udp, [0, 1], 'nothing reached the first server');
  t.equal(r.attemptErrors, 1, 'the refused send failed its try');
  t.equal(r.attemptTimeouts, 0, 'no try waited out its timeout');
  t.equal(r.failovers, 1);
});

t.test('HostResolvers: a server that does not know EDNS (FORMERR without OPT) is asked again without it (RFC 6891 7), not its FORMERR passed on', async (t) => {
  // Our queries always carry OPT; a resolver from before EDNS (an old appliance behind a stub domain) answers them
  // FORMERR, echoing the question, with no OPT. glibc sends it no OPT and gets its answer.
  let withOpt = 0;
  let withoutOpt = 0;
  const udp = dgram.createSocket('udp4');
  udp.on('message', (m, r) => {
    const q = dnsPacket.decode(m);
    const hasOpt = m.readUInt16BE(10) > 0;
    if (hasOpt) withOpt++;
    else withoutOpt++;
    const reply = hasOpt
      ? dnsPacket.encode({ type: 'response', id: q.id, flags: dnsPacket.RECURSION_DESIRED | 1, questions: q.questions })
      : dnsPacket.encode({
        type: 'response', id: q.id, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE, questions: q.questions,
        answers: [{ name: q.questions![0]!.name, type: 'A', ttl: 60, data: '192.0.2.7' }],
      });
    udp.send(reply, r.port, r.address);
  });
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve));
  t.teardown(() => udp.close());
  const up = new HostResolvers({ servers: [{ host: '127.0.0.1', port: udp.address().port }], attemptTimeoutMs: 1000, attempts: 1 });
  t.teardown(() => up.close());
  const counted = (): number | undefined => (up.counters.snapshot() as Record<string, number>)['ednsFallbacks'];
  t.equal(counted(), 0, 'a counter of EDNS fallbacks (nodelocal_upstream_edns_fallbacks_total)');
  const query = upstreamQuery(parseQuery(questionMessage(nameToWire('old.corp.example'), QType.A)));
  const got = await new Promise<Buffer | UpstreamFailure>((resolve) => {
    up.send({ query, deadline: systemClock.now() + 2000, resolve, reject: resolve });
  });
  t.ok(Buffer.isBuffer(got), `answered, not failed: ${Buffer.isBuffer(got) ? 'answer' : got}`);
  const answer = Buffer.isBuffer(got) ? dnsPacket.decode(got) : null;
  t.equal(rcodeOf(answer), 'NOERROR');
  t.same(addresses(answer), ['192.0.2.7']);
  t.equal(withOpt, 1, 'asked with EDNS once');
  t.equal(withoutOpt, 1, 'then without');
  t.equal(counted(), 1, 'the fallback counted: an operator can tell why every miss there costs two round trips');
});

/** A UDP server on 127.0.0.1 that hands every query (and whether it carried OPT) to `onQuery`, which answers through `send`. */
async function ednsRig(t: Test, onQuery: (q: DecodedPacket, hasOpt: boolean, send: (reply: Buffer) => void) => void): Promise<number> {
  const udp = dgram.createSocket('udp4');
  udp.on('message', (m, r) => onQuery(dnsPacket.decode(m), m.readUInt16BE(10) > 0, (reply) => udp.send(reply, r.port, r.address)));
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve));
  t.teardown(() => udp.close());
  return udp.address().port;
}

const oldServerAnswer = (q: DecodedPacket): Buffer => dnsPacket.encode({
  type: 'response', id: q.id, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE, questions: q.questions,
  answers: [{ name: q.questions![0]!.name, type: 'A', ttl: 60, data: '192.0.2.7' }],
});

async function askOnce(up: HostResolvers, name: string): Promise<Buffer | UpstreamFailure> {
  const query = upstreamQuery(parseQuery(questionMessage(nameToWire(name), QType.A)));
  return new Promise<Buffer | UpstreamFailure>((resolve) => {
    up.send({ query, deadline: systemClock.now() + 3000, resolve, reject: resolve });
  });
}

t.test('HostResolvers: a second FORMERR without OPT, to an earlier EDNS try at the server already asked again without it, is not passed on', async (t) => {
  // The first try with OPT is lost (held here) and times out; the second gets FORMERR and the server is asked without
  // OPT. Then the first try's FORMERR arrives too: the retry without OPT is under way, and that FORMERR is stale.
  // Each reply goes back to the socket its query came from (tries may be on different shared sockets).
  let held: { q: DecodedPacket; send: (reply: Buffer) => void } | null = null;
  let withoutOpt = 0;
  const port = await ednsRig(t, (q, hasOpt, send) => {
    const formerr = (p: DecodedPacket): Buffer => dnsPacket.encode({ type: 'response', id: p.id, flags: dnsPacket.RECURSION_DESIRED | 1, questions: p.questions });
    if (!hasOpt) {
      withoutOpt++;
      send(oldServerAnswer(q));
    } else if (held === null) {
      held = { q, send };
    } else {
      send(formerr(q));
      held.send(formerr(held.q));
    }
  });
  const up = new HostResolvers({ servers: [{ host: '127.0.0.1', port }], attemptTimeoutMs: 300, attempts: 2 });
  t.teardown(() => up.close());
  const got = await askOnce(up, 'old.corp.example');
  const answer = Buffer.isBuffer(got) ? dnsPacket.decode(got) : null;
  t.equal(rcodeOf(answer), 'NOERROR', `the answer without EDNS, not the stale FORMERR: ${Buffer.isBuffer(got) ? rcodeOf(answer) : got}`);
  t.same(addresses(answer), ['192.0.2.7']);
  t.equal(withoutOpt, 1, 'asked without EDNS once');
});

/** A server from before EDNS: a query without OPT is answered (and counted), one with OPT goes to `onOpt`. */
async function preEdnsRig(t: Test, onOpt: (q: DecodedPacket, send: (reply: Buffer) => void) => void): Promise<{ port: number; withoutOpt: () => number }> {
  let withoutOpt = 0;
  const port = await ednsRig(t, (q, hasOpt, send) => {
    if (hasOpt) {
      onOpt(q, send);
      return;
    }
    withoutOpt++;
    send(oldServerAnswer(q));
  });
  return { port, withoutOpt: () => withoutOpt };
}

/** Asks the rig's server (through HostResolvers of its own) for old.corp.example: answered, by one query without OPT. */
async function answeredWithoutEdns(t: Test, rig: { port: number; withoutOpt: () => number }): Promise<Counters<HostResolversCounter>> {
  const counters = new Counters(hostResolversCounters);
  const up = new HostResolvers({ servers: [{ host: '127.0.0.1', port: rig.port }], attemptTimeoutMs: 1000, attempts: 1, counters });
  t.teardown(() => up.close());
  const got = await askOnce(up, 'old.corp.example');
  const answer = Buffer.isBuffer(got) ? dnsPacket.decode(got) : null;
  t.equal(rcodeOf(answer), 'NOERROR', `answered without EDNS: ${Buffer.isBuffer(got) ? rcodeOf(answer) : got}`);
  t.same(addresses(answer), ['192.0.2.7']);
  t.equal(rig.withoutOpt(), 1, 'asked without EDNS once');
  return counters;
}

t.test('HostResolvers: a server that does not know EDNS and answers FORMERR with no question (QDCOUNT 0) is asked again without OPT, not waited out as spoofed', async (t) => {
  const rig = await preEdnsRig(t, (q, send) => {
    // The header alone: id, QR, RD, FORMERR; every count 0.
    const bare = Buffer.alloc(12);
    bare.writeUInt16BE(q.id!, 0);
    bare.writeUInt16BE(0x8101, 2);
    send(bare);
  });
  const counters = await answeredWithoutEdns(t, rig);
  t.equal(counters.get('spoofed'), 0, 'the FORMERR was not taken for a spoofed answer');
});

t.test('HostResolvers: a server found not to know EDNS (FORMERR) is asked without OPT by the exchanges after, not made to refuse each one first; NOTIMP is not remembered', async (t) => {
  // Only the exchange that met the FORMERR remembered it: every later miss to that server cost a FORMERR round trip
  // and a second query. glibc keeps RES_F_EDNS0ERR in its resolver state; Unbound keeps a server's EDNS lameness
  // in its infrastructure cache for 15 minutes. NOTIMP is a weaker sign (RFC 6891 7 says FORMERR): a modern server
  // sending it by mistake must not lose DO and large answers for 15 minutes, so only its own exchange retries.
  for (const [rcode, remembered] of [[1, true], [4, false]] as const) {
    let withOpt = 0;
    const { port, withoutOpt } = await preEdnsRig(t, (q, send) => {
      withOpt++;
      send(dnsPacket.encode({ type: 'response', id: q.id, flags: dnsPacket.RECURSION_DESIRED | rcode, questions: q.questions }));
    });
    const counters = new Counters(hostResolversCounters);
    const up = new HostResolvers({ servers: [{ host: '127.0.0.1', port }], attemptTimeoutMs: 1000, attempts: 1, counters });
    t.teardown(() => up.close());
    for (const name of ['old.corp.example', 'other.corp.example', 'third.corp.example']) {
      const got = await askOnce(up, name);
      t.same(addresses(Buffer.isBuffer(got) ? dnsPacket.decode(got) : null), ['192.0.2.7'], `rcode ${rcode}: ${name} answered`);
    }
    t.equal(withOpt, remembered ? 1 : 3, `rcode ${rcode}: asked with EDNS by ${remembered ? 'the first exchange only' : 'every exchange'}`);
    t.equal(withoutOpt(), 3, `rcode ${rcode}: each exchange asked once without`);
    t.equal(counters.get('ednsFallbacks'), remembered ? 1 : 3, `rcode ${rcode}: fallbacks`);
  }
});

t.test('HostResolvers: a server that does not know EDNS and answers NOTIMP without OPT (RFC 2671 5.3) is asked again without it, not its NOTIMP passed on', async (t) => {
  // A responder that does not know the extensions may answer NOTIMP as well as FORMERR (RFC 2671 5.3; BIND retries
  // without EDNS on both); one that knows EDNS puts an OPT in every answer to a query with one (RFC 6891 7). NOTIMP
  // moved on to the next server, and with none left the client got SERVFAIL for a name the server would answer.
  const rig = await preEdnsRig(t, (q, send) => {
    send(dnsPacket.encode({ type: 'response', id: q.id, flags: dnsPacket.RECURSION_DESIRED | 4, questions: q.questions }));
  });
  const counters = await answeredWithoutEdns(t, rig);
  t.equal(counters.get('ednsFallbacks'), 1);
});
