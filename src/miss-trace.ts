/**
 * A diagnostic of where a cluster miss spends its time inside the agent,
 * hop by hop, for bench runs: off unless the environment variable
 * NODELOCAL_MISS_TRACE names a file, and then free of cost when off (each
 * site is one test of a module constant). When on, the main thread appends
 * one line per interval to that file with each segment's count, p50 and p99
 * in microseconds, then starts the interval afresh:
 *
 *   worker.turn   the worker's recvmmsg returned ─► its report posted (batched)
 *   turn.complete the part of worker.turn before receiving: messages taken and completions applied
 *   post.report   the report posted ─► the main thread's handler runs (thread hop)
 *   report.write  the report handled ─► the TCP pool's write() returned
 *   stage.write   a query staged in the pool ─► its write() returned
 *   write.call    the pool's write() call itself (loopback: the receiver's side of TCP runs in it)
 *   write.data    its write() returned ─► its answer's 'data' event (the upstream's round trip)
 *   data.handled  'data' event ─► the handler returned (decode, resolver, dgram send)
 *   data.sent     'data' event ─► the answers sent with sendmmsg (batched direct answers)
 *   done.post     the completions posted to the worker (batched, before the direct answers leave)
 *   send.call     the direct answers' sendmmsg calls
 *   worker.slept  share of reported turns that followed a sleep in poll, in % (the mean column)
 *
 * Times are CLOCK_MONOTONIC (process.hrtime), the same clock in every thread.
 */
import { appendFileSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';

const FILE = process.env['NODELOCAL_MISS_TRACE'] ?? '';
const INTERVAL_MS = 1000;

/** True when tracing: the only thing a hot path tests. */
export const MISS_TRACE: boolean = FILE !== '';

/** Microseconds on CLOCK_MONOTONIC (comparable across threads). */
export function traceNow(): number {
  return Number(process.hrtime.bigint()) / 1000;
}

export const SEGMENTS = [
  'worker.turn', 'turn.complete', 'post.report', 'report.write', 'stage.write', 'write.call', 'write.data', 'data.handled', 'data.sent', 'done.post', 'send.call', 'worker.slept',
] as const;
export type Segment = (typeof SEGMENTS)[number];

const samples = new Map<Segment, number[]>(SEGMENTS.map((s) => [s, []]));

/** Main thread only (the worker sends its stamps in its report). */
export function traceRecord(segment: Segment, us: number): void {
  samples.get(segment)!.push(us);
}

/** Main-thread marks shared between sites: when the last worker report and the last TCP 'data' event were handled. */
export const traceMarks = { reportAt: 0, dataAt: 0 };

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

function dump(): void {
  const parts: string[] = [];
  for (const s of SEGMENTS) {
    const v = samples.get(s)!;
    if (v.length === 0) continue;
    v.sort((a, b) => a - b);
    let sum = 0;
    for (const x of v) sum += x;
    parts.push(`${s} n=${v.length} mean=${(sum / v.length).toFixed(0)} p50=${pct(v, 0.5).toFixed(0)} p99=${pct(v, 0.99).toFixed(0)}`);
    v.length = 0;
  }
  if (parts.length > 0) appendFileSync(FILE, `${new Date().toISOString()} ${parts.join(' | ')}\n`);
}

if (MISS_TRACE && isMainThread) setInterval(dump, INTERVAL_MS).unref();

/** A batched worker's report arrived (its stamps: protocol.ts WorkerReport.trace). */
export function traceReport(t: readonly number[]): void {
  const now = traceNow();
  traceRecord('worker.turn', t[1]! - t[0]!);
  traceRecord('turn.complete', t[3]! - t[0]!);
  traceRecord('post.report', now - t[1]!);
  traceRecord('worker.slept', t[2]! * 100);
  traceMarks.reportAt = now;
}
