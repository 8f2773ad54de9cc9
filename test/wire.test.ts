// Unit tests of the pure parts: query parsing and keys, answer scanning,
// patching, builders, framing, names, routing and caching policy.
import t from 'tap';
import * as dnsPacket from 'dns-packet';
import { parseQuery, QueryStatus, keyParts, keyName } from '../src/dns/query.js';
import { scanAnswer } from '../src/dns/answer.js';
import { writeAnswer, stripOpt } from '../src/dns/patch.js';
import { errorResponse, upstreamQuery, RCODE_BADVERS } from '../src/dns/build.js';
import { FrameDecoder, frame } from '../src/dns/framing.js';
import { nameToString, nameToWire, skipName } from '../src/dns/name.js';
import { answerMatchesQuery } from '../src/dns/question.js';
import { ZoneRouter } from '../src/upstream/router.js';
import { planCaching } from '../src/cache/policy.js';
import { prefetchStart } from '../src/cache/prefetch.js';

type Q = { name: string; type?: string; id?: number; flags?: number; edns?: boolean; udpSize?: number; do?: boolean };
function query(o: Q): Buffer {
  const p: dnsPacket.Packet = {
    type: 'query',
    id: o.id ?? 4242,
    flags: o.flags ?? dnsPacket.RECURSION_DESIRED,
    questions: [{ name: o.name, type: (o.type ?? 'A') as 'A', class: 'IN' }],
  };
  if (o.edns) {
    p.additionals = [{ type: 'OPT', name: '.', udpPayloadSize: o.udpSize ?? 1232, flags: o.do ? dnsPacket.DNSSEC_OK : 0, options: [] } as unknown as dnsPacket.Answer];
  }
  return dnsPacket.encode(p);
}

function answer(name: string, answers: dnsPacket.Answer[], opts: { rcode?: string; authorities?: dnsPacket.Answer[]; additionals?: dnsPacket.Answer[]; type?: string; tc?: boolean } = {}): Buffer {
  // dns-packet encodes the rcode only from the low bits of `flags`.
  const rcode = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'].indexOf(opts.rcode ?? 'NOERROR');
  return dnsPacket.encode({
    type: 'response',
    id: 0,
    flags: (opts.tc ? dnsPacket.TRUNCATED_RESPONSE : 0) | dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | rcode,
    questions: [{ name, type: (opts.type ?? 'A') as 'A', class: 'IN' }],
    answers,
    authorities: opts.authorities ?? [],
    additionals: opts.additionals ?? [],
  } as dnsPacket.Packet);
}

const ttlOf = (a: dnsPacket.Answer): number | undefined => (a as { ttl?: number }).ttl;

const soa = (zone: string, ttl: number, minimum: number): dnsPacket.Answer => ({
  type: 'SOA', name: zone, ttl,
  data: { mname: 'ns.dns.' + zone, rname: 'hostmaster.' + zone, serial: 1, refresh: 7200, retry: 1800, expire: 86400, minimum },
} as dnsPacket.Answer);

t.test('parseQuery: a plain query, its key and 0x20 case', async (t) => {
  const q = parseQuery(query({ name: 'WwW.Example.COM', id: 7 }));
  t.equal(q.status, QueryStatus.OK);
  t.equal(q.id, 7);
  t.equal(q.qtype, 1);
  t.equal(q.qclass, 1);
  t.equal(q.edns, false);
  t.equal(q.udpSize, 512);
  const lower = parseQuery(query({ name: 'www.example.com' }));
  t.equal(q.key, lower.key, 'key ignores case');
  t.equal(keyName(q.key).toString('hex'), nameToWire('www.example.com').toString('hex'));
  t.notSame(parseQuery(query({ name: 'www.example.com', type: 'AAAA' })).key, lower.key, 'type is in the key');
  const parts = keyParts(q.key);
  t.same([parts.qtype, parts.qclass, parts.dnssecOk, parts.cd], [1, 1, false, false]);
});

