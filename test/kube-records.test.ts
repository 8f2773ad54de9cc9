// Cluster records from our own view: kube/view.ts (indexes, incremental
// updates, relist), kube/records.ts (the spec's records, NXDOMAIN vs NODATA,
// reverse, unknown before sync) and kube/encode.ts (the wire answer). Pure:
// no sockets, no clock; except the last test, which runs the agent against a
// fake API server on loopback to see its configuration reach the records.
import t, { type Test } from 'tap';
import dnsPacket from 'dns-packet';
import type { Answer as PacketAnswer } from 'dns-packet';
import { ClusterView } from '../src/kube/view.js';
import {
  answerCluster, isCertainNxdomain, recordOptions, wireLabels, DNS_SCHEMA_VERSION, RECORD_DEFAULTS,
  type ClusterAnswer, type ClusterResult, type ClusterRR, type RecordOptions,
} from '../src/kube/records.js';
import { encodeAnswer } from '../src/kube/encode.js';
import { dashedName, inAddrKey, ip6ArpaKey, ipKey, isDashedName, ipv6Nibbles, nibblesToIPv6, podLabelAddress, reverseName } from '../src/kube/ip.js';
import type { ServicePort, SlimEndpoint, SlimEndpointSlice, SlimService } from '../src/kube/types.js';
import { QType, Rcode } from '../src/dns/constants.js';
import { nameToWire, skipName, skipUncompressedName } from '../src/dns/name.js';
import { keptRecords } from '../src/dns/patch.js';
import { scanAnswer } from '../src/dns/answer.js';
import { planCaching } from '../src/cache/policy.js';
import { FakeApiServer, endpointSliceJson, namespaceJson, serviceJson } from '../testkit/fake-apiserver.js';
import { writeKubeconfig } from '../testkit/cluster.js';
import { startAgent } from './helpers/agent.js';
import { sleep, udpQuery } from './helpers/dns-client.js';

// ---------------------------------------------------------------------------
// Fixture builders

const tcp = (name: string, port: number): ServicePort => ({ name, port, protocol: 'TCP' });
const udp = (name: string, port: number): ServicePort => ({ name, port, protocol: 'UDP' });

function clusterIP(namespace: string, name: string, clusterIPs: string[], ports: ServicePort[] = []): SlimService {
  return { namespace, name, kind: 'ClusterIP', clusterIPs, externalName: '', ports, publishNotReadyAddresses: false };
}
function headless(namespace: string, name: string, ports: ServicePort[] = [], publishNotReadyAddresses = false): SlimService {
  return { namespace, name, kind: 'Headless', clusterIPs: [], externalName: '', ports, publishNotReadyAddresses };
}
function external(namespace: string, name: string, externalName: string): SlimService {
  return { namespace, name, kind: 'ExternalName', clusterIPs: [], externalName, ports: [], publishNotReadyAddresses: false };
}
function ep(address: string, hostname = '', ready = true): SlimEndpoint {
  return { addresses: [address], ready, hostname };
}
function slice(
  namespace: string, name: string, serviceName: string, endpoints: SlimEndpoint[], ports: ServicePort[] = [],
  addressType: SlimEndpointSlice['addressType'] = 'IPv4',
): SlimEndpointSlice {
  return { namespace, name, serviceName, addressType, ports, endpoints };
}

const webPorts = [tcp('http', 80), tcp('metrics', 9090)];

function fixture(): ClusterView {
  const v = new ClusterView();
  v.touch(1_700_000_000_000);
  v.replace('namespaces', ['default', 'kube-system', 'apps', 'quiet'].map((name) => ({ name })));
  v.replace('services', [
    clusterIP('default', 'kubernetes', ['10.96.0.1'], [tcp('https', 443)]),
    clusterIP('kube-system', 'kube-dns', ['10.96.0.10'], [udp('dns', 53), tcp('dns-tcp', 53), tcp('metrics', 9153)]),
    clusterIP('apps', 'dual', ['10.96.1.1', 'fd00::1:1'], [tcp('http', 80), tcp('', 8080)]),
    clusterIP('apps', 'noports', ['10.96.1.2']),
    clusterIP('apps', 'backend', ['10.96.2.2'], [tcp('grpc', 9000)]),
    headless('apps', 'web', webPorts),
    headless('apps', 'db', [tcp('pg', 5432)], true),
    headless('apps', 'empty'),
    headless('apps', 'sleepy', [tcp('http', 80)]),
    external('apps', 'ext', 'www.example.com'),
    external('apps', 'alias', 'dual.apps.svc.cluster.local'),
    external('apps', 'alias2', 'alias.apps.svc.cluster.local'),
    external('apps', 'loop1', 'loop2.apps.svc.cluster.local'),
    external('apps', 'loop2', 'loop1.apps.svc.cluster.local'),
    external('apps', 'dangling', 'missing.apps.svc.cluster.local'),
    external('apps', 'extip', '192.0.2.7'),
  ]);
  v.replace('endpointslices', [
    // Two IPv4 slices and one IPv6 slice of one headless service: merged.
    slice('apps', 'web-a', 'web', [ep('10.0.0.1', 'pet-0'), ep('10.0.0.2'), ep('10.0.0.3', 'pet-2', false)], webPorts),
    slice('apps', 'web-b', 'web', [ep('10.0.0.4', 'pet-3')], webPorts),
    slice('apps', 'web-v6', 'web', [ep('fd00::a', 'pet-0'), ep('fd00::b')], webPorts, 'IPv6'),
    slice('apps', 'db-a', 'db', [ep('10.0.1.1', 'db-0', false)], [tcp('pg', 5432)]),
    slice('apps', 'sleepy-a', 'sleepy', [ep('10.0.3.1', 'nap', false)], [tcp('http', 80)]),
    slice('apps', 'backend-a', 'backend', [ep('10.0.2.1')], [tcp('grpc', 9000)]),
    slice('kube-system', 'kube-dns-a', 'kube-dns', [ep('10.0.9.1'), ep('10.0.9.2')], [udp('dns', 53), tcp('dns-tcp', 53)]),
  ]);
  for (const k of ['namespaces', 'services', 'endpointslices'] as const) v.markSynced(k);
  return v;
}

const OPTS = recordOptions({ zone: 'cluster.local', negativesAllowed: true });
const SVC = (s: string): string => `${s}.svc.cluster.local`;

function ask(view: ClusterView, name: string, type: keyof typeof QType, opts: RecordOptions = OPTS): ClusterResult {
  return answerCluster(view, nameToWire(name), QType[type], opts);
}
function found(t: Test, r: ClusterResult): ClusterAnswer {
  if (r.kind !== 'answer') {
    t.fail(`expected an answer, got ${r.kind}`);
    throw new Error('no answer');
  }
  return r;
}
const data = (rrs: readonly ClusterRR[]): unknown[] => rrs.map((r) => r.data);
const sorted = (xs: unknown[]): unknown[] => [...xs].sort((a, b) => String(JSON.stringify(a)).localeCompare(JSON.stringify(b)));

function positive(t: Test, r: ClusterResult, type: ClusterRR['type'], expected: unknown[], msg: string): ClusterAnswer {
  const a = found(t, r);
  t.equal(a.rcode, Rcode.NOERROR, `${msg}: NOERROR`);
  t.equal(a.authority.length, 0, `${msg}: no authority`);
  t.ok(a.answer.every((rr) => rr.type === type), `${msg}: all ${type}`);
  t.same(sorted(data(a.answer)), sorted(expected), msg);
  return a;
}
function nodata(t: Test, r: ClusterResult, msg: string): void {
  const a = found(t, r);
  t.equal(a.rcode, Rcode.NOERROR, `${msg}: NOERROR`);
  t.equal(a.answer.length, 0, `${msg}: no answers`);
  t.equal(a.authority[0]?.type, 'SOA', `${msg}: SOA in authority`);
}
function nxdomain(t: Test, r: ClusterResult, msg: string): void {
  const a = found(t, r);
  t.equal(a.rcode, Rcode.NXDOMAIN, `${msg}: NXDOMAIN`);
  t.equal(a.answer.length, 0, `${msg}: no answers`);
  t.equal(a.authority[0]?.type, 'SOA', `${msg}: SOA in authority`);
}

// ---------------------------------------------------------------------------
// Records, section by section of the spec

t.test('2.2 dns-version TXT', async (t) => {
  const v = fixture();
  const a = positive(t, ask(v, 'dns-version.cluster.local', 'TXT'), 'TXT', [DNS_SCHEMA_VERSION], 'dns-version');
  t.equal(DNS_SCHEMA_VERSION, '1.1.0');
  t.equal(a.answer[0]?.ttl, RECORD_DEFAULTS.dnsVersionTtl, 'CoreDNS TTL 28800');
  nodata(t, ask(v, 'dns-version.cluster.local', 'A'), 'dns-version A');
  nxdomain(t, ask(v, 'x.dns-version.cluster.local', 'TXT'), 'nothing below dns-version');
});

