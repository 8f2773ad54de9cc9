/**
 * What --metrics-by-namespace costs a hit: the agent's own HitPath.handle()
 * without a tagger (flag off), and with the namespace table of a full node
 * (110 pods in 40 namespaces; peers cycle over them plus the node's own
 * address), runs interleaved so machine load hits both alike. Ratios, not
 * absolute numbers, are the result.
 *
 *   npx tsc -p tsconfig.json --outDir /tmp/x && node /tmp/x/bench/micro/namespace-tagger.js
 */
import * as dnsPacket from 'dns-packet';
import { scanAnswer } from '../../src/dns/answer.js';
import { parseQuery } from '../../src/dns/query.js';
import { DnsCache } from '../../src/cache/cache.js';
import { CACHE_COUNTERS } from '../../src/cache/stats.js';
import { ManualClock } from '../../src/clock.js';
import { silentLogger } from '../../src/log.js';
import { NamespaceRequests } from '../../src/ops/namespace-metrics.js';
import { HitPath } from '../../src/server/hit-path.js';
import { Transport, type ClientChannel } from '../../src/server/listener.js';
import { SERVER_COUNTERS } from '../../src/server/stats.js';
import { Counters } from '../../src/stats/counters.js';

const NAMES = 1000;
const HITS = Number(process.env.HITS ?? 2_000_000);
const ROUNDS = Number(process.env.ROUNDS ?? 5);

const clock = new ManualClock(1_000_000);
const cache = new DnsCache(
  { positiveCapacity: NAMES * 2, negativeCapacity: 16, maxBytes: 1 << 30, successTtl: 30, denialTtl: 5, minHits: 0, percent: 10, staleMs: 0 },
  new Counters(CACHE_COUNTERS),
);
const queries: Buffer[] = [];
for (let i = 0; i < NAMES; i++) {
  const name = `svc-${i}.ns-${i % 50}.svc.cluster.local`;
  const q = dnsPacket.encode({ type: 'query', id: i, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] });
  const a = dnsPacket.encode({
    type: 'response', id: 0, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE,
    questions: [{ name, type: 'A', class: 'IN' }],
    answers: [{ type: 'A', name, ttl: 30, data: '10.96.0.1' }],
  });
  cache.insert(parseQuery(q).key, a, scanAnswer(a)!, clock.now());
  queries.push(q);
}

const table = new NamespaceRequests({ maxNamespaces: 100, clock });
const pods = Array.from({ length: 110 }, (_, i) => ({ namespace: `team-${i % 40}`, name: `pod-${i}`, ips: [`10.244.3.${i + 2}`] }));
table.pods.replace(pods);
// What a node's sockets report: the pods' addresses, and the node's own (unknown).
const peers = [...pods.map((p) => ({ address: p.ips[0]!, port: 40000 })), { address: '192.0.2.1', port: 40000 }];

let answered = 0;
const channel: ClientChannel = { transport: Transport.UDP, send: (a) => { answered += a.length; }, discard: () => {} };
const make = (tagged: boolean): HitPath =>
  new HitPath({ cache, clock, logger: silentLogger, counters: new Counters(SERVER_COUNTERS), maxUdpSize: 1232, tagger: tagged ? table : null });
const off = make(false);
const on = make(true);

function run(h: HitPath): number {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < HITS; i++) h.handle(queries[i % NAMES]!, channel, peers[i % peers.length]!);
  return Number(process.hrtime.bigint() - t0) / HITS;
}

run(off);
run(on);
const offNs: number[] = [];
const onNs: number[] = [];
for (let r = 0; r < ROUNDS; r++) {
  offNs.push(run(off));
  onNs.push(run(on));
}
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
console.log(`node ${process.version}, ${HITS} hits x ${ROUNDS} rounds each, interleaved (sink ${answered % 7})`);
console.log(`flag off (no tagger):  ${median(offNs).toFixed(0)} ns/hit median  [${offNs.map((x) => x.toFixed(0)).join(' ')}]`);
console.log(`flag on (110 pods):    ${median(onNs).toFixed(0)} ns/hit median  [${onNs.map((x) => x.toFixed(0)).join(' ')}]`);
console.log(`on/off: ${(median(onNs) / median(offNs)).toFixed(3)}`);
const s = table.series('dns://bench');
console.log(`series ${s.length}, counted ${s.reduce((a, [, v]) => a + v, 0)}`);
