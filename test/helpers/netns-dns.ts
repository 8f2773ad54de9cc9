// Fake DNS servers for test/e2e-node.test.ts, run as one process inside the
// test's "node" network namespace (`ip netns exec <node> node ... this file
// ZONE=HOST:PORT[,HOST:PORT...] ...`), so it binds addresses that exist only
// in that namespace and costs one process start. Per zone, one SimDnsServer
// per address, one handler and one set of counters: the fake kube-dns
// answers on its "pod IP" and, standing in for IPVS, on ClusterIPs held by
// the node; the fake node resolver on loopback.
//
// Protocol, JSON lines: on start {"ready":true,"ports":{zone:[...]}} on
// stdout; each "stats" line on stdin is answered with
// {"stats":{zone:{"byName":{name:count},"udp":n,"tcp":n}}} summed over each
// zone's addresses. It exits when stdin closes, so it never outlives the test.
import { createInterface } from 'node:readline';
import { SimDnsServer, staticHandler, type StaticRecord } from '../../testkit/dns-server.js';

export type NetnsDnsZone = 'cluster' | 'external';

export interface NetnsDnsStats {
  byName: Record<string, number>;
  udp: number;
  tcp: number;
}

export type NetnsDnsLine =
  | { ready: true; ports: Partial<Record<NetnsDnsZone, number[]>> }
  | { stats: Partial<Record<NetnsDnsZone, NetnsDnsStats>> }
  | { error: string };

/** kube-dns: cluster.local, and the external name it would forward (so pods resolve it while they bypass us). */
export const CLUSTER_RECORDS: Record<string, StaticRecord> = {
  'web.default.svc.cluster.local': { A: ['10.96.1.10'], AAAA: ['fd00:10:96::110'], ttl: 30 },
  'api.prod.svc.cluster.local': { A: ['10.96.2.20'], ttl: 30 },
  'www.example.com': { A: ['192.0.2.80'], AAAA: ['2001:db8::80'], ttl: 300 },
};

/** The node's own resolver, for names outside the cluster. */
export const EXTERNAL_RECORDS: Record<string, StaticRecord> = {
  'www.example.com': { A: ['192.0.2.80'], AAAA: ['2001:db8::80'], ttl: 300 },
};

function parseAddr(text: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(text);
  if (m === null) throw new Error(`not HOST:PORT: ${JSON.stringify(text)}`);
  return { host: m[1]!, port: Number(m[2]) };
}

function statsOf(servers: readonly SimDnsServer[]): NetnsDnsStats {
  const byName: Record<string, number> = {};
  let udp = 0;
  let tcp = 0;
  for (const s of servers) {
    for (const [name, n] of s.stats.byName) byName[name] = (byName[name] ?? 0) + n;
    udp += s.stats.udpQueries;
    tcp += s.stats.tcpQueries;
  }
  return { byName, udp, tcp };
}

async function main(args: readonly string[]): Promise<void> {
  const zones = new Map<NetnsDnsZone, SimDnsServer[]>();
  for (const arg of args) {
    const eq = arg.indexOf('=');
    const zone = arg.slice(0, eq);
    if (eq < 0 || (zone !== 'cluster' && zone !== 'external')) throw new Error(`usage: netns-dns.ts cluster|external=HOST:PORT[,HOST:PORT...] ... (got ${JSON.stringify(arg)})`);
    const handler = zone === 'cluster'
      ? staticHandler(CLUSTER_RECORDS, { soaZone: 'cluster.local', negativeTtl: 30 })
      : staticHandler(EXTERNAL_RECORDS, { soaZone: '.', negativeTtl: 60 });
    const servers: SimDnsServer[] = [];
    for (const a of arg.slice(eq + 1).split(',').filter((x) => x !== '')) {
      const { host, port } = parseAddr(a);
      servers.push(await SimDnsServer.start({ host, port, handler }));
    }
    zones.set(zone, servers);
  }
  const say = (line: NetnsDnsLine): void => {
    process.stdout.write(JSON.stringify(line) + '\n');
  };
  say({ ready: true, ports: Object.fromEntries([...zones].map(([z, servers]) => [z, servers.map((s) => s.port)])) });
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (line.trim() !== 'stats') return;
    say({ stats: Object.fromEntries([...zones].map(([z, servers]) => [z, statsOf(servers)])) });
  });
  rl.on('close', () => {
    void Promise.all([...zones.values()].flat().map((s) => s.close())).finally(() => process.exit(0));
  });
}

main(process.argv.slice(2)).catch((err: unknown) => {
  process.stdout.write(JSON.stringify({ error: String(err) }) + '\n');
  process.exit(1);
});
