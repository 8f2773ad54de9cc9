// Unit tests of the pure parts: query parsing and keys, answer scanning,
// patching, builders, framing, names, routing and caching policy.
import t from 'tap';
import * as dnsPacket from 'dns-packet';
import { parseQuery, parseQueryInto, QueryScratch, QueryStatus, keyParts, keyName } from '../src/dns/query.js';
import { KEY_TAIL } from '../src/dns/query-result.js';
import { scanAnswer } from '../src/dns/answer.js';
import { keptRecords, writeAnswer, stripOpt } from '../src/dns/patch.js';
import { errorResponse, upstreamQuery, RCODE_BADVERS } from '../src/dns/build.js';
import { tsigErrorResponse, TSIG_BADKEY } from '../src/dns/tsig.js';
import { FrameDecoder, frame } from '../src/dns/framing.js';
import { nameInZone, nameToString, nameToWire, skipName } from '../src/dns/name.js';
import { answerMatchesQuery } from '../src/dns/question.js';
import { scrubOutOfBailiwick } from '../src/dns/bailiwick.js';
import { ZoneRouter } from '../src/upstream/router.js';
import { planCaching } from '../src/cache/policy.js';
import { AnswerCopy } from '../src/cache/entry.js';
import { prefetchStart } from '../src/cache/prefetch.js';
import { answer, query, soa, ttlOf, tsigRr, withAdditional } from './kit/dns.js';

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
  const { wire, ttlOffsets: offsets } = stripOpt(up, scan.end, scan.optStart, scan.optEnd, scan.ttlOffsets.slice());
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

// ---- Raw answers, built by hand: compressed owner names (pointers to the question) as real servers send them. ----

interface Rr { type: number; ttl: number; rdata: Buffer; owner?: Buffer }
const QNAME_PTR = Buffer.from([0xc0, 12]);

function rawAnswer(qname: string, qtype: number, an: Rr[], ns: Rr[] = [], ar: Rr[] = [], rcode = 0): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt16BE(0x8180 | rcode, 2); // QR RD RA
  head.writeUInt16BE(1, 4);
  head.writeUInt16BE(an.length, 6);
  head.writeUInt16BE(ns.length, 8);
  head.writeUInt16BE(ar.length, 10);
  const qtail = Buffer.alloc(4);
  qtail.writeUInt16BE(qtype, 0);
  qtail.writeUInt16BE(1, 2);
  const rrs = [...an, ...ns, ...ar].map((r) => {
    const fixed = Buffer.alloc(10);
    fixed.writeUInt16BE(r.type, 0);
    fixed.writeUInt16BE(1, 2);
    fixed.writeUInt32BE(r.ttl, 4);
    fixed.writeUInt16BE(r.rdata.length, 8);
    return Buffer.concat([r.owner ?? QNAME_PTR, fixed, r.rdata]);
  });
  return Buffer.concat([head, nameToWire(qname), qtail, ...rrs]);
}

const aRr = (i: number, ttl = 30): Rr => ({ type: 1, ttl, rdata: Buffer.from([10, 96, 100, i]) });

/** What the cache keeps of an upstream answer (entry.ts fromAnswer without the TTL cap). */
function stored(msg: Buffer): { wire: Buffer; questionEnd: number; offsets: Uint16Array } {
  const scan = scanAnswer(msg);
  if (scan === undefined) throw new Error('test answer does not scan');
  const { wire, ttlOffsets: offsets } = stripOpt(msg, scan.end, scan.optStart, scan.optEnd, scan.ttlOffsets.slice());
  return { wire, questionEnd: scan.questionEnd, offsets };
}

function counts(b: Buffer): [number, number, number] {
  return [b.readUInt16BE(6), b.readUInt16BE(8), b.readUInt16BE(10)];
}
const tcOf = (b: Buffer): boolean => (b[2]! & 0x02) !== 0;

t.test('writeAnswer: too big for UDP keeps the whole records that fit, TC=1 (musl < 1.2.4 never retries over TCP)', async (t) => {
  const name = 'many.default.svc.cluster.local';
  const s = stored(rawAnswer(name, 1, Array.from({ length: 60 }, (_, i) => aRr(i + 1))));
  t.equal(s.wire.length, 12 + 32 + 4 + 60 * 16, '60 compressed A records');
  const plain = parseQuery(query({ name: 'Many.Default.svc.cluster.local', id: 77 }));
  const out = writeAnswer(s.wire, s.questionEnd, s.offsets, plain, 7, -1, 512, 1232);
  t.ok(out.length <= 512, `${out.length} bytes`);
  t.equal(tcOf(out), true, 'TC=1: the answer section did not fit whole');
  const d = dnsPacket.decode(out);
  t.equal(dnsPacket.decode.bytes, out.length, 'no stray bytes after the last record');
  t.equal(d.answers?.length, Math.floor((512 - 48) / 16), 'as many whole records as fit (29)');
  t.same(counts(out), [29, 0, 0]);
  t.same(d.answers?.map((a) => (a as { data: string }).data), Array.from({ length: 29 }, (_, i) => `10.96.100.${i + 1}`), 'the leading records, in order');
  t.same([...new Set(d.answers?.map(ttlOf))], [23], 'TTLs of the kept records aged');
  t.equal(d.id, 77);
  t.equal(d.questions?.[0]?.name, 'Many.Default.svc.cluster.local', 'client case echoed');

  // EDNS: our OPT counts against the limit and stays last.
  const ednsQ = parseQuery(query({ name, edns: true, udpSize: 600 }));
  const e = writeAnswer(s.wire, s.questionEnd, s.offsets, ednsQ, 0, -1, 600, 1232);
  t.ok(e.length <= 600);
  t.equal(tcOf(e), true);
  const ed = dnsPacket.decode(e);
  t.equal(ed.answers?.length, Math.floor((600 - 48 - 11) / 16));
  t.same(counts(e), [ed.answers?.length ?? -1, 0, 1]);
  t.equal(ed.additionals?.[0]?.type, 'OPT');
  t.equal(dnsPacket.decode.bytes, e.length);

  // Stale serving patches the kept records too.
  const st = dnsPacket.decode(writeAnswer(s.wire, s.questionEnd, s.offsets, plain, 0, 30, 512, 1232));
  t.same([...new Set(st.answers?.map(ttlOf))], [30]);
  t.equal(s.wire.readUInt32BE(s.offsets[0]!), 30, 'stored bytes untouched');
});