t.test('parseQuery: EDNS size, DO and CD split the key; BADVERS', async (t) => {
  const base = parseQuery(query({ name: 'a.example', edns: true, udpSize: 4096 }));
  t.equal(base.edns, true);
  t.equal(base.udpSize, 4096);
  t.equal(parseQuery(query({ name: 'a.example', edns: true, udpSize: 100 })).udpSize, 512, 'sizes below 512 count as 512');
  const withDo = parseQuery(query({ name: 'a.example', edns: true, do: true }));
  t.equal(withDo.dnssecOk, true);
  t.not(withDo.key, base.key);
  const cd = parseQuery(query({ name: 'a.example', edns: true, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.CHECKING_DISABLED }));
  t.not(cd.key, base.key);
  t.equal(keyParts(cd.key).cd, true);
  const v1 = query({ name: 'a.example', edns: true });
  v1[v1.length - 5] = 1; // OPT version byte (before the flags and RDLENGTH)
  t.equal(parseQuery(v1).status, QueryStatus.BADVERS);
  const resp = errorResponse(parseQuery(v1), RCODE_BADVERS);
  const decoded = dnsPacket.decode(resp);
  t.equal((decoded.additionals?.[0] as { extendedRcode?: number } | undefined)?.extendedRcode, 1, 'BADVERS upper bits in OPT');
});

t.test('parseQuery: bad input', async (t) => {
  t.equal(parseQuery(Buffer.alloc(5)).status, QueryStatus.DROP, 'short header dropped');
  const resp = query({ name: 'x.example' });
  resp[2]! |= 0x80;
  t.equal(parseQuery(resp).status, QueryStatus.DROP, 'responses dropped');
  const notify = query({ name: 'x.example' });
  notify[2] = (notify[2]! & 0x87) | (4 << 3);
  t.equal(parseQuery(notify).status, QueryStatus.NOTIMP, 'opcode NOTIFY');
  const two = query({ name: 'x.example' });
  two.writeUInt16BE(2, 4);
  t.equal(parseQuery(two).status, QueryStatus.FORMERR, 'QDCOUNT 2');
  const zero = query({ name: 'x.example' });
  zero.writeUInt16BE(0, 4);
  t.equal(parseQuery(zero).status, QueryStatus.FORMERR, 'QDCOUNT 0');
  const cut = query({ name: 'x.example' }).subarray(0, 20);
  t.equal(parseQuery(cut).status, QueryStatus.FORMERR, 'truncated question');
  const ptr = Buffer.from(query({ name: 'x.example' }));
  ptr[12] = 0xc0;
  ptr[13] = 0x0c;
  t.equal(parseQuery(ptr).status, QueryStatus.FORMERR, 'pointer in the question');
  const an = query({ name: 'x.example' });
  an.writeUInt16BE(1, 6);
  t.equal(parseQuery(an).status, QueryStatus.FORMERR, 'ANCOUNT in a query');
  const ar = query({ name: 'x.example' });
  ar.writeUInt16BE(3, 10);
  t.equal(parseQuery(ar).status, QueryStatus.FORMERR, 'ARCOUNT past the end');
  t.equal(parseQuery(query({ name: 'x.example', type: 'AXFR' })).status, QueryStatus.NOTIMP, 'AXFR');
  const ch = query({ name: 'version.bind', type: 'TXT' });
  ch.writeUInt16BE(3, ch.length - 2);
  t.equal(parseQuery(ch).status, QueryStatus.NOTIMP, 'class CH');
  const f = parseQuery(an);
  const err = dnsPacket.decode(errorResponse(f, 1));
  t.equal((err as { rcode?: string }).rcode, 'FORMERR');
  t.equal(err.id, 4242);
  t.equal(err.questions?.[0]?.name, 'x.example', 'question echoed when readable');
});

t.test('scanAnswer: TTL offsets, minimum, negative TTL, OPT', async (t) => {
  const msg = answer('svc.ns.svc.cluster.local', [
    { type: 'A', name: 'svc.ns.svc.cluster.local', ttl: 30, data: '10.0.0.1' },
    { type: 'A', name: 'svc.ns.svc.cluster.local', ttl: 7, data: '10.0.0.2' },
  ], { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: 0, options: [] } as unknown as dnsPacket.Answer] });
  const s = scanAnswer(msg)!;
  t.ok(s);
  t.equal(s.rcode, 0);
  t.equal(s.ancount, 2);
  t.equal(s.minTtl, 7);
  t.equal(s.ttlOffsets.length, 2, 'OPT TTL is not a TTL');
  t.same([...s.ttlOffsets].map((o) => msg.readUInt32BE(o)), [30, 7]);
  t.ok(s.optStart > 0 && s.optEnd === msg.length);

  const nx = answer('nope.example', [], { rcode: 'NXDOMAIN', authorities: [soa('example', 900, 60)] });
  const n = scanAnswer(nx)!;
  t.equal(n.negativeTtl, 60, 'min(SOA TTL, MINIMUM)');
  const nx2 = scanAnswer(answer('nope.example', [], { rcode: 'NXDOMAIN', authorities: [soa('example', 20, 300)] }))!;
  t.equal(nx2.negativeTtl, 20);

  t.equal(scanAnswer(msg.subarray(0, msg.length - 3)), undefined, 'cut record');
  const loop = Buffer.from(msg);
  const firstRr = 12 + nameToWire('svc.ns.svc.cluster.local').length + 4;
  loop[firstRr] = 0xc0;
  loop[firstRr + 1] = firstRr; // points at itself: forward/self pointers are refused
  t.equal(scanAnswer(loop), undefined, 'self-pointing compression');
  const counts = Buffer.from(msg);
  counts.writeUInt16BE(60000, 6);
  t.equal(scanAnswer(counts), undefined, 'absurd ANCOUNT');
});

