/**
 * Warm restart cost: how long writing the cache snapshot adds to a shutdown
 * and loading it to a start, and how big the file is, for a cache of ENTRIES
 * answers (default 20,000: 3/4 positive with two A records, 1/4 NXDOMAIN with
 * an SOA, names like a cluster's). Median of RUNS of CPU time (user + system,
 * which other load on the machine inflates less) and wall time; the same
 * answers inserted the ordinary way (scan + insert) are the reference.
 *
 *   npx tsc -p tsconfig.json --outDir /tmp/snap-dist && node /tmp/snap-dist/bench/micro/snapshot.js
 *   ENTRIES=100000 RUNS=5 node /tmp/snap-dist/bench/micro/snapshot.js
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as dnsPacket from 'dns-packet';
import { DnsCache, type CacheOptions } from '../../src/cache/cache.js';
import { loadSnapshot, writeSnapshot } from '../../src/cache/snapshot-file.js';
import { decodeSnapshot, encodeSnapshot } from '../../src/cache/snapshot-format.js';
import { CACHE_COUNTERS } from '../../src/cache/stats.js';
import { systemClock } from '../../src/clock.js';
import { scanAnswer } from '../../src/dns/answer.js';
import { parseQuery } from '../../src/dns/query.js';
import { silentLogger } from '../../src/log.js';
import { Counters } from '../../src/stats/counters.js';

const ENTRIES = Number(process.env.ENTRIES ?? 20_000);
const RUNS = Number(process.env.RUNS ?? 7);

const OPTS: CacheOptions = {
  positiveCapacity: ENTRIES, negativeCapacity: ENTRIES, maxBytes: 2 ** 30, successTtl: 30, denialTtl: 5, minHits: 3, percent: 10, staleMs: 3_600_000,
};

function query(name: string): Buffer {
  return dnsPacket.encode({ type: 'query', id: 1, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] });
}

function answer(name: string, negative: boolean): Buffer {
  const zone = 'cluster.local';
  return dnsPacket.encode({
    type: 'response', id: 0, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | (negative ? 3 : 0),
    questions: [{ name, type: 'A', class: 'IN' }],
    answers: negative ? [] : [
      { type: 'A', name, ttl: 30, data: '10.96.0.1' },
      { type: 'A', name, ttl: 30, data: '10.96.0.2' },
    ],
    authorities: negative
      ? [{ type: 'SOA', name: zone, ttl: 5, data: { mname: 'ns.dns.' + zone, rname: 'hostmaster.' + zone, serial: 1, refresh: 7200, retry: 1800, expire: 86400, minimum: 5 } }]
      : [],
  });
}

interface Upstream {
  readonly key: string;
  readonly answer: Buffer;
}

function answers(): Upstream[] {
  return Array.from({ length: ENTRIES }, (_, i) => {
    const name = `svc-${i}.ns-${i % 50}.svc.cluster.local`;
    return { key: parseQuery(query(name)).key, answer: answer(name, i % 4 === 3) };
  });
}

function filled(upstream: readonly Upstream[]): DnsCache {
  const cache = new DnsCache(OPTS, new Counters(CACHE_COUNTERS));
  const now = systemClock.now();
  for (const u of upstream) cache.insert(u.key, u.answer, scanAnswer(u.answer)!, now);
  return cache;
}

/** Wall and CPU (user + system) ms of `fn`; CPU time is what the machine's other load does not inflate. */
async function measure<T>(fn: () => T | Promise<T>): Promise<{ wall: number; cpu: number; value: T }> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const value = await fn();
  const wall = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return { wall, cpu: (c.user + c.system) / 1000, value };
}

class Series {
  readonly wall: number[] = [];
  readonly cpu: number[] = [];
  add(m: { wall: number; cpu: number }): void {
    this.wall.push(m.wall);
    this.cpu.push(m.cpu);
  }
  toString(): string {
    return `cpu ${med(this.cpu)} ms (min ${Math.min(...this.cpu).toFixed(1)}), wall ${med(this.wall)} ms (min ${Math.min(...this.wall).toFixed(1)}, max ${Math.max(...this.wall).toFixed(1)})`;
  }
}

function med(xs: number[]): string {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!.toFixed(1);
}

const dir = mkdtempSync(join(tmpdir(), 'snap-bench-'));
const path = join(dir, 'cache.snap');
try {
  const upstream = answers();
  const cache = filled(upstream);
  const insert = new Series();
  const write = new Series();
  const encode = new Series();
  const load = new Series();
  const decode = new Series();
  let bytes = 0;
  for (let run = 0; run < RUNS; run++) {
    // Reference: what the same answers cost to put in an empty cache the ordinary way (scan + insert).
    insert.add(await measure(() => filled(upstream)));
    const enc = await measure(() => encodeSnapshot(cache.export(systemClock.now()), systemClock.wall()));
    encode.add(enc);
    decode.add(await measure(() => decodeSnapshot(enc.value)));
    const w = await measure(() => writeSnapshot(cache, path, systemClock, silentLogger));
    write.add(w);
    if (!w.value.ok) throw new Error(w.value.error);
    bytes = w.value.bytes;
    const fresh = new DnsCache(OPTS, new Counters(CACHE_COUNTERS));
    const l = await measure(() => loadSnapshot(fresh, path, systemClock, silentLogger));
    load.add(l);
    if (l.value.loaded !== ENTRIES) throw new Error(`loaded ${l.value.loaded} of ${ENTRIES}: ${JSON.stringify(l.value)}`);
  }
  console.log(`entries ${ENTRIES}, file ${bytes} bytes (${(bytes / ENTRIES).toFixed(1)} B/entry), median of ${RUNS} runs, Node ${process.version}`);
  console.log(`write (export, encode, write, fsync, rename, dir fsync): ${write}`);
  console.log(`  of which export + encode:                            ${encode}`);
  console.log(`load (read, decode, scan + insert each):               ${load}`);
  console.log(`  of which decode (framing, checksum):                 ${decode}`);
  console.log(`reference: scan + insert of the same answers:          ${insert}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
