// The allocation-free hit path's pieces: parseQueryInto into one reused
// QueryScratch against parseQuery, the key hash computed inline against
// hashKey over the key string, the cache's byte lookup against its string
// lookup (with forced collisions), and HitPath keeping nothing of its scratch
// in what outlives a call (waiters, misses, re-entrant calls).
import t from 'tap';
import * as dnsPacket from 'dns-packet';
import { DnsCache, type CacheOptions } from '../src/cache/cache.js';
import { CACHE_COUNTERS } from '../src/cache/stats.js';
import { ManualClock } from '../src/clock.js';
import { scanAnswer } from '../src/dns/answer.js';
import { KEY_MAX, QueryScratch, QueryStatus, hashKey, keyHashOfBytes, parseQuery, parseQueryInto, type Query } from '../src/dns/query.js';
import { createLogger, silentLogger } from '../src/log.js';
import { HitPath, type MissSink } from '../src/server/hit-path.js';
import { scrubCounted } from '../src/server/scrub.js';
import { FAILURE_RECHECK_MS, InFlight, MAX_RECENT_FAILURES, Miss, RecentFailures } from '../src/server/miss-waiters.js';
import { Transport, type ClientChannel, type ClientPeer } from '../src/server/listener.js';
import { SERVER_COUNTERS } from '../src/server/stats.js';
import { Counters } from '../src/stats/counters.js';
import { a, answer, query, tsigRr, withAdditional } from './kit/dns.js';

const OPTS: CacheOptions = {
  positiveCapacity: 1000, negativeCapacity: 1000, maxBytes: 1 << 24, successTtl: 30, denialTtl: 5, minHits: 0, percent: 10, staleMs: 0,
};
const PEER: ClientPeer = { address: '127.0.0.1', port: 40000 };

/** A deterministic PRNG (replay a failure by its seed). */
function prng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % n;
  };
}

/**
 * A query with a raw wire name (any bytes, upper case and non-ASCII
 * included) built by hand: dns-packet would escape or refuse such names.
 */
function rawQuery(r: (n: number) => number): Buffer {
  const labels: Buffer[] = [];
  let wire = 1;
  // 0-6 labels of 1-63 bytes, kept under 255 wire bytes; every length mod 4 comes up.
  const count = r(7);
  for (let i = 0; i < count; i++) {
    const len = 1 + r(r(4) === 0 ? 63 : 12);
    if (wire + len + 1 > 255) break;
    const label = Buffer.alloc(len);
    for (let j = 0; j < len; j++) {
      const pick = r(6);
      // Upper and lower ASCII, the bytes just outside A-Z, and non-ASCII bytes that would fold if the mask were wrong (0xC1-0xDA).
      label[j] = pick === 0 ? 0x41 + r(26) : pick === 1 ? 0x61 + r(26) : pick === 2 ? [0x40, 0x5b, 0x60, 0x7b][r(4)]! : pick === 3 ? 0xc1 + r(26) : pick === 4 ? r(256) : 0x2d;
    }
    labels.push(Buffer.concat([Buffer.from([len]), label]));
    wire += len + 1;
  }
  const head = Buffer.alloc(12);
  head.writeUInt16BE(r(0x10000), 0);
  head.writeUInt16BE(0x0100 | (r(2) === 0 ? 0x0010 : 0), 2); // RD, sometimes CD
  head.writeUInt16BE(1, 4);
  const tail = Buffer.alloc(4);
  tail.writeUInt16BE([1, 28, 16, 33, 255][r(5)]!, 0);
  tail.writeUInt16BE(1, 2);
  let msg: Buffer = Buffer.concat([head, ...labels, Buffer.from([0]), tail]);
  const extra = r(8);
  if (extra === 0) {
    // An OPT, sometimes with DO, sometimes of a version we do not speak.
    const opt = Buffer.from([0, 0, 41, 0, 0, 0, r(4) === 0 ? 1 : 0, r(2) === 0 ? 0x80 : 0, 0, 0, 0]);
    opt.writeUInt16BE(r(5000), 3);
    msg = withAdditional(msg, opt);
  } else if (extra === 1) msg = withAdditional(msg, tsigRr());
  else if (extra === 2) msg[5] = 2; // QDCOUNT 2: FORMERR
  else if (extra === 3) msg[2] = 0x28; // opcode UPDATE: NOTIMP
  else if (extra === 4) msg = msg.subarray(0, msg.length - 1 - r(3)); // cut in the question
  return msg;
}

