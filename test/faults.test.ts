// The fault matrix, from the client's side: a real agent (in process, its
// real sockets) between a plain UDP client and fake upstreams that misbehave
// on command (testkit/fault-dns-server.ts, SimDnsServer, FakeApiServer).
// Every fault must end in an answer the client can use, well before its own
// 5 s timeout: the right data, a stale answer, or SERVFAIL; never a hang,
// never a wrong or invented answer, and nothing wrong left in the cache.
//
//   kube-dns closes mid-query     -> stale or SERVFAIL; later queries work after the reconnect
//   kube-dns answers garbage      -> stale or SERVFAIL; nothing cached
//   kube-dns answers slowly       -> SERVFAIL at the deadline; the late answer is not cached
//   kube-dns answers another id   -> stale or SERVFAIL; nothing cached
//   host resolver loses 50%       -> answers arrive through retries within the budget
//   API server flaps, kube-dns down (fallback on) -> the view keeps serving, no invented NXDOMAIN
//   link or rules removed behind the agent's back -> not here: test/iface.test.ts ("check() repairs
//     ...", in network namespaces) asserts the repair of the link, addresses and rules component by
//     component, and test/e2e-node.test.ts the client-visible fail-open around them; a
//     client-visible repair test needs e2e-node's namespaces and is listed as open in the notes.
// Other faults asserted elsewhere from the client's side: cluster DNS refusing connections
// (agent.test.ts), deadline SERVFAIL not cached (agent.test.ts), malformed answers (agent.test.ts),
// spoofed host-resolver answers (agent.test.ts), kube-dns killed or black-holed with the view
// (fallback.test.ts).
import t from 'tap';
import type { Test } from 'tap';
import * as dnsPacket from 'dns-packet';
import { SimDnsServer, staticHandler } from '../testkit/dns-server.js';
import { FaultDnsServer } from '../testkit/fault-dns-server.js';
import { FakeApiServer } from '../testkit/fake-apiserver.js';
import { SAMPLE_RECORDS, loadSampleCluster, writeKubeconfig } from '../testkit/cluster.js';
import { startAgent, writeResolvConf, type TestAgent } from './helpers/agent.js';
import { buildQuery, sleep, udpExchange } from './helpers/dns-client.js';

const HOST = '127.0.36.1';
/** What a pod waits before its own retry: every answer must come before it. */
const CLIENT_TIMEOUT_MS = 5000;

interface Got {
  rcode: number | null;
  data: string[];
  ttl: number | null;
}

async function ask(a: TestAgent, name: string, type = 'A'): Promise<Got> {
  const id = Math.floor(Math.random() * 65536);
  const b = await udpExchange(a.target, buildQuery(name, { id, type }), CLIENT_TIMEOUT_MS);
  if (b === null) return { rcode: null, data: [], ttl: null };
  const p = dnsPacket.decode(b);
  if (p.id !== id) throw new Error(`answer with id ${p.id}, asked ${id}`);
  return {
    rcode: (p.flags ?? 0) & 0xf,
    data: (p.answers ?? []).map((r) => String((r as { data?: unknown }).data)).sort(),
    ttl: (p.answers?.[0] as { ttl?: number } | undefined)?.ttl ?? null,
  };
}

const NOERROR = 0;
const SERVFAIL = 2;
const NXDOMAIN = 3;

/** An agent whose cluster DNS is a FaultDnsServer (no view: faults of kube-dns alone). */
async function kubeDnsRig(t: Test, extra: string[] = []): Promise<{ a: TestAgent; kd: FaultDnsServer }> {
  const kd = await FaultDnsServer.start();
  const ext = await SimDnsServer.start({ handler: staticHandler({}) });
  const a = await startAgent(HOST, [
    '--upstream-addr', `127.0.0.1:${kd.port}`,
    '--upstream-nameservers', `127.0.0.1:${ext.port}`,
    '--no-kube',
    '--timeout', '500ms',
    ...extra,
  ]);
  t.teardown(async () => {
    await a.stop();
    await Promise.all([kd.close(), ext.close()]);
  });
  return { a, kd };
}

/** Caches `name` with a 1 s TTL and lets it expire, so only a stale answer can serve it. */
async function cacheThenExpire(t: Test, a: TestAgent, kd: FaultDnsServer, name: string, ip: string): Promise<void> {
  kd.mode = 'good';
  kd.ttl = 1;
  kd.records.set(name, [ip]);
  t.same((await ask(a, name)).data, [ip], `${name} cached while kube-dns is healthy`);
  await sleep(1300);
}

