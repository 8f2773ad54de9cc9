/** Number formatting shared by the report and the plot, and the choice of the rate a summary quotes. */
import type { BenchResults } from './results.js';

export function fmtUs(us: number | null | undefined): string {
  if (us === null || us === undefined) return '-';
  if (us >= 100_000) return `${(us / 1000).toFixed(0)} ms`;
  if (us >= 1000) return `${(us / 1000).toFixed(2)} ms`;
  return `${Math.round(us)} µs`;
}

export function fmtQps(q: number | null | undefined): string {
  if (q === null || q === undefined) return '-';
  if (q >= 10_000) return `${(q / 1000).toFixed(1)}k`;
  return `${Math.round(q)}`;
}

/**
 * The rate the summary quotes for a workload: the highest offered rate at
 * which no target saturated and the generator kept up, else the lowest.
 */
export function summaryRate(res: BenchResults, workload: string): number | null {
  const open = res.runs.filter((r) => r.workload === workload && r.mode === 'open');
  const rates = [...new Set(open.map((r) => r.offeredQps ?? 0))].sort((a, b) => a - b);
  if (rates.length === 0) return null;
  const names = new Set(open.map((r) => r.target));
  let best: number | null = null;
  for (const rate of rates) {
    const at = open.filter((r) => r.offeredQps === rate);
    if (at.length === names.size && at.every((r) => !r.saturated && !r.generatorBound)) best = rate;
  }
  return best ?? rates[0] ?? null;
}