t.test('writeAnswer: RFC 2181 9, TC only when what the client needs is missing', async (t) => {
  const name = 'a.example';
  const nsRr = (host: string): Rr => ({ type: 2, ttl: 30, rdata: nameToWire(host) });
  // 2 answers, 3 NS in authority, 3 glue A in additional.
  const msg = rawAnswer(name, 1, [aRr(1), aRr(2)], [nsRr('ns1.example'), nsRr('ns2.example'), nsRr('ns3.example')], [aRr(7), aRr(8), aRr(9)]);
  const s = stored(msg);
  const q = parseQuery(query({ name }));
  const answerEnd = s.questionEnd + 2 * 16;
  const nsLen = 12 + nameToWire('ns1.example').length;

  const cutAuthority = writeAnswer(s.wire, s.questionEnd, s.offsets, q, 0, -1, answerEnd + nsLen + 5, 1232);
  t.equal(tcOf(cutAuthority), false, 'answer section whole: no TC for a partial authority section');
  t.same(counts(cutAuthority), [2, 0, 0], 'the NS RRset did not fit whole: none of it');
  t.equal(dnsPacket.decode(cutAuthority).answers?.length, 2);

  const cutAdditional = writeAnswer(s.wire, s.questionEnd, s.offsets, q, 0, -1, answerEnd + 3 * nsLen + 16, 1232);
  t.equal(tcOf(cutAdditional), false, 'nor for a partial additional section');
  t.same(counts(cutAdditional), [2, 3, 0], 'the glue RRset did not fit whole: none of it');
  t.equal(dnsPacket.decode(cutAdditional).additionals?.length, 0);
  t.equal(dnsPacket.decode.bytes, cutAdditional.length, 'ends at the last kept record');

  const cutAnswers = writeAnswer(s.wire, s.questionEnd, s.offsets, q, 0, -1, answerEnd - 1, 1232);
  t.equal(tcOf(cutAnswers), true, 'answer section cut: TC');
  t.same(counts(cutAnswers), [1, 0, 0]);

  const whole = writeAnswer(s.wire, s.questionEnd, s.offsets, q, 0, -1, s.wire.length, 1232);
  t.equal(tcOf(whole), false);
  t.ok(whole.equals(writeAnswer(s.wire, s.questionEnd, s.offsets, q, 0, -1, 65535, 1232)), 'exact fit is the full answer');

  // Negative answer: the SOA is what the client needs (RFC 2308 negative caching).
  const soaRdata = Buffer.concat([nameToWire('ns.example'), nameToWire('hostmaster.example'), Buffer.alloc(20, 1)]);
  const nx = stored(rawAnswer('nope.example', 1, [], [{ type: 6, ttl: 60, rdata: soaRdata, owner: nameToWire('example') }], [aRr(9)], 3));
  const nq = parseQuery(query({ name: 'nope.example' }));
  const nxSoaEnd = nx.wire.length - 16;
  const noSoa = writeAnswer(nx.wire, nx.questionEnd, nx.offsets, nq, 0, -1, nxSoaEnd - 1, 1232);
  t.equal(tcOf(noSoa), true, 'negative answer without room for its SOA: TC');
  t.same(counts(noSoa), [0, 0, 0]);
  t.equal(noSoa[3]! & 0xf, 3, 'rcode kept');
  const soaKept = writeAnswer(nx.wire, nx.questionEnd, nx.offsets, nq, 0, -1, nxSoaEnd, 1232);
  t.equal(tcOf(soaKept), false, 'SOA fits, additional dropped: no TC');
  t.same(counts(soaKept), [0, 1, 0]);
  t.equal(dnsPacket.decode(soaKept).authorities?.[0]?.type, 'SOA');
});

t.test('writeAnswer: a DNSSEC client (DO) that loses authority records gets TC (RFC 4035 3.1.1, 3.1.3)', async (t) => {
  // A wildcard answer's NSEC proof, and the RRSIGs of what is in authority, sit there: a validator that gets the answer
  // without them finds it bogus, where TC sends it to TCP for the whole. A client without DO is served as before.
  const name = 'a.example';
  const nsecRr: Rr = { type: 47, ttl: 30, owner: nameToWire('a.example'), rdata: Buffer.concat([nameToWire('c.example'), Buffer.from([0, 1, 0x40])]) };
  const sigRr: Rr = { type: 46, ttl: 30, owner: nameToWire('a.example'), rdata: Buffer.concat([Buffer.from([0, 47, 13, 2, 0, 0, 0, 30]), Buffer.alloc(10), nameToWire('example'), Buffer.alloc(64, 7)]) };
  const s = stored(rawAnswer(name, 1, [aRr(1)], [nsecRr, sigRr]));
  const limit = s.questionEnd + 16 + 11 + 10; // the A, our OPT, and less than the NSEC
  const withDo = writeAnswer(s.wire, s.questionEnd, s.offsets, parseQuery(query({ name, edns: true, do: true, udpSize: 512 })), 0, -1, limit, 1232);
  t.equal(tcOf(withDo), true, 'DO: the NSEC proof did not fit: TC');
  t.same(counts(withDo), [1, 0, 1], 'what fits, and our OPT');
  const plain = writeAnswer(s.wire, s.questionEnd, s.offsets, parseQuery(query({ name, edns: true, udpSize: 512 })), 0, -1, limit, 1232);
  t.equal(tcOf(plain), false, 'no DO: the answer section is what it needs, no TC');
  const fits = writeAnswer(s.wire, s.questionEnd, s.offsets, parseQuery(query({ name, edns: true, do: true })), 0, -1, 1232, 1232);
  t.equal(tcOf(fits), false, 'DO, all of it fits: no TC');
  t.same(counts(fits), [1, 2, 1]);
});

t.test('writeAnswer over TCP: an answer just over 65535 with our OPT loses its last record, not all of them', async (t) => {
  const name = 'big.example';
  // TXT records of 1024 bytes of RDATA (four 255-byte strings), then one sized to end at 65530 bytes.
  const txt = (len: number): Buffer => {
    const parts: Buffer[] = [];
    for (let left = len; left > 0; left -= 256) parts.push(Buffer.concat([Buffer.from([Math.min(255, left - 1)]), Buffer.alloc(Math.min(255, left - 1), 0x61)]));
    return Buffer.concat(parts);
  };
  const rrs: Rr[] = [];
  let size = 12 + nameToWire(name).length + 4;
  while (size + 12 + 1024 <= 65530 - 300) {
    rrs.push({ type: 16, ttl: 30, rdata: txt(1024) });
    size += 12 + 1024;
  }
  rrs.push({ type: 16, ttl: 30, rdata: txt(65530 - size - 12) });
  const s = stored(rawAnswer(name, 16, rrs));
  t.equal(s.wire.length, 65530, 'stored answer: 65530 bytes');

  const noEdns = writeAnswer(s.wire, s.questionEnd, s.offsets, parseQuery(query({ name, type: 'TXT' })), 0, -1, 65535, 1232);
  t.equal(noEdns.length, 65530, 'fits whole without an OPT');
  t.equal(tcOf(noEdns), false);

  const ednsQ = parseQuery(query({ name, type: 'TXT', edns: true }));
  const out = writeAnswer(s.wire, s.questionEnd, s.offsets, ednsQ, 0, -1, 65535, 1232);
  t.ok(out.length <= 65535, `${out.length} bytes`);
  t.equal(tcOf(out), true, 'TC=1: one answer record is missing');
  t.same(counts(out), [rrs.length - 1, 0, 1], 'every record but the last, and our OPT');
  const d = dnsPacket.decode(out);
  t.equal(d.answers?.length, rrs.length - 1);
  t.equal(d.additionals?.[0]?.type, 'OPT');
  t.equal(dnsPacket.decode.bytes, out.length);
});

const optRr = (): Buffer => Buffer.from([0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]); // 1232, DO

