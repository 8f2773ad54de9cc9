// Cluster records on our own, end to end on loopback: the agent, a fake
// kube-apiserver speaking list/watch (testkit/fake-apiserver.ts), a fake
// kube-dns whose records are written out by hand from the DNS spec, and a
// fake host resolver. kube-dns dies, black-holes, comes back; the API server
// changes and goes away. Every cluster query must still get a correct answer.
import t from 'tap';
import type { Test } from 'tap';
import * as dnsPacket from 'dns-packet';
import { SimDnsServer, staticHandler } from '../testkit/dns-server.js';
import { responseFlags } from '../testkit/static-handler.js';
import { FakeApiServer, endpointSliceJson, serviceJson } from '../testkit/fake-apiserver.js';
import { SAMPLE_RECORDS, loadSampleCluster, writeKubeconfig } from '../testkit/cluster.js';
import { sleep, udpQuery } from './helpers/dns-client.js';
import { startAgent, type TestAgent } from './helpers/agent.js';
import { systemClock } from '../src/clock.js';

const HOST = '127.0.33.1';
const dataOf = (p: dnsPacket.Packet): string[] => (p.answers ?? []).map((a) => String((a as { data?: unknown }).data)).sort();
const rcodeOf = (p: dnsPacket.Packet): number => (p.flags ?? 0) & 0xf;

async function until(cond: () => boolean, ms = 10_000): Promise<boolean> {
  for (let waited = 0; waited < ms; waited += 20) {
    if (cond()) return true;
    await sleep(20);
  }
  return cond();
}

interface Rig {
  agent: TestAgent;
  api: FakeApiServer;
  kubeDns: SimDnsServer;
  external: SimDnsServer;
}

async function rig(t: Test, extra: string[] = []): Promise<Rig> {
  const api = new FakeApiServer({ token: 'sample-token' });
  await api.start();
  loadSampleCluster(api);
  const kubeDns = await SimDnsServer.start({ handler: staticHandler(SAMPLE_RECORDS, { soaZone: 'cluster.local', negativeTtl: 5 }) });
  const external = await SimDnsServer.start({ handler: staticHandler({ 'pay.example.com': { A: ['192.0.2.77'], ttl: 60 } }, { soaZone: 'example.com' }) });
  const agent = await startAgent(HOST, [
    '--upstream-addr', `127.0.0.1:${kubeDns.port}`,
    '--upstream-nameservers', `127.0.0.1:${external.port}`,
    '--kubeconfig', writeKubeconfig(api.url),
    ...extra,
  ]);
  t.teardown(async () => {
    await agent.stop();
    await Promise.all([api.close(), kubeDns.close(), external.close()]);
  });
  if (!(await until(() => agent.agent.view?.synced === true))) throw new Error('the view did not sync');
  return { agent, api, kubeDns, external };
}

const QUESTIONS: Array<[string, 'A' | 'AAAA']> = [
  ...Object.keys(SAMPLE_RECORDS).map((n): [string, 'A'] => [n, 'A']),
  ['web.shop.svc.cluster.local', 'AAAA'],
  ['cart.shop.svc.cluster.local', 'AAAA'],
  ['db-2.db.shop.svc.cluster.local', 'A'],
  ['nope.shop.svc.cluster.local', 'A'],
  ['web.noshop.svc.cluster.local', 'A'],
];

t.test('the view answers what the cluster DNS answers, and takes over at once when it dies', async (t) => {
  const r = await rig(t, ['--success-ttl', '1s', '--denial-ttl', '1s']);
  const viaKubeDns = new Map<string, dnsPacket.Packet>();
  for (const [name, type] of QUESTIONS) viaKubeDns.set(`${name}/${type}`, await udpQuery(r.agent.target, name, { type }));
  t.ok(r.kubeDns.stats.answered >= QUESTIONS.length, 'all forwarded to the fake kube-dns while it is healthy');

  await r.kubeDns.stop();
  await sleep(1100); // the cached answers expire (--success-ttl/--denial-ttl 1s): everything below is a miss
  for (const [name, type] of QUESTIONS) {
    const before = viaKubeDns.get(`${name}/${type}`)!;
    const after = await udpQuery(r.agent.target, name, { type, timeoutMs: 1800 });
    t.equal(rcodeOf(after), rcodeOf(before), `${name} ${type}: same rcode from the view`);
    t.same(dataOf(after), dataOf(before), `${name} ${type}: same records from the view`);
  }
  const never = await udpQuery(r.agent.target, 'cart.shop.svc.cluster.local', { type: 'A', timeoutMs: 1800 });
  t.same(dataOf(never), ['10.96.1.20']);
  t.equal(r.kubeDns.stats.answered, viaKubeDns.size, 'nothing more reached the dead kube-dns');
});

