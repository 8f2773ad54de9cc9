// A fake upstream for test/e2e-netns.test.ts, run as its own process inside
// the test's "node" network namespace (`ip netns exec <node> node ... this
// file <zone>`), so its 127.0.0.1 is that namespace's loopback. One process
// per zone, so the test can SIGKILL the fake kube-dns alone.
//
// Protocol, JSON lines: on start it prints {"ready":true,"port":N} on stdout;
// each "stats" line on stdin is answered with
// {"stats":{"byName":{name:count},"udp":n,"tcp":n}}. It exits when stdin
// closes, so it never outlives the test process.
import { createInterface } from 'node:readline';
import { SimDnsServer, staticHandler, type StaticRecord } from '../../testkit/dns-server.js';
import { FakeApiServer, namespaceJson, serviceJson } from '../../testkit/fake-apiserver.js';

/** 'api' is a fake kube-apiserver serving the same Services the fake kube-dns answers for. */
export type NetnsZone = 'cluster' | 'external' | 'api';

export interface NetnsUpstreamStats {
  byName: Record<string, number>;
  udp: number;
  tcp: number;
}

export type NetnsUpstreamLine = { ready: true; port: number } | { stats: NetnsUpstreamStats } | { error: string };

/** What the fake kube-dns serves (cluster.local); every other name: NXDOMAIN + SOA. */
const CLUSTER_RECORDS: Record<string, StaticRecord> = {
  'web.default.svc.cluster.local': { A: ['10.96.1.10'], AAAA: ['fd00:10:96::110'], ttl: 30 },
  'api.prod.svc.cluster.local': { A: ['10.96.2.20'], AAAA: ['fd00:10:96::220'], ttl: 30 },
  // Never asked before the test kills this server: "a new cluster name".
  'db.default.svc.cluster.local': { A: ['10.96.3.30'], ttl: 30 },
  // 60 A records (10.96.100.1-60), far over 512 bytes: the truncation case (musl never retries over TCP).
  'many.default.svc.cluster.local': { A: Array.from({ length: 60 }, (_, i) => `10.96.100.${i + 1}`), ttl: 30 },
};

/** What the fake host resolver serves; every other name: NXDOMAIN + SOA. */
const EXTERNAL_RECORDS: Record<string, StaticRecord> = {
  'www.example.com': { A: ['192.0.2.80'], AAAA: ['2001:db8::80'], ttl: 300 },
  // Never asked before the fake kube-dns is killed.
  'www2.example.org': { A: ['192.0.2.81'], ttl: 300 },
};

/** The API objects behind CLUSTER_RECORDS' services, for the agent's own watch. */
async function startApi(): Promise<{ port: number; close(): Promise<void> }> {
  const api = new FakeApiServer({ token: 'netns-token' });
  await api.start();
  for (const ns of ['default', 'prod', 'kube-system']) api.put('namespaces', namespaceJson(ns));
  api.put('services', serviceJson('default', 'web', { clusterIP: '10.96.1.10', clusterIPs: ['10.96.1.10', 'fd00:10:96::110'] }));
  api.put('services', serviceJson('prod', 'api', { clusterIP: '10.96.2.20', clusterIPs: ['10.96.2.20', 'fd00:10:96::220'] }));
  api.put('services', serviceJson('default', 'db', { clusterIP: '10.96.3.30' }));
  return { port: Number(new URL(api.url).port), close: () => api.close() };
}

async function main(zone: string): Promise<void> {
  if (zone !== 'cluster' && zone !== 'external' && zone !== 'api') throw new Error(`usage: netns-upstream.ts cluster|external|api (got ${JSON.stringify(zone)})`);
  if (zone === 'api') {
    const api = await startApi();
    process.stdout.write(JSON.stringify({ ready: true, port: api.port }) + '\n');
    createInterface({ input: process.stdin }).on('close', () => {
      void api.close().finally(() => process.exit(0));
    });
    return;
  }
  const server = await SimDnsServer.start({
    host: '127.0.0.1',
    handler: zone === 'cluster'
      ? staticHandler(CLUSTER_RECORDS, { soaZone: 'cluster.local', negativeTtl: 30 })
      : staticHandler(EXTERNAL_RECORDS, { soaZone: '.', negativeTtl: 60 }),
  });
  const say = (line: NetnsUpstreamLine): void => {
    process.stdout.write(JSON.stringify(line) + '\n');
  };
  say({ ready: true, port: server.port });
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (line.trim() !== 'stats') return;
    say({ stats: { byName: Object.fromEntries(server.stats.byName), udp: server.stats.udpQueries, tcp: server.stats.tcpQueries } });
  });
  rl.on('close', () => {
    void server.close().finally(() => process.exit(0));
  });
}

main(process.argv[2] ?? '').catch((err: unknown) => {
  process.stdout.write(JSON.stringify({ error: String(err) }) + '\n');
  process.exit(1);
});
