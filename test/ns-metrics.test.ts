// --metrics-by-namespace: requests counted by the client pod's namespace,
// from a watch of this node's pods. The pod conversion and the bounded
// namespace table on their own (a manual clock drives idle expiry), then a
// real agent against the fake kube-apiserver (real list/watch, real field
// selector), with clients bound to 127.0.0.x addresses that are the pods'
// IPs, read back through a real /metrics scrape.
import t, { type Test } from 'tap';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import * as dnsPacket from 'dns-packet';
import { ManualClock } from '../src/clock.js';
import { createLogger } from '../src/log.js';
import { loadConfig } from '../src/config.js';
import { podsSource, toSlimPod } from '../src/kube/pods.js';
import { IDLE_MS, METRIC_NAME, NS_OTHER, NS_UNKNOWN, NamespaceRequests } from '../src/ops/namespace-metrics.js';
import { FakeApiServer, podJson } from '../testkit/fake-apiserver.js';
import { SimDnsServer, staticHandler } from '../testkit/dns-server.js';
import { writeKubeconfig } from '../testkit/cluster.js';
import { buildQuery } from './helpers/dns-client.js';
import { startAgent, type TestAgent } from './helpers/agent.js';
import { FrameDecoder, frame } from '../src/dns/framing.js';

// ---------------------------------------------------------------- the pod conversion

t.test('toSlimPod: namespace and addresses only; none for hostNetwork or finished pods', async (t) => {
  t.same(toSlimPod(podJson('team-a', 'p1', { nodeName: 'n', podIP: '10.244.1.5' })), { namespace: 'team-a', name: 'p1', ips: ['10.244.1.5'] });
  t.same(
    toSlimPod(podJson('team-a', 'p2', { nodeName: 'n', podIP: '10.244.1.6', extraIPs: ['FD00:0:0::0a'] })),
    { namespace: 'team-a', name: 'p2', ips: ['10.244.1.6', 'fd00::a'] },
    'dual-stack: both, IPv6 spelled as a socket reports it',
  );
  t.same(toSlimPod(podJson('kube-system', 'ds', { nodeName: 'n', podIP: '192.0.2.1', hostNetwork: true }))?.ips, [], 'hostNetwork: the node address is not the pod\'s');
  t.same(toSlimPod(podJson('team-a', 'job', { nodeName: 'n', podIP: '10.244.1.7', phase: 'Succeeded' }))?.ips, [], 'finished: its IP is free for another pod');
  t.same(toSlimPod(podJson('team-a', 'pending', { nodeName: 'n' }))?.ips, [], 'no IP yet');
  t.same(toSlimPod({ metadata: { name: 'x', namespace: 'a' }, status: { podIP: 'not-an-ip' } })?.ips, [], 'a bad address is dropped');
  t.equal(toSlimPod({ metadata: { name: 'x' } }), null, 'no namespace: not a pod');
  t.equal(toSlimPod('garbage'), null);
  const raw = JSON.stringify(toSlimPod(podJson('team-a', 'p1', { nodeName: 'n', podIP: '10.244.1.5' })));
  t.notMatch(raw, /PASSWORD|not-for-dns|registry/, 'nothing else of the pod is kept');
  t.equal(podsSource('node-a.example').selector, 'fieldSelector=spec.nodeName%3Dnode-a.example');
});

// ---------------------------------------------------------------- the table

function pod(ns: string, name: string, ip: string): { namespace: string; name: string; ips: string[] } {
  return { namespace: ns, name, ips: [ip] };
}

function seriesOf(table: NamespaceRequests): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [labels, v] of table.series('dns://x')) out[labels['namespace']!] = v;
  return out;
}

