/**
 * The results plot, as hand-written SVG (no dependencies): one column per
 * workload; the top row shows the latency percentiles of each target at the
 * summary rate, the bottom row p50 (dashed) and p99 (solid) against the
 * offered rate (fallback: per phase, the phases with kube-dns down shaded).
 * Both latency axes are logarithmic. Saturated runs are drawn
 * with a cross.
 */
import { fmtQps, summaryRate } from './format.js';
import type { BenchResults, RunRecord } from './results.js';

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];
const PANEL_W = 330;
const PANEL_H = 250;
const M = { left: 62, right: 16, top: 34, bottom: 44 };
const HEADER_H = 70;
const PCTS = [
  { label: 'p50', key: 'p50' },
  { label: 'p90', key: 'p90' },
  { label: 'p99', key: 'p99' },
  { label: 'p99.9', key: 'p999' },
  { label: 'max', key: 'max' },
] as const;

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

function n(v: number): string {
  return Number.isFinite(v) ? (Math.round(v * 10) / 10).toString() : '0';
}

function usLabel(us: number): string {
  if (us >= 1e6) return `${us / 1e6}s`;
  if (us >= 1e3) return `${us / 1e3}ms`;
  return `${us}µs`;
}

class LogAxis {
  readonly lo: number;
  readonly hi: number;
  constructor(values: readonly number[], readonly a: number, readonly b: number, pad: boolean) {
    const pos = values.filter((v) => v > 0 && Number.isFinite(v));
    let lo = pos.length === 0 ? 1 : Math.min(...pos);
    let hi = pos.length === 0 ? 1000 : Math.max(...pos);
    if (pad) {
      lo = Math.pow(10, Math.floor(Math.log10(lo)));
      hi = Math.pow(10, Math.ceil(Math.log10(hi)));
    }
    if (hi <= lo) {
      lo = lo / 2;
      hi = hi * 2;
    }
    this.lo = lo;
    this.hi = hi;
  }
  map(v: number): number {
    const c = Math.min(Math.max(v, this.lo), this.hi);
    return this.a + ((Math.log10(c) - Math.log10(this.lo)) / (Math.log10(this.hi) - Math.log10(this.lo))) * (this.b - this.a);
  }
  decades(): number[] {
    const out: number[] = [];
    for (let p = Math.ceil(Math.log10(this.lo) - 1e-9); p <= Math.floor(Math.log10(this.hi) + 1e-9); p++) out.push(Math.pow(10, p));
    return out;
  }
  niceTicks(): number[] {
    const out: number[] = [];
    for (let p = Math.floor(Math.log10(this.lo)); p <= Math.ceil(Math.log10(this.hi)); p++) {
      for (const m of [1, 2, 5]) {
        const v = m * Math.pow(10, p);
        if (v >= this.lo * 0.999 && v <= this.hi * 1.001) out.push(v);
      }
    }
    return out;
  }
}

function marker(x: number, y: number, color: string, saturated: boolean): string {
  if (saturated) {
    return `<path d="M${n(x - 4)},${n(y - 4)}L${n(x + 4)},${n(y + 4)}M${n(x - 4)},${n(y + 4)}L${n(x + 4)},${n(y - 4)}" stroke="${color}" stroke-width="2"/>`;
  }
  return `<circle cx="${n(x)}" cy="${n(y)}" r="3" fill="${color}"/>`;
}

function polyline(points: ReadonlyArray<readonly [number, number]>, color: string, dashed: boolean): string {
  if (points.length < 2) return '';
  return `<polyline fill="none" stroke="${color}" stroke-width="1.8"${dashed ? ' stroke-dasharray="5,4"' : ''} points="${points.map(([x, y]) => `${n(x)},${n(y)}`).join(' ')}"/>`;
}

function frame(x0: number, y0: number, title: string): string[] {
  return [
    `<rect x="${n(x0)}" y="${n(y0)}" width="${PANEL_W}" height="${PANEL_H}" fill="#ffffff" stroke="#dddddd"/>`,
    `<text x="${n(x0 + PANEL_W / 2)}" y="${n(y0 + 20)}" text-anchor="middle" font-size="12" font-weight="bold">${esc(title)}</text>`,
  ];
}

function yAxis(axis: LogAxis, x0: number, x1: number): string[] {
  const out: string[] = [];
  for (const v of axis.decades()) {
    const y = axis.map(v);
    out.push(`<line x1="${n(x0)}" y1="${n(y)}" x2="${n(x1)}" y2="${n(y)}" stroke="#eeeeee"/>`);
    out.push(`<text x="${n(x0 - 6)}" y="${n(y + 4)}" text-anchor="end" font-size="10">${esc(usLabel(v))}</text>`);
  }
  out.push(`<line x1="${n(x0)}" y1="${n(axis.a)}" x2="${n(x0)}" y2="${n(axis.b)}" stroke="#888888"/>`);
  return out;
}

