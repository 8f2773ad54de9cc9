// The compact store under the cache (cache/store.ts behind cache/cache.ts):
// hash collisions, LRU order against a model, the byte budget and the slab's
// cap, reuse of freed slab space (sweeps, growth), big answers, and the
// export/restore round trip byte for byte.
import t from 'tap';
import * as dnsPacket from 'dns-packet';
import { DnsCache, ENTRY_OVERHEAD_BYTES, type CacheOptions } from '../src/cache/cache.js';
import { decodeSnapshot, encodeSnapshot } from '../src/cache/snapshot-format.js';
import { CACHE_COUNTERS } from '../src/cache/stats.js';
import { ManualClock } from '../src/clock.js';
import { scanAnswer } from '../src/dns/answer.js';
import { parseQuery, type Query } from '../src/dns/query.js';
import { HitPath, type MissSink } from '../src/server/hit-path.js';
import { scrubCounted } from '../src/server/scrub.js';
import { Transport, type ClientChannel, type ClientPeer } from '../src/server/listener.js';
import { SERVER_COUNTERS } from '../src/server/stats.js';
import { silentLogger } from '../src/log.js';
import { Counters } from '../src/stats/counters.js';
import { a, answer, query, rcodeOf, soa } from './kit/dns.js';

const OPTS: CacheOptions = {
  positiveCapacity: 1000, negativeCapacity: 1000, maxBytes: 1 << 24, successTtl: 30, denialTtl: 5, minHits: 0, percent: 10, staleMs: 0,
};

function newCache(o: Partial<CacheOptions> = {}, hashMask?: number): DnsCache {
  return new DnsCache({ ...OPTS, ...o }, new Counters(CACHE_COUNTERS), hashMask === undefined ? {} : { hashMask });
}

const q = (name: string): Query => parseQuery(query({ name }));

/** An answer naming `name` whose records say which one it is: `records` A records 10.x.y.z counting from `i`. */
function upstream(name: string, i: number, records = 1, ttl = 30): Buffer {
  return answer(name, Array.from({ length: records }, (_, r) => a(name, `10.${(i >> 8) & 255}.${i & 255}.${r & 255}`, ttl)));
}

function put(cache: DnsCache, name: string, i: number, now: number, records = 1): void {
  const up = upstream(name, i, records);
  cache.insert(q(name).key, up, scanAnswer(up)!, now);
}

function putNegative(cache: DnsCache, name: string, now: number): void {
  const up = answer(name, [], { rcode: 'NXDOMAIN', authorities: [soa('example', 5, 5)] });
  cache.insert(q(name).key, up, scanAnswer(up)!, now);
}

/** What the cache answers for `name` (A data of its first record), or undefined on a miss. */
function served(cache: DnsCache, name: string, now: number, limit = 65535): string | undefined {
  const query1 = q(name);
  const e = cache.lookup(query1.key, now);
  if (e === undefined) return undefined;
  const d = dnsPacket.decode(e.serve(query1, now, limit, 1232));
  const first = d.answers?.[0];
  if (first === undefined || first.name.toLowerCase() !== name.toLowerCase()) return `wrong name ${first?.name}`;
  return first.type === 'A' ? first.data : `type ${first.type}`;
}

const firstData = (msg: Buffer): unknown => (dnsPacket.decode(msg).answers?.[0] as { data?: unknown } | undefined)?.data;

const ipOf = (i: number): string => `10.${(i >> 8) & 255}.${i & 255}.0`;

t.test('collisions: every key hashing alike still finds its own answer, through removals', async (t) => {
  const cache = newCache({}, 0);
  for (let i = 0; i < 200; i++) put(cache, `c${i}.example`, i, 0);
  let wrong = 0;
  for (let i = 0; i < 200; i++) if (served(cache, `c${i}.example`, 0) !== ipOf(i)) wrong++;
  t.equal(wrong, 0, 'all 200 found, each its own');
  t.equal(served(cache, 'c200.example', 0), undefined, 'an absent key that collides is a miss');
  // Replace every third one (a remove and an insert in the middle of the probe run).
  for (let i = 0; i < 200; i += 3) put(cache, `c${i}.example`, i + 1000, 0);
  wrong = 0;
  for (let i = 0; i < 200; i++) if (served(cache, `c${i}.example`, 0) !== ipOf(i % 3 === 0 ? i + 1000 : i)) wrong++;
  t.equal(wrong, 0, 'after replacing a third of them in place');
  t.equal(cache.positiveSize, 200);
});