t.test('2.3.1 ClusterIP A/AAAA, dual-stack', async (t) => {
  const v = fixture();
  const a = positive(t, ask(v, SVC('kubernetes.default'), 'A'), 'A', ['10.96.0.1'], 'kubernetes A');
  t.equal(a.answer[0]?.name, SVC('kubernetes.default'));
  t.equal(a.answer[0]?.ttl, 5, 'default TTL 5');
  nodata(t, ask(v, SVC('kubernetes.default'), 'AAAA'), 'IPv4-only service AAAA');
  positive(t, ask(v, SVC('dual.apps'), 'A'), 'A', ['10.96.1.1'], 'dual-stack A');
  positive(t, ask(v, SVC('dual.apps'), 'AAAA'), 'AAAA', ['fd00::1:1'], 'dual-stack AAAA');
  positive(t, ask(v, SVC('noports.apps'), 'A'), 'A', ['10.96.1.2'], 'a service without ports still has its A');
  nodata(t, ask(v, SVC('kubernetes.default'), 'MX'), 'other types NODATA');
  nodata(t, ask(v, SVC('kubernetes.default'), 'TXT'), 'TXT NODATA');
  const ttl = positive(t, ask(v, SVC('kubernetes.default'), 'A', recordOptions({ zone: 'cluster.local', negativesAllowed: true, ttl: 30 })), 'A', ['10.96.0.1'], 'ttl option');
  t.equal(ttl.answer[0]?.ttl, 30);
});

t.test('2.3.2 ClusterIP SRV', async (t) => {
  const v = fixture();
  const a = positive(t, ask(v, `_https._tcp.${SVC('kubernetes.default')}`, 'SRV'), 'SRV',
    [{ priority: 0, weight: 100, port: 443, target: SVC('kubernetes.default') }], '_https._tcp');
  t.same(a.additional, [{ name: SVC('kubernetes.default'), type: 'A', ttl: 5, data: '10.96.0.1' }], 'target address in additional');
  // Port names and protocols match case-insensitively; the protocol tells dns from dns-tcp.
  positive(t, ask(v, `_DNS._UDP.${SVC('kube-dns.kube-system')}`, 'SRV'), 'SRV',
    [{ priority: 0, weight: 100, port: 53, target: SVC('kube-dns.kube-system') }], '_dns._udp');
  nxdomain(t, ask(v, `_dns._tcp.${SVC('kube-dns.kube-system')}`, 'SRV'), 'dns is UDP only');
  nxdomain(t, ask(v, `_nope._tcp.${SVC('kubernetes.default')}`, 'SRV'), 'unknown port name');
  nodata(t, ask(v, `_https._tcp.${SVC('kubernetes.default')}`, 'A'), 'SRV name, A asked');
  // Dual-stack: one SRV per port, both addresses in additional.
  const d = positive(t, ask(v, `_http._tcp.${SVC('dual.apps')}`, 'SRV'), 'SRV',
    [{ priority: 0, weight: 100, port: 80, target: SVC('dual.apps') }], 'dual-stack SRV');
  t.same(sorted(data(d.additional)), ['10.96.1.1', 'fd00::1:1']);
  t.same(d.additional.map((r) => r.type).sort(), ['A', 'AAAA']);
  // SRV at the service name itself: every port, unnamed ones too (CoreDNS).
  const all = positive(t, ask(v, SVC('dual.apps'), 'SRV'), 'SRV', [
    { priority: 0, weight: 50, port: 80, target: SVC('dual.apps') },
    { priority: 0, weight: 50, port: 8080, target: SVC('dual.apps') },
  ], 'service-name SRV');
  t.equal(all.additional.length, 2, 'each target address once');
  nodata(t, ask(v, SVC('noports.apps'), 'SRV'), 'no ports, no SRV');
  // The empty non-terminal between the port and the service.
  nodata(t, ask(v, `_tcp.${SVC('kubernetes.default')}`, 'SRV'), '_tcp.<svc> exists (ENT)');
  nxdomain(t, ask(v, `_udp.${SVC('kubernetes.default')}`, 'SRV'), 'no UDP port: no _udp ENT');
  nxdomain(t, ask(v, `_tcp.${SVC('noports.apps')}`, 'SRV'), 'no ports: no ENT');
  v.upsert('services', clusterIP('apps', 'anon', ['10.96.1.3'], [tcp('', 81)]));
  nxdomain(t, ask(v, `_tcp.${SVC('anon.apps')}`, 'SRV'), 'only an unnamed port: no ENT');
  nodata(t, ask(v, `_tcp.${SVC('web.apps')}`, 'SRV'), 'headless ENT from slice ports');
  nxdomain(t, ask(v, `_tcp.${SVC('sleepy.apps')}`, 'SRV'), 'headless without ready endpoints: no ENT');
  nxdomain(t, ask(v, `_._tcp.${SVC('dual.apps')}`, 'SRV'), 'unnamed ports have no SRV name');
  nxdomain(t, ask(v, `a._http._tcp.${SVC('kubernetes.default')}`, 'SRV'), 'too long');
  // The SRV name is answered without its underscores too (CoreDNS parse.go stripUnderscore): the name above it then
  // exists as well, or its NXDOMAIN would deny what lies below (RFC 8020) and a resolver that trusts that would too.
  positive(t, ask(v, `https.tcp.${SVC('kubernetes.default')}`, 'SRV'), 'SRV',
    [{ priority: 0, weight: 100, port: 443, target: SVC('kubernetes.default') }], 'https.tcp: without underscores');
  nodata(t, ask(v, `tcp.${SVC('kubernetes.default')}`, 'SRV'), 'tcp.<svc> exists (ENT), as _tcp.<svc> does');
  nxdomain(t, ask(v, `udp.${SVC('kubernetes.default')}`, 'SRV'), 'no UDP port: no udp ENT');
  nodata(t, ask(v, `tcp.${SVC('web.apps')}`, 'SRV'), 'headless: tcp.<svc> ENT from slice ports');
  // A protocol label of '_' alone names no protocol (CoreDNS: stripUnderscore gives '', which matches none), not every one.
  nxdomain(t, ask(v, `_https._.${SVC('kubernetes.default')}`, 'SRV'), 'an empty protocol: no SRV');
  nxdomain(t, ask(v, `_http._.${SVC('web.apps')}`, 'SRV'), 'an empty protocol: no headless SRV either');
  nxdomain(t, ask(v, `_.${SVC('kubernetes.default')}`, 'SRV'), 'and no ENT above one');
});