t.test('writeAnswer: id, case, TTL countdown, EDNS, truncation', async (t) => {
  const up = answer('www.example.com', [
    { type: 'CNAME', name: 'www.example.com', ttl: 20, data: 'web.example.com' },
    { type: 'A', name: 'web.example.com', ttl: 25, data: '192.0.2.1' },
  ], { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 4096, flags: 0, options: [{ code: 10, data: Buffer.alloc(8) }] } as unknown as dnsPacket.Answer] });
  const scan = scanAnswer(up)!;
  const offsets = scan.ttlOffsets.slice();
  const wire = stripOpt(up, scan.end, scan.optStart, scan.optEnd, offsets);
  t.equal(wire.readUInt16BE(10), 0, 'OPT stripped at insert');

  const plain = parseQuery(query({ name: 'WWW.example.COM', id: 99 }));
  const out = writeAnswer(wire, scan.questionEnd, offsets, plain, 5, -1, 512, 1232);
  const d = dnsPacket.decode(out);
  t.equal(d.id, 99);
  t.equal(d.questions?.[0]?.name, 'WWW.example.COM', 'client case echoed');
  t.same(d.answers?.map(ttlOf), [15, 20], 'TTLs aged by 5 s');
  t.equal(d.additionals?.length ?? 0, 0, 'no OPT for a non-EDNS client');
  t.equal(wire.readUInt32BE(offsets[0]!), 20, 'stored bytes untouched');
  const old = dnsPacket.decode(writeAnswer(wire, scan.questionEnd, offsets, plain, 500, -1, 512, 1232));
  t.same(old.answers?.map(ttlOf), [0, 0], 'never negative');
  const stale = dnsPacket.decode(writeAnswer(wire, scan.questionEnd, offsets, plain, 0, 30, 512, 1232));
  t.same(stale.answers?.map(ttlOf), [30, 30], 'a fixed TTL for stale answers');

  const ednsQ = parseQuery(query({ name: 'www.example.com', edns: true, do: true }));
  const e = dnsPacket.decode(writeAnswer(wire, scan.questionEnd, offsets, ednsQ, 0, -1, 1232, 1232));
  const opt = e.additionals?.[0] as { type: string; udpPayloadSize: number; flags: number; options: unknown[] };
  t.equal(opt.type, 'OPT');
  t.equal(opt.udpPayloadSize, 1232, 'our own OPT, not the upstream one');
  t.equal(opt.options.length, 0);
  t.equal(opt.flags & dnsPacket.DNSSEC_OK, dnsPacket.DNSSEC_OK, 'DO echoed');

  const tc = writeAnswer(wire, scan.questionEnd, offsets, ednsQ, 0, -1, 40, 1232);
  const td = dnsPacket.decode(tc);
  t.equal(td.flag_tc, true, 'TC=1 when over the limit');
  t.equal(td.answers?.length, 0);
  t.equal(td.questions?.[0]?.name, 'www.example.com');
  t.equal(td.additionals?.[0]?.type, 'OPT', 'truncated EDNS answer keeps OPT');
});

t.test('upstreamQuery: canonical lower-case query with EDNS', async (t) => {
  const q = parseQuery(query({ name: 'MiXeD.Example', type: 'AAAA', edns: true, do: true, id: 1234 }));
  const u = dnsPacket.decode(upstreamQuery(q));
  t.equal(u.questions?.[0]?.name, 'mixed.example');
  t.equal(u.questions?.[0]?.type, 'AAAA');
  t.equal(u.flag_rd, true);
  t.equal(((u.additionals?.[0] as { flags: number }).flags & dnsPacket.DNSSEC_OK) !== 0, true);
  t.ok(answerMatchesQuery(upstreamQuery(q), answer('MIXED.example', [], { type: 'AAAA' })), 'case-insensitive match');
  t.notOk(answerMatchesQuery(upstreamQuery(q), answer('mixed.example', [], { type: 'A' })), 'type must match');
  t.notOk(answerMatchesQuery(upstreamQuery(q), upstreamQuery(q)), 'a query is not an answer');
});