t.test('collisions in the table\'s low bits (few buckets, long runs), keys of equal length and hash', async (t) => {
  // Keys of one length and one hash: a probe must compare bytes, not just hashes and lengths.
  const cache = newCache({ positiveCapacity: 64, negativeCapacity: 64 }, 0);
  for (let i = 0; i < 50; i++) put(cache, `x${String(i).padStart(3, '0')}.example`, i, 0);
  let wrong = 0;
  for (let i = 0; i < 50; i++) if (served(cache, `x${String(i).padStart(3, '0')}.example`, 0) !== ipOf(i)) wrong++;
  t.equal(wrong, 0);
});

/**
 * A model of the old lru-cache behaviour: per list, keys least recent first;
 * a lookup moves to the end, an insert removes the key from both lists and
 * appends, the first key goes when a list is over its capacity.
 */
t.test('LRU order and contents match a model over random operations (with a colliding hash)', async (t) => {
  const caps = [5, 3] as const;
  const cache = newCache({ positiveCapacity: caps[0], negativeCapacity: caps[1] }, 3);
  const lists: [string[], string[]] = [[], []];
  const value = new Map<string, number>();
  let seed = 12345;
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  let evictions = 0;
  for (let step = 0; step < 3000; step++) {
    const name = `n${rand(12)}.example`;
    const key = q(name).key;
    const op = rand(3);
    if (op === 0) {
      const v = rand(60000);
      put(cache, name, v, 0);
      for (const l of lists) if (l.includes(key)) l.splice(l.indexOf(key), 1);
      lists[0].push(key);
      value.set(key, v);
      if (lists[0].length > caps[0]) { lists[0].shift(); evictions++; }
    } else if (op === 1) {
      putNegative(cache, name, 0);
      for (const l of lists) if (l.includes(key)) l.splice(l.indexOf(key), 1);
      lists[1].push(key);
      value.delete(key);
      if (lists[1].length > caps[1]) { lists[1].shift(); evictions++; }
    } else {
      const e = cache.lookup(key, 0);
      const l = lists.find((x) => x.includes(key));
      if ((e === undefined) !== (l === undefined)) {
        t.fail(`step ${step}: lookup ${name} ${e === undefined ? 'missed' : 'hit'}`);
        return;
      }
      if (l !== undefined) {
        l.splice(l.indexOf(key), 1);
        l.push(key);
        const v = value.get(key);
        if (v !== undefined && served(cache, name, 0) !== ipOf(v)) {
          t.fail(`step ${step}: ${name} served the wrong answer`);
          return;
        }
        // served() looked it up again: the model's order already has it last.
      }
    }
    const order = [...cache.export(0)].map((r) => r.key);
    if (order.join('|') !== [...lists[0], ...lists[1]].join('|')) {
      t.fail(`step ${step}: order ${order.length} entries differs from the model`);
      return;
    }
  }
  t.equal(cache.positiveSize, lists[0].length);
  t.equal(cache.negativeSize, lists[1].length);
  t.equal(cache.counters.get('evictPositive') + cache.counters.get('evictNegative'), evictions, 'evictions counted as the model made them');
});

t.test('a key that turns negative leaves the positive list, and back', async (t) => {
  const cache = newCache();
  put(cache, 'flip.example', 1, 0);
  putNegative(cache, 'flip.example', 0);
  t.equal(cache.positiveSize, 0);
  t.equal(cache.negativeSize, 1);
  const e = cache.lookup(q('flip.example').key, 0);
  t.ok(e?.negative, 'the negative answer is the one served');
  put(cache, 'flip.example', 2, 0);
  t.equal(cache.negativeSize, 0);
  t.equal(served(cache, 'flip.example', 0), ipOf(2));
});