t.test('table: addresses to namespaces, unknown clients, IPv4-mapped peers', async (t) => {
  const clock = new ManualClock();
  const table = new NamespaceRequests({ maxNamespaces: 10, clock });
  table.tag('10.244.0.2');
  t.same(seriesOf(table), { [NS_UNKNOWN]: 1, [NS_OTHER]: 0 }, 'before any list: unknown');
  table.pods.replace([pod('team-a', 'p1', '10.244.0.2'), pod('team-b', 'p2', '10.244.0.3'), { namespace: 'kube-system', name: 'hn', ips: [] }]);
  table.tag('10.244.0.2');
  table.tag('::ffff:10.244.0.2');
  table.tag('10.244.0.3');
  table.tag('192.0.2.1');
  t.same(seriesOf(table), { [NS_UNKNOWN]: 2, [NS_OTHER]: 0, 'team-a': 2, 'team-b': 1 });
  t.same(table.namespaces().sort(), ['team-a', 'team-b'], 'a namespace with only hostNetwork pods gets no series');
  table.pods.remove('team-b', 'p2');
  table.tag('10.244.0.3');
  t.same(seriesOf(table), { [NS_UNKNOWN]: 3, [NS_OTHER]: 0, 'team-a': 2, 'team-b': 1 }, 'a deleted pod\'s address is unknown; its namespace keeps its series for now');
  clock.advance(IDLE_MS - 1000);
  t.ok(table.namespaces().includes('team-b'), 'still there just before the idle limit');
  table.start();
  clock.advance(1000);
  t.same(table.namespaces(), ['team-a'], 'removed once idle for IDLE_MS (by the sweep, with no pod event)');
  table.pods.upsert(pod('team-b', 'p3', '10.244.0.9'));
  table.tag('10.244.0.9');
  t.equal(seriesOf(table)['team-b'], 1, 'back with a new pod: a fresh series from zero');
  table.stop();
});

t.test('table: at most max namespaces; the rest count as _other and move to a slot once one frees', async (t) => {
  const clock = new ManualClock();
  const table = new NamespaceRequests({ maxNamespaces: 2, clock });
  table.start();
  t.teardown(() => table.stop());
  table.pods.replace([pod('c', 'p', '10.0.0.3'), pod('a', 'p', '10.0.0.1'), pod('b', 'p', '10.0.0.2')]);
  t.same(table.namespaces().sort(), ['a', 'b'], 'slots in name order, whatever the event order');
  table.tag('10.0.0.3');
  table.tag('10.0.0.1');
  t.same(seriesOf(table), { [NS_UNKNOWN]: 0, [NS_OTHER]: 1, a: 1, b: 0 });
  // A pod event keeps earlier slots: d comes after a and b are taken.
  table.pods.upsert(pod('d', 'p', '10.0.0.4'));
  t.same(table.namespaces().sort(), ['a', 'b']);
  table.pods.remove('a', 'p');
  t.same(table.namespaces().sort(), ['a', 'b'], 'a keeps its slot while idle');
  clock.advance(IDLE_MS);
  t.same(table.namespaces().sort(), ['b', 'c'], 'once a expired, the first waiting namespace (c) takes its slot');
  table.tag('10.0.0.3');
  table.tag('10.0.0.4');
  t.same(seriesOf(table), { [NS_UNKNOWN]: 0, [NS_OTHER]: 2, b: 0, c: 1 }, 'c counts on its own from zero; d still in _other');
  t.equal(table.series('dns://x').length, 2 + 2, 'series bounded by max + 2');
});

// ---------------------------------------------------------------- a real agent, a fake API server, real scrapes

/** An address of this file's own: test/clients.test.ts's binary serves /metrics on 127.0.31.1:9253 (SO_REUSEPORT would share it). */
const HOST = '127.0.34.1';
const NODE = 'node-a';

function kubeconfigFor(t: Test, fake: FakeApiServer): string {
  const file = writeKubeconfig(fake.url, 'test-token');
  t.teardown(() => fs.rmSync(path.dirname(file), { recursive: true, force: true }));
  return file;
}

/** Two pods on our node in two namespaces, one on another node, one hostNetwork on ours. */
function seedPods(fake: FakeApiServer): void {
  fake.put('pods', podJson('team-a', 'web-1', { nodeName: NODE, podIP: '127.0.0.2' }));
  fake.put('pods', podJson('team-b', 'api-1', { nodeName: NODE, podIP: '127.0.0.3' }));
  fake.put('pods', podJson('team-c', 'far-1', { nodeName: 'node-b', podIP: '127.0.0.4' }));
  fake.put('pods', podJson('kube-system', 'proxy-1', { nodeName: NODE, podIP: '127.0.0.5', hostNetwork: true }));
}

