// The latency benchmark harness (bench/): its building blocks (zones, query
// templates, the answer checker, glibc's search expansion, option parsing),
// then one --quick run end to end against the simulator ("direct"), a peer
// started with --peer-cmd and a deliberately wrong peer, checking that the
// results are well formed and that the checker tells right from wrong.
// No timing thresholds anywhere: this checks the harness, not the machine.
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import dnsPacket from 'dns-packet';
import type { Packet } from 'dns-packet';
import { Verdict, checkResponse } from '../bench/check.js';
import { helpText, parseOptions } from '../bench/options.js';
import { which } from '../bench/proc-stats.js';
import type { BenchResults } from '../bench/results.js';
import { SimDnsServer } from '../testkit/dns-server.js';
import {
  DEFAULT_ZONES, QTYPE_A, QTYPE_AAAA, RCODE_NOERROR, RCODE_NXDOMAIN, Zone,
  answerPacket, combinedZoneHandler, expectedAnswer, nameExists, zoneOf,
} from '../bench/sim/zones.js';
import { runBench } from '../bench/suite.js';
import { makeTemplate, renderName, writeUnique } from '../bench/wire.js';
import { Rng, Zipf, podSearchList, searchCandidates } from '../bench/workloads.js';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const HOST = '127.0.30.1';
const zones = DEFAULT_ZONES;

/** The simulator's answer to `name`/`qtype` as wire bytes, with `id`. */
function simAnswer(name: string, qtype: number, id: number, tweak?: (p: Packet) => Packet): Buffer {
  const type = qtype === QTYPE_A ? 'A' : 'AAAA';
  const query: Packet = { type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, class: 'IN', name }] };
  let p: Packet = { ...answerPacket(query, zones, new Set([Zone.CLUSTER, Zone.EXTERNAL])), type: 'response', id, questions: query.questions };
  if (tweak) p = tweak(p);
  return dnsPacket.encode(p);
}

t.test('zones: existence rules and deterministic addresses', async (t) => {
  t.equal(zoneOf('svc-1.ns-2.svc.cluster.local', zones), Zone.CLUSTER);
  t.equal(zoneOf('1.0.0.10.in-addr.arpa', zones), Zone.CLUSTER);
  t.equal(zoneOf('www.site-1.example', zones), Zone.EXTERNAL);
  t.ok(nameExists('svc-1.ns-2.svc.cluster.local', zones));
  t.ok(nameExists('SVC-1.NS-2.svc.cluster.local.', zones), 'case and trailing dot do not matter');
  t.ok(nameExists('u-abcd-00000001.ns-0.svc.cluster.local', zones), 'unique miss services exist');
  t.notOk(nameExists(`svc-${zones.servicesPerNamespace}.ns-0.svc.cluster.local`, zones), 'service index out of range');
  t.notOk(nameExists('svc-1.ns-2.ns-3.svc.cluster.local', zones), 'a search-suffixed candidate is NXDOMAIN');
  t.notOk(nameExists('svc-01.ns-2.svc.cluster.local', zones), 'no leading zeros');
  t.notOk(nameExists('www.site-1.example.cluster.local', zones));
  t.ok(nameExists('www.site-1.example', zones));
  t.notOk(nameExists('nx-3.site-1.example', zones));

  const a1 = expectedAnswer('www.site-1.example', QTYPE_A, zones);
  const a2 = expectedAnswer('WWW.site-1.example.', QTYPE_A, zones);
  t.same(a1, a2, 'same answer whatever the case');
  t.equal(a1.rcode, RCODE_NOERROR);
  t.ok(a1.addresses.length >= 1 && a1.addresses.length <= 3);
  t.equal(new Set(a1.addresses).size, a1.addresses.length, 'distinct addresses');
  for (const ip of a1.addresses) t.match(ip, /^198\.1[89]\./);
  const c = expectedAnswer('svc-1.ns-2.svc.cluster.local', QTYPE_AAAA, zones);
  t.equal(c.addresses.length, 1);
  t.match(c.addresses[0], /^fd00:10:96:0:0:0:/);
  t.equal(expectedAnswer('nx-1.site-1.example', QTYPE_A, zones).rcode, RCODE_NXDOMAIN);

  // The simulator serves exactly the expected answer.
  const decoded = dnsPacket.decode(simAnswer('www.site-1.example', QTYPE_A, 7));
  t.same(decoded.answers?.map((a) => (a as { data?: unknown }).data), a1.addresses);
  const nx = dnsPacket.decode(simAnswer('nx-1.ns-0.svc.cluster.local', QTYPE_A, 7));
  t.equal((nx.flags ?? 0) & 15, RCODE_NXDOMAIN);
  t.equal(nx.authorities?.[0]?.type, 'SOA', 'negative answers carry the SOA (RFC 2308)');
  const refused = answerPacket({ questions: [{ type: 'A', class: 'IN', name: 'www.site-1.example' }] }, zones, new Set([Zone.CLUSTER]));
  t.equal((refused.flags ?? 0) & 15, 5, 'the cluster server refuses external names');
});