t.test('the byte budget bounds the charged bytes and the slab, whatever the answer sizes', async (t) => {
  const maxBytes = 256 * 1024;
  const cache = newCache({ positiveCapacity: 100_000, negativeCapacity: 100_000, maxBytes });
  let seed = 7;
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  let over = 0;
  for (let i = 0; i < 3000; i++) {
    put(cache, `b${i}.example`, i, 0, 1 + rand(rand(10) === 0 ? 300 : 8));
    if (cache.bytes > maxBytes || cache.slabBytes > maxBytes) over++;
  }
  t.equal(over, 0, 'never over, after any insert');
  t.ok(cache.bytes >= cache.positiveSize * ENTRY_OVERHEAD_BYTES, 'each entry is charged its index overhead');
  t.ok(cache.counters.get('evictPositive') > 0, 'entries were evicted to stay inside');
  // The most recent ones are there and right.
  let wrong = 0;
  for (let i = 2990; i < 3000; i++) if (served(cache, `b${i}.example`, 0) !== ipOf(i)) wrong++;
  t.equal(wrong, 0);
});

t.test('freed slab space is reused: churn of many slabs\' worth stays inside the cap, answers intact', async (t) => {
  const maxBytes = 64 * 1024;
  const cache = newCache({ positiveCapacity: 300, negativeCapacity: 50, maxBytes });
  const present: number[] = [];
  for (let i = 0; i < 20_000; i++) {
    // Replacing, expiring and evicting: all three free slab space.
    const n = i % 500;
    put(cache, `w${n}.example`, i, i, 1 + (i % 5));
    if (i % 7 === 0) putNegative(cache, `neg${i % 97}.example`, i);
    if (cache.slabBytes > maxBytes) {
      t.fail(`slab ${cache.slabBytes} over the cap at insert ${i}`);
      return;
    }
    if (i >= 19_990) present.push(i);
  }
  t.equal(cache.slabBytes, maxBytes, 'grown to its cap, not past it');
  let wrong = 0;
  for (const i of present) if (served(cache, `w${i % 500}.example`, 19_999) !== ipOf(i)) wrong++;
  t.equal(wrong, 0, 'the last ones written read back right after many sweeps');
  // Every entry the cache still holds answers with its own name.
  let bad = 0;
  for (const r of cache.export(19_999)) {
    const d = dnsPacket.decode(r.wire);
    const name = d.questions?.[0]?.name ?? '';
    if (r.key !== q(name).key) bad++;
  }
  t.equal(bad, 0, 'every record\'s bytes belong to its key');
});

t.test('big answers: a 59 KB answer is stored, served whole over TCP and cut for UDP', async (t) => {
  const cache = newCache();
  const name = 'big.example';
  put(cache, name, 3, 0, 2200); // 27 bytes a record (dns-packet does not compress): about 59 KB
  put(cache, 'small.example', 4, 0);
  const query1 = q(name);
  const e = cache.lookup(query1.key, 0)!;
  t.ok(e);
  const whole = e.serve(query1, 0, 65535, 1232);
  t.ok(whole.length > 59_000, `whole answer ${whole.length} bytes`);
  t.equal(dnsPacket.decode(whole).answers?.length, 2200);
  const udp = cache.lookup(query1.key, 0)!.serve(query1, 0, 512, 1232);
  t.ok(udp.length <= 512);
  t.ok((udp[2]! & 0x02) !== 0, 'TC set');
  t.equal(served(cache, 'small.example', 0), ipOf(4), 'its neighbour is intact');
});

t.test('the lookup handle and the copies: insert and stale give answers that outlive later changes', async (t) => {
  const clock = new ManualClock();
  const cache = newCache({ staleMs: 60_000, positiveCapacity: 2 });
  const up = upstream('keep.example', 9);
  const fresh = cache.insert(q('keep.example').key, up, scanAnswer(up)!, clock.now());
  t.notOk(cache.claimPrefetch(fresh, clock.now()), 'only a lookup\'s handle can claim a prefetch');
  put(cache, 'other1.example', 1, clock.now());
  put(cache, 'other2.example', 2, clock.now());
  t.equal(cache.lookup(q('keep.example').key, clock.now()), undefined, 'evicted');
  t.equal(firstData(fresh.serve(q('keep.example'), clock.now(), 512, 1232)), ipOf(9), 'the insert\'s answer still serves');
  clock.advance(31_000);
  const s = cache.stale(q('other1.example').key, clock.now())!;
  t.ok(s);
  for (let i = 0; i < 10; i++) put(cache, `later${i}.example`, 100 + i, clock.now());
  t.equal(firstData(s.serveStale(q('other1.example'), 30, 512, 1232)), ipOf(1), 'the stale copy still serves');
});