t.test('error replies carry an OPT whenever the query had one (RFC 6891 7)', async (t) => {
  const cases: Array<[string, Buffer, number]> = [];
  const notify = query({ name: 'x.example', edns: true });
  notify[2] = (notify[2]! & 0x87) | (4 << 3);
  cases.push(['opcode NOTIFY', notify, QueryStatus.NOTIMP]);
  const two = dnsPacket.encode({
    type: 'query', id: 4242, flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name: 'x.example', type: 'A', class: 'IN' }, { name: 'y.example', type: 'A', class: 'IN' }],
    additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: 0, options: [] } as unknown as dnsPacket.Answer],
  });
  cases.push(['QDCOUNT 2', two, QueryStatus.FORMERR]);
  const zero = Buffer.concat([Buffer.from([0x10, 0x92, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 1]), optRr()]);
  cases.push(['QDCOUNT 0', zero, QueryStatus.FORMERR]);
  cases.push(['AXFR', query({ name: 'x.example', type: 'AXFR', edns: true }), QueryStatus.NOTIMP]);
  const ch = query({ name: 'version.bind', type: 'TXT', edns: true });
  ch.writeUInt16BE(3, 12 + nameToWire('version.bind').length + 2);
  cases.push(['class CH', ch, QueryStatus.NOTIMP]);
  cases.push(['qtype OPT', query({ name: 'x.example', type: 'OPT', edns: true }), QueryStatus.FORMERR]);
  const withAnswer = dnsPacket.encode({
    type: 'query', id: 4242, flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name: 'x.example', type: 'A', class: 'IN' }],
    answers: [{ type: 'A', name: 'x.example', ttl: 1, data: '192.0.2.1' }],
    additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, flags: 0, options: [] } as unknown as dnsPacket.Answer],
  });
  cases.push(['ANCOUNT 1', withAnswer, QueryStatus.FORMERR]);
  const brokenAfterOpt = withAdditional(query({ name: 'x.example', edns: true }), Buffer.from([0, 0, 1]));
  cases.push(['broken record after the OPT', brokenAfterOpt, QueryStatus.FORMERR]);
  cases.push(['TSIG not last', withAdditional(query({ name: 'x.example' }), tsigRr(), optRr()), QueryStatus.FORMERR]);
  // A problem with the OPT itself is FORMERR with an OPT (RFC 6891 7: so the client can tell it from a server without
  // EDNS, which answers FORMERR without one, and does not fall back to plain DNS and its 512 bytes).
  cases.push(['two OPTs', withAdditional(query({ name: 'x.example', edns: true }), optRr()), QueryStatus.FORMERR]);
  cases.push(['OPT with a non-root owner', withAdditional(query({ name: 'x.example' }), Buffer.from([3, 0x61, 0x62, 0x63, 0, 0, 41, 2, 0, 0, 0, 0, 0, 0, 0])), QueryStatus.FORMERR]);
  cases.push(['OPT owned by a pointer to the question', withAdditional(query({ name: 'x.example' }), Buffer.from([0xc0, 12, 0, 41, 2, 0, 0, 0, 0, 0, 0, 0])), QueryStatus.FORMERR]);
  // An option list that does not fill the OPT's RDATA exactly is a badly formatted OPT: FORMERR (RFC 6891 6.1.2, 7),
  // as BIND (its OPT fromwire) and CoreDNS (miekg/dns unpack) answer; the client's list must not be read as empty.
  const optWith = (rdata: number[]): Buffer => Buffer.from([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, rdata.length, ...rdata]);
  cases.push(['an option longer than the OPT', withAdditional(query({ name: 'x.example' }), optWith([0, 10, 0, 8, 1, 2])), QueryStatus.FORMERR]);
  cases.push(['a partial option header', withAdditional(query({ name: 'x.example' }), optWith([0, 10, 0])), QueryStatus.FORMERR]);
  cases.push(['a second option past the end', withAdditional(query({ name: 'x.example' }), optWith([0, 12, 0, 0, 0, 10, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8])), QueryStatus.FORMERR]);

  for (const [label, msg, status] of cases) {
    const q = parseQuery(msg);
    t.equal(q.status, status, `${label}: status`);
    t.equal(q.edns, true, `${label}: OPT found`);
    const resp = errorResponse(q, status === QueryStatus.NOTIMP ? 4 : 1);
    const d = dnsPacket.decode(resp);
    const opt = d.additionals?.find((a) => a.type === 'OPT') as { udpPayloadSize?: number } | undefined;
    t.ok(opt !== undefined, `${label}: the error reply has an OPT`);
    t.equal(resp.readUInt16BE(10), 1, `${label}: ARCOUNT 1`);
  }

  // Options that fill the RDATA exactly are fine: none, an empty one, a cookie, several.
  const okOpt = (rdata: number[]): Buffer => withAdditional(query({ name: 'x.example' }), Buffer.from([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, rdata.length, ...rdata]));
  for (const rdata of [[], [0, 12, 0, 0], [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8], [0, 12, 0, 2, 0, 0, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]]) {
    t.equal(parseQuery(okOpt(rdata)).status, QueryStatus.OK, `options ${rdata.length} bytes, well formed: OK`);
  }
  // No OPT: none in the reply.
  const two2 = Buffer.from(query({ name: 'x.example' }));
  two2.writeUInt16BE(2, 4);
  t.equal(parseQuery(two2).edns, false, 'no OPT in the query: none found');
  t.equal(parseQuery(query({ name: 'x.example', edns: true, do: true, udpSize: 4000, type: 'AXFR' })).udpSize, 4000, 'size read on the error path');
  t.equal(parseQuery(query({ name: 'x.example', edns: true, do: true, type: 'AXFR' })).dnssecOk, true, 'DO read on the error path');
});