t.test('2.3.3 PTR for cluster IPs (v4 and v6)', async (t) => {
  const v = fixture();
  positive(t, ask(v, '1.0.96.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('kubernetes.default')], 'IPv4 PTR');
  const v6 = reverseName('fd00::1:1');
  t.equal(v6, '1.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa');
  positive(t, ask(v, v6, 'PTR'), 'PTR', [SVC('dual.apps')], 'IPv6 PTR, full nibbles');
  positive(t, ask(v, v6.toUpperCase(), 'PTR'), 'PTR', [SVC('dual.apps')], 'nibbles in upper case');
  const n = found(t, ask(v, '1.0.96.10.in-addr.arpa', 'A'));
  t.equal(n.answer.length, 0, 'existing reverse name, other type: NODATA');
  t.equal(n.authority[0]?.name, 'in-addr.arpa', 'SOA of the reverse zone');
  t.equal(ask(v, '9.9.9.9.in-addr.arpa', 'PTR').kind, 'notOurs', 'unknown address: forwarded (fallthrough)');
  t.equal(ask(v, '0.96.10.in-addr.arpa', 'PTR').kind, 'notOurs', 'partial reverse name');
  t.equal(ask(v, '01.0.96.10.in-addr.arpa', 'PTR').kind, 'notOurs', 'leading zero is no address');
  t.equal(ask(v, '256.0.96.10.in-addr.arpa', 'PTR').kind, 'notOurs', 'octet over 255');
  t.equal(ask(v, 'x.1.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa', 'PTR').kind, 'notOurs', 'bad nibble');
});

t.test('2.4.1 headless A/AAAA: ready endpoints, multi-slice, hostnames', async (t) => {
  const v = fixture();
  positive(t, ask(v, SVC('web.apps'), 'A'), 'A', ['10.0.0.1', '10.0.0.2', '10.0.0.4'], 'ready IPv4 endpoints of both slices, not-ready left out');
  positive(t, ask(v, SVC('web.apps'), 'AAAA'), 'AAAA', ['fd00::a', 'fd00::b'], 'IPv6 slice');
  positive(t, ask(v, SVC('pet-0.web.apps'), 'A'), 'A', ['10.0.0.1'], 'hostname A');
  positive(t, ask(v, SVC('pet-0.web.apps'), 'AAAA'), 'AAAA', ['fd00::a'], 'same hostname in the IPv6 slice');
  positive(t, ask(v, SVC('pet-3.web.apps'), 'A'), 'A', ['10.0.0.4'], 'hostname in the second slice');
  nxdomain(t, ask(v, SVC('pet-2.web.apps'), 'A'), 'not-ready endpoint has no name');
  nodata(t, ask(v, SVC('pet-3.web.apps'), 'AAAA'), 'hostname exists, other family');
  // Endpoints without hostname: CoreDNS's dashed-address name.
  positive(t, ask(v, SVC('10-0-0-2.web.apps'), 'A'), 'A', ['10.0.0.2'], 'dashed IPv4 name');
  positive(t, ask(v, SVC('fd00--b.web.apps'), 'AAAA'), 'AAAA', ['fd00::b'], 'dashed IPv6 name');
  nxdomain(t, ask(v, SVC('10-0-0-1.web.apps'), 'A'), 'an endpoint with a hostname is not named by its address');
  // publishNotReadyAddresses publishes every endpoint.
  positive(t, ask(v, SVC('db.apps'), 'A'), 'A', ['10.0.1.1'], 'publishNotReadyAddresses');
  positive(t, ask(v, SVC('db-0.db.apps'), 'A'), 'A', ['10.0.1.1'], 'its hostname too');
  // Spec: no ready endpoints -> NXDOMAIN (CoreDNS agrees).
  nxdomain(t, ask(v, SVC('sleepy.apps'), 'A'), 'headless, only not-ready endpoints');
  nxdomain(t, ask(v, SVC('empty.apps'), 'A'), 'headless, no slices');
  nxdomain(t, ask(v, `_http._tcp.${SVC('sleepy.apps')}`, 'SRV'), 'and no SRV below it');
  // Endpoint names under a ClusterIP service resolve too (CoreDNS).
  positive(t, ask(v, SVC('10-0-2-1.backend.apps'), 'A'), 'A', ['10.0.2.1'], 'endpoint of a ClusterIP service');
});

t.test('2.4.2 headless SRV: endpoints x named ports', async (t) => {
  const v = fixture();
  const a = positive(t, ask(v, `_http._tcp.${SVC('web.apps')}`, 'SRV'), 'SRV', [
    { priority: 0, weight: 25, port: 80, target: SVC('pet-0.web.apps') },
    { priority: 0, weight: 25, port: 80, target: SVC('10-0-0-2.web.apps') },
    { priority: 0, weight: 25, port: 80, target: SVC('pet-3.web.apps') },
    { priority: 0, weight: 25, port: 80, target: SVC('fd00--b.web.apps') },
  ], '_http._tcp headless');
  // pet-0 has an IPv4 and an IPv6 address: one SRV, two additional records.
  t.equal(a.answer.length, 4);
  t.same(sorted(a.additional.map((r) => [r.name, r.type, r.data])), sorted([
    [SVC('pet-0.web.apps'), 'A', '10.0.0.1'],
    [SVC('10-0-0-2.web.apps'), 'A', '10.0.0.2'],
    [SVC('pet-3.web.apps'), 'A', '10.0.0.4'],
    [SVC('pet-0.web.apps'), 'AAAA', 'fd00::a'],
    [SVC('fd00--b.web.apps'), 'AAAA', 'fd00::b'],
  ]), 'additional: A/AAAA of every target');
  const all = found(t, ask(v, SVC('web.apps'), 'SRV'));
  t.equal(all.answer.length, 8, 'service-name SRV: 4 targets x 2 ports');
  const one = found(t, ask(v, SVC('pet-3.web.apps'), 'SRV'));
  t.same(sorted(data(one.answer)), sorted([
    { priority: 0, weight: 50, port: 80, target: SVC('pet-3.web.apps') },
    { priority: 0, weight: 50, port: 9090, target: SVC('pet-3.web.apps') },
  ]), 'SRV at an endpoint name');
  nxdomain(t, ask(v, `_http._udp.${SVC('web.apps')}`, 'SRV'), 'wrong protocol');
  positive(t, ask(v, `_pg._tcp.${SVC('db.apps')}`, 'SRV'), 'SRV', [{ priority: 0, weight: 100, port: 5432, target: SVC('db-0.db.apps') }], 'publishNotReadyAddresses SRV');
});

t.test('2.4.3 PTR for endpoints', async (t) => {
  const v = fixture();
  positive(t, ask(v, '1.0.0.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('pet-0.web.apps')], 'endpoint with hostname');
  positive(t, ask(v, '2.0.0.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('10-0-0-2.web.apps')], 'without hostname: dashed name (CoreDNS reverse.go)');
  positive(t, ask(v, reverseName('fd00::a'), 'PTR'), 'PTR', [SVC('pet-0.web.apps')], 'IPv6 endpoint');
  t.equal(ask(v, '3.0.0.10.in-addr.arpa', 'PTR').kind, 'notOurs', 'not-ready endpoint: no PTR');
  positive(t, ask(v, '1.1.0.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('db-0.db.apps')], 'publishNotReadyAddresses PTR');
  positive(t, ask(v, '1.2.0.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('10-0-2-1.backend.apps')], 'endpoint of a ClusterIP service');
});

t.test('2.5 ExternalName CNAME', async (t) => {
  const v = fixture();
  const a = found(t, ask(v, SVC('ext.apps'), 'A'));
  t.equal(a.rcode, Rcode.NOERROR);
  t.same(a.answer, [{ name: SVC('ext.apps'), type: 'CNAME', ttl: 5, data: 'www.example.com' }]);
  t.equal(a.chase, 'www.example.com', 'target outside the zone: the caller resolves it');
  t.equal(found(t, ask(v, SVC('ext.apps'), 'AAAA')).chase, 'www.example.com');
  t.equal(found(t, ask(v, SVC('ext.apps'), 'MX')).chase, 'www.example.com', 'any type follows the CNAME');
  const c = found(t, ask(v, SVC('ext.apps'), 'CNAME'));
  t.equal(c.chase, '', 'CNAME asked: nothing to chase');
  t.equal(c.answer.length, 1);
  nxdomain(t, ask(v, SVC('x.ext.apps'), 'A'), 'nothing below an ExternalName');
  nxdomain(t, ask(v, `_http._tcp.${SVC('ext.apps')}`, 'SRV'), 'no ports below an ExternalName');

  // In-zone target: chased in the view.
  const in1 = found(t, ask(v, SVC('alias.apps'), 'A'));
  t.same(in1.answer.map((r) => [r.name, r.type, r.data]), [
    [SVC('alias.apps'), 'CNAME', SVC('dual.apps')],
    [SVC('dual.apps'), 'A', '10.96.1.1'],
  ]);
  t.equal(in1.chase, '');
  const in2 = found(t, ask(v, SVC('alias2.apps'), 'AAAA'));
  t.same(in2.answer.map((r) => r.type), ['CNAME', 'CNAME', 'AAAA'], 'two links');
  const chainToNx = found(t, ask(v, SVC('dangling.apps'), 'A'));
  t.equal(chainToNx.rcode, Rcode.NXDOMAIN, 'target does not exist: NXDOMAIN after the CNAME (RFC 6604)');
  t.equal(chainToNx.answer.length, 1);
  t.equal(chainToNx.authority[0]?.type, 'SOA');
  const chainToNodata = found(t, ask(v, SVC('alias.apps'), 'TXT'));
  t.equal(chainToNodata.rcode, Rcode.NOERROR);
  t.equal(chainToNodata.answer.length, 1, 'CNAME then NODATA');
  t.equal(chainToNodata.authority.length, 1);
  // A loop ends; it does not recurse forever.
  const loop = found(t, ask(v, SVC('loop1.apps'), 'A'));
  t.same(loop.answer.map((r) => r.data), [SVC('loop2.apps'), SVC('loop1.apps')], 'loop stops after one round');
  t.equal(loop.rcode, Rcode.NOERROR);
  // An unsynced view must not deny the target of a chain.
  const cold = recordOptions({ zone: 'cluster.local', negativesAllowed: false });
  t.equal(ask(v, SVC('dangling.apps'), 'A', cold).kind, 'unknown');
  t.equal(found(t, ask(v, SVC('ext.apps'), 'A', cold)).chase, 'www.example.com', 'positive answers need no sync');
});

t.test('CNAME chains longer than the limit stop', async (t) => {
  const v = fixture();
  const n = RECORD_DEFAULTS.maxCnameChain + 3;
  for (let i = 0; i < n; i++) v.upsert('services', external('apps', `c${i}`, `c${i + 1}.apps.svc.cluster.local`));
  const a = found(t, ask(v, SVC('c0.apps'), 'A'));
  t.equal(a.answer.length, RECORD_DEFAULTS.maxCnameChain + 1, 'bounded');
  t.ok(a.answer.every((r) => r.type === 'CNAME'));
});

t.test('pod records (pods insecure)', async (t) => {
  const v = fixture();
  positive(t, ask(v, '10-1-2-3.apps.pod.cluster.local', 'A'), 'A', ['10.1.2.3'], 'dashed IPv4');
  nodata(t, ask(v, '10-1-2-3.apps.pod.cluster.local', 'AAAA'), 'IPv4 pod AAAA');
  positive(t, ask(v, 'fd00--5.apps.pod.cluster.local', 'AAAA'), 'AAAA', ['fd00::5'], 'dashed IPv6');
  positive(t, ask(v, '2001-db8-0-0-0-0-0-1.apps.pod.cluster.local', 'AAAA'), 'AAAA', ['2001:db8:0:0:0:0:0:1'], 'uncompressed IPv6');
  nxdomain(t, ask(v, '10-1-2-3.nope.pod.cluster.local', 'A'), 'unknown namespace');
  nxdomain(t, ask(v, '10-1-2-999.apps.pod.cluster.local', 'A'), 'not an address');
  nxdomain(t, ask(v, 'mypod.apps.pod.cluster.local', 'A'), 'pod names are addresses');
  nxdomain(t, ask(v, 'x.10-1-2-3.apps.pod.cluster.local', 'A'), 'nothing below a pod');
  nodata(t, ask(v, 'apps.pod.cluster.local', 'A'), '<ns>.pod exists');
  nxdomain(t, ask(v, 'nope.pod.cluster.local', 'A'), 'unknown <ns>.pod');
  nodata(t, ask(v, 'pod.cluster.local', 'A'), 'pod.<zone> exists');
  // One label holding dots (an IPv4-mapped IPv6 literal): the answer's owner would be written as several labels,
  // a name other than the one asked; CoreDNS reads the escaped label as no address.
  const dotted = Buffer.concat([Buffer.from([14]), Buffer.from('::ffff:1.2.3.4', 'latin1'), nameToWire('apps.pod.cluster.local')]);
  nxdomain(t, answerCluster(v, dotted, QType.AAAA, OPTS), 'a pod label with dots is no address');
  t.ok(isCertainNxdomain(v, dotted, OPTS), 'and is certainly no name');
});

t.test('NXDOMAIN vs NODATA, apex SOA and NS', async (t) => {
  const v = fixture();
  const soa = found(t, ask(v, 'cluster.local', 'SOA'));
  t.same(soa.answer, [{
    name: 'cluster.local', type: 'SOA', ttl: 5,
    data: { mname: 'ns.dns.cluster.local', rname: 'hostmaster.cluster.local', serial: 1_700_000_000, refresh: 7200, retry: 1800, expire: 86400, minimum: 5 },
  }], 'apex SOA, CoreDNS fields');
  const ns = found(t, ask(v, 'cluster.local', 'NS'));
  t.same(ns.answer, [{ name: 'cluster.local', type: 'NS', ttl: 5, data: SVC('kube-dns.kube-system') }], 'NS: the DNS service');
  t.same(ns.additional, [{ name: SVC('kube-dns.kube-system'), type: 'A', ttl: 5, data: '10.96.0.10' }], 'with glue');
  positive(t, ask(v, 'ns.dns.cluster.local', 'A'), 'A', ['10.96.0.10'], 'ns.dns.<zone>');
  nodata(t, ask(v, 'dns.cluster.local', 'A'), 'dns.<zone> is an empty non-terminal');
  nxdomain(t, ask(v, 'x.dns.cluster.local', 'A'), 'nothing else under dns.<zone>');
  nodata(t, ask(v, 'cluster.local', 'A'), 'apex A');
  nodata(t, ask(v, 'svc.cluster.local', 'A'), 'svc.<zone>');
  nodata(t, ask(v, 'apps.svc.cluster.local', 'A'), '<ns>.svc.<zone>, namespace exists');
  nodata(t, ask(v, 'quiet.svc.cluster.local', 'A'), 'namespace without services');
  nxdomain(t, ask(v, 'nope.svc.cluster.local', 'A'), 'unknown namespace');
  nxdomain(t, ask(v, SVC('nope.apps'), 'A'), 'unknown service');
  nxdomain(t, ask(v, SVC('kubernetes.nope'), 'A'), 'service in unknown namespace');
  nxdomain(t, ask(v, 'www.google.com.cluster.local', 'A'), 'outside svc/pod');
  nxdomain(t, ask(v, 'api.github.com.apps.svc.cluster.local', 'A'), 'search-path junk');
  nxdomain(t, ask(v, `x.y.z.${SVC('kubernetes.default')}`, 'A'), 'too deep');
  nxdomain(t, ask(v, 'nope.cluster.local', 'SOA'), 'SOA asked for a missing name: NXDOMAIN (CoreDNS says NODATA)');
  nodata(t, ask(v, SVC('kubernetes.default'), 'SOA'), 'SOA at an existing name: NODATA');

  // Without the DNS service in the view: ns.dns.<zone>, no glue.
  const bare = new ClusterView();
  const n2 = found(t, ask(bare, 'cluster.local', 'NS'));
  t.same(data(n2.answer), ['ns.dns.cluster.local']);
  t.same(n2.additional, []);
  const n3 = found(t, ask(bare, 'cluster.local', 'SOA'));
  t.equal((n3.answer[0] as { data: { serial: number } }).data.serial, 0, 'serial 0 before any change');
  nodata(t, ask(bare, 'ns.dns.cluster.local', 'A'), 'ns.dns without addresses');
  // Another zone name, with trailing dot and capitals in the option.
  const other = recordOptions({ zone: 'Corp.Example.', negativesAllowed: true });
  positive(t, ask(fixture(), 'kubernetes.default.svc.corp.example', 'A', other), 'A', ['10.96.0.1'], 'zone option is normalised');
  t.equal(ask(fixture(), SVC('kubernetes.default'), 'A', other).kind, 'notOurs', 'cluster.local is not that zone');
});

t.test('negative SOA: minimum = ttl, SOA TTL capped at 300', async (t) => {
  const v = fixture();
  const a = found(t, ask(v, SVC('nope.apps'), 'A', recordOptions({ zone: 'cluster.local', negativesAllowed: true, ttl: 600 })));
  const s = a.authority[0] as { ttl: number; data: { minimum: number } };
  t.equal(s.ttl, 300);
  t.equal(s.data.minimum, 600);
});

t.test('case-insensitive names', async (t) => {
  const v = fixture();
  positive(t, ask(v, 'KUBERNETES.Default.SVC.Cluster.LOCAL', 'A'), 'A', ['10.96.0.1'], 'mixed case');
  positive(t, ask(v, '_HTTP._Tcp.Web.APPS.svc.cluster.local', 'SRV'), 'SRV', [
    { priority: 0, weight: 25, port: 80, target: SVC('pet-0.web.apps') },
    { priority: 0, weight: 25, port: 80, target: SVC('10-0-0-2.web.apps') },
    { priority: 0, weight: 25, port: 80, target: SVC('pet-3.web.apps') },
    { priority: 0, weight: 25, port: 80, target: SVC('fd00--b.web.apps') },
  ], 'SRV mixed case');
  positive(t, ask(v, 'PET-0.web.apps.svc.cluster.local', 'A'), 'A', ['10.0.0.1'], 'hostname');
  positive(t, ask(v, 'FD00--B.web.apps.svc.cluster.local', 'AAAA'), 'AAAA', ['fd00::b'], 'dashed IPv6 hostname');
  positive(t, ask(v, 'DNS-Version.cluster.local', 'TXT'), 'TXT', ['1.1.0'], 'dns-version');
  t.same(wireLabels(nameToWire('a.B.c')), ['a', 'b', 'c']);
  t.same(wireLabels(Buffer.from([3, 0x41, 0x42, 0x43, 0])), ['abc'], 'upper-case wire bytes fold');
});

t.test('unsynced or silent view: negatives become unknown', async (t) => {
  const v = fixture();
  const cold = recordOptions({ zone: 'cluster.local', negativesAllowed: false });
  t.equal(ask(v, SVC('nope.apps'), 'A', cold).kind, 'unknown', 'NXDOMAIN -> unknown');
  t.equal(ask(v, 'apps.svc.cluster.local', 'A', cold).kind, 'unknown', 'NODATA of an empty non-terminal (a namespace) -> unknown');
  const notListed = new ClusterView();
  notListed.replace('namespaces', [{ name: 'default' }]);
  notListed.replace('services', [clusterIP('default', 'kubernetes', ['10.96.0.1'], [tcp('https', 443)])]);
  t.equal(ask(notListed, SVC('kubernetes.default'), 'AAAA', cold).kind, 'unknown', 'NODATA of a held name before every kind was listed whole -> unknown');
  t.equal(ask(v, '9.9.9.9.in-addr.arpa', 'PTR', cold).kind, 'unknown', 'unknown address -> unknown');
  positive(t, ask(v, SVC('kubernetes.default'), 'A', cold), 'A', ['10.96.0.1'], 'positives are still served');
  positive(t, ask(v, '1.0.96.10.in-addr.arpa', 'PTR', cold), 'PTR', [SVC('kubernetes.default')], 'PTR too');
  t.equal(ask(v, 'www.example.com', 'A', cold).kind, 'notOurs', 'outside the zone stays notOurs');

  // The view's own gate: synced and heard from recently.
  const w = new ClusterView();
  t.equal(w.synced, false);
  t.equal(w.negativesAllowed(1000, 60_000), false, 'never heard from');
  w.touch(1000);
  w.markSynced('services');
  w.markSynced('endpointslices');
  t.equal(w.synced, false, 'one kind missing');
  t.equal(w.negativesAllowed(1000, 60_000), false);
  w.markSynced('namespaces');
  t.equal(w.synced, true);
  t.equal(w.lastContactMs, 1000);
  t.equal(w.negativesAllowed(61_000, 60_000), true, 'at the limit');
  t.equal(w.negativesAllowed(61_001, 60_000), false, 'silent too long');
});

t.test('outside the zone: notOurs', async (t) => {
  const v = fixture();
  t.equal(ask(v, 'www.example.com', 'A').kind, 'notOurs');
  t.equal(ask(v, 'local', 'A').kind, 'notOurs', 'parent of the zone');
  t.equal(ask(v, 'xcluster.local', 'A').kind, 'notOurs', 'label boundary respected');
  t.equal(answerCluster(v, Buffer.from([0]), QType.A, OPTS).kind, 'notOurs', 'root');
  t.equal(answerCluster(v, Buffer.from([5, 0x61]), QType.A, OPTS).kind, 'notOurs', 'malformed wire name');
  t.equal(answerCluster(v, Buffer.from([1, 0x61]), QType.A, OPTS).kind, 'notOurs', 'unterminated');
  t.equal(answerCluster(v, Buffer.from([64]), QType.A, OPTS).kind, 'notOurs', 'label too long');
});

t.test('isCertainNxdomain: the search-path junk predicate', async (t) => {
  const v = fixture();
  const yes = (n: string, o: RecordOptions = OPTS): boolean => isCertainNxdomain(v, nameToWire(n), o);
  t.ok(yes('api.github.com.apps.svc.cluster.local'), 'junk under a namespace');
  t.ok(yes('api.github.com.svc.cluster.local'), 'junk under svc');
  t.ok(yes('api.github.com.cluster.local'), 'junk under the zone');
  t.ok(yes('nope.svc.cluster.local'), 'unknown namespace');
  t.ok(yes(SVC('empty.apps')), 'headless without ready endpoints');
  t.notOk(yes(SVC('kubernetes.default')), 'a service');
  t.notOk(yes('apps.svc.cluster.local'), 'a namespace');
  t.notOk(yes('cluster.local'), 'the apex');
  t.notOk(yes(SVC('dangling.apps')), 'a CNAME to nowhere exists itself');
  t.notOk(yes('api.github.com'), 'outside the zone');
  t.notOk(yes('9.9.9.9.in-addr.arpa'), 'reverse names are never certain');
  t.notOk(yes('api.github.com.cluster.local', recordOptions({ zone: 'cluster.local', negativesAllowed: false })), 'unsynced');
  t.notOk(isCertainNxdomain(v, Buffer.from([9]), OPTS), 'malformed');
  // It agrees with the full answer.
  for (const n of ['a.b.cluster.local', SVC('x.apps'), SVC('pet-9.web.apps'), SVC('pet-0.web.apps'), 'apps.pod.cluster.local']) {
    const r = found(t, ask(v, n, 'A'));
    t.equal(yes(n), r.rcode === Rcode.NXDOMAIN, `agrees with answerCluster for ${n}`);
  }
});

// ---------------------------------------------------------------------------
// The view: incremental updates and relists

t.test('view: incremental updates keep records and reverse index right', async (t) => {
  const v = fixture();
  // A slice update replaces the old one (addresses leave the reverse index).
  v.upsert('endpointslices', slice('apps', 'web-b', 'web', [ep('10.0.0.5', 'pet-3')], webPorts));
  positive(t, ask(v, SVC('pet-3.web.apps'), 'A'), 'A', ['10.0.0.5'], 'hostname moved to a new address');
  t.equal(ask(v, '4.0.0.10.in-addr.arpa', 'PTR').kind, 'notOurs', 'old address forgotten');
  positive(t, ask(v, '5.0.0.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('pet-3.web.apps')], 'new address indexed');
  // Readiness change.
  v.upsert('endpointslices', slice('apps', 'sleepy-a', 'sleepy', [ep('10.0.3.1', 'nap', true)], [tcp('http', 80)]));
  positive(t, ask(v, SVC('sleepy.apps'), 'A'), 'A', ['10.0.3.1'], 'endpoint became ready');
  // Slice removal.
  v.remove('endpointslices', 'apps', 'sleepy-a');
  nxdomain(t, ask(v, SVC('sleepy.apps'), 'A'), 'no slices left');
  t.equal(ask(v, '1.3.0.10.in-addr.arpa', 'PTR').kind, 'notOurs');
  // publishNotReadyAddresses flips without touching the slices.
  v.upsert('services', headless('apps', 'db', [tcp('pg', 5432)], false));
  nxdomain(t, ask(v, SVC('db.apps'), 'A'), 'no longer published');
  t.equal(ask(v, '1.1.0.10.in-addr.arpa', 'PTR').kind, 'notOurs', 'PTR follows the service flag');
  v.upsert('services', headless('apps', 'db', [tcp('pg', 5432)], true));
  positive(t, ask(v, '1.1.0.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('db-0.db.apps')], 'and back');
  // A cluster IP change.
  v.upsert('services', clusterIP('default', 'kubernetes', ['10.96.0.2'], [tcp('https', 443)]));
  t.equal(ask(v, '1.0.96.10.in-addr.arpa', 'PTR').kind, 'notOurs', 'old cluster IP forgotten');
  positive(t, ask(v, '2.0.96.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('kubernetes.default')], 'new cluster IP');
  // Service removal keeps its slices until they go too.
  v.remove('services', 'apps', 'backend');
  nxdomain(t, ask(v, SVC('backend.apps'), 'A'), 'service gone');
  t.equal(ask(v, '1.2.0.10.in-addr.arpa', 'PTR').kind, 'notOurs', 'its lingering slice names no PTR (CoreDNS still would)');
  v.upsert('services', clusterIP('apps', 'backend', ['10.96.2.2']));
  positive(t, ask(v, '1.2.0.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('10-0-2-1.backend.apps')], 'back with its Service');
  v.remove('services', 'apps', 'backend');
  v.remove('endpointslices', 'apps', 'backend-a');
  t.equal(ask(v, '1.2.0.10.in-addr.arpa', 'PTR').kind, 'notOurs');
  // Removing what is not there is harmless.
  v.remove('services', 'apps', 'never');
  v.remove('services', 'never', 'never');
  v.remove('endpointslices', 'apps', 'never');
  // A slice that changes service (label edited) moves.
  v.upsert('endpointslices', slice('apps', 'web-b', 'db', [ep('10.0.1.2', 'db-1')], [tcp('pg', 5432)]));
  positive(t, ask(v, SVC('db-1.db.apps'), 'A'), 'A', ['10.0.1.2'], 'slice now under db');
  nxdomain(t, ask(v, SVC('pet-3.web.apps'), 'A'), 'and no longer under web');
  // Slices without a service label, FQDN slices: ignored, and they drop what they replace.
  v.upsert('endpointslices', slice('apps', 'web-b', '', [ep('10.0.1.3', 'x')]));
  nxdomain(t, ask(v, SVC('db-1.db.apps'), 'A'), 'unlabelled replacement drops the old slice');
  v.upsert('endpointslices', slice('apps', 'fq', 'web', [ep('example.com', 'fq')], [], 'FQDN'));
  nxdomain(t, ask(v, SVC('fq.web.apps'), 'A'), 'FQDN slice ignored');
  // Namespaces come and go.
  v.upsert('namespaces', { name: 'fresh' });
  nodata(t, ask(v, 'fresh.svc.cluster.local', 'A'), 'new namespace');
  v.remove('namespaces', '', 'fresh');
  nxdomain(t, ask(v, 'fresh.svc.cluster.local', 'A'), 'deleted namespace');
  // A service whose Namespace event has not arrived yet still makes the namespace exist.
  v.upsert('services', clusterIP('early', 'svc', ['10.96.9.9']));
  nodata(t, ask(v, 'early.svc.cluster.local', 'A'), 'namespace known through its service');
  v.remove('services', 'early', 'svc');
  nxdomain(t, ask(v, 'early.svc.cluster.local', 'A'), 'and gone with it');
});

t.test('view: a slice may arrive before its service', async (t) => {
  const v = new ClusterView();
  for (const k of ['namespaces', 'services', 'endpointslices'] as const) v.markSynced(k);
  v.touch(5000);
  v.upsert('namespaces', { name: 'ns' });
  v.upsert('endpointslices', slice('ns', 's1', 'late', [ep('10.5.0.1', 'h')]));
  nxdomain(t, ask(v, SVC('late.ns'), 'A'), 'no service yet');
  t.equal(ask(v, '1.0.5.10.in-addr.arpa', 'PTR').kind, 'notOurs', 'no endpoint PTR either (its name would not resolve)');
  v.upsert('services', headless('ns', 'late'));
  positive(t, ask(v, SVC('late.ns'), 'A'), 'A', ['10.5.0.1'], 'service arrived');
  positive(t, ask(v, '1.0.5.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('h.late.ns')], 'and its endpoint PTR with it');
  t.equal(v.modifiedMs, 5000, 'modified at the last contact');
});

t.test('view: shared addresses and relists', async (t) => {
  const v = fixture();
  // Two services' slices hold the same address (a pod behind two services).
  v.upsert('services', headless('apps', 'web2', webPorts));
  v.upsert('endpointslices', slice('apps', 'web2-a', 'web2', [ep('10.0.0.1', 'other')], webPorts));
  positive(t, ask(v, '1.0.0.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('pet-0.web.apps'), SVC('other.web2.apps')], 'both names');
  v.upsert('endpointslices', slice('apps', 'web2-a', 'web2', [ep('10.0.0.1', 'other')], webPorts));
  positive(t, ask(v, '1.0.0.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('pet-0.web.apps'), SVC('other.web2.apps')], 'update keeps one ref each');
  v.remove('endpointslices', 'apps', 'web2-a');
  positive(t, ask(v, '1.0.0.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('pet-0.web.apps')], 'one left');
  // A cluster IP wins over endpoints (CoreDNS: services first).
  v.upsert('services', clusterIP('apps', 'vip', ['10.0.0.1']));
  positive(t, ask(v, '1.0.0.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('vip.apps')], 'service first');
  v.remove('services', 'apps', 'vip');

  // Relist of services: gone ones vanish, slices stay merged.
  const before = v.counts;
  v.replace('services', [clusterIP('default', 'kubernetes', ['10.96.0.1'], [tcp('https', 443)]), headless('apps', 'web', webPorts)]);
  t.equal(v.counts.services, 2);
  t.equal(v.counts.endpointslices, before.endpointslices, 'slices untouched');
  nxdomain(t, ask(v, SVC('dual.apps'), 'A'), 'relisted away');
  t.equal(ask(v, reverseName('fd00::1:1'), 'PTR').kind, 'notOurs', 'its cluster IP left the index');
  positive(t, ask(v, SVC('pet-0.web.apps'), 'A'), 'A', ['10.0.0.1'], 'endpoints kept');
  positive(t, ask(v, '1.0.96.10.in-addr.arpa', 'PTR'), 'PTR', [SVC('kubernetes.default')], 'index rebuilt');
  // Relist of slices.
  v.replace('endpointslices', [slice('apps', 'web-z', 'web', [ep('10.0.0.9', 'pet-9')], webPorts)]);
  t.equal(v.counts.endpointslices, 1);
  positive(t, ask(v, SVC('web.apps'), 'A'), 'A', ['10.0.0.9'], 'only the relisted slice');
  t.equal(ask(v, '1.0.0.10.in-addr.arpa', 'PTR').kind, 'notOurs', 'old endpoint addresses gone');
  nxdomain(t, ask(v, SVC('db.apps'), 'A'), 'db relisted away');
  // Relist of namespaces.
  v.replace('namespaces', [{ name: 'default' }]);
  nxdomain(t, ask(v, 'quiet.svc.cluster.local', 'A'), 'namespace relisted away');
  nodata(t, ask(v, 'apps.svc.cluster.local', 'A'), 'apps still has a service');
  t.same(v.counts, { services: 2, endpointslices: 1, namespaces: 1, reverseKeys: 2 });
  // Empty relists leave an empty view.
  v.replace('endpointslices', []);
  v.replace('services', []);
  t.same(v.counts, { services: 0, endpointslices: 0, namespaces: 1, reverseKeys: 0 });
});

t.test('view: a relist that names one slice twice (a broken server) keeps it once: deleting it leaves no ghost', async (t) => {
  const v = fixture();
  v.upsert('services', headless('apps', 'dup', webPorts));
  v.replace('endpointslices', [
    slice('apps', 'dup-a', 'dup', [ep('10.0.7.1', 'old')], webPorts),
    slice('apps', 'dup-a', 'dup', [ep('10.0.7.2', 'new')], webPorts),
  ]);
  positive(t, ask(v, SVC('dup.apps'), 'A'), 'A', ['10.0.7.2'], 'the later copy only, as the slice index keeps it');
  v.remove('endpointslices', 'apps', 'dup-a');
  nxdomain(t, ask(v, SVC('dup.apps'), 'A'), 'no ready endpoint left once the slice is deleted');
  t.equal(ask(v, '1.7.0.10.in-addr.arpa', 'PTR').kind, 'notOurs', 'the first copy left no PTR');
});

// ---------------------------------------------------------------------------
// The encoder

function norm(rr: PacketAnswer): unknown {
  const r = rr as { name: string; type: string; ttl: number; class: string; data: unknown };
  let d = r.data;
  if (r.type === 'TXT') d = (d as Buffer[]).map((b) => b.toString()).join('');
  if (r.type === 'AAAA') d = nibblesToIPv6(ipv6Nibbles(d as string));
  return { name: r.name, type: r.type, ttl: r.ttl, data: d, class: r.class };
}
function normOurs(rr: ClusterRR): unknown {
  const d = rr.type === 'AAAA' ? nibblesToIPv6(ipv6Nibbles(rr.data)) : rr.data;
  return { name: rr.name, type: rr.type, ttl: rr.ttl, data: d, class: 'IN' };
}

t.test('encodeAnswer: decoded by dns-packet equals the structured answer', async (t) => {
  const v = fixture();
  const cases: [string, keyof typeof QType][] = [
    [SVC('kubernetes.default'), 'A'],
    [SVC('dual.apps'), 'AAAA'],
    [`_http._tcp.${SVC('web.apps')}`, 'SRV'],
    ['dns-version.cluster.local', 'TXT'],
    ['cluster.local', 'SOA'],
    ['cluster.local', 'NS'],
    [SVC('ext.apps'), 'A'],
    [SVC('alias.apps'), 'A'],
    [SVC('nope.apps'), 'A'],
    [SVC('kubernetes.default'), 'AAAA'],
    ['1.0.96.10.in-addr.arpa', 'PTR'],
    [reverseName('fd00::a'), 'PTR'],
  ];
  for (const [name, type] of cases) {
    const qname = nameToWire(name);
    const ans = found(t, answerCluster(v, qname, QType[type], OPTS));
    const wire = encodeAnswer(qname, QType[type], ans);
    const p = dnsPacket.decode(wire);
    t.equal(p.id, 0, `${name} ${type}: id 0`);
    t.ok(p.flag_qr && p.flag_aa && p.flag_rd && p.flag_ra, 'QR AA RD RA');
    t.notOk(p.flag_tc, 'not truncated');
    t.equal((p as { rcode?: string }).rcode, ans.rcode === Rcode.NXDOMAIN ? 'NXDOMAIN' : 'NOERROR', 'rcode');
    t.same(p.questions, [{ name, type, class: 'IN' }], 'the question');
    t.same((p.answers ?? []).map(norm), ans.answer.map(normOurs), 'answers');
    t.same((p.authorities ?? []).map(norm), ans.authority.map(normOurs), 'authority');
    t.same((p.additionals ?? []).map(norm), ans.additional.map(normOurs), 'additional, no OPT');
    // The cache takes it like any upstream answer.
    const scan = scanAnswer(wire);
    t.ok(scan, 'scanAnswer accepts it');
    const plan = planCaching(scan!, { successTtl: 30, denialTtl: 5 }, wire);
    // A CNAME chain that ends without the asked type is a NODATA (RFC 2308): negative with the zone's SOA, and not
    // cached without one (an ExternalName's CNAME alone, its outside target still to be chased).
    const expected = ans.answer.some((rr) => rr.type === type) ? 'positive' : ans.authority.some((rr) => rr.type === 'SOA') ? 'negative' : 'none';
    t.equal(plan.kind, expected, `${name} ${type}: ${expected}`);
  }
  // The question is echoed byte for byte, whatever its case.
  const mixed = Buffer.from([3, 0x46, 0x6f, 0x4f, 5, 0x6c, 0x6f, 0x63, 0x61, 0x6c, 0]); // "FoO.local"
  const w = encodeAnswer(mixed, QType.A, found(t, ask(v, 'nope.cluster.local', 'A')));
  t.same(w.subarray(12, 12 + mixed.length), mixed, 'question bytes as given');
  t.throws(() => encodeAnswer(Buffer.from([5, 1]), QType.A, found(t, ask(v, 'nope.cluster.local', 'A'))), 'malformed question name');
});

// ---------------------------------------------------------------------------
// Address forms

t.test('ip forms', async (t) => {
  t.equal(ipKey('10.1.2.3'), '10.1.2.3');
  t.equal(ipKey('2001:db8::1'), '20010db8000000000000000000000001');
  t.equal(ipKey('2001:DB8:0:0:0:0:0:1'), '20010db8000000000000000000000001', 'spellings meet');
  t.equal(ipKey('::ffff:1.2.3.4'), '00000000000000000000ffff01020304', 'embedded IPv4');
  t.equal(ipKey('::'), '0'.repeat(32));
  t.equal(ipKey('fe80::1%eth0'), '', 'zone ids are not addresses');
  t.equal(ipKey('nope'), '');
  t.equal(nibblesToIPv6('20010db8000000000000000000000001'), '2001:db8::1');
  t.equal(inAddrKey(['4', '3', '2', '1']), '1.2.3.4');
  t.equal(inAddrKey(['4', '3', '2']), '');
  t.equal(inAddrKey(['4', '3', '2', 'x']), '');
  t.equal(ip6ArpaKey('1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2'.split('.')), '20010db8000000000000000000000001');
  t.equal(ip6ArpaKey(['1']), '');
  t.equal(reverseName('1.2.3.4'), '4.3.2.1.in-addr.arpa');
  t.equal(reverseName('bad'), '');
  t.equal(dashedName('10.0.0.2'), '10-0-0-2');
  t.equal(dashedName('fd00::b'), 'fd00--b');
  t.equal(dashedName('fd00::'), 'fd00--0', 'no trailing hyphen (CoreDNS)');
  // isDashedName is dashedName compared, without the string: the same answer for every spelling and label.
  const ips = ['10.0.0.2', '1.2.3.4', 'fd00::b', 'FD00::B', 'fd00::', '::', '::1', '2001:db8:0:0:0:0:0:1', '::ffff:1.2.3.4'];
  const labels = [...ips.map(dashedName), '10-0-0-20', '10-0-0-', 'fd00--', 'fd00--00', 'fd00--b0', '1-2-3-4x', '--0', '--', '-', ''];
  for (const ip of ips) {
    for (const l of labels) t.equal(isDashedName(l, ip), dashedName(ip) === l, `isDashedName(${l}, ${ip})`);
  }
  t.equal(podLabelAddress('1-2-3-4'), '1.2.3.4');
  t.equal(podLabelAddress('fd00--1'), 'fd00::1');
  t.equal(podLabelAddress('1-2-3'), '');
  t.equal(podLabelAddress('a-b-c-d'), '');
  t.equal(podLabelAddress('fe80--1%x'), '');
});

// ---------------------------------------------------------------------------
// Review: defects found against the spec and CoreDNS

t.test('ExternalName holding an IP literal: no address record, NXDOMAIN as the cluster DNS answers', async (t) => {
  // CoreDNS findServices keeps an ExternalName service only when its host is a name
  // (`if t, _ := s.HostType(); t == dns.TypeCNAME`), so an IP literal leaves the name
  // NXDOMAIN (coredns/coredns#2324: "the external name field is supposed to hold a DNS
  // name, not an IP"); the Kubernetes docs say such names "are not resolved by DNS
  // servers". The view stands in for CoreDNS: a name must not start resolving only
  // while kube-dns is down (or merely late, --fallback-after).
  const v = fixture();
  const a = found(t, ask(v, SVC('extip.apps'), 'A'));
  t.same(a.answer.filter((rr) => rr.type === 'A' || rr.type === 'AAAA'), [], 'no address record invented from an ExternalName');
  nxdomain(t, ask(v, SVC('extip.apps'), 'A'), 'A: NXDOMAIN, as CoreDNS');
  nxdomain(t, ask(v, SVC('extip.apps'), 'AAAA'), 'AAAA: NXDOMAIN, as CoreDNS');
});

t.test('a name the view holds keeps its NODATA while the view may not deny (API silent, or not yet synced)', async (t) => {
  // The view keeps serving positive answers through API silence (README: "positive
  // answers keep being served"); the other address family of the same name is as
  // certain as the positive itself. Turned into SERVFAIL, it breaks the positive too:
  // musl's getaddrinfo asks A and AAAA together and returns EAI_AGAIN when either
  // answer is SERVFAIL (name_from_dns: rcode 2 -> EAI_AGAIN), so an Alpine pod cannot
  // resolve kubernetes.default at all although the view has its address.
  const v = fixture();
  const cold = recordOptions({ zone: 'cluster.local', negativesAllowed: false });
  positive(t, ask(v, SVC('kubernetes.default'), 'A', cold), 'A', ['10.96.0.1'], 'the A is served');
  nodata(t, ask(v, SVC('kubernetes.default'), 'AAAA', cold), 'IPv4-only service, AAAA: NODATA, not SERVFAIL');
  positive(t, ask(v, SVC('pet-3.web.apps'), 'A', cold), 'A', ['10.0.0.4'], 'endpoint name A is served');
  nodata(t, ask(v, SVC('pet-3.web.apps'), 'AAAA', cold), 'IPv4-only endpoint name, AAAA: NODATA, not SERVFAIL');
});

t.test('a headless service\'s addresses come in an order of each computation\'s own, never the slices\' order on every node', async (t) => {
  const v = new ClusterView();
  v.touch(1_700_000_000_000);
  v.replace('namespaces', [{ name: 'apps' }]);
  v.replace('services', [headless('apps', 'many', [tcp('http', 80)])]);
  const ips = Array.from({ length: 20 }, (_, i) => `10.0.5.${i + 1}`);
  v.replace('endpointslices', [slice('apps', 'many-a', 'many', ips.map((ip) => ep(ip)), [tcp('http', 80)])]);
  for (const k of ['namespaces', 'services', 'endpointslices'] as const) v.markSynced(k);
  const orders = new Set<string>();
  for (let i = 0; i < 10; i++) {
    const a = positive(t, ask(v, SVC('many.apps'), 'A'), 'A', ips, `computation ${i}: every address`);
    orders.add(data(a.answer).join(','));
  }
  // Ten computations of 20 addresses in one order by chance: 1 in (20!)^9.
  t.ok(orders.size > 1, `${orders.size} different orders in 10 computations`);
});

t.test('a name below a big headless service costs at most one pass over its endpoints, and its own name one endpoint', async (t) => {
  // Each pass built an object and a dashed name per address (about 3.5 ms for 5,000 endpoints) and a junk name
  // took two passes in its answer and two in --local-negative's check: a pod asking random names below such a
  // service kept the main thread busy at a few hundred queries a second while the view answered (kube-dns down).
  const n = 1000;
  let reads = 0;
  const counted = (e: SlimEndpoint): SlimEndpoint => new Proxy(e, {
    get: (o, k) => {
      if (k === 'addresses') reads++;
      return Reflect.get(o, k) as unknown;
    },
  });
  const v = new ClusterView();
  v.touch(1_700_000_000_000);
  v.replace('namespaces', [{ name: 'apps' }]);
  v.replace('services', [headless('apps', 'big', [tcp('http', 80)])]);
  const eps = Array.from({ length: n }, (_, i) => counted(ep(`10.1.${i >> 8}.${i & 255}`, i === 7 ? 'pet-7' : '')));
  v.replace('endpointslices', [slice('apps', 'big-a', 'big', eps, [tcp('http', 80)])]);
  for (const k of ['namespaces', 'services', 'endpointslices'] as const) v.markSynced(k);
  const passes = (msg: string, fn: () => void, most = n): void => {
    reads = 0;
    fn();
    t.ok(reads <= most, `${msg}: ${reads} endpoint reads for ${n} endpoints (at most ${most})`);
  };
  passes('an unknown name below it', () => nxdomain(t, ask(v, SVC('junk.big.apps'), 'A'), 'junk: NXDOMAIN'));
  passes('--local-negative\'s check of it', () => t.ok(isCertainNxdomain(v, nameToWire(SVC('junk.big.apps')), OPTS), 'junk: certainly absent'));
  passes('a protocol no port speaks', () => nxdomain(t, ask(v, `_udp.${SVC('big.apps')}`, 'SRV'), '_udp: NXDOMAIN'));
  passes('a dashed endpoint name', () => positive(t, ask(v, SVC('10-1-3-231.big.apps'), 'A'), 'A', ['10.1.3.231'], 'dashed name'));
  passes('an endpoint hostname', () => positive(t, ask(v, SVC('PET-7.big.apps'), 'A'), 'A', ['10.1.0.7'], 'hostname'));
  nxdomain(t, ask(v, SVC('10-1-0-7.big.apps'), 'A'), 'an endpoint with a hostname is not named by its address');
  passes('the service name, a type it has none of', () => nodata(t, ask(v, SVC('big.apps'), 'TXT'), 'TXT: NODATA'), 1);
  passes('the protocol\'s empty non-terminal', () => nodata(t, ask(v, `_tcp.${SVC('big.apps')}`, 'SRV'), '_tcp: NODATA'), n + 1);
  passes('a port name no slice has', () => nxdomain(t, ask(v, `_junk._tcp.${SVC('big.apps')}`, 'SRV'), '_junk._tcp: NXDOMAIN'), 0);
  passes('a named port\'s SRV', () => t.ok(found(t, ask(v, `_http._tcp.${SVC('big.apps')}`, 'SRV')).answer.length > 0, 'SRV records'));
});

// ---------------------------------------------------------------------------
// Second review: answer size and the DNS service's name

/** The records the hit path keeps of `wire` within `budget` bytes (its UDP cut), and whether it sets TC. */
function keptWithin(t: Test, wire: Buffer, budget: number): { kept: number; tc: boolean } {
  const scan = scanAnswer(wire);
  t.ok(scan, 'scanAnswer accepts it');
  const n = keptRecords(wire, scan!.ttlOffsets, budget);
  return n < 0 ? { kept: ~n, tc: true } : { kept: n, tc: false };
}

/** `wire` cut to its first `kept` records as the hit path cuts it (a prefix, counts lowered), decoded. */
function decodeCut(wire: Buffer, kept: number): dnsPacket.Packet {
  let off = scanAnswer(wire)!.questionEnd;
  for (let i = 0; i < kept; i++) {
    off = skipName(wire, off);
    off += 10 + wire.readUInt16BE(off + 8);
  }
  const cut = Buffer.from(wire.subarray(0, off));
  const an = Math.min(kept, cut.readUInt16BE(6));
  const ns = Math.min(kept - an, cut.readUInt16BE(8));
  cut.writeUInt16BE(an, 6);
  cut.writeUInt16BE(ns, 8);
  cut.writeUInt16BE(kept - an - ns, 10);
  return dnsPacket.decode(cut);
}

/** Wire form keeping the case as written (nameToWire folds it). */
function spelledWire(name: string): Buffer {
  return Buffer.concat([...name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'latin1')])), Buffer.from([0])]);
}

t.test('view answers compress names: a headless service gives as many addresses per UDP answer as kube-dns would', async (t) => {
  // Uncompressed, each A of big.apps.svc.cluster.local took 42 bytes: 11 fit a 512-byte answer, where CoreDNS
  // (compressed, 16 bytes each) sends 29. More clients fell back to TCP during an outage, and musl before 1.2.4
  // (never retries over TCP) saw a third of the pods.
  const v = new ClusterView();
  v.touch(1_700_000_000_000);
  v.replace('namespaces', [{ name: 'apps' }]);
  v.replace('services', [headless('apps', 'big', [tcp('http', 80)])]);
  const ips = Array.from({ length: 100 }, (_, i) => `10.0.${6 + (i >> 8)}.${(i & 0xff) + 1}`);
  v.replace('endpointslices', [slice('apps', 'big-a', 'big', ips.map((ip, i) => ep(ip, `pod-${i}`)), [tcp('http', 80)])]);
  for (const k of ['namespaces', 'services', 'endpointslices'] as const) v.markSynced(k);

  // The question as a client spells it (0x20 case): owners that point at it echo that spelling.
  const asked = 'BiG.aPPs.svc.Cluster.local';
  const qname = spelledWire(asked);
  const ans = found(t, answerCluster(v, qname, QType.A, OPTS));
  t.equal(ans.answer.length, 100, '100 ready endpoints');
  const wire = encodeAnswer(qname, QType.A, ans);
  const whole = dnsPacket.decode(wire);
  t.same(sorted((whole.answers ?? []).map((a) => (a as { data: unknown }).data)), sorted(ips), 'the whole answer: every address');
  t.ok((whole.answers ?? []).every((a) => a.name === asked && a.type === 'A' && a.ttl === 5), 'each owner is the question, as the client spelled it');

  // 512 - 12 (header) - 32 (question) = 468 bytes: 29 records of 16 bytes (name pointer 2, fixed 10, address 4).
  const udp = keptWithin(t, wire, 512);
  t.equal(udp.kept, 29, '29 addresses in a plain 512-byte UDP answer (11 uncompressed)');
  t.ok(udp.tc, 'TC=1: the rest is over TCP');
  const cut = decodeCut(wire, udp.kept);
  t.equal(cut.answers?.length, 29, 'the cut answer decodes: 29 A records');
  t.ok((cut.answers ?? []).every((a) => a.name === asked && ips.includes((a as { data: string }).data)), 'each one right');
  // EDNS 1232, less our 11-byte OPT: 1177 bytes, 73 records (28 uncompressed).
  t.equal(keptWithin(t, wire, 1232 - 11).kept, 73, '73 addresses with EDNS 1232');

  // SRV (targets never compressed, RFC 2782) with the targets' addresses in additional, which may point at them.
  const srvName = `_http._tcp.${SVC('big.apps')}`;
  const srvQ = nameToWire(srvName);
  const srv = found(t, answerCluster(v, srvQ, QType.SRV, OPTS));
  const srvWire = encodeAnswer(srvQ, QType.SRV, srv);
  const sp = dnsPacket.decode(srvWire);
  t.same(sorted((sp.answers ?? []).map(norm)), sorted(srv.answer.map(normOurs)), 'SRV answers decode right');
  t.same(sorted((sp.additionals ?? []).map(norm)), sorted(srv.additional.map(normOurs)), 'their addresses decode right');
  t.ok(srvWire.length < wireSize(srvQ, srv), 'smaller than uncompressed');
  // SRV rdata holds no pointer: each target is written out whole after priority, weight and port.
  let off = scanAnswer(srvWire)!.questionEnd;
  for (let i = 0; i < srv.answer.length; i++) {
    off = skipName(srvWire, off);
    const rdlen = srvWire.readUInt16BE(off + 8);
    const target = srvWire.subarray(off + 10 + 6, off + 10 + rdlen);
    t.equal(skipUncompressedName(target, 0), target.length, `SRV ${i}: target uncompressed`);
    off += 10 + rdlen;
  }

  // PTR for an endpoint, the apex NS with glue, SOA and a negative answer: every record as structured.
  const cases: [string, keyof typeof QType][] = [
    [reverseName('10.0.6.7'), 'PTR'], ['cluster.local', 'NS'], ['cluster.local', 'SOA'], [SVC('nope.apps'), 'A'],
  ];
  for (const [name, type] of cases) {
    const q = nameToWire(name);
    const a = found(t, answerCluster(fixtureWith(v), q, QType[type], OPTS));
    const w = encodeAnswer(q, QType[type], a);
    const p = dnsPacket.decode(w);
    t.same((p.answers ?? []).map(norm), a.answer.map(normOurs), `${name} ${type}: answers`);
    t.same((p.authorities ?? []).map(norm), a.authority.map(normOurs), `${name} ${type}: authority`);
    t.same((p.additionals ?? []).map(norm), a.additional.map(normOurs), `${name} ${type}: additional`);
    t.ok(w.length < wireSize(q, a), `${name} ${type}: smaller than uncompressed`);
  }
});

/** The view plus kube-system/kube-dns, for the NS glue. */
function fixtureWith(v: ClusterView): ClusterView {
  if (v.service('kube-system', 'kube-dns') === undefined) {
    v.replace('namespaces', [{ name: 'apps' }, { name: 'kube-system' }]);
    v.replace('services', [...['big'].map((n) => headless('apps', n, [tcp('http', 80)])), clusterIP('kube-system', 'kube-dns', ['10.96.0.10'])]);
  }
  return v;
}

/** The answer's size with every name written out: what dns-packet (no compression) makes of it. */
function wireSize(qname: Uint8Array, a: ClusterAnswer): number {
  return qname.length + 4 + dnsPacket.encodingLength({
    type: 'response', questions: [],
    answers: a.answer.map((r) => ({ ...r, class: 'IN' }) as PacketAnswer),
    authorities: a.authority.map((r) => ({ ...r, class: 'IN' }) as PacketAnswer),
    additionals: a.additional.map((r) => ({ ...r, class: 'IN' }) as PacketAnswer),
  });
}

t.test('the DNS service is found by the cluster DNS address the agent forwards to, when it is not kube-system/kube-dns', async (t) => {
  // RKE2 names it rke2-coredns-rke2-coredns: with the name fixed to kube-dns, ns.dns.<zone> had no address and
  // the apex NS no glue while kube-dns failed. The agent forwards to that Service's cluster IP (--upstream-addr);
  // here nothing listens there, so every forward is refused and the view answers.
  const dnsIP = '127.0.47.10';
  const api = new FakeApiServer({ token: 'sample-token' });
  await api.start();
  for (const ns of ['default', 'kube-system']) api.put('namespaces', namespaceJson(ns));
  api.put('services', serviceJson('default', 'kubernetes', { clusterIP: '10.96.0.1', ports: [{ name: 'https', port: 443 }] }));
  api.put('services', serviceJson('kube-system', 'rke2-coredns-rke2-coredns', { clusterIP: dnsIP, ports: [{ name: 'udp-53', port: 53, protocol: 'UDP' }] }));
  api.put('endpointslices', endpointSliceJson('kube-system', 'rke2-coredns-a', 'rke2-coredns-rke2-coredns', [{ addresses: ['10.42.0.5'], ready: true }]));
  const agent = await startAgent('127.0.47.1', ['--upstream-addr', `${dnsIP}:53`, '--local-ttl', '1s', '--kubeconfig', writeKubeconfig(api.url)]);
  t.teardown(async () => {
    await agent.stop();
    await api.close();
  });
  for (let i = 0; i < 500 && agent.agent.view?.synced !== true; i++) await sleep(20);
  t.ok(agent.agent.view?.synced, 'the view synced');

  const a = await udpQuery(agent.target, 'ns.dns.cluster.local', { type: 'A' });
  t.same((a.answers ?? []).map((r) => [r.name, r.type, (r as { data: unknown }).data]), [['ns.dns.cluster.local', 'A', dnsIP]], 'ns.dns.<zone>: the DNS service\'s address');
  const ns = await udpQuery(agent.target, 'cluster.local', { type: 'NS' });
  const host = 'rke2-coredns-rke2-coredns.kube-system.svc.cluster.local';
  t.same((ns.answers ?? []).map((r) => (r as { data: unknown }).data), [host], 'NS: the DNS service by its own name');
  t.same((ns.additionals ?? []).filter((r) => r.type === 'A').map((r) => [r.name, (r as { data: unknown }).data]), [[host, dnsIP]], 'with glue');

  // kube-system/kube-dns, where it exists, stays the one named (the address may be kube-dns-upstream's, a second
  // Service in front of the same pods, as the shipped DaemonSet has it).
  api.put('services', serviceJson('kube-system', 'kube-dns', { clusterIP: '10.96.0.10', ports: [{ name: 'dns', port: 53, protocol: 'UDP' }] }));
  let named: string[] = [];
  for (let i = 0; i < 250; i++) {
    const r = await udpQuery(agent.target, 'ns.dns.cluster.local', { type: 'A' });
    named = (r.answers ?? []).map((x) => String((x as { data: unknown }).data));
    if (named[0] === '10.96.0.10') break;
    await sleep(20);
  }
  t.same(named, ['10.96.0.10'], 'kube-system/kube-dns when the view has it');
});

/** Every compression pointer in the names of `wire`'s records: [where it is, where it points]. */
function pointersOf(wire: Buffer): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const walk = (off: number): number => {
    for (;;) {
      const len = wire[off]!;
      if (len === 0) return off + 1;
      if ((len & 0xc0) === 0xc0) {
        out.push([off, wire.readUInt16BE(off) & 0x3fff]);
        return off + 2;
      }
      off += len + 1;
    }
  };
  let off = scanAnswer(wire)!.questionEnd;
  const records = wire.readUInt16BE(6) + wire.readUInt16BE(8) + wire.readUInt16BE(10);
  for (let i = 0; i < records; i++) {
    off = walk(off);
    const type = wire.readUInt16BE(off);
    const rd = off + 10;
    if (type === QType.CNAME || type === QType.PTR || type === QType.NS) walk(rd);
    else if (type === QType.SRV) walk(rd + 6);
    else if (type === QType.SOA) walk(walk(rd));
    off = rd + wire.readUInt16BE(off + 8);
  }
  return out;
}

t.test('a view answer past 16 KiB: every pointer targets an offset below 0x4000 written before it, and any cut of it decodes', async (t) => {
  // A pointer holds 14 bits of offset: a name first written past 16,383 must be written out again, never pointed at.
  // SRV targets (written whole) and their addresses (owners pointing at them) fill the message well past that.
  const svc = SVC('big.apps');
  const n = 600;
  const answer: ClusterRR[] = [];
  const additional: ClusterRR[] = [];
  for (let i = 0; i < n; i++) {
    const target = `pod-${i}.${svc}`;
    answer.push({ name: `_http._tcp.${svc}`, type: 'SRV', ttl: 5, data: { priority: 0, weight: 100, port: 80, target } });
    additional.push({ name: target, type: 'A', ttl: 5, data: `10.1.${i >> 8}.${i & 0xff}` });
  }
  const ans: ClusterAnswer = { kind: 'answer', rcode: Rcode.NOERROR, answer, authority: [], additional, chase: '' };
  const wire = encodeAnswer(nameToWire(`_http._tcp.${svc}`), QType.SRV, ans);
  t.ok(wire.length > 0x4000 * 2, `well past 16 KiB (${wire.length} bytes)`);
  const d = dnsPacket.decode(wire);
  t.equal(d.answers?.length, n, 'every SRV');
  t.equal(d.additionals?.length, n, 'every address');
  t.same((d.additionals ?? []).map((r) => `${r.name} ${(r as { data: string }).data}`), additional.map((r) => `${r.name} ${r.data as string}`), 'each address under its target');
  const ptrs = pointersOf(wire);
  t.ok(ptrs.some(([at]) => at > 0x4000), 'names past 16 KiB are compressed too (against earlier suffixes)');
  t.same(ptrs.filter(([at, to]) => to >= 0x4000 || to >= at), [], 'no pointer at or past 0x4000, none forwards');
  const scan = scanAnswer(wire)!;
  for (const budget of [512, 1221, 16_384, 0x4000 + 700, 40_000]) {
    const k = keptRecords(wire, scan.ttlOffsets, budget);
    const kept = k < 0 ? ~k : k;
    t.equal(decodeCut(wire, kept).answers?.length, Math.min(kept, n), `cut to ${budget} bytes: ${kept} records decode`);
  }
});