/** The three checks every misbehaving-kube-dns case shares: stale for a known name, SERVFAIL for a new one, recovery. */
async function kubeDnsFault(t: Test, mode: 'close' | 'garbage' | 'wrong-id'): Promise<void> {
  const { a, kd } = await kubeDnsRig(t);
  await cacheThenExpire(t, a, kd, 'known.default.svc.cluster.local', '10.96.7.1');
  kd.mode = mode;
  kd.records.set('fresh.default.svc.cluster.local', ['10.96.7.2']);
  const before = kd.tcpQueries;
  const stale = await ask(a, 'known.default.svc.cluster.local');
  t.equal(stale.rcode, NOERROR, `${mode}: a name the cache knew gets an answer`);
  t.same(stale.data, ['10.96.7.1'], `${mode}: the stale data`);
  t.equal(stale.ttl, 30, `${mode}: with the stale TTL (RFC 8767)`);
  const fresh = await ask(a, 'fresh.default.svc.cluster.local');
  t.equal(fresh.rcode, SERVFAIL, `${mode}: a name nobody can answer gets SERVFAIL, not a hang`);
  t.ok(kd.tcpQueries > before, `${mode}: kube-dns was asked (${kd.tcpQueries - before} queries)`);
  // kube-dns is well again: the next queries get the truth (reconnected, nothing bad cached).
  kd.mode = 'good';
  let again: Got = { rcode: null, data: [], ttl: null };
  for (let i = 0; i < 20 && !(again.rcode === NOERROR && again.data.length > 0); i++) {
    again = await ask(a, 'fresh.default.svc.cluster.local');
    if (again.rcode !== NOERROR) await sleep(300); // the pool may still be in its reconnect backoff (< 5 s)
  }
  t.same(again.data, ['10.96.7.2'], `${mode}: after kube-dns recovers, the name resolves (nothing bad was cached)`);
  const known = await ask(a, 'known.default.svc.cluster.local');
  t.same(known.data, ['10.96.7.1'], `${mode}: and the known name is answered`);
  // A query that waited out its deadline (garbage and a wrong id are dropped unread) opens RFC 8767's failure
  // recheck window: for 30 s the known name is answered stale at once, as BIND's stale-refresh-time does. A
  // closed connection is a fast failure (no window: asked again, refreshed) unless its re-sends and reconnect
  // backoff ran into the deadline, which a loaded machine can make happen: then the window, as for a timeout.
  if (mode === 'close') t.ok(known.ttl === 1 || known.ttl === 30, `close: refreshed (TTL 1) or within the window (30): ${known.ttl}`);
  else t.equal(known.ttl, 30, `${mode}: stale within the recheck window`);
}

t.test('kube-dns closes the connection mid-query: stale or SERVFAIL, then it works after the reconnect', (t) => kubeDnsFault(t, 'close'));

t.test('kube-dns answers garbage: stale or SERVFAIL, nothing cached', (t) => kubeDnsFault(t, 'garbage'));

t.test('kube-dns answers under another id: stale or SERVFAIL, nothing cached', (t) => kubeDnsFault(t, 'wrong-id'));

t.test('kube-dns answers past the deadline: SERVFAIL in bounded time; the late answer is not cached', async (t) => {
  const { a, kd } = await kubeDnsRig(t);
  await cacheThenExpire(t, a, kd, 'known.default.svc.cluster.local', '10.96.8.1');
  kd.mode = 'slow';
  kd.slowMs = 1500; // --timeout is 500ms
  kd.records.set('late.default.svc.cluster.local', ['10.96.8.2']);
  const stale = await ask(a, 'known.default.svc.cluster.local');
  t.same([stale.rcode, stale.data, stale.ttl], [NOERROR, ['10.96.8.1'], 30], 'a known name: the stale answer at the deadline');
  const late = await ask(a, 'late.default.svc.cluster.local');
  t.equal(late.rcode, SERVFAIL, 'a new name: SERVFAIL at the deadline, not a hang');
  // The truth changes before the late answer (carrying the old address) arrives; then kube-dns is fast again.
  kd.records.set('late.default.svc.cluster.local', ['10.96.8.3']);
  kd.mode = 'good';
  await sleep(1500);
  t.same((await ask(a, 'late.default.svc.cluster.local')).data, ['10.96.8.3'], 'the late answer was not cached: today\'s address');
  kd.records.set('other.default.svc.cluster.local', ['10.96.8.4']);
  t.same((await ask(a, 'other.default.svc.cluster.local')).data, ['10.96.8.4'], 'and no late answer was matched to another question');
});