async function setup(t: Test, extra: string[], clock?: ManualClock): Promise<{ fake: FakeApiServer; agent: TestAgent; scrape: () => Promise<string> }> {
  const fake = new FakeApiServer({ token: 'test-token' });
  await fake.start();
  t.teardown(() => fake.close());
  seedPods(fake);
  const upstream = await SimDnsServer.start({ handler: staticHandler({ 'web.default.svc.cluster.local': { A: ['10.96.1.10'] } }, { soaZone: 'cluster.local' }) });
  t.teardown(() => upstream.close());
  const agent = await startAgent(
    HOST,
    [
      '--upstream-addr', `127.0.0.1:${upstream.port}`,
      '--upstream-nameservers', `127.0.0.1:${upstream.port}`,
      '--kubeconfig', kubeconfigFor(t, fake),
      '--metrics-by-namespace', '--node-name', NODE,
      '--metrics-listen-address', `${HOST}:9253`,
      ...extra,
    ],
    clock !== undefined ? { clock } : {},
  );
  t.teardown(agent.stop);
  const ops = agent.agent.opsServers.find((s) => s.routes.includes('metrics'));
  if (ops === undefined) throw new Error('no metrics server');
  const url = `${ops.url}/metrics`;
  const scrape = (): Promise<string> =>
    new Promise((resolve, reject) => {
      http.get(url, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve(body));
      }).on('error', reject);
    });
  return { fake, agent, scrape };
}

/** The value of one series in a scrape; undefined when absent. Labels as prom-client writes them (server first). */
function valueOf(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `)) return Object.keys(labels).length === 0 ? Number(line.slice(name.length + 1)) : undefined;
    if (!line.startsWith(`${name}{`)) continue;
    const close = line.lastIndexOf('}');
    const got: Record<string, string> = {};
    for (const m of line.slice(name.length + 1, close).matchAll(/([a-zA-Z_]+)="([^"]*)"/g)) got[m[1]!] = m[2]!;
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(line.slice(close + 1).trim());
  }
  return undefined;
}

function byNs(text: string, ns: string): number | undefined {
  return valueOf(text, METRIC_NAME, { namespace: ns });
}

async function until(t: Test, what: string, cond: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  t.fail(`timed out waiting for: ${what}`);
  throw new Error(`timed out waiting for: ${what}`);
}

/** One UDP query from a socket bound to `source`; resolves with the answer (null on timeout). */
function udpFrom(source: string, target: { host: string; port: number }, name: string): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    const timer = setTimeout(() => finish(null), 3000);
    const finish = (b: Buffer | null): void => {
      clearTimeout(timer);
      s.close();
      resolve(b);
    };
    s.on('message', (m) => finish(m));
    s.on('error', reject);
    s.bind({ address: source, port: 0 }, () => s.send(buildQuery(name), target.port, target.host));
  });
}

/** One TCP query from `source`. */
function tcpFrom(source: string, target: { host: string; port: number }, name: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: target.host, port: target.port, localAddress: source });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('TCP: no answer'));
    }, 3000);
    const dec = new FrameDecoder((f) => {
      clearTimeout(timer);
      sock.end();
      resolve(Buffer.from(f));
    });
    sock.on('data', (c) => dec.push(c));
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('connect', () => sock.write(frame(buildQuery(name))));
  });
}

const NAME = 'web.default.svc.cluster.local';

t.test('agent: requests by namespace in a real scrape, from a field-selected pod watch', async (t) => {
  // Asked for batched: the flag keeps UDP on the main thread, where the namespace table is (every query counted).
  const { fake, agent, scrape } = await setup(t, ['--io', 'batched']);
  t.equal(agent.agent.udpIo, 'dgram', 'UDP read by the main thread while counting by namespace');
  await until(t, 'pods listed', async () => valueOf(await scrape(), 'nodelocal_kube_lists_total', { kind: 'pods' }) === 1);
  t.equal(valueOf(await scrape(), 'nodelocal_node_pods', {}), 3, 'the three pods of our node (hostNetwork one included), not the other node\'s');
  await until(t, 'pod watch open', async () => fake.requests.some((r) => r.kind === 'pods' && r.watch));
  const podRequests = fake.requests.filter((r) => r.kind === 'pods');
  t.ok(podRequests.some((r) => !r.watch) && podRequests.some((r) => r.watch), 'a list and a watch');
  for (const r of podRequests) t.equal(r.params.get('fieldSelector'), `spec.nodeName=${NODE}`, `${r.watch ? 'watch' : 'list'} carries the node's field selector`);
  t.notOk(fake.requests.some((r) => r.kind === 'pods' && r.params.get('fieldSelector') === null), 'never an unselected pod request');

  const target = agent.target;
  for (let i = 0; i < 3; i++) t.ok(await udpFrom('127.0.0.2', target, NAME), 'answered');
  t.ok(dnsPacket.decode(await tcpFrom('127.0.0.2', target, NAME)).answers?.length, 'TCP answered');
  for (let i = 0; i < 2; i++) await udpFrom('127.0.0.3', target, NAME);
  await udpFrom('127.0.0.4', target, NAME); // a pod of another node
  await udpFrom('127.0.0.5', target, NAME); // a hostNetwork pod: the node's address
  await udpFrom('127.0.0.1', target, NAME); // the node itself
  let text = await scrape();
  t.equal(byNs(text, 'team-a'), 4, 'team-a: 3 UDP + 1 TCP from 127.0.0.2');
  t.equal(byNs(text, 'team-b'), 2, 'team-b: 2 from 127.0.0.3');
  t.equal(byNs(text, NS_UNKNOWN), 3, 'another node\'s pod, a hostNetwork pod and the node: unknown');
  t.equal(byNs(text, NS_OTHER), 0);
  t.equal(byNs(text, 'team-c'), undefined, 'no series for the other node\'s namespace');
  t.equal(byNs(text, 'kube-system'), undefined, 'none for the hostNetwork pod\'s');
  t.equal(valueOf(text, METRIC_NAME, { namespace: 'team-a', server: `dns://${HOST}:${target.port}` }), 4, 'server label as coredns_dns_requests_total has it');
  const total = valueOf(text, 'coredns_dns_requests_total', { proto: 'udp' })! + valueOf(text, 'coredns_dns_requests_total', { proto: 'tcp' })!;
  t.equal(4 + 2 + 3, total, 'every request counted once, by namespace');

  // Pod deleted: its address is no longer team-b's.
  fake.remove('pods', 'team-b', 'api-1');
  await until(t, 'deletion seen', async () => valueOf(await scrape(), 'nodelocal_node_pods', {}) === 2);
  await udpFrom('127.0.0.3', target, NAME);
  text = await scrape();
  t.equal(byNs(text, 'team-b'), 2, 'team-b did not grow');
  t.equal(byNs(text, NS_UNKNOWN), 4, 'the deleted pod\'s address counts as unknown');
  // A new pod on the node, in a new namespace, through the watch.
  fake.put('pods', podJson('team-d', 'new-1', { nodeName: NODE, podIP: '127.0.0.6' }));
  fake.put('pods', podJson('team-e', 'far-2', { nodeName: 'node-b', podIP: '127.0.0.7' }));
  await until(t, 'new pod seen', async () => valueOf(await scrape(), 'nodelocal_node_pods', {}) === 3);
  await udpFrom('127.0.0.6', target, NAME);
  t.equal(byNs(await scrape(), 'team-d'), 1, 'a pod added by a watch event is counted under its namespace');
});