function fields(q: Query): Record<string, unknown> {
  return {
    status: q.status, id: q.id, flags: q.flags, qnameEnd: q.qnameEnd, qtype: q.qtype, qclass: q.qclass,
    edns: q.edns, udpSize: q.udpSize, dnssecOk: q.dnssecOk, key: q.key, msg: q.msg.toString('hex'),
  };
}

t.test('parseQueryInto into one reused scratch agrees with parseQuery, field by field, whatever came before', async (t) => {
  const seed = Number(process.env.SCRATCH_SEED ?? 20261202);
  const r = prng(seed);
  const scratch = new QueryScratch();
  const statuses = new Set<number>();
  let bad = 0;
  for (let i = 0; i < 5000; i++) {
    const msg = rawQuery(r);
    const status = parseQueryInto(msg, scratch);
    const fresh = parseQuery(msg);
    statuses.add(status);
    const key = scratch.key;
    const ok =
      status === fresh.status &&
      JSON.stringify(fields(scratch)) === JSON.stringify(fields(fresh)) &&
      scratch.keyLen === key.length &&
      scratch.keyBytes.subarray(0, scratch.keyLen).equals(Buffer.from(fresh.key, 'latin1')) &&
      (status !== QueryStatus.OK || (scratch.keyHash === hashKey(fresh.key) && scratch.keyHash === keyHashOfBytes(scratch.keyBytes, scratch.keyLen)));
    if (!ok && bad++ < 3) t.fail(`query ${i} (seed ${seed}): ${msg.toString('hex')}`, { scratch: fields(scratch), fresh: fields(fresh) });
  }
  t.equal(bad, 0, 'every parse agrees');
  t.ok(statuses.has(QueryStatus.OK) && statuses.has(QueryStatus.FORMERR) && statuses.has(QueryStatus.NOTIMP), 'the mix covers OK and errors');
  t.ok(statuses.has(QueryStatus.TSIG) && statuses.has(QueryStatus.BADVERS), 'and TSIG and BADVERS');
});

t.test('an error parse after an OK one leaves no key and none of its EDNS', async (t) => {
  const s = new QueryScratch();
  t.equal(parseQueryInto(query({ name: 'Some.Name.example', edns: true, do: true, udpSize: 4000, id: 5 }), s), QueryStatus.OK);
  t.ok(s.keyLen > 0);
  const two = query({ name: 'x.example', id: 6 });
  two.writeUInt16BE(2, 4);
  t.equal(parseQueryInto(two, s), QueryStatus.FORMERR);
  t.equal(s.keyLen, 0, 'no key length');
  t.equal(s.key, '', 'no key');
  t.equal(s.edns, false, 'no OPT of the previous query');
  t.equal(s.dnssecOk, false);
  t.equal(s.udpSize, 512);
  t.equal(s.id, 6);
  t.equal(parseQueryInto(Buffer.alloc(3), s), QueryStatus.DROP);
  t.equal(s.id, 0);
  t.equal(s.msg.length, 3);
});

t.test('key bytes: non-ASCII bytes never fold, ASCII letters always do, and the longest name fits', async (t) => {
  const s = new QueryScratch();
  const withByte = (b: number): Buffer => {
    const m = query({ name: 'ab.example' });
    m[13] = b;
    return m;
  };
  parseQueryInto(withByte(0xc1), s);
  const upperLatin = s.key;
  parseQueryInto(withByte(0xe1), s);
  t.not(s.key, upperLatin, '0xC1 and 0xE1 stay apart');
  parseQueryInto(withByte(0x41), s);
  const upperA = s.key;
  const upperHash = s.keyHash;
  parseQueryInto(withByte(0x61), s);
  t.equal(s.key, upperA, 'A and a fold');
  t.equal(s.keyHash, upperHash, 'to the same hash');
  const long = Array.from({ length: 4 }, (_, i) => String.fromCharCode(0x41 + i).repeat(63)).join('.').slice(0, 253);
  t.equal(parseQueryInto(query({ name: long }), s), QueryStatus.OK);
  t.equal(s.keyLen, 255 + 5, 'a 255-byte name');
  t.ok(s.keyLen <= KEY_MAX);
  t.equal(s.keyHash, hashKey(parseQuery(query({ name: long.toLowerCase() })).key));
});