t.test('TSIG: NOTAUTH with an unsigned TSIG, error BADKEY (RFC 8945 5.2)', async (t) => {
  const signed = withAdditional(query({ name: 'Www.Example.com', id: 515, edns: true, do: true }), tsigRr({ origId: 515, fudge: 299 }));
  const q = parseQuery(signed);
  t.equal(q.status, QueryStatus.TSIG);
  t.equal(q.edns, true, 'the OPT before it is still read');
  const now = 0x1_2345_6789; // beyond 32 bits: the 48-bit field is split right
  const resp = tsigErrorResponse(q, now);
  const d = dnsPacket.decode(resp);
  t.equal(dnsPacket.decode.bytes, resp.length, 'decodes with no stray bytes');
  t.equal(d.id, 515);
  t.equal(resp[3]! & 0xf, 9, 'rcode NOTAUTH');
  t.equal(d.flag_qr, true);
  t.equal(d.questions?.[0]?.name, 'Www.Example.com', 'question echoed');
  t.same(counts(resp), [0, 0, 2], 'OPT and TSIG');
  t.equal(d.additionals?.[0]?.type, 'OPT');
  t.equal(((d.additionals?.[0] as { flags: number }).flags & dnsPacket.DNSSEC_OK) !== 0, true, 'DO echoed');
  // The TSIG record, field by field.
  let o = resp.length - (nameToWire('transfer-key').length + 10 + nameToWire('hmac-sha256').length + 16);
  t.equal(nameToString(resp, o), 'transfer-key', 'key name echoed');
  o += nameToWire('transfer-key').length;
  t.same([resp.readUInt16BE(o), resp.readUInt16BE(o + 2), resp.readUInt32BE(o + 4)], [250, 255, 0], 'TYPE TSIG, CLASS ANY, TTL 0');
  t.equal(resp.readUInt16BE(o + 8), resp.length - o - 10, 'RDLENGTH');
  o += 10;
  t.equal(nameToString(resp, o), 'hmac-sha256', 'algorithm echoed');
  o += nameToWire('hmac-sha256').length;
  t.equal(resp.readUInt16BE(o) * 2 ** 32 + resp.readUInt32BE(o + 2), now, 'time signed = now');
  t.equal(resp.readUInt16BE(o + 6), 299, 'fudge echoed');
  t.equal(resp.readUInt16BE(o + 8), 0, 'MAC size 0: unsigned');
  t.equal(resp.readUInt16BE(o + 10), 515, 'original id');
  t.equal(resp.readUInt16BE(o + 12), TSIG_BADKEY, 'error BADKEY');
  t.equal(resp.readUInt16BE(o + 14), 0, 'other len 0');

  const bare = parseQuery(withAdditional(query({ name: 'x.example' }), tsigRr({ key: 'k' })));
  t.equal(bare.status, QueryStatus.TSIG);
  const br = tsigErrorResponse(bare, 1);
  t.same(counts(br), [0, 0, 1], 'no OPT when the query had none');
  t.equal(nameToString(br, 12 + nameToWire('x.example').length + 4), 'k');

  t.equal(parseQuery(withAdditional(query({ name: 'x.example' }), tsigRr(), tsigRr())).status, QueryStatus.FORMERR, 'two TSIGs');
  t.equal(parseQuery(withAdditional(query({ name: 'x.example' }), tsigRr({ cls: 1 }))).status, QueryStatus.FORMERR, 'TSIG not of class ANY');
  const cut = withAdditional(query({ name: 'x.example' }), tsigRr({ macLen: 4 }).subarray(0, 20));
  t.equal(parseQuery(cut).status, QueryStatus.FORMERR, 'cut TSIG');
  const lying = tsigRr({ macLen: 8 });
  lying.writeUInt16BE(9, lying.length - 6 - 8 - 2); // MAC size says 9, RDLENGTH has room for 8
  t.equal(parseQuery(withAdditional(query({ name: 'x.example' }), lying)).status, QueryStatus.FORMERR, 'MAC size past RDLENGTH');
  // Key name: a pointer back into the question is fine (written out whole); one whose target points onwards is not.
  const qx = query({ name: 'x.example' });
  const compressed = tsigRr({ key: 'k' });
  const viaPtr = withAdditional(qx, Buffer.concat([Buffer.from([0xc0, 12]), compressed.subarray(nameToWire('k').length)]));
  const pq = parseQuery(viaPtr);
  t.equal(pq.status, QueryStatus.TSIG, 'compressed key name accepted');
  const pr = tsigErrorResponse(pq, 1);
  t.equal(nameToString(pr, qx.length), 'x.example', 'and echoed uncompressed');
  t.notOk(pr.subarray(qx.length).includes(0xc0), 'no pointer in the TSIG');
  // An A record whose RDATA is a pointer to the key name, and a key name pointing back at that RDATA: a loop
  // that skipName alone (first pointer backwards) does not see.
  const keyOff = qx.length + 13;
  const bait = Buffer.from([0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 2, 0xc0, keyOff]);
  const loopy = withAdditional(qx, bait, Buffer.concat([Buffer.from([0xc0, qx.length + 11]), compressed.subarray(nameToWire('k').length)]));
  t.equal(parseQuery(loopy).status, QueryStatus.FORMERR, 'pointer loop in the key name: FORMERR, nothing thrown');
});