t.test('kube-dns killed in the middle of a query stream: every cluster query gets a correct answer, none waits for the deadline', async (t) => {
  // --timeout 5s, --fallback-after 500ms, clients give up after 2 s: an answer that waited for the deadline would be lost.
  const r = await rig(t, ['--timeout', '5s', '--fallback-after', '500ms', '--success-ttl', '1s', '--denial-ttl', '1s']);
  const names = Object.keys(SAMPLE_RECORDS);
  const pending: Array<Promise<[string, dnsPacket.Packet | null]>> = [];
  for (let i = 0; i < 120; i++) {
    if (i === 60) void r.kubeDns.stop();
    const name = names[i % names.length]!;
    pending.push(udpQuery(r.agent.target, name, { timeoutMs: 2000 }).then((p) => [name, p] as [string, dnsPacket.Packet], () => [name, null]));
    await sleep(15);
  }
  const results = await Promise.all(pending);
  const wrong = results.filter(([name, p]) => p === null || rcodeOf(p) !== 0 || JSON.stringify(dataOf(p)) !== JSON.stringify([...SAMPLE_RECORDS[name]!.A!].sort()));
  t.same(wrong.map(([name]) => name), [], 'every answer present and correct');
  t.ok(r.agent.agent.resolver.counters.get('localOnFailure') + r.agent.agent.resolver.counters.get('localFailing') + r.agent.agent.resolver.counters.get('localLate') > 0, 'some came from the view');
});

t.test('a black-hole kube-dns (accepts, never answers): answers from the view after --fallback-after, not the deadline', async (t) => {
  const r = await rig(t, ['--timeout', '10s', '--fallback-after', '500ms']);
  r.kubeDns.faults.dropAll = true;
  // The client gives up long before the agent's 10 s deadline: only the fallback can answer in time.
  const answers = await Promise.all(
    ['web.shop.svc.cluster.local', 'db.shop.svc.cluster.local', 'db-0.db.shop.svc.cluster.local'].map((n) => udpQuery(r.agent.target, n, { timeoutMs: 4000 })),
  );
  t.same(answers.map(dataOf), [['10.96.1.10'], ['10.244.1.5', '10.244.2.6'], ['10.244.1.5']]);
  t.equal(r.agent.agent.resolver.counters.get('localLate'), 3, 'each answered as late, from the view');
});

t.test('kube-dns comes back: the probe sees it and forwarding resumes', async (t) => {
  const r = await rig(t, ['--timeout', '500ms']);
  await r.kubeDns.stop();
  const during = await udpQuery(r.agent.target, 'web.shop.svc.cluster.local');
  t.same(dataOf(during), ['10.96.1.10'], 'answered from the view while kube-dns is down');
  t.ok(await until(() => r.agent.agent.resolver.counters.get('localFailing') + r.agent.agent.resolver.counters.get('localOnFailure') > 0));
  await r.kubeDns.restart();
  const back = await until(() => r.kubeDns.stats.answered > 0, 10_000);
  t.ok(back, 'the health probe reached kube-dns again');
  // Health needs an answer; the probe's is enough. A new name then goes to kube-dns again.
  t.ok(await until(() => r.agent.agent.clusterHealth === 'healthy'), 'healthy again');
  const before = r.kubeDns.stats.byName.get('cart.shop.svc.cluster.local') ?? 0;
  const fresh = await udpQuery(r.agent.target, 'cart.shop.svc.cluster.local');
  t.same(dataOf(fresh), ['10.96.1.20']);
  t.equal(r.kubeDns.stats.byName.get('cart.shop.svc.cluster.local') ?? 0, before + 1, 'forwarded to kube-dns again');
});