t.test('lookupBytes finds what a string key stored, also when every hash collides', async (t) => {
  for (const hashMask of [undefined, 0, 0xf]) {
    const cache = new DnsCache(OPTS, new Counters(CACHE_COUNTERS), hashMask === undefined ? {} : { hashMask });
    const clock = new ManualClock();
    const names = Array.from({ length: 60 }, (_, i) => `N${i}.Example`);
    for (const [i, name] of names.entries()) {
      const up = answer(name.toLowerCase(), [a(name.toLowerCase(), `10.0.0.${i}`)]);
      cache.insert(parseQuery(query({ name })).key, up, scanAnswer(up)!, clock.now());
    }
    const s = new QueryScratch();
    let wrong = 0;
    for (const [i, name] of names.entries()) {
      parseQueryInto(query({ name: name.toUpperCase(), id: i }), s);
      const e = cache.lookupBytes(s.keyBytes, s.keyLen, s.keyHash, clock.now());
      const data = e === undefined ? undefined : (dnsPacket.decode(e.serve(s, clock.now(), 512, 1232)).answers?.[0] as { data?: string } | undefined)?.data;
      if (data !== `10.0.0.${i}`) wrong++;
    }
    t.equal(wrong, 0, `hashMask ${hashMask}: every name found, each its own`);
    parseQueryInto(query({ name: 'n1.example', do: true, edns: true }), s);
    t.equal(cache.lookupBytes(s.keyBytes, s.keyLen, s.keyHash, clock.now()), undefined, 'the DO flag splits the key');
    parseQueryInto(query({ name: 'n1.example', type: 'AAAA' }), s);
    t.equal(cache.lookupBytes(s.keyBytes, s.keyLen, s.keyHash, clock.now()), undefined, 'so does the type');
    parseQueryInto(query({ name: 'n1.exampl' }), s);
    t.equal(cache.lookupBytes(s.keyBytes, s.keyLen, s.keyHash, clock.now()), undefined, 'a shorter name');
  }
});

t.test('questions in flight are found from key bytes, each its own, also when every hash collides, and after any one is closed', async (t) => {
  const s = new QueryScratch();
  const names = ['a.example', 'A.example', 'b.example', 'ab.example', 'a.exampl'];
  const keys = [...new Set(names.map((n) => parseQuery(query({ name: n })).key))];
  t.equal(keys.length, 4, 'two spellings, one key');
  for (const forced of [null, 7]) {
    const inFlight = new InFlight();
    const misses = keys.map((key, i) => new Miss(i + 1, key, forced ?? hashKey(key), null));
    for (const m of misses) inFlight.add(m);
    const found = (name: string): number | undefined => {
      parseQueryInto(query({ name }), s);
      if (forced !== null) s.keyHash = forced;
      return inFlight.find(s)?.token;
    };
    const label = forced === null ? 'own hashes' : 'one hash for all';
    t.same(names.map(found), [1, 1, 2, 3, 4], `${label}: each key its own question, whatever the case`);
    t.equal(found('c.example'), undefined, `${label}: a key not in flight is not found`);
    inFlight.remove(misses[1]!);
    inFlight.remove(misses[0]!);
    t.same(names.map(found), [undefined, undefined, undefined, 3, 4], `${label}: closed ones go, the rest stay`);
    inFlight.remove(misses[0]!);
    inFlight.remove(misses[3]!);
    inFlight.remove(misses[2]!);
    t.same(names.map(found), [undefined, undefined, undefined, undefined, undefined], `${label}: all closed (twice for one): none left`);
  }
});

t.test('recent failures: found from a parsed query by its hash, then its key; forgotten when answered, expired or pushed out', async (t) => {
  const rf = new RecentFailures();
  const s = new QueryScratch();
  const parsed = (name: string): QueryScratch => (parseQueryInto(query({ name }), s), s);
  rf.failed(parseQuery(query({ name: 'down.example' })).key, 0);
  t.ok(rf.holds(parsed('DOWN.example'), 1000), 'the same key, another spelling');
  t.notOk(rf.holds(parsed('up.example'), 1000), 'another key');
  parsed('up.example');
  s.keyHash = hashKey(parseQuery(query({ name: 'down.example' })).key);
  t.notOk(rf.holds(s, 1000), 'another key with the same hash: the key decides');
  t.notOk(rf.holds(parsed('down.example'), FAILURE_RECHECK_MS), 'past the window');
  t.notOk(rf.holds(parsed('down.example'), 1000), 'and forgotten then');
  rf.failed(parseQuery(query({ name: 'down.example' })).key, 0);
  rf.answered(parseQuery(query({ name: 'down.example' })).key);
  t.notOk(rf.holds(parsed('down.example'), 1000), 'answered: forgotten');
  for (let i = 0; i <= MAX_RECENT_FAILURES; i++) rf.failed(parseQuery(query({ name: `n${i}.example` })).key, 0);
  t.notOk(rf.holds(parsed('n0.example'), 1000), 'the oldest pushed out past the cap');
  t.ok(rf.holds(parsed('n1.example'), 1000) && rf.holds(parsed(`n${MAX_RECENT_FAILURES}.example`), 1000), 'the rest kept');
});

