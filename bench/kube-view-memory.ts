/**
 * Memory and apply time of the cluster view (kube/view.ts): N Services with
 * E endpoints each (one EndpointSlice each), applied as watch events
 * (upsert) and as a relist (replace). Reports heap and RSS the view adds
 * with its slim objects, and the time to apply them. Goal (task brief):
 * 10,000 x 3 in <= 50 MiB and well under 2 s.
 *
 *   npm run build && node --expose-gc dist/bench/kube-view-memory.js [services] [endpoints]
 *
 * The slim objects are made the way kube/convert.ts makes them: from
 * JSON.parse'd API objects, so their strings are flat heap strings, not
 * literals shared by the bench.
 */
import { ClusterView } from '../src/kube/view.js';
import { answerCluster, recordOptions } from '../src/kube/records.js';
import { nameToWire } from '../src/dns/name.js';
import { QType } from '../src/dns/constants.js';
import type { SlimEndpointSlice, SlimService } from '../src/kube/types.js';

const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) {
  console.error('run with node --expose-gc');
  process.exit(2);
}

const services = Number(process.argv[2] ?? 10_000);
const endpoints = Number(process.argv[3] ?? 3);
const namespaces = Math.max(1, Math.round(services / 100));
const MiB = 1024 * 1024;

function settle(): NodeJS.MemoryUsage {
  for (let i = 0; i < 4; i++) gc!();
  return process.memoryUsage();
}

interface ApiService {
  metadata: { namespace: string; name: string };
  spec: { clusterIP: string; clusterIPs: string[]; ports: { name: string; port: number; protocol: string }[] };
}
interface ApiSlice {
  metadata: { namespace: string; name: string; labels: Record<string, string> };
  addressType: 'IPv4';
  ports: { name: string; port: number; protocol: string }[];
  endpoints: { addresses: string[]; conditions: { ready: boolean }; hostname?: string }[];
}

/** API-shaped JSON for service i and its slice, parsed, then slimmed (what convert.ts does). */
function make(i: number): { svc: SlimService; slice: SlimEndpointSlice } {
  const ns = `ns-${i % namespaces}`;
  const name = `service-${i}`;
  const ip = `10.${96 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
  const api = JSON.parse(JSON.stringify({
    svc: { metadata: { namespace: ns, name }, spec: { clusterIP: ip, clusterIPs: [ip], ports: [{ name: 'http', port: 80, protocol: 'TCP' }] } },
    slice: {
      metadata: { namespace: ns, name: `${name}-abcde`, labels: { 'kubernetes.io/service-name': name } },
      addressType: 'IPv4',
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
      endpoints: Array.from({ length: endpoints }, (_, e) => ({
        addresses: [`10.${(i * endpoints + e) >> 16 & 255}.${((i * endpoints + e) >> 8) & 255}.${(i * endpoints + e) & 255}`],
        conditions: { ready: true },
      })),
    },
  })) as { svc: ApiService; slice: ApiSlice };
  const s = api.svc;
  const svc: SlimService = {
    namespace: s.metadata.namespace, name: s.metadata.name, kind: 'ClusterIP', clusterIPs: s.spec.clusterIPs,
    externalName: '', ports: s.spec.ports.map((p) => ({ name: p.name, port: p.port, protocol: p.protocol })), publishNotReadyAddresses: false,
  };
  const l = api.slice;
  const slice: SlimEndpointSlice = {
    namespace: l.metadata.namespace, name: l.metadata.name, serviceName: l.metadata.labels['kubernetes.io/service-name'] ?? '',
    addressType: l.addressType, ports: l.ports.map((p) => ({ name: p.name, port: p.port, protocol: p.protocol })),
    endpoints: l.endpoints.map((e) => ({ addresses: e.addresses, ready: e.conditions.ready, hostname: e.hostname ?? '' })),
  };
  return { svc, slice };
}

function build(): { svcs: SlimService[]; slices: SlimEndpointSlice[] } {
  const svcs: SlimService[] = [];
  const slices: SlimEndpointSlice[] = [];
  for (let i = 0; i < services; i++) {
    const m = make(i);
    svcs.push(m.svc);
    slices.push(m.slice);
  }
  return { svcs, slices };
}

function report(label: string, before: NodeJS.MemoryUsage, after: NodeJS.MemoryUsage, ms: number): void {
  const heap = (after.heapUsed - before.heapUsed) / MiB;
  const rss = (after.rss - before.rss) / MiB;
  console.log(`${label.padEnd(34)} heap +${heap.toFixed(1)} MiB  rss +${rss.toFixed(1)} MiB  apply ${ms.toFixed(0)} ms`);
}

console.log(`${services} services x ${endpoints} endpoints (one slice each), ${namespaces} namespaces, node ${process.version}`);

// 1. Watch events: one upsert per object.
let base = settle();
let { svcs, slices } = build();
const built = settle();
const view = new ClusterView();
let t0 = performance.now();
view.upsert('namespaces', { name: 'unused' });
for (let n = 0; n < namespaces; n++) view.upsert('namespaces', { name: `ns-${n}` });
for (const s of svcs) view.upsert('services', s);
for (const s of slices) view.upsert('endpointslices', s);
let ms = performance.now() - t0;
svcs = [];
slices = [];
const events = settle();
console.log(`slim objects alone (before the view):  heap +${((built.heapUsed - base.heapUsed) / MiB).toFixed(1)} MiB`);
report('upsert events (view + objects)', base, events, ms);
console.log(`  counts ${JSON.stringify(view.counts)}`);

// Lookups against the full view, for scale (fallback path, not the hot path).
const opts = recordOptions({ zone: 'cluster.local', negativesAllowed: true });
const names = Array.from({ length: 1000 }, (_, i) => nameToWire(`service-${(i * 7) % services}.ns-${((i * 7) % services) % namespaces}.svc.cluster.local`));
const ptrs = Array.from({ length: 1000 }, (_, i) => nameToWire(`${i & 255}.${(i >> 8) & 255}.96.10.in-addr.arpa`));
t0 = performance.now();
let hits = 0;
const rounds = 50;
for (let r = 0; r < rounds; r++) {
  for (const n of names) if (answerCluster(view, n, QType.A, opts).kind === 'answer') hits++;
  for (const n of ptrs) if (answerCluster(view, n, QType.PTR, opts).kind === 'answer') hits++;
}
ms = performance.now() - t0;
console.log(`lookups: ${((rounds * 2000) / ms * 1000).toFixed(0)} answers/s (A and PTR mixed, ${hits} answered)`);

// 2. A relist: replace both kinds in a fresh view.
base = settle();
({ svcs, slices } = build());
const view2 = new ClusterView();
t0 = performance.now();
view2.replace('services', svcs);
view2.replace('endpointslices', slices);
ms = performance.now() - t0;
svcs = [];
slices = [];
report('replace (relist into a new view)', base, settle(), ms);

// 3. A relist over a full view: the old objects are released as the new ones land.
base = settle();
({ svcs, slices } = build());
t0 = performance.now();
view2.replace('services', svcs);
view2.replace('endpointslices', slices);
ms = performance.now() - t0;
svcs = [];
slices = [];
report('replace over a full view', base, settle(), ms);
if (view.counts.services !== services || view2.counts.services !== services) throw new Error('count mismatch');