t.test('agent: --metrics-namespaces-max caps the series; an idle namespace frees its slot (manual clock)', async (t) => {
  const clock = new ManualClock();
  const { fake, agent, scrape } = await setup(t, ['--metrics-namespaces-max', '1'], clock);
  await until(t, 'pods listed', async () => valueOf(await scrape(), 'nodelocal_kube_lists_total', { kind: 'pods' }) === 1);
  const target = agent.target;
  await udpFrom('127.0.0.2', target, NAME);
  await udpFrom('127.0.0.3', target, NAME);
  let text = await scrape();
  t.equal(byNs(text, 'team-a'), 1, 'team-a holds the one slot');
  t.equal(byNs(text, 'team-b'), undefined, 'team-b has none');
  t.equal(byNs(text, NS_OTHER), 1, 'team-b counts as _other');
  fake.remove('pods', 'team-a', 'web-1');
  await until(t, 'deletion seen', async () => valueOf(await scrape(), 'nodelocal_node_pods', {}) === 2);
  t.equal(byNs(await scrape(), 'team-a'), 1, 'team-a keeps its series while idle (its last counts get scraped)');
  clock.advance(IDLE_MS);
  text = await scrape();
  t.equal(byNs(text, 'team-a'), undefined, 'team-a removed after IDLE_MS');
  await udpFrom('127.0.0.3', target, NAME);
  text = await scrape();
  t.equal(byNs(text, 'team-b'), 1, 'team-b took the freed slot');
  t.equal(byNs(text, NS_OTHER), 1, '_other kept what it counted');
});