t.test('export, snapshot, restore: every answer comes back byte for byte, in the same LRU order', async (t) => {
  const clock = new ManualClock();
  const old = newCache({ positiveCapacity: 500, negativeCapacity: 100, maxBytes: 1 << 20 });
  for (let i = 0; i < 400; i++) put(old, `r${i}.Example`, i, clock.now(), 1 + (i % 4));
  for (let i = 0; i < 50; i++) putNegative(old, `nx${i}.example`, clock.now());
  clock.advance(3_000);
  for (let i = 0; i < 400; i += 5) old.lookup(q(`r${i}.example`).key, clock.now());
  const snap = encodeSnapshot(old.export(clock.now()), clock.wall());
  const d = decodeSnapshot(snap);
  if ('reason' in d) throw new Error(d.detail);
  const fresh = newCache({ positiveCapacity: 500, negativeCapacity: 100, maxBytes: 1 << 20 });
  t.match(fresh.restore(d.records, clock.now()), { restored: 450, expired: 0, invalid: 0, noRoom: 0, present: 0 });
  t.same([...fresh.export(clock.now())].map((r) => r.key), [...old.export(clock.now())].map((r) => r.key), 'same order');
  let differ = 0;
  for (let i = 0; i < 400; i++) {
    const query1 = q(`R${i}.example`);
    const before = old.lookup(query1.key, clock.now())!.serve(query1, clock.now(), 4096, 1232);
    const after = fresh.lookup(query1.key, clock.now())!.serve(query1, clock.now(), 4096, 1232);
    if (!before.equals(after)) differ++;
  }
  t.equal(differ, 0, 'every restored answer serves the same bytes (TTLs aged alike)');
});

t.test('clear empties both lists and the slab is reused from its start', async (t) => {
  const cache = newCache();
  for (let i = 0; i < 100; i++) put(cache, `z${i}.example`, i, 0);
  cache.clear();
  t.equal(cache.positiveSize + cache.negativeSize, 0);
  t.equal(cache.bytes, 0);
  t.equal(served(cache, 'z1.example', 0), undefined);
  put(cache, 'z1.example', 5, 0);
  t.equal(served(cache, 'z1.example', 0), ipOf(5));
});

t.test('RFC 2308: a CNAME chain ending in NODATA (SOA in authority) lives min(SOA TTL, MINIMUM), at most --denial-ttl', async (t) => {
  // An AAAA question for a name that is a CNAME to a host with no AAAA: NOERROR, the CNAME in the answer section,
  // the target zone's SOA in the authority section (RFC 2308 2.2, "NODATA" after a CNAME chain). The negative part
  // is what the client caches and is what may change (an AAAA added): its life is the SOA's, as for a bare NODATA.
  const name = 'www.example';
  const qa = parseQuery(query({ name, type: 'AAAA' }));
  const cnameNodata = (soaTtl: number, minimum: number): Buffer =>
    answer(name, [{ type: 'CNAME', name, ttl: 300, data: 'host.cdn.example' } as dnsPacket.Answer], {
      type: 'AAAA', authorities: [soa('cdn.example', soaTtl, minimum)],
    });

  const cache = newCache({ successTtl: 30, denialTtl: 5 });
  const short = cnameNodata(300, 2);
  cache.insert(qa.key, short, scanAnswer(short)!, 0);
  const e = cache.lookup(qa.key, 0);
  t.ok(e, 'cached');
  const soaTtl = (dnsPacket.decode(e!.serve(qa, 0, 4096, 1232)).authorities?.[0] as { ttl?: number } | undefined)?.ttl;
  t.ok(soaTtl !== undefined && soaTtl <= 2, `the SOA a client gets says at most 2 s (says ${soaTtl})`);
  t.equal(cache.lookup(qa.key, 2_000), undefined, 'gone once min(SOA TTL 300, MINIMUM 2) = 2 s have passed, not after --success-ttl 30 s');

  const capped = newCache({ successTtl: 30, denialTtl: 5 });
  const long = cnameNodata(300, 300);
  capped.insert(qa.key, long, scanAnswer(long)!, 0);
  t.equal(capped.lookup(qa.key, 5_000), undefined, '--denial-ttl (5 s) caps it, as it caps every negative answer');
});