t.test('upstreamQuery: canonical lower-case query with EDNS', async (t) => {
  const q = parseQuery(query({ name: 'MiXeD.Example', type: 'AAAA', edns: true, do: true, id: 1234 }));
  const u = dnsPacket.decode(upstreamQuery(q));
  t.equal(u.questions?.[0]?.name, 'mixed.example');
  t.equal(u.questions?.[0]?.type, 'AAAA');
  t.equal(u.flag_rd, true);
  t.equal(u.flag_ad, true, 'AD asked for every client (RFC 6840 5.7): the entry then holds the upstream\'s verdict');
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

t.test('framing: a frame trickled in byte by byte is copied in linear, not quadratic, bytes', async (t) => {
  // A slow or hostile peer (an upstream over TCP or DoT, or a client of the TCP listener) can send its frame one
  // byte per segment; every read then re-copies everything buffered so far (Buffer.concat of pending + chunk, then
  // Buffer.from of the tail): a 64 KiB frame costs ~4 GiB of copying. Counted here as the bytes those calls copy.
  const size = 16 * 1024;
  const msg = Buffer.alloc(size, 7);
  const wire = frame(msg);
  let copied = 0;
  const concat = Buffer.concat;
  const from = Buffer.from;
  Buffer.concat = ((list: readonly Uint8Array[], total?: number): Buffer => {
    const out = concat.call(Buffer, list, total);
    copied += out.length;
    return out;
  }) as typeof Buffer.concat;
  Buffer.from = function (this: unknown, ...args: unknown[]): Buffer {
    const out = (from as unknown as (...a: unknown[]) => Buffer).apply(Buffer, args);
    if (args[0] instanceof Uint8Array) copied += out.length;
    return out;
  } as unknown as typeof Buffer.from;
  const frames: Buffer[] = [];
  try {
    const d = new FrameDecoder((f) => frames.push(Buffer.copyBytesFrom(f)));
    for (let i = 0; i < wire.length; i++) d.push(wire.subarray(i, i + 1));
  } finally {
    Buffer.concat = concat;
    Buffer.from = from;
  }
  t.equal(frames.length, 1);
  t.ok(frames[0]!.equals(msg), 'the frame, whole');
  t.ok(copied <= 8 * wire.length, `${copied} bytes copied for a ${wire.length}-byte frame (at most 8 x its size)`);
});

t.test('names', async (t) => {
  const w = nameToWire('Foo.Example.');
  t.equal(w.toString('hex'), '03666f6f076578616d706c6500');
  t.equal(nameToString(w, 0), 'foo.example');
  t.equal(nameToString(Buffer.from([0]), 0), '.');
  t.equal(skipName(Buffer.from([3, 0x61, 0x62]), 0), -1);
  t.throws(() => nameToWire('a'.repeat(64) + '.com'));
  // toLowerCase maps the Kelvin sign (U+212A) to an ASCII "k": refused as the non-ASCII it is, not read as kube.local.
  t.throws(() => nameToWire('\u212Aube.local'), /non-ASCII/);
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
  const plan = (msg: Buffer): ReturnType<typeof planCaching> => planCaching(scanAnswer(msg)!, caps, msg);
  t.same(plan(answer('a.example', [{ type: 'A', name: 'a.example', ttl: 300, data: '192.0.2.1' }])), { kind: 'positive', ttl: 30 });
  t.same(plan(answer('a.example', [{ type: 'A', name: 'a.example', ttl: 4, data: '192.0.2.1' }])), { kind: 'positive', ttl: 4 });
  t.same(plan(answer('n.example', [], { rcode: 'NXDOMAIN', authorities: [soa('example', 3, 60)] })), { kind: 'negative', ttl: 3 });
  t.same(plan(answer('a.example', [], { authorities: [soa('example', 60, 60)] })), { kind: 'negative', ttl: 5 }, 'NODATA capped like NXDOMAIN');
  t.equal(plan(answer('n.example', [], { rcode: 'NXDOMAIN' })).kind, 'none');
  t.equal(plan(answer('n.example', [], { rcode: 'SERVFAIL' })).kind, 'none');
  t.equal(plan(answer('n.example', [], { tc: true })).kind, 'none');
  t.equal(plan(answer('a.example', [{ type: 'A', name: 'a.example', ttl: 0, data: '192.0.2.1' }])).kind, 'none');
  t.equal(prefetchStart(1000, 30, { minHits: 3, percent: 10 }), 1000 + 27_000);
  t.equal(prefetchStart(1000, 5, { minHits: 3, percent: 10 }), 1000 + 4_000, 'at least 1 s window');
  t.equal(prefetchStart(1000, 1, { minHits: 3, percent: 10 }), Infinity);
  t.equal(prefetchStart(1000, 30, { minHits: 0, percent: 10 }), Infinity);
});

t.test('stripOpt: an OPT before other additional records goes with the records after it, and the answer still reads the same', async (t) => {
  // MX example.com: the answer, then OPT first in the additional section (RFC 6891 does not fix its place),
  // then the exchange's A and AAAA, the AAAA's owner compressed against the A's (which sits after the OPT).
  const hdr = Buffer.from([0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 3]);
  const question = Buffer.concat([nameToWire('example.com'), Buffer.from([0, 15, 0, 1])]);
  const mxRdata = Buffer.concat([Buffer.from([0, 10]), nameToWire('mail.example.com')]);
  const mx = Buffer.concat([Buffer.from([0xc0, 12, 0, 15, 0, 1, 0, 0, 0, 60, 0, mxRdata.length]), mxRdata]);
  const opt = Buffer.from([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
  const aAt = hdr.length + question.length + mx.length + opt.length;
  const aRr = Buffer.concat([nameToWire('mail.example.com'), Buffer.from([0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 25])]);
  const aaaaRr = Buffer.concat([Buffer.from([0xc0 | (aAt >> 8), aAt & 0xff, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]), Buffer.alloc(16, 0x20)]);
  const msg = Buffer.concat([hdr, question, mx, opt, aRr, aaaaRr]);
  const before = dnsPacket.decode(msg);
  t.same(before.additionals?.map((x) => `${x.type} ${x.name}`), ['OPT .', 'A mail.example.com', 'AAAA mail.example.com'], 'the upstream answer as sent');

  const scan = scanAnswer(msg)!;
  t.ok(scan, 'scanAnswer takes it');
  const { wire: stored, ttlOffsets: offsets } = stripOpt(msg, scan.end, scan.optStart, scan.optEnd, scan.ttlOffsets.slice());
  t.equal(offsets.length, 1, 'only the MX keeps a TTL to count down');
  const served = writeAnswer(stored, scan.questionEnd, offsets, parseQuery(query({ name: 'example.com', type: 'MX', id: 7 })), 0, -1, 65535, 1232);
  let after: dnsPacket.DecodedPacket | null = null;
  try {
    after = dnsPacket.decode(served);
  } catch (err) {
    t.fail(`the served answer does not decode: ${String(err)}`);
  }
  t.same(after?.answers?.map((x) => `${x.type} ${x.name}`), ['MX example.com'], 'the answer intact');
  // Cut out of the middle, the OPT would have left the AAAA's compressed owner pointing into the A's record data.
  t.same(after?.additionals?.map((x) => `${x.type} ${x.name}`), [], 'the glue after the OPT went with it (and the query had no EDNS: no OPT of ours)');
});

t.test('an answer never cached still goes out with no TTL over 2^31 - 1 (RFC 2181 8: such a TTL means zero)', async (t) => {
  // The TTL is what makes it uncacheable (read as 0), so it is served once, as a transient entry, to the clients that
  // waited: with the upstream's bytes, a client reads 2147483649 seconds where the upstream meant none.
  const up = answer('www.example.com', [{ type: 'A', name: 'www.example.com', ttl: 0x80000001, data: '192.0.2.1' }]);
  const scan = scanAnswer(up)!;
  t.equal(scan.minTtl, 0, 'read as zero');
  const plan = planCaching(scan, { successTtl: 30, denialTtl: 5 }, up);
  t.equal(plan.kind, 'none', 'so it is not cached');
  const transient = AnswerCopy.fromAnswer(up, scan, 1000, 0, Infinity, false);
  const out = dnsPacket.decode(transient.serve(parseQuery(query({ name: 'www.example.com' })), 1000, 512, 1232));
  t.same(out.answers?.map(ttlOf), [0], 'served with TTL 0');
});

t.test('scanAnswer: a compression pointer into the header is malformed', async (t) => {
  // What a name there reads as changes when a hit writes the client's id and flags over the header: the same stored
  // answer would name a different owner for every client.
  const up = rawAnswer('a.example', 1, [{ ...aRr(1), owner: Buffer.from([0xc0, 2]) }]);
  t.equal(skipName(up, 12 + nameToWire('a.example').length + 4), -1, 'skipName refuses it');
  t.equal(scanAnswer(up), undefined, 'refused');
  t.ok(scanAnswer(rawAnswer('a.example', 1, [aRr(1)])), 'a pointer to the question is fine');
});

t.test('writeAnswer: what is dropped without TC goes by whole RRsets (RFC 2181 5.1, 9: a partial RRset only with TC)', async (t) => {
  // A positive answer, then the zone's three NS in authority, then glue: two A records of ns1 (one RRset, the second
  // owner a pointer to the first, as servers compress), then one A of ns2. A client that keeps what comes without TC
  // (a caching resolver in a pod) must not be handed two of three NS, or one of ns1's two addresses, as the whole set.
  const name = 'a.example';
  const zoneOwner = Buffer.from([0xc0, 14]); // "example", the question's second label
  const nsRr = (host: string): Rr => ({ type: 2, ttl: 30, rdata: nameToWire(host), owner: zoneOwner });
  const ns = [nsRr('ns1.example'), nsRr('ns2.example'), nsRr('ns3.example')];
  const head = rawAnswer(name, 1, [aRr(1)], ns, []);
  const ns1At = head.length;
  const glue: Rr[] = [
    { ...aRr(7), owner: nameToWire('ns1.example') },
    { ...aRr(8), owner: Buffer.from([0xc0, ns1At]) },
    { ...aRr(9), owner: nameToWire('ns2.example') },
  ];
  const s = stored(rawAnswer(name, 1, [aRr(1)], ns, glue));
  const q = parseQuery(query({ name }));
  const answerEnd = s.questionEnd + 16;
  const nsLen = 2 + 10 + nameToWire('ns1.example').length;
  const glue1 = nameToWire('ns1.example').length + 14;

  const twoNs = writeAnswer(s.wire, s.questionEnd, s.offsets, q, 0, -1, answerEnd + 2 * nsLen, 1232);
  t.equal(tcOf(twoNs), false, 'the answer section is whole: no TC');
  t.same(counts(twoNs), [1, 0, 0], 'room for two of the three NS: none of them');
  dnsPacket.decode(twoNs);
  t.equal(dnsPacket.decode.bytes, twoNs.length, 'ends at the last kept record');

  const oneGlue = writeAnswer(s.wire, s.questionEnd, s.offsets, q, 0, -1, answerEnd + 3 * nsLen + glue1 + 15, 1232);
  t.equal(tcOf(oneGlue), false);
  t.same(counts(oneGlue), [1, 3, 0], 'room for one of ns1\'s two addresses: neither');

  const ns1Whole = writeAnswer(s.wire, s.questionEnd, s.offsets, q, 0, -1, answerEnd + 3 * nsLen + glue1 + 16 + 5, 1232);
  t.same(counts(ns1Whole), [1, 3, 2], 'ns1\'s two addresses fit: both, without ns2\'s');
  t.same(dnsPacket.decode(ns1Whole).additionals?.map((r) => `${r.name} ${(r as { data: string }).data}`), ['ns1.example 10.96.100.7', 'ns1.example 10.96.100.8']);

  // With TC (the answer section itself cut) the leading records stay as they are: musl < 1.2.4 uses them.
  const many = stored(rawAnswer(name, 1, [aRr(1), aRr(2), aRr(3)]));
  const cut = writeAnswer(many.wire, many.questionEnd, many.offsets, q, 0, -1, many.questionEnd + 2 * 16, 1232);
  t.equal(tcOf(cut), true);
  t.same(counts(cut), [2, 0, 0], 'TC: two of the three addresses kept');
});

t.test('scanAnswer: every name, owner or in RDATA, must expand: no loop, no forward pointer, at most 255 bytes', async (t) => {
  // A hit serves the stored bytes as they are, so a name a client cannot expand would be handed out for the entry's
  // whole life. The question 'a.example' sits at 12; the first record at 27, its RDATA at 39.
  const label = (n: number): Buffer => Buffer.concat([Buffer.from([n]), Buffer.alloc(n, 0x61)]);
  const cname = (rdata: Buffer): Rr => ({ type: 5, ttl: 30, rdata });
  t.ok(scanAnswer(rawAnswer('a.example', 1, [cname(Buffer.from([1, 0x62, 0xc0, 12])), { ...aRr(1), owner: Buffer.from([0xc0, 39]) }])),
    'a CNAME target compressed against the question, its A owned by a pointer to that target: fine');
  t.equal(scanAnswer(rawAnswer('a.example', 5, [cname(Buffer.from([0xc0, 39]))])), undefined, 'a CNAME target pointing at itself (a loop)');
  t.equal(scanAnswer(rawAnswer('a.example', 5, [cname(Buffer.from([1, 0x62, 0xc0, 39]))])), undefined, 'a CNAME target pointing back into itself (a loop)');
  t.equal(scanAnswer(rawAnswer('a.example', 2, [], [{ type: 2, ttl: 30, rdata: Buffer.from([0xc0, 0xf0]) }])), undefined, 'an NS target pointing forward');
  t.equal(scanAnswer(rawAnswer('a.example', 15, [{ type: 15, ttl: 30, rdata: Buffer.from([0, 10, 0xc0, 4]) }])), undefined, 'an MX exchange pointing into the header');
  t.equal(scanAnswer(rawAnswer('a.example', 5, [cname(Buffer.from([1, 0x62, 0]))].map((r) => ({ ...r, rdata: Buffer.concat([r.rdata, Buffer.from([0])]) })))),
    undefined, 'a CNAME whose RDATA runs past its name');
  // The second record's owner points 2 bytes back, into the first's address, whose last bytes read as a one-byte label
  // followed by that very pointer: 'strictly backwards' of the first pointer alone lets it through.
  const s = 27 + 2 + 10 + 4;
  t.equal(scanAnswer(rawAnswer('a.example', 1, [{ type: 1, ttl: 30, rdata: Buffer.from([10, 0, 1, 0x41]) }, { ...aRr(2), owner: Buffer.from([0xc0, s - 2]) }])),
    undefined, 'an owner whose pointer leads back into itself');
  // 192 bytes of labels then the question (11): 203 bytes; 61 more in front of that is 264.
  const long = Buffer.concat([label(63), label(63), label(63), QNAME_PTR]);
  const longAt = 27 + 2 + 10 + 4;
  const twoOwners = (second: Rr): Buffer => rawAnswer('a.example', 1, [aRr(1), { ...aRr(2), owner: long }, second]);
  t.ok(scanAnswer(twoOwners({ ...aRr(3), owner: Buffer.concat([label(40), Buffer.from([0xc0, longAt])]) })), '252 bytes expanded: fine');
  t.equal(scanAnswer(twoOwners({ ...aRr(3), owner: Buffer.concat([label(60), Buffer.from([0xc0, longAt])]) })), undefined, 'an owner of 264 bytes expanded');
  t.equal(scanAnswer(twoOwners(cname(Buffer.concat([label(60), Buffer.from([0xc0, longAt])])))), undefined, 'a CNAME target of 264 bytes expanded');
  t.equal(scanAnswer(twoOwners({ type: 6, ttl: 30, rdata: Buffer.concat([Buffer.from([0xc0, 12]), label(60), Buffer.from([0xc0, longAt]), Buffer.alloc(20)]) })),
    undefined, 'an SOA RNAME of 264 bytes expanded');
  t.equal(scanAnswer(twoOwners({ type: 33, ttl: 30, rdata: Buffer.concat([Buffer.alloc(6), Buffer.from([0xc0, 0x7f])]) })), undefined, 'an SRV target pointing forward');
});

t.test('parseQuery: an OPT of a later version followed by a second OPT is FORMERR, not BADVERS (RFC 6891 6.1.1)', async (t) => {
  const opt = (version: number): Buffer => Buffer.from([0, 0, 41, 0x10, 0, 0, version, 0, 0, 0, 0]);
  const withOpts = (...opts: Buffer[]): Buffer => {
    const q = query({ name: 'a.example' });
    q.writeUInt16BE(opts.length, 10);
    return Buffer.concat([q, ...opts]);
  };
  t.equal(parseQuery(withOpts(opt(1))).status, QueryStatus.BADVERS, 'one OPT of version 1: BADVERS');
  t.equal(parseQuery(withOpts(opt(0), opt(0))).status, QueryStatus.FORMERR, 'two OPTs: FORMERR');
  t.equal(parseQuery(withOpts(opt(1), opt(0))).status, QueryStatus.FORMERR, 'a version 1 OPT, then another: FORMERR');
  t.equal(parseQuery(withOpts(opt(1), Buffer.from([0, 0, 1]))).status, QueryStatus.FORMERR, 'a version 1 OPT, then a record cut short: FORMERR');
});

t.test('parseQuery: a later EDNS version is BADVERS before NOTIMP (RFC 6891 6.1.3), as BIND and unbound answer', async (t) => {
  // The client learns the version we speak and asks again at 0; NOTIMP with our version-0 OPT answers a question it did not ask.
  const v1 = (q: Buffer): Buffer => {
    q[q.length - 5] = 1; // the OPT's version byte (before its flags and RDLENGTH)
    return q;
  };
  const notify = v1(query({ name: 'x.example', type: 'SOA', edns: true }));
  notify[2] = (notify[2]! & 0x87) | (4 << 3);
  const ch = query({ name: 'version.bind', type: 'TXT', edns: true });
  ch.writeUInt16BE(3, ch.length - 11 - 2);
  for (const [what, msg] of [['opcode NOTIFY', notify], ['AXFR', v1(query({ name: 'x.example', type: 'AXFR', edns: true }))], ['IXFR', v1(query({ name: 'x.example', type: 'IXFR', edns: true }))], ['class CH', v1(ch)]] as const) {
    const q = parseQuery(msg);
    t.equal(q.status, QueryStatus.BADVERS, `${what} at EDNS version 1: BADVERS`);
    t.equal(q.edns, true, `${what}: the answer carries our OPT`);
  }
  notify[notify.length - 5] = 0;
  t.equal(parseQuery(notify).status, QueryStatus.NOTIMP, 'opcode NOTIFY at version 0: still NOTIMP');
});

t.test('nameToString: a name of 256 bytes on the wire is malformed, 255 is not', async (t) => {
  const label = (n: number): Buffer => Buffer.concat([Buffer.from([n]), Buffer.alloc(n, 0x61)]);
  const max = Buffer.concat([label(63), label(63), label(63), label(61), Buffer.from([0])]);
  t.equal(max.length, 255);
  t.equal(nameToString(max, 0)?.length, 253, '255 bytes: read');
  const over = Buffer.concat([label(63), label(63), label(63), label(62), Buffer.from([0])]);
  t.equal(nameToString(over, 0), undefined, '256 bytes: malformed');
});

t.test('scanAnswer: an extended RCODE in the upstream OPT (RFC 6891 6.1.3) is not read as the header bits alone', async (t) => {
  // The OPT is stripped at insert and ours goes out instead, so an answer whose RCODE needs the OPT's upper 8 bits
  // (BADVERS 16: header 0; BADCOOKIE 23: header 7) cannot be relayed: read by its low bits, BADVERS with the zone's
  // SOA was a NODATA for the whole denial TTL. We ask with version 0 and no cookie: no such answer is owed to us.
  const opt = (extended: number): Buffer => {
    const b = Buffer.alloc(11);
    b.writeUInt16BE(41, 1); // TYPE OPT, owner the root
    b.writeUInt16BE(1232, 3); // CLASS: the UDP size
    b[5] = extended; // TTL: extended RCODE, version, DO and Z
    return b;
  };
  const nodata = answer('www.example.com', [], { authorities: [soa('example.com', 300, 300)] });
  const plain = scanAnswer(withAdditional(nodata, opt(0)));
  t.ok(plain, 'extended RCODE 0: read as it is');
  t.equal(plain?.rcode, 0);
  t.equal(scanAnswer(withAdditional(nodata, opt(1))), undefined, 'BADVERS (16): not a NOERROR to cache or pass on');
  const yx = Buffer.from(nodata);
  yx[3] = (yx[3]! & 0xf0) | 7;
  t.equal(scanAnswer(withAdditional(yx, opt(1))), undefined, 'BADCOOKIE (23): not a YXDOMAIN');
});

t.test('TSIG: a signed AXFR, IXFR or CHAOS query gets BADKEY too, not an unsigned NOTIMP (RFC 8945 5.2)', async (t) => {
  // A zone transfer is what TSIG signs most: the key is checked before the query is served, and we hold none.
  for (const type of ['AXFR', 'IXFR']) {
    t.equal(parseQuery(query({ name: 'x.example', type })).status, QueryStatus.NOTIMP, `${type} unsigned: NOTIMP`);
    const q = parseQuery(withAdditional(query({ name: 'x.example', type, edns: true }), tsigRr({ key: 'k' })));
    t.equal(q.status, QueryStatus.TSIG, `${type} signed: the TSIG answer`);
    const r = dnsPacket.decode(tsigErrorResponse(q, 1));
    t.equal(r.questions?.[0]?.type, type, 'its question echoed');
  }
  const ch = query({ name: 'version.bind', type: 'TXT' });
  ch.writeUInt16BE(3, ch.length - 2);
  t.equal(parseQuery(withAdditional(ch, tsigRr({ key: 'k' }))).status, QueryStatus.TSIG, 'class CH signed');
  // A malformed TSIG on such a query is still FORMERR, and an unsigned one with a bad additional section too.
  t.equal(parseQuery(withAdditional(query({ name: 'x.example', type: 'AXFR' }), tsigRr({ cls: 1 }))).status, QueryStatus.FORMERR, 'bad TSIG');
});

t.test('a name that is a long run of pointers to pointers is malformed: scan and scrub do bounded work per name', async (t) => {
  // A hostile upstream fills an opaque RDATA with pointers, each to the one before (no label between: never what an
  // encoder writes), and owns its records by a pointer to the last. Every name then cost a hop per pointer, in our
  // scan and in dns-packet's decode (the scrub): 64 KB of it held the event loop for most of a second. A real name
  // passes at most one pointer per label it takes (127), so past 128 hops it is refused, scrub first.
  const chained = (hops: number): Buffer => {
    // 'a.example' at 12, the first record at 27, its RDATA at 39: pointer i goes to pointer i - 1, the first to the question.
    const chain = Buffer.alloc(2 * hops);
    for (let i = 0; i < hops; i++) chain.writeUInt16BE(0xc000 | (i === 0 ? 12 : 39 + 2 * (i - 1)), 2 * i);
    const top = 39 + 2 * (hops - 1);
    return rawAnswer('a.example', 1, [{ type: 0xff00, ttl: 30, rdata: chain }, { ...aRr(1), owner: Buffer.from([0xc0 | (top >> 8), top & 0xff]) }]);
  };
  t.ok(scanAnswer(chained(100)), '101 hops: a name still');
  t.equal(scrubOutOfBailiwick(chained(100)), null, '101 hops: nothing to scrub');
  t.equal(scanAnswer(chained(400)), undefined, '401 hops: malformed');
  t.equal(scrubOutOfBailiwick(chained(400)), 'unusable', '401 hops: not decoded, not passed on');
});

t.test('the names dns-packet reads in RRSIG, NSEC and NAPTR RDATA are bounded too before the scrub decodes them', async (t) => {
  // The signer of an RRSIG and the next name of an NSEC are names dns-packet follows pointer by pointer: a run of
  // pointers to pointers there cost it as much as in an owner. 'a.example' at 12, the first record's RDATA at 39. The
  // RRSIG and the NSEC are owned by another name ('b', then a pointer to 'example' at 14), so the scrub decodes.
  const chain = (hops: number): Buffer => {
    const b = Buffer.alloc(2 * hops);
    for (let i = 0; i < hops; i++) b.writeUInt16BE(0xc000 | (i === 0 ? 12 : 39 + 2 * (i - 1)), 2 * i);
    return b;
  };
  const top = (hops: number): Buffer => Buffer.from([0xc0 | ((39 + 2 * (hops - 1)) >> 8), (39 + 2 * (hops - 1)) & 0xff]);
  const rrsig = (hops: number): Buffer => rawAnswer('a.example', 1, [{ type: 0xff00, ttl: 30, rdata: chain(hops) }, aRr(1),
    { type: 46, ttl: 30, owner: Buffer.from([1, 0x62, 0xc0, 14]), rdata: Buffer.concat([Buffer.from([0, 1, 13, 2, 0, 0, 0, 30]), Buffer.alloc(10), top(hops), Buffer.alloc(64, 7)]) }]);
  const nsec = (hops: number): Buffer => rawAnswer('a.example', 1, [{ type: 0xff00, ttl: 30, rdata: chain(hops) }], [
    { type: 47, ttl: 30, owner: Buffer.from([1, 0x62, 0xc0, 14]), rdata: Buffer.concat([top(hops), Buffer.from([0, 1, 0x40])]) }]);
  // NAPTR: order, preference, three character-strings (flags 'u', services 'E2U+sip', regexp empty), the replacement.
  const naptr = (hops: number): Buffer => rawAnswer('a.example', 1, [{ type: 0xff00, ttl: 30, rdata: chain(hops) }, {
    type: 35, ttl: 30, owner: Buffer.from([1, 0x62, 0xc0, 14]),
    rdata: Buffer.concat([Buffer.from([0, 10, 0, 20, 1, 0x75, 7]), Buffer.from('E2U+sip'), Buffer.from([0]), top(hops)]),
  }]);
  for (const [what, msg] of [['RRSIG signer', rrsig], ['NSEC next name', nsec], ['NAPTR replacement', naptr]] as const) {
    t.ok(scanAnswer(msg(3)), `${what} through 4 pointers: fine`);
    t.not(scrubOutOfBailiwick(msg(3)), 'unusable', `${what} through 4 pointers: decoded`);
    t.equal(scanAnswer(msg(400)), undefined, `${what} through 401 pointers: malformed`);
    t.equal(scrubOutOfBailiwick(msg(400)), 'unusable', `${what} through 401 pointers: not decoded, not passed on`);
  }
});

t.test('the longest legal name, each of its 127 labels and its root reached through a pointer, passes the hop bound everywhere', async (t) => {
  // 'a.example' at 12, its root byte at 22; the first record's RDATA at 39 holds 127 one-label names, each a label
  // and a pointer to the one before, the first to that root byte. A pointer to the last is a name of 127 labels and
  // 255 bytes that leads through 128 pointers, one per label and one to the root: the most a name takes without a
  // pointer to a pointer, which no encoder writes. It must read as a name wherever it stands.
  const ptr = (to: number): Buffer => Buffer.from([0xc0 | (to >> 8), to & 0xff]);
  const frags = Buffer.concat(Array.from({ length: 127 }, (_, k) => Buffer.concat([Buffer.from([1, 0x61]), ptr(k === 0 ? 22 : 39 + 4 * (k - 1))])));
  const x = ptr(39 + 4 * 126);
  const holder: Rr = { type: 0xff00, ttl: 30, rdata: frags };
  const uses: Array<[string, Rr]> = [
    ['owner', { ...aRr(1), owner: x }],
    ['CNAME', { type: 5, ttl: 30, rdata: x }],
    ['NS', { type: 2, ttl: 30, rdata: x }],
    ['PTR', { type: 12, ttl: 30, rdata: x }],
    ['MX', { type: 15, ttl: 30, rdata: Buffer.concat([Buffer.from([0, 10]), x]) }],
    ['SRV', { type: 33, ttl: 30, rdata: Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 53]), x]) }],
    ['SOA', { type: 6, ttl: 30, rdata: Buffer.concat([x, x, Buffer.alloc(20, 1)]) }],
  ];
  for (const [what, rr] of uses) {
    const m = rawAnswer('a.example', 1, [holder, rr]);
    t.ok(scanAnswer(m), `${what}: 128 pointers, a name`);
    t.not(scrubOutOfBailiwick(m), 'unusable', `${what}: decoded by the scrub`);
  }
  t.equal(dnsPacket.decode(rawAnswer('a.example', 1, [holder, { ...aRr(1), owner: x }])).answers?.[1]?.name, Array(127).fill('a').join('.'), 'the name is 127 labels');
  // One hop more (a pointer to that owner, which is itself a pointer): past the bound.
  const past = rawAnswer('a.example', 1, [holder, { ...aRr(1), owner: x }, { ...aRr(2), owner: ptr(39 + 4 * 127) }]);
  t.equal(scanAnswer(past), undefined, '129 pointers: malformed');
});

