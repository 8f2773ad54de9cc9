/**
 * Optional max-throughput driver: DNS-OARC dnsperf (C, multi-threaded),
 * for when the Node generator would be the bottleneck. dnsperf only reports
 * throughput, losses, rcodes and mean/min/max latency, and checks no answer:
 * an rcode the data file's names cannot have is counted wrong, the rest are
 * taken as right (their records unchecked). podmix is flattened (the
 * expansion sequence becomes independent queries) because dnsperf cannot
 * make a query wait for another.
 */
import { execFile } from 'node:child_process';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import type { Endpoint } from './loadgen.js';
import type { DnsperfStats } from './results.js';
import { qtypeName, renderName } from './wire.js';
import type { Workload } from './workloads.js';

/** Lines of a data file of repeated names: dnsperf loops over it, and asks again what such a workload asks again anyway. */
export const LOOPED_LINES = 200_000;
/**
 * Queries/s dnsperf may get through on loopback, at most: a data file of unique names holds this many per
 * second of the run, so that it lasts; dnsperf asks each once and stops at its end (a name asked again is a hit).
 */
export const DNSPERF_CEILING_QPS = 200_000;
/** About 50 bytes a line: the file of unique names is capped, and a faster run stops before its limit. */
export const MAX_UNIQUE_LINES = 3_000_000;
/** Lines rendered before they are written: the file is streamed, not held whole. */
const WRITE_CHUNK = 10_000;

/** Rcodes by number, as dnsperf names them in its "Response codes" line. */
export const RCODE_NAMES: readonly string[] = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'];

export function rcodeName(rcode: number): string {
  return RCODE_NAMES[rcode] ?? `RCODE${rcode}`;
}

export interface DataFile {
  readonly lines: number;
  /** Some of its names are unique: dnsperf must run through it once (-n 1), not loop. */
  readonly unique: boolean;
  /** The rcodes the zone gives the file's names: dnsperf checks no answer, so any other rcode it counts is a wrong answer. */
  readonly expectedRcodes: ReadonlySet<string>;
}

/**
 * Writes a dnsperf data file ("name type" per line) drawn from the workload: `size.looped` lines, or
 * `size.unique` once the workload has drawn a unique name.
 */
export function writeDataFile(file: string, wl: Workload, size: { readonly looped: number; readonly unique: number }, nextUnique: () => number): DataFile {
  const expectedRcodes = new Set<string>();
  let unique = false;
  let lines = 0;
  let chunk: string[] = [];
  const fd = openSync(file, 'w');
  try {
    while (lines < Math.max(1, unique ? size.unique : size.looped)) {
      const plan = wl.next();
      unique ||= plan.unique;
      const u = plan.unique ? nextUnique() : 0;
      for (const step of plan.steps) {
        for (const t of step) {
          chunk.push(`${renderName(t, u)} ${qtypeName(t.qtype)}\n`);
          expectedRcodes.add(rcodeName(t.rcode));
          lines++;
        }
      }
      if (chunk.length >= WRITE_CHUNK) {
        writeFileSync(fd, chunk.join(''));
        chunk = [];
      }
    }
    writeFileSync(fd, chunk.join(''));
  } finally {
    closeSync(fd);
  }
  return { lines, unique, expectedRcodes };
}

/** dnsperf's responses split by the rcodes the data file expects: right ones, and the others (wrong answers) by rcode. */
export function splitByRcode(d: DnsperfStats, expected: ReadonlySet<string>): { right: number; wrong: Record<string, number> } {
  let right = 0;
  const wrong: Record<string, number> = {};
  for (const [rcode, n] of Object.entries(d.rcodes)) {
    if (expected.has(rcode)) right += n;
    else if (n > 0) wrong[rcode] = n;
  }
  return { right, wrong };
}

export function parseDnsperfOutput(text: string, command: string): DnsperfStats {
  const num = (re: RegExp): number | null => {
    const m = re.exec(text);
    return m?.[1] === undefined ? null : Number(m[1]);
  };
  const sent = num(/Queries sent:\s+([0-9]+)/);
  const completed = num(/Queries completed:\s+([0-9]+)/);
  const lost = num(/Queries lost:\s+([0-9]+)/);
  const qps = num(/Queries per second:\s+([0-9.]+)/);
  const lat = /Average Latency \(s\):\s+([0-9.]+)\s+\(min\s+([0-9.]+),\s+max\s+([0-9.]+)\)/.exec(text);
  if (sent === null || completed === null || qps === null || lat === null) {
    throw new Error(`could not read dnsperf's statistics:\n${text.slice(-1500)}`);
  }
  const rcodes: Record<string, number> = {};
  const rc = /Response codes:\s+(.+)/.exec(text)?.[1] ?? '';
  for (const m of rc.matchAll(/([A-Z]+)\s+([0-9]+)/g)) rcodes[m[1] as string] = Number(m[2]);
  const sd = num(/Latency StdDev \(s\):\s+([0-9.]+)/);
  const runTime = num(/Run time \(s\):\s+([0-9.]+)/);
  const ended = /Testing complete \(([^)]+)\)/.exec(text)?.[1] ?? null;
  return {
    queriesSent: sent,
    queriesCompleted: completed,
    queriesLost: lost ?? sent - completed,
    qps,
    avgLatencyUs: Number(lat[1]) * 1e6,
    minLatencyUs: Number(lat[2]) * 1e6,
    maxLatencyUs: Number(lat[3]) * 1e6,
    stddevUs: sd === null ? null : sd * 1e6,
    rcodes,
    runTimeS: runTime,
    ended,
    command,
  };
}

export interface DnsperfRun {
  readonly dnsperf: string;
  readonly target: Endpoint;
  readonly dataFile: string;
  readonly durationS: number;
  /** Stop at the end of the data file (-n 1) instead of starting it over. */
  readonly once: boolean;
  readonly outstanding: number;
  readonly timeoutS: number;
  readonly pin: string | null;
  readonly signal?: AbortSignal;
}

export function runDnsperf(r: DnsperfRun): Promise<DnsperfStats> {
  const args = [
    '-s', r.target.host,
    '-p', String(r.target.port),
    '-d', r.dataFile,
    '-l', String(r.durationS),
    '-q', String(r.outstanding),
    '-t', String(r.timeoutS),
    '-c', String(Math.min(r.outstanding, 16)),
    ...(r.once ? ['-n', '1'] : []),
  ];
  const argv = r.pin === null ? [r.dnsperf, ...args] : ['taskset', '-c', r.pin, r.dnsperf, ...args];
  const command = argv.join(' ');
  return new Promise((resolve, reject) => {
    const opts = { timeout: (r.durationS + 30) * 1000, maxBuffer: 4 << 20, ...(r.signal === undefined ? {} : { signal: r.signal }) };
    execFile(argv[0] as string, argv.slice(1), opts, (err, stdout, stderr) => {
      if (err !== null && !String(stdout).includes('Queries per second')) {
        reject(new Error(`dnsperf failed: ${err.message}\n${String(stderr).slice(-1000)}`));
        return;
      }
      try {
        resolve(parseDnsperfOutput(String(stdout), command));
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  });
}