t.test('framing across partial reads', async (t) => {
  const frames: string[] = [];
  const d = new FrameDecoder((f) => frames.push(f.toString()));
  const all = Buffer.concat([frame(Buffer.from('hello')), frame(Buffer.from('')), frame(Buffer.from('world!'))]);
  for (let i = 0; i < all.length; i++) d.push(all.subarray(i, i + 1));
  t.same(frames, ['hello', '', 'world!']);
  t.equal(d.buffered, 0);
  d.push(all.subarray(0, 4));
  t.equal(d.buffered, 4);
});

t.test('names', async (t) => {
  const w = nameToWire('Foo.Example.');
  t.equal(w.toString('hex'), '03666f6f076578616d706c6500');
  t.equal(nameToString(w, 0), 'foo.example');
  t.equal(nameToString(Buffer.from([0]), 0), '.');
  t.equal(skipName(Buffer.from([3, 0x61, 0x62]), 0), -1);
  t.throws(() => nameToWire('a'.repeat(64) + '.com'));
});

t.test('ZoneRouter: longest suffix, case-insensitive', async (t) => {
  const r = new ZoneRouter([{ zone: 'cluster.local', target: 'cluster' }, { zone: 'in-addr.arpa', target: 'cluster' }, { zone: 'corp.cluster.local', target: 'stub' }], 'host');
  const route = (name: string): string => r.route(parseQuery(query({ name })).key);
  t.equal(route('kubernetes.default.svc.CLUSTER.local'), 'cluster');
  t.equal(route('db.corp.cluster.local'), 'stub');
  t.equal(route('cluster.local'), 'cluster');
  t.equal(route('notcluster.local'), 'host', 'label boundary respected');
  t.equal(route('10.0.96.10.in-addr.arpa'), 'cluster');
  t.equal(route('www.example.com'), 'host');
});

t.test('planCaching', async (t) => {
  const caps = { successTtl: 30, denialTtl: 5 };
  const pos = scanAnswer(answer('a.example', [{ type: 'A', name: 'a.example', ttl: 300, data: '192.0.2.1' }]))!;
  t.same(planCaching(pos, caps), { kind: 'positive', ttl: 30 });
  const short = scanAnswer(answer('a.example', [{ type: 'A', name: 'a.example', ttl: 4, data: '192.0.2.1' }]))!;
  t.same(planCaching(short, caps), { kind: 'positive', ttl: 4 });
  const nx = scanAnswer(answer('n.example', [], { rcode: 'NXDOMAIN', authorities: [soa('example', 3, 60)] }))!;
  t.same(planCaching(nx, caps), { kind: 'negative', ttl: 3 });
  const nodata = scanAnswer(answer('a.example', [], { authorities: [soa('example', 60, 60)] }))!;
  t.same(planCaching(nodata, caps), { kind: 'negative', ttl: 5 }, 'NODATA capped like NXDOMAIN');
  const nosoa = scanAnswer(answer('n.example', [], { rcode: 'NXDOMAIN' }))!;
  t.equal(planCaching(nosoa, caps).kind, 'none');
  t.equal(planCaching(scanAnswer(answer('n.example', [], { rcode: 'SERVFAIL' }))!, caps).kind, 'none');
  t.equal(planCaching(scanAnswer(answer('n.example', [], { tc: true }))!, caps).kind, 'none');
  const zero = scanAnswer(answer('a.example', [{ type: 'A', name: 'a.example', ttl: 0, data: '192.0.2.1' }]))!;
  t.equal(planCaching(zero, caps).kind, 'none');
  t.equal(prefetchStart(1000, 30, { minHits: 3, percent: 10 }), 1000 + 27_000);
  t.equal(prefetchStart(1000, 5, { minHits: 3, percent: 10 }), 1000 + 4_000, 'at least 1 s window');
  t.equal(prefetchStart(1000, 1, { minHits: 3, percent: 10 }), Infinity);
  t.equal(prefetchStart(1000, 30, { minHits: 0, percent: 10 }), Infinity);
});