t.test('RFC 8767: a fresh answer the cache does not keep (TTL 0, NXDOMAIN without SOA) supersedes the expired entry; a later failure never serves the older data', async (t) => {
  // The expired entry waits in the stale window for an upstream failure. A successful answer that is not cached
  // (TTL 0; a denial without SOA, RFC 2308 5) is still the upstream's word on the name: the stale copy is now older
  // than what clients were last told, and serving it on the next failure brings back an address (or a name) that
  // is gone, for up to --serve-stale.
  const hour = 3_600_000;
  const name = 'moved.example';
  const key = q(name).key;
  const cases: Array<[string, Buffer]> = [
    ['TTL 0, a new address', answer(name, [a(name, '10.9.9.9', 0)])],
    ['NXDOMAIN without SOA', answer(name, [], { rcode: 'NXDOMAIN' })],
    // The name is now a CNAME whose target does not exist: a denial without SOA too, not a chase that failed.
    ['NXDOMAIN after a CNAME, without SOA', answer(name, [{ type: 'CNAME', name, ttl: 30, data: 'gone.example' }], { rcode: 'NXDOMAIN' })],
  ];
  for (const [what, fresh] of cases) {
    const cache = newCache({ staleMs: hour });
    put(cache, name, 1, 0); // 10.0.1.0, 30 s
    t.equal(cache.lookup(key, 40_000), undefined, `${what}: expired at 30 s, so asked upstream at 40 s`);
    cache.insert(key, fresh, scanAnswer(fresh)!, 40_000);
    // At 50 s the upstream fails: what may a client be given?
    const s = cache.stale(key, 50_000);
    const data = s === undefined ? undefined : firstData(s.serveStale(q(name), 30, 512, 1232));
    t.not(data, ipOf(1), `${what}: the address from before the newer answer is not served stale (got ${String(data)})`);
  }
  // A CNAME alone without SOA (the view's ExternalName answer when its target failed) says nothing of the name's
  // data: not kept, and the stale entry stays for the failure it was kept for.
  const cache = newCache({ staleMs: hour });
  put(cache, name, 1, 0);
  const cname = answer(name, [{ type: 'CNAME', name, ttl: 30, data: 'target.example' }]);
  cache.insert(key, cname, scanAnswer(cname)!, 40_000);
  const s = cache.stale(key, 50_000);
  t.equal(s === undefined ? undefined : firstData(s.serveStale(q(name), 30, 512, 1232)), ipOf(1), 'a CNAME alone leaves the stale entry');
});

t.test('a reload that turns prefetch off (--prefetch-min-hits 0) prefetches no entry, not every entry stored before it', async (t) => {
  // prefetchAt is fixed at insert (under the old settings), the hit count is checked against the new --prefetch-min-hits:
  // with 0 ("disables prefetch") no entry is below it, so every entry stored before the reload is refreshed on its
  // first hit in its window, popular or not, where before the reload it needed 3 hits.
  const cache = newCache({ minHits: 3, percent: 10 });
  const name = 'once.example';
  put(cache, name, 1, 0); // 30 s: due from 27 s
  cache.configure({ successTtl: 30, denialTtl: 5, minHits: 0, percent: 10, staleMs: 0 });
  const e = cache.lookup(q(name).key, 28_000);
  t.ok(e, 'a hit at 28 s');
  t.notOk(cache.claimPrefetch(e!, 28_000), 'no background refresh: prefetch is off, and this was the entry\'s first hit');
  t.equal(cache.counters.get('prefetch'), 0, 'coredns_cache_prefetch_total stays 0');
});

t.test('--cache-memory past what the store can hold (its slab is capped near 4 GiB): the budget is the slab\'s, not the flag\'s', async (t) => {
  // With the lists' byte limits set from 8 GiB and the slab capped at 4 GiB, live records filled the whole slab: every
  // insert then evicted one and swept the entire slab. The budget the cache works to (and says) is what it can hold.
  const cache = newCache({ positiveCapacity: 10, negativeCapacity: 10, maxBytes: 8 * 2 ** 30 });
  t.ok(cache.maxBytes <= 2 ** 32, `the budget is at most the slab's cap (${cache.maxBytes})`);
  t.ok(cache.maxBytes >= 2 ** 32 - 8, 'and all of it');
  const clock = new ManualClock();
  for (let i = 0; i < 30; i++) put(cache, `n${i}.example`, 1, clock.now());
  t.equal(cache.positiveSize, 10, 'entries still bounded by count');
});