t.test('a cut recognises an RRset whose owners are one long name reached through two chains of pointers', async (t) => {
  // Two NS records of one RRset, each owner a pointer into its own chain of 100 one-label names (label, pointer to
  // the one before): the same 100-label name, 101 pointers each. sameNameAt shared 128 hops between the two names,
  // so it called them different, and a cut through the RRset kept its first record without TC (RFC 2181 5.1, 9).
  const ptr = (to: number): Buffer => Buffer.from([0xc0 | (to >> 8), to & 0xff]);
  // 'a.example' at 12 (root byte at 22); the first record's RDATA at 39, the second's at 39 + 400 + 12.
  const chain = (at: number): Buffer => Buffer.concat(Array.from({ length: 100 }, (_, k) => Buffer.concat([Buffer.from([1, 0x61]), ptr(k === 0 ? 22 : at + 4 * (k - 1))])));
  const f = 39;
  const g = f + 400 + 12;
  const ns = (chainAt: number): Rr => ({ type: 2, ttl: 30, rdata: ptr(12), owner: ptr(chainAt + 4 * 99) });
  const m = rawAnswer('a.example', 1, [{ type: 0xff00, ttl: 30, rdata: chain(f) }, { type: 0xff00, ttl: 30, rdata: chain(g) }, aRr(1)], [ns(f), ns(g)]);
  const s = stored(m);
  t.equal(dnsPacket.decode(m).authorities?.[1]?.name, Array(100).fill('a').join('.'), 'the second NS is owned by the 100-label name');
  const endOfFirstNs = m.length - 14;
  t.equal(keptRecords(s.wire, s.offsets, endOfFirstNs), 3, 'the NS RRset goes whole: the answer section only, no TC');
  t.equal(keptRecords(s.wire, s.offsets, m.length), 5, 'all of it fits');
});

