/**
 * A diagnostic, off unless NODELOCAL_HEAP_TRACE names a file: what a batched
 * worker allocates and collects, in figures that do not depend on timing.
 * While the worker runs, V8's GCProfiler records each of its collections
 * (kind, heap before and after) and its sampling heap profiler records
 * where it allocates, garbage included (objects freed by minor and major
 * GCs are kept in the profile). When the worker leaves its loop it writes
 *
 *   <file>.<pid>.w<index>.json         the collections counted by kind (and
 *                                      their time, for reference only), the
 *                                      bytes allocated (heap growth between
 *                                      collections, summed), the worker's
 *                                      counters (datagrams, misses, ...) and
 *                                      the top allocation sites by bytes
 *   <file>.<pid>.w<index>.heapprofile  the whole sampling profile (Chrome
 *                                      DevTools, Memory tab, loads it)
 *
 * so bytes per miss and collections per 10,000 misses are the JSON's
 * figures divided by its counters (bench/worker-garbage.ts runs the loads
 * and does the sums).
 *
 * Off, it costs the loop nothing: one null check when the loop starts and
 * one when it ends, and the thread never loads node:inspector. On,
 * sampling (one sample per SAMPLE_BYTES allocated on average) slows
 * allocation somewhat; the counts of bytes and collections do not depend
 * on it.
 */
import { writeFileSync } from 'node:fs';
import type { Session } from 'node:inspector';
import { GCProfiler, getHeapStatistics } from 'node:v8';

/** Where the trace goes ('' : off), as the thread saw it when it started. */
const TRACE_FILE = process.env['NODELOCAL_HEAP_TRACE'] ?? '';
/** node:inspector only when tracing: loaded, it costs every worker ~0.1 MiB. */
const inspector = TRACE_FILE === '' ? null : await import('node:inspector');

/** Mean bytes between two samples: one sample per few misses, which over a flood's 100,000 places every site of 50 bytes a miss or more, and a profile the worker writes in well under the second its close waits. */
const SAMPLE_BYTES = 4096;
/** Sites listed in the JSON summary. */
const TOP_SITES = 40;

interface GcStat {
  readonly gcType: string;
  readonly cost: number;
  readonly beforeGC: { readonly heapStatistics: { readonly usedHeapSize: number } };
  readonly afterGC: { readonly heapStatistics: { readonly usedHeapSize: number } };
}

interface ProfileNode {
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number; readonly columnNumber: number };
  readonly selfSize: number;
  readonly children: readonly ProfileNode[];
}

export class HeapTrace {
  readonly #file: string;
  readonly #session: Session;
  readonly #gc: GCProfiler;
  readonly #usedAtStart: number;

  /** The trace NODELOCAL_HEAP_TRACE asks for, or null (the usual case). */
  static fromEnv(worker: number): HeapTrace | null {
    return inspector === null ? null : new HeapTrace(`${TRACE_FILE}.${process.pid}.w${worker}`, new inspector.Session());
  }

  private constructor(file: string, session: Session) {
    this.#file = file;
    this.#session = session;
    this.#session.connect();
    // A session on this thread answers inside post(): the sampler runs from here on.
    this.#session.post('HeapProfiler.enable');
    this.#session.post('HeapProfiler.startSampling', { samplingInterval: SAMPLE_BYTES, includeObjectsCollectedByMinorGC: true, includeObjectsCollectedByMajorGC: true });
    this.#gc = new GCProfiler();
    this.#usedAtStart = getHeapStatistics().used_heap_size;
    this.#gc.start();
  }

  /** Stops both recorders and writes the files; `counters`: the worker's counters by name, for the per-miss sums. */
  write(counters: Record<string, number>): void {
    const usedAtEnd = getHeapStatistics().used_heap_size;
    const stats = (this.#gc.stop()?.statistics ?? []) as unknown as GcStat[];
    let profile: { head: ProfileNode } | null = null;
    this.#session.post('HeapProfiler.getSamplingProfile', (err, r) => {
      if (err === null) profile = (r as { profile: { head: ProfileNode } }).profile;
    });
    this.#session.post('HeapProfiler.stopSampling');
    this.#session.disconnect();
    // Bytes allocated: what the heap grew by between one collection's end and the next one's start, summed.
    let allocated = 0;
    let used = this.#usedAtStart;
    const gcs: Record<string, { count: number; ms: number }> = {};
    for (const s of stats) {
      allocated += s.beforeGC.heapStatistics.usedHeapSize - used;
      used = s.afterGC.heapStatistics.usedHeapSize;
      const g = (gcs[s.gcType] ??= { count: 0, ms: 0 });
      g.count++;
      g.ms += s.cost / 1000;
    }
    allocated += usedAtEnd - used;
    const sites = profile === null ? [] : topSites(profile as { head: ProfileNode });
    writeFileSync(`${this.#file}.json`, JSON.stringify({ allocatedBytes: allocated, gcs, counters, sampleBytes: SAMPLE_BYTES, sites }, null, 1));
    if (profile !== null) writeFileSync(`${this.#file}.heapprofile`, JSON.stringify(profile));
  }
}

/** Self bytes per allocating site (function, file:line:column), largest first, with the chain of up to three callers that led there most. */
function topSites(p: { head: ProfileNode }): { site: string; bytes: number; callers: string }[] {
  const bySite = new Map<string, { bytes: number; callers: Map<string, number> }>();
  const frame = (n: ProfileNode): string => `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.replace(/^.*\/(dist|node:)/, '$1')}:${n.callFrame.lineNumber + 1}:${n.callFrame.columnNumber + 1}`;
  const walk = (n: ProfileNode, path: string[]): void => {
    const here = frame(n);
    if (n.selfSize > 0) {
      const s = bySite.get(here) ?? { bytes: 0, callers: new Map<string, number>() };
      s.bytes += n.selfSize;
      const via = path.slice(-3).join(' < ');
      s.callers.set(via, (s.callers.get(via) ?? 0) + n.selfSize);
      bySite.set(here, s);
    }
    const next = [...path, n.callFrame.functionName || '(anonymous)'];
    for (const c of n.children) walk(c, next);
  };
  walk(p.head, []);
  return [...bySite.entries()]
    .sort((a, b) => b[1].bytes - a[1].bytes)
    .slice(0, TOP_SITES)
    .map(([site, s]) => ({ site, bytes: s.bytes, callers: [...s.callers.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? '' }));
}