t.test('stale() finds by key bytes what it finds by key string', async (t) => {
  const cache = new DnsCache({ ...OPTS, staleMs: 60_000 }, new Counters(CACHE_COUNTERS));
  const clock = new ManualClock();
  const up = answer('old.example', [a('old.example', '10.9.9.9')]);
  cache.insert(parseQuery(query({ name: 'old.example' })).key, up, scanAnswer(up)!, clock.now());
  const s = new QueryScratch();
  parseQueryInto(query({ name: 'OLD.example' }), s);
  t.equal(cache.stale(s, clock.now()), undefined, 'fresh: not stale');
  clock.advance(31_000);
  const e = cache.stale(s, clock.now());
  t.equal((dnsPacket.decode(e!.serveStale(s, 30, 512, 1232)).answers?.[0] as { data?: string } | undefined)?.data, '10.9.9.9', 'expired, inside the window: found by bytes');
  parseQueryInto(query({ name: 'old.example', type: 'AAAA' }), s);
  t.equal(cache.stale(s, clock.now()), undefined, 'another type: another key');
});

class FakeChannel implements ClientChannel {
  readonly transport = Transport.UDP;
  readonly sent: Buffer[] = [];
  onSend: ((answer: Buffer) => void) | null = null;
  send(answer: Buffer): void {
    this.sent.push(answer);
    this.onSend?.(answer);
  }
  discard(): void {}
}

class RecordingSink implements MissSink {
  readonly forwarded: { token: number; key: string; query: Buffer }[] = [];
  forward(token: number, key: string, query: Buffer): void {
    this.forwarded.push({ token, key, query });
  }
}

function hitPath(cache: DnsCache, logger = silentLogger, queryLogEvery = 0): HitPath {
  return new HitPath({ cache, clock: new ManualClock(), logger, counters: new Counters(SERVER_COUNTERS), maxUdpSize: 4096, queryLogEvery });
}

t.test('misses keep their own query: the scratch parsed into afterwards changes nothing they answer', async (t) => {
  const cache = new DnsCache(OPTS, new Counters(CACHE_COUNTERS));
  const hits = hitPath(cache);
  const sink = new RecordingSink();
  hits.connect(sink, scrubCounted);
  const ch = new FakeChannel();
  const first = query({ name: 'WwW.Alpha.example', id: 0x1111, edns: true, do: true, udpSize: 4000 });
  hits.handle(first, ch, PEER);
  hits.handle(query({ name: 'www.ALPHA.example', id: 0x2222, edns: true, do: true }), ch, PEER);
  t.equal(sink.forwarded.length, 1, 'the second joined the first');
  // Parsed into the same scratch after them: another miss, an error, a plain query without EDNS.
  hits.handle(query({ name: 'Other.Beta.example', id: 0x3333 }), ch, PEER);
  const two = query({ name: 'zzz.example', id: 0x5555 });
  two.writeUInt16BE(2, 4);
  hits.handle(two, ch, PEER);
  t.equal(sink.forwarded.length, 2);
  t.equal(ch.sent.length, 1, 'only the FORMERR answered so far');
  // The receive buffer is reused too, as a batched backend does.
  first.fill(0xee);

  const [alpha, beta] = sink.forwarded;
  t.equal(alpha!.key, parseQuery(query({ name: 'www.alpha.example', edns: true, do: true })).key, 'forwarded under its own key');
  t.equal(dnsPacket.decode(alpha!.query).questions?.[0]?.name, 'www.alpha.example', 'asked upstream for its own name');
  t.equal(beta!.key, parseQuery(query({ name: 'other.beta.example' })).key);

  hits.complete(alpha!.token, answer('www.alpha.example', [a('www.alpha.example', '10.1.1.1')]), 'upstream');
  const answers = ch.sent.slice(1).map((m) => dnsPacket.decode(m));
  t.same(answers.map((m) => m.id), [0x1111, 0x2222], 'each waiter its own id');
  t.same(answers.map((m) => m.questions?.[0]?.name), ['WwW.Alpha.example', 'www.ALPHA.example'], 'and its own spelling');
  t.same(answers.map((m) => (m.additionals ?? []).some((r) => r.type === 'OPT')), [true, true], 'and its own OPT');
  t.same(answers.map((m) => (m.answers?.[0] as { data?: string } | undefined)?.data), ['10.1.1.1', '10.1.1.1']);

  hits.complete(beta!.token, answer('other.beta.example', [a('other.beta.example', '10.2.2.2')]), 'upstream');
  const b = dnsPacket.decode(ch.sent[3]!);
  t.equal(b.id, 0x3333);
  t.equal(b.questions?.[0]?.name, 'Other.Beta.example');
  t.equal((b.additionals ?? []).length, 0, 'no OPT: its client sent none');

  // Cached under the key each miss had when it arrived.
  hits.handle(query({ name: 'WWW.alpha.EXAMPLE', id: 0x4444, edns: true, do: true }), ch, PEER);
  hits.handle(query({ name: 'other.beta.example', id: 0x4445 }), ch, PEER);
  t.equal(sink.forwarded.length, 2, 'both now hits');
  t.same(ch.sent.slice(4).map((m) => dnsPacket.decode(m).id), [0x4444, 0x4445]);
  t.equal(hits.inflight, 0);
});