t.test('the host resolver loses half its packets: answers still arrive through retries within the budget', async (t) => {
  // resolv.conf as kubelet writes it, the resolver on port 53 of its own loopback address.
  const lossy = await SimDnsServer.start({
    host: '127.0.36.2',
    port: 53,
    udp: true,
    handler: (q) => {
      const name = q.questions?.[0]?.name ?? '';
      return { answers: [{ type: 'A', name, ttl: 60, class: 'IN', data: '192.0.2.55' }] };
    },
    faults: { lossRate: 0.5 },
  });
  const kd = await SimDnsServer.start({ handler: staticHandler({}) });
  const a = await startAgent(HOST, [
    '--upstream-addr', `127.0.0.1:${kd.port}`,
    '--resolv-conf', writeResolvConf('nameserver 127.0.36.2\noptions timeout:1 attempts:5\n'),
    '--no-kube',
    '--timeout', '400ms',
  ]);
  t.teardown(async () => {
    await a.stop();
    await Promise.all([lossy.close(), kd.close()]);
  });
  const N = 40;
  const got = await Promise.all(Array.from({ length: N }, (_, i) => ask(a, `n${i}.lossy.example.org`)));
  const right = got.filter((g) => g.rcode === NOERROR && g.data.join() === '192.0.2.55').length;
  const servfail = got.filter((g) => g.rcode === SERVFAIL).length;
  t.comment(`${N} names: ${right} answered, ${servfail} SERVFAIL; the resolver saw ${lossy.stats.udpQueries} queries and dropped ${lossy.stats.dropped}`);
  t.equal(got.filter((g) => g.rcode === null).length, 0, 'every query answered before the client\'s timeout');
  t.equal(right + servfail, N, 'nothing but the right answer or SERVFAIL');
  // 5 tries of 400 ms (budget 2 s): all five lost is 1/32 per name; 30 of 40 right fails with odds below 1e-6.
  t.ok(right >= 30, `${right}/${N} answered through retries`);
  t.ok(lossy.stats.udpQueries > N, 'the agent retried');
});

t.test('the API server flaps while kube-dns is down: the view keeps serving, no NXDOMAIN for names it knew', async (t) => {
  const api = new FakeApiServer({ token: 'sample-token' });
  await api.start();
  loadSampleCluster(api);
  const kubeDns = await SimDnsServer.start({ handler: staticHandler(SAMPLE_RECORDS, { soaZone: 'cluster.local' }) });
  await kubeDns.stop();
  const external = await SimDnsServer.start({ handler: staticHandler({}) });
  const a = await startAgent(HOST, [
    '--upstream-addr', `127.0.0.1:${kubeDns.port}`,
    '--upstream-nameservers', `127.0.0.1:${external.port}`,
    '--kubeconfig', writeKubeconfig(api.url),
    '--timeout', '500ms',
  ]);
  t.teardown(async () => {
    await a.stop();
    await Promise.all([api.close(), kubeDns.close(), external.close()]);
  });
  for (let i = 0; i < 500 && a.agent.view?.synced !== true; i++) await sleep(20);
  t.equal(a.agent.view?.synced, true, 'the view synced');
  const known = Object.entries(SAMPLE_RECORDS).map(([name, r]) => ({ name, want: [...(r.A ?? [])].sort() }));
  let asked = 0;
  const wrong: string[] = [];
  const check = async (phase: string): Promise<void> => {
    const got = await Promise.all(known.map((k) => ask(a, k.name)));
    got.forEach((g, i) => {
      asked++;
      const k = known[i]!;
      if (g.rcode !== NOERROR || g.data.join() !== k.want.join()) wrong.push(`${phase}: ${k.name} -> rcode ${g.rcode} ${g.data.join()}`);
    });
  };
  // Down, up, a relist forced by 410 Gone, watches cut, errors from the API: the view must ride it out.
  for (let cycle = 0; cycle < 4; cycle++) {
    await api.down();
    await check(`cycle ${cycle}, API down`);
    await sleep(300);
    await check(`cycle ${cycle}, API still down`);
    await api.up();
    if (cycle % 2 === 1) {
      api.compact();
      api.closeWatches();
    } else {
      api.failNext(500, 'flapping', 2);
    }
    await check(`cycle ${cycle}, API back`);
    await sleep(300);
    await check(`cycle ${cycle}, API back a while`);
  }
  t.same(wrong.slice(0, 10), [], `every one of ${asked} answers for a name the view knew is right (no NXDOMAIN, no SERVFAIL)`);
  const absent = await ask(a, 'nope.shop.svc.cluster.local');
  t.equal(absent.rcode, NXDOMAIN, 'a name the synced view lacks is NXDOMAIN (the API was silent for far less than --max-api-silence)');
  t.equal(a.agent.view?.synced, true, 'still synced after the flapping');
});
