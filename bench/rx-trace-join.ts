/**
 * `node dist/bench/rx-trace-join.js AGENT_TRACE_PREFIX PROBE_DIR`: where a
 * hit's time went, query by query. A diagnostic for the isolation bench:
 * run it with NODELOCAL_RX_TRACE=PREFIX (the agent's workers record every
 * datagram: src/server/batched/rx-trace.ts) and HIT_PROBE_TRACE=DIR (the
 * probe records its sends and receives: hit-probe.ts), then join here on
 * (client port, DNS id). Every time is CLOCK_REALTIME, microseconds.
 *
 * Per probe run (in the order they ran: warm-up pass, alone, beside the
 * flood) it splits each answered query's round trip into
 *
 *   send   the probe's send call to the kernel's receive timestamp
 *   wake   the timestamp to the start of the worker turn that read it
 *          (0 when it arrived during that turn): the worker asleep in poll,
 *          or busy with the turn before
 *   turn   the turn's start (or the timestamp, if later) to its recvmmsg:
 *          completions, messages and the other sockets first
 *   work   recvmmsg to the turn's sendmmsg return: the batch's answers
 *   back   the sendmmsg return to the probe's receive callback: loopback
 *          delivery, the probe's wake-up and its event loop
 *
 * and prints their percentiles over all queries and their means over the
 * slowest 1% (the p99's queries), plus the size of the batch a hit came in.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const W = 5;

interface WorkerRow {
  readonly kernel: number;
  readonly turn: number;
  readonly rx: number;
  readonly tx: number;
  readonly batch: number;
}

function f64(file: string): Float64Array {
  const b = readFileSync(file);
  return new Float64Array(b.buffer, b.byteOffset, Math.floor(b.length / 8));
}

/** Every worker row by key (the last one wins: keys repeat only across runs far apart, and probe ports differ). */
function loadWorker(prefix: string): Map<number, WorkerRow> {
  const dir = path.dirname(prefix);
  const base = path.basename(prefix);
  const out = new Map<number, WorkerRow>();
  for (const f of readdirSync(dir).filter((n) => n.startsWith(`${base}.`) && !n.endsWith('.turns'))) {
    const r = f64(path.join(dir, f));
    const rows = r.length / W;
    // Batch sizes: consecutive rows with one recvmmsg return time.
    let i = 0;
    while (i < rows) {
      let j = i + 1;
      while (j < rows && r[j * W + 2] === r[i * W + 2]) j++;
      for (let k = i; k < j; k++) {
        out.set(r[k * W + 4]!, { kernel: r[k * W]!, turn: r[k * W + 1]!, rx: r[k * W + 2]!, tx: r[k * W + 3]!, batch: j - i });
      }
      i = j;
    }
  }
  return out;
}

const PARTS = ['send', 'wake', 'turn', 'work', 'back'] as const;

function pct(sorted: Float64Array, p: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

const fmt = (x: number): string => (Number.isFinite(x) ? (Math.abs(x) >= 10_000 ? `${(x / 1000).toFixed(1)}ms` : `${Math.round(x)}us`) : '-');

export function joinReport(agentPrefix: string, probeDir: string): string {
  const worker = loadWorker(agentPrefix);
  const files = readdirSync(probeDir).filter((n) => n.startsWith('probe-') && n.endsWith('.bin')).sort((a, b) => Number(a.split('-')[1]) - Number(b.split('-')[1]));
  const lines: string[] = [];
  for (const f of files) {
    const p = f64(path.join(probeDir, f));
    const n = p.length / 3;
    const rtt: number[] = [];
    const parts: number[][] = [];
    const batch: number[] = [];
    let unmatched = 0;
    for (let q = 0; q < n; q++) {
      const key = p[q * 3]!;
      const sent = p[q * 3 + 1]!;
      const got = p[q * 3 + 2]!;
      if (!Number.isFinite(got)) continue;
      const w = worker.get(key);
      if (w === undefined || !Number.isFinite(w.kernel)) {
        unmatched++;
        continue;
      }
      const start = Math.max(w.kernel, w.turn);
      rtt.push(got - sent);
      parts.push([w.kernel - sent, Math.max(0, w.turn - w.kernel), w.rx - start, w.tx - w.rx, got - w.tx]);
      batch.push(w.batch);
    }
    lines.push(`${f}: ${n} sent, ${rtt.length} answered and joined, ${unmatched} answered but not in the agent's trace`);
    if (rtt.length === 0) continue;
    const order = rtt.map((_, i) => i).sort((a, b) => rtt[a]! - rtt[b]!);
    const sortedRtt = Float64Array.from(order.map((i) => rtt[i]!));
    lines.push(`  round trip: p50 ${fmt(pct(sortedRtt, 0.5))}  p99 ${fmt(pct(sortedRtt, 0.99))}  p99.9 ${fmt(pct(sortedRtt, 0.999))}  max ${fmt(sortedRtt[sortedRtt.length - 1]!)}`);
    const tail = order.slice(Math.floor(order.length * 0.99));
    for (let k = 0; k < PARTS.length; k++) {
      const all = Float64Array.from(parts.map((x) => x[k]!)).sort();
      const tailMean = tail.reduce((s, i) => s + parts[i]![k]!, 0) / tail.length;
      const biggest = tail.filter((i) => parts[i]!.indexOf(Math.max(...parts[i]!)) === k).length;
      lines.push(`  ${PARTS[k]!.padEnd(5)} p50 ${fmt(pct(all, 0.5)).padStart(7)}  p99 ${fmt(pct(all, 0.99)).padStart(7)}  max ${fmt(all[all.length - 1]!).padStart(7)}  | slowest 1%: mean ${fmt(tailMean).padStart(7)}, the largest part in ${biggest}/${tail.length}`);
    }
    const sb = Float64Array.from(batch).sort();
    const tailBatch = tail.reduce((s, i) => s + batch[i]!, 0) / tail.length;
    lines.push(`  batch the hit came in: p50 ${pct(sb, 0.5)}, p99 ${pct(sb, 0.99)}, slowest 1% mean ${tailBatch.toFixed(1)}`);
  }
  return lines.join('\n');
}

if (path.resolve(process.argv[1] ?? '') === fileURLToPath(import.meta.url)) {
  const [prefix, dir] = process.argv.slice(2);
  if (prefix === undefined || dir === undefined) {
    process.stderr.write('usage: rx-trace-join AGENT_TRACE_PREFIX PROBE_DIR\n');
    process.exit(2);
  }
  console.log(joinReport(prefix, dir));
}