t.test('a prefetch started by a hit goes out under the hit\'s key', async (t) => {
  const cache = new DnsCache({ ...OPTS, minHits: 1, percent: 100 }, new Counters(CACHE_COUNTERS));
  const hits = hitPath(cache);
  const sink = new RecordingSink();
  hits.connect(sink, scrubCounted);
  const ch = new FakeChannel();
  hits.handle(query({ name: 'Pre.Example', id: 1 }), ch, PEER);
  hits.complete(sink.forwarded[0]!.token, answer('pre.example', [a('pre.example', '10.3.3.3')]), 'upstream');
  hits.handle(query({ name: 'PRE.example', id: 2 }), ch, PEER);
  t.equal(sink.forwarded.length, 2, 'the hit started a refresh');
  t.equal(sink.forwarded[1]!.key, sink.forwarded[0]!.key);
  t.equal(dnsPacket.decode(sink.forwarded[1]!.query).questions?.[0]?.name, 'pre.example');
  t.equal(dnsPacket.decode(ch.sent[1]!).id, 2, 'and was answered');
});

t.test('a channel that answers into handle() at once does not overwrite the outer call\'s query', async (t) => {
  // Every hit past the first starts a refresh: the outer hit's must be its own, whatever the inner call looked up.
  const cache = new DnsCache({ ...OPTS, minHits: 1, percent: 100 }, new Counters(CACHE_COUNTERS));
  const lines: string[] = [];
  const hits = hitPath(cache, createLogger('info', (l) => lines.push(l)), 1);
  const sink = new RecordingSink();
  hits.connect(sink, scrubCounted);
  const ch = new FakeChannel();
  for (const name of ['outer.example', 'inner.example']) {
    hits.handle(query({ name }), ch, PEER);
    hits.complete(sink.forwarded.at(-1)!.token, answer(name, [a(name, '10.4.4.4')]), 'upstream');
  }
  lines.length = 0;
  let once = true;
  ch.onSend = () => {
    if (!once) return;
    once = false;
    hits.handle(query({ name: 'Inner.example', id: 8 }), ch, PEER);
  };
  hits.handle(query({ name: 'Outer.example', id: 7 }), ch, PEER);
  t.same(ch.sent.slice(-2).map((m) => dnsPacket.decode(m).id), [7, 8]);
  t.equal(lines.length, 2);
  t.match(lines[0], /Inner\.example/, 'the inner call logged its own name');
  t.match(lines[1], /Outer\.example/, 'and the outer call its own, after the inner one returned');
  t.same(sink.forwarded.slice(2).map((f) => dnsPacket.decode(f.query).questions?.[0]?.name).sort(), ['inner.example', 'outer.example'], 'each hit refreshed its own entry');
});