function percentilePanel(res: BenchResults, workload: string, targets: readonly string[], x0: number, y0: number): string[] {
  const rate = summaryRate(res, workload);
  const runs = targets.map((t) => res.runs.find((r) => r.workload === workload && r.target === t && r.mode === 'open' && r.offeredQps === rate));
  const out = frame(x0, y0, `${workload}: latency percentiles at ${fmtQps(rate)} q/s`);
  const values = runs.flatMap((r) => (r?.latencyUs === null || r === undefined ? [] : PCTS.map((p) => r.latencyUs?.[p.key] ?? 0)));
  const px0 = x0 + M.left;
  const px1 = x0 + PANEL_W - M.right;
  if (values.length === 0) {
    out.push(`<text x="${n(x0 + PANEL_W / 2)}" y="${n(y0 + PANEL_H / 2)}" text-anchor="middle" font-size="11" fill="#888888">no open-loop data</text>`);
    return out;
  }
  const y = new LogAxis(values, y0 + PANEL_H - M.bottom, y0 + M.top, true);
  out.push(...yAxis(y, px0, px1));
  const xs = PCTS.map((_, i) => px0 + ((i + 0.5) * (px1 - px0)) / PCTS.length);
  PCTS.forEach((p, i) => out.push(`<text x="${n(xs[i] ?? 0)}" y="${n(y0 + PANEL_H - M.bottom + 16)}" text-anchor="middle" font-size="10">${p.label}</text>`));
  out.push(`<line x1="${n(px0)}" y1="${n(y.a)}" x2="${n(px1)}" y2="${n(y.a)}" stroke="#888888"/>`);
  runs.forEach((r, ti) => {
    if (r === undefined || r.latencyUs === null) return;
    const color = COLORS[ti % COLORS.length] as string;
    const pts = PCTS.map((p, i) => [xs[i] ?? 0, y.map(r.latencyUs?.[p.key] ?? 0)] as const);
    out.push(polyline(pts, color, false));
    for (const [x, yy] of pts) out.push(marker(x, yy, color, r.saturated));
  });
  return out;
}

function ratePanel(res: BenchResults, workload: string, targets: readonly string[], x0: number, y0: number): string[] {
  const out = frame(x0, y0, `${workload}: latency vs offered rate`);
  const open = res.runs.filter((r) => r.workload === workload && r.mode === 'open' && r.latencyUs !== null && r.offeredQps !== null);
  const px0 = x0 + M.left;
  const px1 = x0 + PANEL_W - M.right;
  if (open.length === 0) {
    out.push(`<text x="${n(x0 + PANEL_W / 2)}" y="${n(y0 + PANEL_H / 2)}" text-anchor="middle" font-size="11" fill="#888888">no open-loop data</text>`);
    return out;
  }
  const y = new LogAxis(open.flatMap((r) => [r.latencyUs?.p50 ?? 0, r.latencyUs?.p99 ?? 0]), y0 + PANEL_H - M.bottom, y0 + M.top, true);
  const rates = open.map((r) => r.offeredQps ?? 1);
  const x = new LogAxis([Math.min(...rates) / 1.25, Math.max(...rates) * 1.25], px0, px1, false);
  out.push(...yAxis(y, px0, px1));
  // Label the rates actually offered when there are few, else round values.
  const distinct = [...new Set(rates)].sort((a, b) => a - b);
  for (const v of distinct.length <= 6 ? distinct : x.niceTicks()) {
    const xx = x.map(v);
    out.push(`<line x1="${n(xx)}" y1="${n(y.a)}" x2="${n(xx)}" y2="${n(y.a + 4)}" stroke="#888888"/>`);
    out.push(`<text x="${n(xx)}" y="${n(y0 + PANEL_H - M.bottom + 16)}" text-anchor="middle" font-size="10">${esc(fmtQps(v))}</text>`);
  }
  out.push(`<line x1="${n(px0)}" y1="${n(y.a)}" x2="${n(px1)}" y2="${n(y.a)}" stroke="#888888"/>`);
  out.push(`<text x="${n((px0 + px1) / 2)}" y="${n(y0 + PANEL_H - 8)}" text-anchor="middle" font-size="10">offered queries/s (p99 solid, p50 dashed)</text>`);
  targets.forEach((t, ti) => {
    const color = COLORS[ti % COLORS.length] as string;
    const mine: RunRecord[] = open.filter((r) => r.target === t).sort((a, b) => (a.offeredQps ?? 0) - (b.offeredQps ?? 0));
    for (const key of ['p99', 'p50'] as const) {
      const pts = mine.map((r) => [x.map(r.offeredQps ?? 1), y.map(r.latencyUs?.[key] ?? 0)] as const);
      out.push(polyline(pts, color, key === 'p50'));
      mine.forEach((r, i) => {
        const pt = pts[i];
        if (pt !== undefined) out.push(marker(pt[0], pt[1], color, r.saturated));
      });
    }
  });
  return out;
}