t.test('checker: accepts the simulator, rejects everything else', async (t) => {
  const tA = makeTemplate('www.site-3.example', QTYPE_A, zones);
  t.equal(checkResponse(simAnswer('www.site-3.example', QTYPE_A, 1), tA, 0), Verdict.OK);
  t.equal(checkResponse(simAnswer('WwW.SiTe-3.example', QTYPE_A, 1), tA, 0), Verdict.OK, '0x20 case in the echoed question');
  const tSvc = makeTemplate('svc-2.ns-1.svc.cluster.local', QTYPE_AAAA, zones);
  t.equal(checkResponse(simAnswer('svc-2.ns-1.svc.cluster.local', QTYPE_AAAA, 1), tSvc, 0), Verdict.OK);
  const tNx = makeTemplate('nx-9.site-3.example', QTYPE_A, zones);
  t.equal(checkResponse(simAnswer('nx-9.site-3.example', QTYPE_A, 1), tNx, 0), Verdict.OK);

  const wrongIp = simAnswer('www.site-3.example', QTYPE_A, 1, (p) => ({ ...p, answers: (p.answers ?? []).map((a) => ({ ...a, data: '192.0.2.1' }) as typeof a) }));
  t.equal(checkResponse(wrongIp, tA, 0), Verdict.DATA);
  const missing = simAnswer('www.site-3.example', QTYPE_A, 1, (p) => ({ ...p, answers: [] }));
  t.equal(checkResponse(missing, tA, 0), Verdict.DATA);
  t.equal(checkResponse(simAnswer('www.site-4.example', QTYPE_A, 1), tA, 0), Verdict.QUESTION, 'answer to another name');
  t.equal(checkResponse(simAnswer('nx-9.site-3.example', QTYPE_A, 1), tA, 0), Verdict.QUESTION);
  const servfail = simAnswer('www.site-3.example', QTYPE_A, 1, (p) => ({ ...p, flags: ((p.flags ?? 0) & ~15) | 2, answers: [] }));
  t.equal(checkResponse(servfail, tA, 0), Verdict.SERVFAIL);
  const noerrorForNx = simAnswer('nx-9.site-3.example', QTYPE_A, 1, (p) => ({ ...p, flags: (p.flags ?? 0) & ~15, authorities: [] }));
  t.equal(checkResponse(noerrorForNx, tNx, 0), Verdict.RCODE);
  const tc = simAnswer('www.site-3.example', QTYPE_A, 1, (p) => ({ ...p, flags: (p.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE }));
  t.equal(checkResponse(tc, tA, 0), Verdict.TRUNCATED);
  t.equal(checkResponse(Buffer.alloc(5), tA, 0), Verdict.MALFORMED);

  // Unique names: the counter is part of the name, and of the expected addresses.
  const tU = makeTemplate('u-test-{n}.site-1.example', QTYPE_A, zones);
  t.equal(renderName(tU, 42), 'u-test-00000016.site-1.example');
  const q = Buffer.from(tU.wire);
  writeUnique(q, tU.uniqueOffset, 42);
  t.equal(dnsPacket.decode(q).questions?.[0]?.name, 'u-test-00000016.site-1.example', 'counter written in place');
  t.equal(checkResponse(simAnswer('u-test-00000016.site-1.example', QTYPE_A, 1), tU, 42), Verdict.OK);
  t.equal(checkResponse(simAnswer('u-test-00000017.site-1.example', QTYPE_A, 1), tU, 42), Verdict.QUESTION);
});

t.test('workloads: glibc search expansion and Zipf', async (t) => {
  const search = podSearchList('ns-1', 'cluster.local');
  t.same(searchCandidates('svc-2', search, 5), ['svc-2.ns-1.svc.cluster.local', 'svc-2.svc.cluster.local', 'svc-2.cluster.local', 'svc-2']);
  t.same(searchCandidates('www.site-1.example', search, 5).at(-1), 'www.site-1.example', 'fewer dots than ndots: as is last');
  t.same(searchCandidates('a.b.c.d.e.f', search, 5)[0], 'a.b.c.d.e.f', 'ndots or more: as is first');
  t.same(searchCandidates('www.site-1.example.', search, 5), ['www.site-1.example'], 'absolute name: only as is');
  const z = new Zipf(100, 1);
  const rng = new Rng(1);
  const counts = new Array<number>(100).fill(0);
  for (let i = 0; i < 20000; i++) counts[z.sample(rng)]!++;
  t.ok((counts[0] ?? 0) > (counts[9] ?? 0) && (counts[9] ?? 0) > (counts[99] ?? 0), 'popularity falls with rank');
});

t.test('options: defaults, --quick, validation, help', async (t) => {
  const d = parseOptions([]);
  t.same(d.workloads, ['hit', 'miss', 'negative', 'podmix']);
  t.same(d.builtinTargets, ['agent', 'direct']);
  t.equal(d.quick, false);
  const q = parseOptions(['--quick', '--rates', '100,200']);
  t.ok(q.durationMs < 1000, '--quick shortens runs');
  t.same(q.rates, [100, 200], 'explicit options win over --quick defaults');
  t.same(parseOptions(['--target', '127.0.0.1:5300']).builtinTargets, ['direct'], '--target replaces the agent');
  t.throws(() => parseOptions(['--target', '10.0.0.1:53']), { name: 'UsageError' }, 'only loopback');
  t.throws(() => parseOptions(['--peer', 'x=192.168.1.1:53']), { name: 'UsageError' }, 'only loopback');
  t.throws(() => parseOptions(['--workloads', 'fallback']), /not implemented yet/, 'fallback is refused, not faked');
  t.throws(() => parseOptions(['--rates', '1,2', '--ramp', '1:2']), { name: 'UsageError' });
  t.throws(() => parseOptions(['--nope']), { name: 'UsageError' });
  t.throws(() => parseOptions(['--peer-cmd', 'x=dnsmasq']), /\{port\}/);
  t.match(helpText(), /--peer-cmd/);
  if (which('dnsperf') === null) {
    await t.rejects(runBench(parseOptions(['--quick', '--driver', 'dnsperf', '--targets', 'direct']), { log: () => {}, signal: new AbortController().signal, argv: [] }), /dnsperf is not installed/, 'dnsperf requested but absent: a clear usage error');
  }
});

/** Every element closed, in order; attributes quoted. A small well-formedness check without an XML parser. */
function svgWellFormed(svg: string): string | null {
  if (!svg.trimStart().startsWith('<svg') || !svg.trimEnd().endsWith('</svg>')) return 'not an <svg> document';
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z][a-zA-Z0-9]*)((?:\s+[a-zA-Z][a-zA-Z0-9:-]*="[^"<]*")*)\s*(\/?)>/g)) {
    const [, close, name, , selfClose] = m;
    if (close === '/') {
      if (stack.pop() !== name) return `unbalanced </${name}>`;
    } else if (selfClose !== '/') stack.push(name as string);
  }
  if (stack.length !== 0) return `unclosed <${stack.join('>, <')}>`;
  const stripped = svg.replace(/<(\/?)([a-zA-Z][a-zA-Z0-9]*)((?:\s+[a-zA-Z][a-zA-Z0-9:-]*="[^"<]*")*)\s*(\/?)>/g, '');
  if (/[<>]/.test(stripped)) return 'stray < or > outside tags';
  if (/&(?!amp;|lt;|gt;|quot;|apos;)/.test(stripped)) return 'unescaped &';
  return null;
}

t.test('--quick end to end: direct, a --peer-cmd, a wrong peer', async (t) => {
  // A peer that gets one in ten A answers wrong, to prove the checker counts them.
  let n = 0;
  const good = combinedZoneHandler({ ...zones, namespaces: 3, servicesPerNamespace: 5 });
  const bad = await SimDnsServer.start({
    host: HOST,
    handler: async (q, ctx) => {
      const p = await good(q, ctx);
      if (p !== null && q.questions?.[0]?.type === 'A' && (p.answers?.length ?? 0) > 0 && ++n % 10 === 0) {
        return { ...p, answers: (p.answers ?? []).map((a) => ({ ...a, data: '192.0.2.66' }) as typeof a) };
      }
      return p;
    },
  });
  t.teardown(() => bad.close());

  // The peer command runs the standalone simulator the way this test process runs TypeScript.
  const peerServer = path.join(ROOT, 'bench', 'sim', 'peer-server.ts');
  const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  const peerCmd = [process.execPath, ...process.execArgv, peerServer, '--host', '{host}', '--port', '{port}', '--namespaces', '3', '--services', '5'].map((s) => (s.startsWith('{') ? s : q(s))).join(' ');
  const out = mkdtempSync(path.join(tmpdir(), 'bench-test-'));
  const argv = ['--quick', '--targets', 'direct', '--host', HOST, '--out', out, '--peer', `wrong=${HOST}:${bad.port}`, '--peer-cmd', `sim=exec ${peerCmd}`];
  const logs: string[] = [];
  const res = await runBench(parseOptions(argv), { log: (l) => logs.push(l), signal: new AbortController().signal, argv });
  t.equal(res.exitCode, 3, 'wrong answers make exit code 3');

  const json = JSON.parse(readFileSync(res.reports.json, 'utf8')) as BenchResults;
  t.equal(json.schema, 'nodelocal-dns-bench/1');
  t.same(json.command.argv, argv, 'the exact command is recorded');
  t.match(json.environment, { node: process.version, cores: Number });
  t.type(json.environment.cpuModel, 'string');
  t.same(json.targets.map((x) => x.name), ['direct', 'wrong', 'sim']);
  const simPeer = json.targets.find((x) => x.name === 'sim');
  t.ok(simPeer?.pid, 'the started peer has a pid for CPU accounting');
  t.match(simPeer?.command ?? '', /peer-server\.ts/, 'the peer command is recorded after substitution');
  t.notMatch(simPeer?.command ?? '', /\{port\}/);

  for (const w of ['hit', 'miss', 'negative', 'podmix']) {
    for (const target of ['direct', 'wrong', 'sim']) {
      for (const mode of ['open', 'closed'] as const) {
        const r = json.runs.find((x) => x.workload === w && x.target === target && x.mode === mode);
        t.ok(r, `${w}/${target}/${mode} ran`);
        if (r === undefined) continue;
        t.ok(r.queries.sent > 0 && r.queries.answered > 0 && r.lookups.completed > 0, `${w}/${target}/${mode}: counts > 0`);
        t.ok(r.latencyUs !== null && r.latencyUs.count > 0 && r.latencyUs.p50 <= r.latencyUs.p99 && r.latencyUs.p99 <= r.latencyUs.max, `${w}/${target}/${mode}: percentiles ordered`);
        t.match(r.targetUsage, { cpuSeconds: target === 'wrong' ? null : Number });
        t.type(r.generator.cores, 'number');
        if (target !== 'wrong') t.equal(r.queries.wrong, 0, `${w}/${target}/${mode}: no wrong answers against the simulator`);
        if (mode === 'open') t.ok(r.sendLagUs !== null && r.offeredQps !== null, 'open loop records its schedule lag');
      }
    }
  }
  const podmix = json.runs.find((x) => x.workload === 'podmix' && x.target === 'direct' && x.mode === 'open');
  t.ok((podmix?.queriesPerLookup ?? 0) > 2, 'podmix sends the search expansion (several queries per lookup)');
  const hitDirect = json.runs.find((x) => x.workload === 'hit' && x.target === 'direct' && x.mode === 'open');
  t.ok((hitDirect?.upstreamQueries?.cluster ?? 0) + (hitDirect?.upstreamQueries?.external ?? 0) > 0, 'upstream queries are counted');
  const wrongTotal = json.runs.filter((x) => x.target === 'wrong').reduce((s, x) => s + x.queries.wrong, 0);
  t.ok(wrongTotal > 0, 'the checker catches a peer serving wrong addresses');
  t.ok(json.runs.filter((x) => x.target === 'wrong').some((x) => x.wrongByReason.data > 0), 'classified as wrong data');

  const md = readFileSync(res.reports.markdown, 'utf8');
  t.match(md, /^# DNS cache benchmark/);
  for (const w of ['hit', 'miss', 'negative', 'podmix']) t.match(md, new RegExp(`^## ${w}$`, 'm'));
  t.match(md, /\| target \| offered q\/s \|/);
  t.match(md, /!\[latency plot\]\(plot\.svg\)/);
  const svg = readFileSync(res.reports.plot, 'utf8');
  t.equal(svgWellFormed(svg), null, 'plot.svg is well formed');
  t.match(svg, /hit: latency percentiles/);
  t.ok(existsSync(res.reports.summary));
  t.equal(res.reports.publishedSummary, null, 'a quick run does not publish a summary');
  t.notOk(existsSync(path.join(out, 'summary')));
});