t.test('the view follows the API live; the API server going away keeps the last view serving', async (t) => {
  const r = await rig(t);
  await r.kubeDns.stop();
  r.api.put('services', serviceJson('shop', 'search', { clusterIP: '10.96.1.30' }));
  r.api.put('endpointslices', endpointSliceJson('shop', 'db-def', 'db', [{ addresses: ['10.244.4.8'], ready: true, hostname: 'db-3' }], { ports: [{ name: 'pg', port: 5432 }] }));
  t.ok(
    await until(() => r.agent.agent.view?.service('shop', 'search') !== undefined && r.agent.agent.view.slices('shop', 'db').length === 2, 10_000),
    'the watch brings new objects into the view within 1 s',
  );
  const added = await udpQuery(r.agent.target, 'search.shop.svc.cluster.local');
  t.same(dataOf(added), ['10.96.1.30'], 'a service added live resolves from the view');
  const merged = await udpQuery(r.agent.target, 'db-3.db.shop.svc.cluster.local');
  t.same(dataOf(merged), ['10.244.4.8'], 'a second slice of the same service merged');
  r.api.remove('services', 'shop', 'cart');
  t.ok(await until(() => r.agent.agent.view?.service('shop', 'cart') === undefined), 'a deletion reaches the view');

  await r.api.down();
  const still = await udpQuery(r.agent.target, 'web.shop.svc.cluster.local', { type: 'AAAA' });
  t.same(dataOf(still), ['fd00:96::1:10'], 'API server down: the last view keeps serving');
});

t.test('never an invented negative answer: before the view syncs, a missing name is SERVFAIL', async (t) => {
  const api = new FakeApiServer({ token: 'sample-token' });
  await api.start();
  loadSampleCluster(api);
  await api.down(); // the API server is unreachable from the start: the view never syncs
  const kubeDns = await SimDnsServer.start({ handler: staticHandler(SAMPLE_RECORDS, { soaZone: 'cluster.local' }) });
  await kubeDns.stop();
  const external = await SimDnsServer.start({ handler: staticHandler({}) });
  const agent = await startAgent(HOST, [
    '--upstream-addr', `127.0.0.1:${kubeDns.port}`, '--upstream-nameservers', `127.0.0.1:${external.port}`, '--kubeconfig', writeKubeconfig(api.url),
  ]);
  t.teardown(async () => {
    await agent.stop();
    await Promise.all([api.close(), kubeDns.close(), external.close()]);
  });
  t.equal(agent.agent.view?.synced, false);
  const missing = await udpQuery(agent.target, 'nope.shop.svc.cluster.local');
  t.equal(rcodeOf(missing), 2, 'SERVFAIL, not NXDOMAIN');
});

t.test('--no-kube: no watch, no fallback; and no cluster config: the agent runs and says so once', async (t) => {
  const kubeDns = await SimDnsServer.start({ handler: staticHandler(SAMPLE_RECORDS, { soaZone: 'cluster.local' }) });
  const external = await SimDnsServer.start({ handler: staticHandler({}) });
  const lines: string[] = [];
  const { createLogger } = await import('../src/log.js');
  const off = await startAgent(HOST, ['--upstream-addr', `127.0.0.1:${kubeDns.port}`, '--upstream-nameservers', `127.0.0.1:${external.port}`, '--no-kube'], {
    logger: createLogger('info', (l) => lines.push(l)),
  });
  const none = await startAgent(HOST, ['--upstream-addr', `127.0.0.1:${kubeDns.port}`, '--upstream-nameservers', `127.0.0.1:${external.port}`], {
    logger: createLogger('info', (l) => lines.push(l)),
  });
  t.teardown(async () => {
    await off.stop();
    await none.stop();
    await Promise.all([kubeDns.close(), external.close()]);
  });
  t.equal(off.agent.view, null);
  t.equal(none.agent.view, null, 'not in a cluster, no --kubeconfig');
  t.equal(lines.filter((l) => l.includes('--no-kube')).length, 1);
  t.equal(lines.filter((l) => l.includes('no cluster config')).length, 1, 'said once');
  t.same(dataOf(await udpQuery(none.target, 'web.shop.svc.cluster.local')), ['10.96.1.10'], 'and forwards as before');
});