t.test('RFC 8767 4: an upstream answer with an rcode other than NOERROR or NXDOMAIN (NOTIMP, FORMERR) did not refresh the name: stale when cached, else SERVFAIL for NOTIMP and FORMERR passed on', async (t) => {
  // The upstream side passes such an answer on once no server did better (README: NOTIMP moves on like SERVFAIL and
  // REFUSED); it answers nothing about the name, so a client must get the expired answer, as after a SERVFAIL.
  const hour = 3_600_000;
  const sent: Buffer[] = [];
  const channel: ClientChannel = { transport: Transport.UDP, send: (m: Buffer) => void sent.push(m), discard: () => {} };
  const peer: ClientPeer = { address: '127.0.0.1', port: 40000 };
  const forwarded: number[] = [];
  const sink: MissSink = { forward: (token: number) => void forwarded.push(token) };
  const name = 'lame.example';
  for (const rcode of ['NOTIMP', 'FORMERR', 'SERVFAIL']) {
    const clock = new ManualClock(0);
    const cache = newCache({ staleMs: hour });
    const hits = new HitPath({ cache, clock, logger: silentLogger, counters: new Counters(SERVER_COUNTERS), maxUdpSize: 1232 });
    hits.connect(sink, scrubCounted);
    put(cache, name, 7, 0); // 10.0.7.0, 30 s
    clock.advance(40_000);
    sent.length = 0;
    hits.handle(query({ name, id: 0x4242 }), channel, peer);
    t.equal(sent.length, 0, `${rcode}: expired, so asked upstream`);
    hits.complete(forwarded.at(-1)!, answer(name, [], { rcode }), 'upstream');
    t.equal(sent.length, 1, `${rcode}: the client is answered`);
    const d = dnsPacket.decode(sent[0]!);
    t.equal(rcodeOf(sent[0]!), 0, `${rcode}: NOERROR, the stale answer (got rcode ${rcodeOf(sent[0]!)})`);
    t.equal(firstData(sent[0]!), ipOf(7), `${rcode}: the expired address`);
    t.equal((d.answers?.[0] as { ttl?: number } | undefined)?.ttl, 30, `${rcode}: with TTL 30`);
  }
  // Nothing stale: NOTIMP is a failure as SERVFAIL and REFUSED are (health.ts serverFailed: the resolver, the upstream
  // side and its health all judge so): SERVFAIL, never the NOTIMP musl ignores and waits out; FORMERR is passed on.
  const clock = new ManualClock(0);
  const hits = new HitPath({ cache: newCache({ staleMs: hour }), clock, logger: silentLogger, counters: new Counters(SERVER_COUNTERS), maxUdpSize: 1232 });
  hits.connect(sink, scrubCounted);
  sent.length = 0;
  hits.handle(query({ name: 'new.example' }), channel, peer);
  hits.complete(forwarded.at(-1)!, answer('new.example', [], { rcode: 'NOTIMP' }), 'upstream');
  t.equal(sent.length === 1 ? rcodeOf(sent[0]!) : -1, 2, 'no stale entry: NOTIMP is a failure, SERVFAIL');
  sent.length = 0;
  hits.handle(query({ name: 'bad.example' }), channel, peer);
  hits.complete(forwarded.at(-1)!, answer('bad.example', [], { rcode: 'FORMERR' }), 'upstream');
  t.equal(sent.length === 1 ? rcodeOf(sent[0]!) : -1, 1, 'no stale entry: FORMERR passed on');
});

t.test('an answer the store cannot place (bigger than its list\'s byte budget) is counted uncacheable, not as an insert', async (t) => {
  const cache = newCache({ maxBytes: 64 * 1024 });
  put(cache, 'fits.example', 1, 0);
  put(cache, 'huge.example', 2, 0, 2200); // about 59 KB: more than the positive list's share of 64 KiB
  t.equal(served(cache, 'huge.example', 0), undefined, 'not stored');
  t.equal(cache.positiveSize, 1);
  t.equal(cache.counters.get('insertPositive'), 1, 'nodelocal_cache_inserts_total{type="success"} counts the one stored');
  t.equal(cache.counters.get('uncacheable'), 1, 'nodelocal_cache_uncacheable_total counts the one passed through');
});