t.test('nameInZone on a key\'s bytes agrees with the zone router on its string: root zone, a trailing dot or upper case in config, the apex, label boundaries', async (t) => {
  // The shed gate matched the view's zones with a ZoneRouter on the key string; it now reads the key's bytes.
  const zones = ['.', 'cluster.local', 'CLUSTER.Local.', '10.in-addr.arpa.', 'b.c', 'x.b.c'];
  const names = ['.', 'cluster.local', 'CLUSTER.LOCAL', 'a.cluster.local', 'xcluster.local', 'cluster.local.evil', 'local', 'a-cluster.local',
    '4.3.2.10.in-addr.arpa', '10.in-addr.arpa', '110.in-addr.arpa', 'b.c', 'ab.c', 'x.b.c', 'y.x.b.c', 'xb.c', 'c'];
  const q = new QueryScratch();
  for (const zone of zones) {
    const router = new ZoneRouter([{ zone, target: true }], false);
    const wire = nameToWire(zone);
    for (const name of names) {
      t.equal(parseQueryInto(query({ name }), q), QueryStatus.OK, name);
      const snap = parseQuery(query({ name }));
      if (snap === null) throw new Error(name);
      const bytes = nameInZone(q.keyBytes, q.keyLen - KEY_TAIL, wire);
      t.equal(bytes, router.route(snap.key) === true, `${name} in ${zone}: ${bytes}`);
    }
  }
});