/** Fallback runs: p50 (dashed) and p99 (solid) per phase, the phases with kube-dns down shaded. */
function phasePanel(res: BenchResults, workload: string, targets: readonly string[], x0: number, y0: number): string[] {
  const out = frame(x0, y0, `${workload}: latency per phase (kube-dns down shaded)`);
  const runs = res.runs.filter((r) => r.workload === workload && r.fallback !== null);
  const phases = runs[0]?.fallback?.phases ?? [];
  const px0 = x0 + M.left;
  const px1 = x0 + PANEL_W - M.right;
  const values = runs.flatMap((r) => (r.fallback?.phases ?? []).flatMap((p) => (p.latencyUs.count > 0 ? [p.latencyUs.p50, p.latencyUs.p99] : [])));
  if (phases.length === 0 || values.length === 0) {
    out.push(`<text x="${n(x0 + PANEL_W / 2)}" y="${n(y0 + PANEL_H / 2)}" text-anchor="middle" font-size="11" fill="#888888">no phase data</text>`);
    return out;
  }
  const y = new LogAxis(values, y0 + PANEL_H - M.bottom, y0 + M.top, true);
  const w = (px1 - px0) / phases.length;
  phases.forEach((p, i) => {
    const xa = px0 + i * w;
    if (p.state === 'down') out.push(`<rect x="${n(xa)}" y="${n(y.b)}" width="${n(w)}" height="${n(y.a - y.b)}" fill="#eeeeee"/>`);
    out.push(`<text x="${n(xa + w / 2)}" y="${n(y0 + PANEL_H - M.bottom + 16)}" text-anchor="middle" font-size="10">${esc(`${i + 1}: ${p.state} ${p.durationS}s`)}</text>`);
  });
  out.push(...yAxis(y, px0, px1));
  out.push(`<line x1="${n(px0)}" y1="${n(y.a)}" x2="${n(px1)}" y2="${n(y.a)}" stroke="#888888"/>`);
  out.push(`<text x="${n((px0 + px1) / 2)}" y="${n(y0 + PANEL_H - 8)}" text-anchor="middle" font-size="10">phase (p99 solid, p50 dashed; × = &gt;1% failed)</text>`);
  targets.forEach((t, ti) => {
    const r = runs.find((x) => x.target === t);
    if (r === undefined || r.fallback === null) return;
    const color = COLORS[ti % COLORS.length] as string;
    const ps = r.fallback.phases.filter((p) => p.latencyUs.count > 0);
    for (const key of ['p99', 'p50'] as const) {
      const pts = ps.map((p) => [px0 + (p.index + 0.5) * w, y.map(p.latencyUs[key])] as const);
      out.push(polyline(pts, color, key === 'p50'));
      ps.forEach((p, i) => {
        const pt = pts[i];
        const failed = p.queries.timeouts + p.queries.wrong + p.queries.servfail > 0.01 * Math.max(1, p.queries.sent);
        if (pt !== undefined) out.push(marker(pt[0], pt[1], color, failed));
      });
    }
  });
  return out;
}

export function renderPlot(res: BenchResults): string {
  const wls = [...new Set(res.runs.map((r) => r.workload))];
  const targets = res.targets.map((t) => t.name);
  const cols = Math.max(1, wls.length);
  const width = Math.max(cols * (PANEL_W + 10) + 10, 780);
  const height = HEADER_H + 2 * (PANEL_H + 10) + 10;
  const e = res.environment;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">`,
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#fafafa"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">${esc(`DNS latency by workload and target${res.quick ? ' (quick smoke run)' : ''}`)}</text>`,
    `<text x="10" y="40" font-size="11" fill="#555555">${esc(`${res.startedAt} · ${e.cpuModel}, ${e.cores} cores · Node ${e.node} · open loop, latency from intended send time`)}</text>`,
  ];
  let lx = 10;
  targets.forEach((t, i) => {
    const color = COLORS[i % COLORS.length] as string;
    out.push(`<rect x="${lx}" y="50" width="12" height="12" fill="${color}"/>`);
    out.push(`<text x="${lx + 16}" y="60" font-size="11">${esc(t)}</text>`);
    lx += 28 + t.length * 7;
  });
  out.push(`<text x="${lx + 10}" y="60" font-size="11" fill="#555555">× = saturated (&gt;1% timeouts or wrong)</text>`);
  wls.forEach((w, i) => {
    const x0 = 10 + i * (PANEL_W + 10);
    out.push(...percentilePanel(res, w, targets, x0, HEADER_H));
    const phased = res.runs.some((r) => r.workload === w && r.fallback !== null);
    out.push(...(phased ? phasePanel(res, w, targets, x0, HEADER_H + PANEL_H + 10) : ratePanel(res, w, targets, x0, HEADER_H + PANEL_H + 10)));
  });
  if (wls.length === 0) out.push(`<text x="20" y="${HEADER_H + 30}" font-size="12">no runs</text>`);
  out.push('</svg>');
  return out.filter((s) => s !== '').join('\n') + '\n';
}
