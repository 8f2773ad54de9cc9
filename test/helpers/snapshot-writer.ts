// Child process for test/snapshot.test.ts: fills a cache with N answers and
// writes its snapshot to PATH, printing writeSnapshot's result as JSON. With
// LIMIT, the process's file size limit (RLIMIT_FSIZE) is lowered to LIMIT
// bytes just before the write, so the write fails midway with EFBIG: what an
// in-process test cannot arrange as root (a read-only directory does not stop
// root). The limit is set here, not with `ulimit` around the child, because
// the TypeScript loader writes its own cache files at start.
import koffi from 'koffi';
import { DnsCache } from '../../src/cache/cache.js';
import { writeSnapshot } from '../../src/cache/snapshot-file.js';
import { CACHE_COUNTERS } from '../../src/cache/stats.js';
import { ManualClock } from '../../src/clock.js';
import { scanAnswer } from '../../src/dns/answer.js';
import { parseQuery } from '../../src/dns/query.js';
import { silentLogger } from '../../src/log.js';
import { Counters } from '../../src/stats/counters.js';
import { a, answer, query } from '../kit/dns.js';

const [path, n, limit] = process.argv.slice(2);
if (path === undefined) throw new Error('usage: snapshot-writer PATH [N [LIMIT]]');
const count = Number(n ?? 1000);
const clock = new ManualClock();
const cache = new DnsCache(
  { positiveCapacity: count, negativeCapacity: 16, maxBytes: 1 << 26, successTtl: 30, denialTtl: 5, minHits: 3, percent: 10, staleMs: 0 },
  new Counters(CACHE_COUNTERS),
);
for (let i = 0; i < count; i++) {
  const name = `child-${i}.example`;
  const up = answer(name, [a(name, '192.0.2.7', 30)]);
  cache.insert(parseQuery(query({ name })).key, up, scanAnswer(up)!, clock.now());
}
if (limit !== undefined) {
  // A handled SIGXFSZ turns "killed at the limit" into a write failing with EFBIG.
  process.on('SIGXFSZ', () => {});
  const RLIMIT_FSIZE = 1;
  const setrlimit = koffi.load('libc.so.6').func('int setrlimit(int resource, const void *rlim)') as (r: number, rlim: BigUint64Array) => number;
  // struct rlimit { rlim_cur, rlim_max }: lower the soft limit, keep the hard one (RLIM_INFINITY).
  if (setrlimit(RLIMIT_FSIZE, new BigUint64Array([BigInt(limit), 0xffffffffffffffffn])) !== 0) throw new Error(`setrlimit: errno ${koffi.errno()}`);
}
const result = await writeSnapshot(cache, path, clock, silentLogger);
process.stdout.write(JSON.stringify(result) + '\n');