t.test('agent: pods forbidden (RBAC not applied): logged, counted as _unknown, DNS unaffected; retried until granted', async (t) => {
  const fake = new FakeApiServer({ token: 'test-token' });
  await fake.start();
  t.teardown(() => fake.close());
  seedPods(fake);
  // With --no-kube the pod watch is the only client of the API: the first request is the pod list.
  fake.failNext(403, 'pods is forbidden: User "system:serviceaccount:kube-system:nodelocal-dns" cannot list resource "pods" in API group "" at the cluster scope');
  const logs: { level: string; msg: string; error?: string }[] = [];
  const logger = createLogger('info', (line) => logs.push(JSON.parse(line) as { level: string; msg: string; error?: string }));
  const upstream = await SimDnsServer.start({ handler: staticHandler({ [NAME]: { A: ['10.96.1.10'] } }) });
  t.teardown(() => upstream.close());
  const agent = await startAgent(
    HOST,
    ['--no-kube', '--upstream-addr', `127.0.0.1:${upstream.port}`, '--kubeconfig', kubeconfigFor(t, fake), '--metrics-by-namespace', '--node-name', NODE, '--metrics-listen-address', `${HOST}:9253`],
    { logger },
  );
  t.teardown(agent.stop);
  await until(t, 'the 403 logged', async () => logs.some((l) => l.level === 'warn' && /forbidden/.test(l.error ?? '')));
  t.ok(await udpFrom('127.0.0.2', agent.target, NAME), 'DNS answers meanwhile');
  const ops = agent.agent.opsServers.find((s) => s.routes.includes('metrics'))!;
  const scrape = (): Promise<string> =>
    new Promise((resolve, reject) => {
      http.get(`${ops.url}/metrics`, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve(body));
      }).on('error', reject);
    });
  const before = await scrape();
  if (valueOf(before, 'nodelocal_kube_lists_total', { kind: 'pods' }) === 0) t.equal(byNs(before, NS_UNKNOWN), 1, 'before a list: _unknown');
  await until(t, 'listed after the backoff', async () => valueOf(await scrape(), 'nodelocal_kube_lists_total', { kind: 'pods' }) === 1);
  t.equal(valueOf(await scrape(), 'nodelocal_kube_errors_total', { kind: 'pods' }), 1, 'the failure counted');
  await udpFrom('127.0.0.2', agent.target, NAME);
  t.equal(byNs(await scrape(), 'team-a'), 1, 'counted by namespace once granted');
});

t.test('config: --metrics-by-namespace needs a node name; NODE_NAME is the default', async (t) => {
  t.throws(() => loadConfig(['--metrics-by-namespace'], { env: {} }), /node name.*--node-name.*NODE_NAME/);
  t.equal(loadConfig(['--metrics-by-namespace'], { env: { NODE_NAME: 'node-x' } }).config.nodeName, 'node-x');
  t.equal(loadConfig(['--metrics-by-namespace', '--node-name', 'node-y'], { env: { NODE_NAME: 'node-x' } }).config.nodeName, 'node-y', 'the flag wins');
  const off = loadConfig([], { env: {} }).config;
  t.equal(off.metricsByNamespace, false, 'off by default');
  t.equal(off.metricsNamespacesMax, 100);
  t.throws(() => loadConfig(['--metrics-namespaces-max', '0'], { env: {} }), /metrics-namespaces-max/);
});

t.test('off: no series, no pod requests', async (t) => {
  const fake = new FakeApiServer({ token: 'test-token' });
  await fake.start();
  t.teardown(() => fake.close());
  const agent = await startAgent(HOST, ['--kubeconfig', kubeconfigFor(t, fake), '--metrics-listen-address', `${HOST}:9253`]);
  t.teardown(agent.stop);
  const ops = agent.agent.opsServers.find((s) => s.routes.includes('metrics'))!;
  await until(t, 'view synced', async () => agent.agent.view?.synced === true);
  const text = await new Promise<string>((resolve, reject) => {
    http.get(`${ops.url}/metrics`, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
  t.notMatch(text, new RegExp(METRIC_NAME), 'no by-namespace family');
  t.equal(fake.seen('pods', false) + fake.seen('pods', true), 0, 'pods never asked for');
});
