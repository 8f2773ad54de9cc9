/**
 * What a periodic cache snapshot costs the hit path: the longest time the
 * event loop is held while a snapshot of ENTRIES answers (default 20,000) is
 * written, in one go (as at shutdown) and in slices (as while serving,
 * SNAPSHOT_SLICE_ENTRIES records per turn). A setImmediate probe stamps every
 * turn it gets; its longest gap is how long a queued query would have
 * waited. Median of RUNS.
 *
 *   npx tsc -p tsconfig.json --outDir /tmp/snap-dist && ENTRIES=100000 node /tmp/snap-dist/bench/micro/snapshot-stall.js
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as dnsPacket from 'dns-packet';
import { DnsCache } from '../../src/cache/cache.js';
import { writeSnapshot } from '../../src/cache/snapshot-file.js';
import { SNAPSHOT_SLICE_ENTRIES } from '../../src/cache/snapshot.js';
import { CACHE_COUNTERS } from '../../src/cache/stats.js';
import { systemClock } from '../../src/clock.js';
import { scanAnswer } from '../../src/dns/answer.js';
import { parseQuery } from '../../src/dns/query.js';
import { silentLogger } from '../../src/log.js';
import { Counters } from '../../src/stats/counters.js';

const ENTRIES = Number(process.env.ENTRIES ?? 20_000);
const RUNS = Number(process.env.RUNS ?? 5);

const cache = new DnsCache(
  { positiveCapacity: ENTRIES, negativeCapacity: ENTRIES, maxBytes: 2 ** 30, successTtl: 30, denialTtl: 5, minHits: 3, percent: 10, staleMs: 3_600_000 },
  new Counters(CACHE_COUNTERS),
);
for (let i = 0; i < ENTRIES; i++) {
  const name = `svc-${i}.ns-${i % 50}.svc.cluster.local`;
  const q = dnsPacket.encode({ type: 'query', id: 1, questions: [{ name, type: 'A', class: 'IN' }] });
  const a = dnsPacket.encode({
    type: 'response', id: 0, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE,
    questions: [{ name, type: 'A', class: 'IN' }],
    answers: [{ type: 'A', name, ttl: 30, data: '10.96.0.1' }, { type: 'A', name, ttl: 30, data: '10.96.0.2' }],
  });
  cache.insert(parseQuery(q).key, a, scanAnswer(a)!, systemClock.now());
}

/** Longest gap between turns of the event loop while `fn` runs, and its wall time. */
async function stall(fn: () => Promise<unknown>): Promise<{ maxGap: number; wall: number }> {
  let last = performance.now();
  let maxGap = 0;
  let running = true;
  const probe = (): void => {
    const now = performance.now();
    if (now - last > maxGap) maxGap = now - last;
    last = now;
    if (running) setImmediate(probe);
  };
  setImmediate(probe);
  const t0 = performance.now();
  await fn();
  const wall = performance.now() - t0;
  running = false;
  return { maxGap, wall };
}

const med = (xs: number[]): string => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!.toFixed(1);
const dir = mkdtempSync(join(tmpdir(), 'snap-stall-'));
try {
  const path = join(dir, 'cache.snap');
  const idle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 300));
  const cases: [string, () => Promise<unknown>][] = [
    ['nothing (300 ms idle: the machine\'s own scheduling noise)', idle],
    ['one go (shutdown)', () => writeSnapshot(cache, path, systemClock, silentLogger)],
    [`sliced, ${SNAPSHOT_SLICE_ENTRIES}/turn (periodic)`, () => writeSnapshot(cache, path, systemClock, silentLogger, { sliceEntries: SNAPSHOT_SLICE_ENTRIES, quiet: true })],
  ];
  for (const [label, fn] of cases) {
    const gaps: number[] = [];
    const walls: number[] = [];
    for (let r = 0; r < RUNS; r++) {
      const s = await stall(fn);
      gaps.push(s.maxGap);
      walls.push(s.wall);
    }
    console.log(`${ENTRIES} entries, ${label}: longest event-loop gap ${med(gaps)} ms (median of ${RUNS}; min ${Math.min(...gaps).toFixed(1)}), took ${med(walls)} ms`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
