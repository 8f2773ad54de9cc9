// A reader thread for test/store-shared.test.ts: reads the store the test's
// main thread writes, through cache/reader.ts, as a batched worker does, and
// checks every answer it gets against the key it asked for.
import { parentPort, workerData } from 'node:worker_threads';
import * as dnsPacket from 'dns-packet';
import { CacheReader } from '../../src/cache/reader.js';
import { CACHE_COUNTERS } from '../../src/cache/stats.js';
import type { StoreLayout } from '../../src/cache/store.js';
import { systemClock } from '../../src/clock.js';
import { QueryScratch, QueryStatus, parseQueryInto } from '../../src/dns/query.js';
import { Counters } from '../../src/stats/counters.js';
import { expectedData, readerQuery } from './store-keys.js';

interface Init {
  readonly layout: StoreLayout;
  readonly names: number;
  /** [0]: set to 1 by the writer when it is done. */
  readonly stop: SharedArrayBuffer;
  readonly maxReads: number;
}

const init = workerData as Init;
const stop = new Int32Array(init.stop);
const counters = new Counters(CACHE_COUNTERS);
const reader = new CacheReader(init.layout, { successTtl: 3600, denialTtl: 5, minHits: 0, percent: 10, staleMs: 0 }, counters);
const queries = Array.from({ length: init.names }, (_, i) => readerQuery(i));
const q = new QueryScratch();
const result = { reads: 0, hits: 0, misses: 0, wrong: 0, threw: 0, firstWrong: '' };
parentPort!.postMessage({ ready: true });
let seed = 99;
while (Atomics.load(stop, 0) === 0 && result.reads < init.maxReads) {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  const i = (seed >>> 8) % init.names;
  result.reads++;
  try {
    parseQueryInto(queries[i]!, q);
    if (q.status !== QueryStatus.OK) throw new Error('bad query');
    const reply = reader.answer(q, systemClock.now(), 65535, 1232);
    if (reply === null) {
      result.misses++;
      continue;
    }
    result.hits++;
    const d = dnsPacket.decode(reply);
    const got = `${d.questions?.[0]?.name}|${(d as { rcode?: string }).rcode}|${(d.answers ?? []).map((a) => String((a as { data: unknown }).data)).join(',')}`;
    const name = `k${i}.example`;
    const answers = d.answers ?? [];
    // The key's positive answer (every record names it), or its negative one (NXDOMAIN, no records).
    const rcode = (d as { rcode?: string }).rcode;
    const ok = d.questions?.[0]?.name === name &&
      (answers.length > 0 ? rcode === 'NOERROR' && answers.every((a, r) => a.name === name && (a as { data: unknown }).data === expectedData(i, r)) : rcode === 'NXDOMAIN');
    if (!ok) {
      result.wrong++;
      if (result.firstWrong === '') result.firstWrong = `asked ${name}, got ${got}`;
    }
  } catch (err) {
    result.threw++;
    if (result.firstWrong === '') result.firstWrong = `threw: ${String(err)}`;
  }
}
parentPort!.postMessage({ done: true, ...result, gaveUp: reader.gaveUp });