t.test('API server silent past --max-api-silence, kube-dns down: a service the view serves keeps its NODATA for the other family (musl asks A and AAAA together)', async (t) => {
  const r = await rig(t, ['--max-api-silence', '1s']);
  await r.kubeDns.stop();
  await r.api.down();
  t.ok(await until(() => r.agent.agent.view?.negativesAllowed(systemClock.now(), 1000) === false, 10_000), 'the view may no longer deny names');
  const a = await udpQuery(r.agent.target, 'kubernetes.default.svc.cluster.local', { type: 'A', timeoutMs: 3000 });
  t.same(dataOf(a), ['10.96.0.1'], 'the A record is still served from the view');
  // musl's name_from_dns returns EAI_AGAIN when either of the two answers is SERVFAIL:
  // the positive A above is lost to an Alpine pod unless the AAAA says NODATA.
  const aaaa = await udpQuery(r.agent.target, 'kubernetes.default.svc.cluster.local', { type: 'AAAA', timeoutMs: 3000 });
  t.equal(rcodeOf(aaaa), 0, 'AAAA of an IPv4-only service the view holds: NOERROR (NODATA), not SERVFAIL');
  t.same(dataOf(aaaa), [], 'and no records');
});

t.test('ExternalName from the view: a target whose AAAA the node resolvers SERVFAIL still gets its CNAME (NOERROR), as from CoreDNS', async (t) => {
  // resolver.ts #chase: "If that fails, the CNAME alone is still a true answer" -- but a host resolver that
  // answers SERVFAIL (after every server and try) is joined as an answer, and the join carries its rcode:
  // the client gets SERVFAIL. CoreDNS (backend_lookup.go A/AAAA) appends nothing from a failed upstream
  // lookup and answers NOERROR. musl asks A and AAAA together and fails the whole lookup (EAI_AGAIN) on
  // either SERVFAIL, so the working A of the ExternalName target is lost while kube-dns is down.
  const api = new FakeApiServer({ token: 'sample-token' });
  await api.start();
  loadSampleCluster(api);
  const kubeDns = await SimDnsServer.start({ handler: staticHandler(SAMPLE_RECORDS, { soaZone: 'cluster.local' }) });
  const a = staticHandler({ 'pay.example.com': { A: ['192.0.2.77'], ttl: 60 } }, { soaZone: 'example.com' });
  const external = await SimDnsServer.start({
    handler: (q, ctx) => (q.questions?.[0]?.type === 'AAAA' ? { flags: responseFlags(q, 2) } : a(q, ctx)),
  });
  const agent = await startAgent(HOST, [
    '--upstream-addr', `127.0.0.1:${kubeDns.port}`, '--upstream-nameservers', `127.0.0.1:${external.port}`, '--kubeconfig', writeKubeconfig(api.url),
  ]);
  t.teardown(async () => {
    await agent.stop();
    await Promise.all([api.close(), kubeDns.close(), external.close()]);
  });
  t.ok(await until(() => agent.agent.view?.synced === true), 'the view synced');
  await kubeDns.stop();
  const four = await udpQuery(agent.target, 'payments.shop.svc.cluster.local', { type: 'A', timeoutMs: 4000 });
  t.same(dataOf(four), ['192.0.2.77', 'pay.example.com'], 'A: the CNAME and the target address');
  const six = await udpQuery(agent.target, 'payments.shop.svc.cluster.local', { type: 'AAAA', timeoutMs: 4000 });
  t.equal(rcodeOf(six), 0, 'AAAA: NOERROR with the CNAME, not SERVFAIL');
  t.same(dataOf(six), ['pay.example.com'], 'AAAA: the CNAME alone');
});
