/**
 * `npm run overload -- [--seconds 20] [--workload hit|mixed]`
 *
 * Load shedding, shown: the built agent (own process) in front of two fake
 * upstreams, driven by dnsperf (`apt-get install dnsperf`). First the
 * saturating rate C: dnsperf closed-loop with many queries outstanding for a
 * few seconds. Then an offered load of 2C (dnsperf -Q 2C, up to 20,000
 * outstanding, 1 s timeout) for --seconds, the agent's RSS sampled every
 * second; then at once 0.5C for 5 s, to see the recovery. Workloads: `hit`
 * (1,000 cached names) and `mixed` (70% cached names, 30% a fresh external
 * name each time, i.e. misses through the host-resolver path).
 *
 * Prints answered rate, lost share, RSS before/peak/after and the agent's
 * shedding counters (coredns_forward_max_concurrent_rejects_total and
 * friends, from /metrics). All on loopback; figures are ratios within one
 * run on whatever load the machine has.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { SimDnsServer, staticHandler } from '../testkit/dns-server.js';
import type { SimHandler } from '../testkit/sim-types.js';
import { mib, rssOf, scrape, spawnAgent } from './agent-proc.js';
import { pinProcess, treeCpuSeconds } from './proc-stats.js';

interface Args {
  seconds: number;
  workload: 'hit' | 'mixed';
  host: string;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { seconds: 20, workload: 'hit', host: '127.0.0.1' };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--seconds': a.seconds = Number(v); i++; break;
      case '--workload': a.workload = v === 'mixed' ? 'mixed' : 'hit'; i++; break;
      case '--host': a.host = String(v); i++; break;
      default: throw new Error(`unknown argument ${argv[i]} (--seconds N --workload hit|mixed --host 127.x.y.z)`);
    }
  }
  return a;
}

interface PerfResult {
  sent: number;
  completed: number;
  lost: number;
  qps: number;
  raw: string;
}

function dnsperf(host: string, port: number, file: string, opts: { seconds: number; qps?: number; outstanding: number }): Promise<PerfResult> {
  const argv = ['-c', '0', 'dnsperf', '-s', host, '-p', String(port), '-d', file, '-l', String(opts.seconds), '-q', String(opts.outstanding), '-t', '1', '-c', '4', '-T', '1'];
  if (opts.qps !== undefined) argv.push('-Q', String(Math.round(opts.qps)));
  return new Promise((resolve, reject) => {
    const p = spawn('taskset', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (out += c.toString()));
    p.on('error', reject);
    p.on('exit', () => {
      const num = (re: RegExp): number => Number(re.exec(out)?.[1] ?? NaN);
      resolve({
        sent: num(/Queries sent:\s+(\d+)/),
        completed: num(/Queries completed:\s+(\d+)/),
        lost: num(/Queries lost:\s+(\d+)/),
        qps: num(/Queries per second:\s+([\d.]+)/),
        raw: out,
      });
    });
  });
}

const args = parseArgs(process.argv.slice(2));
const names = Array.from({ length: 1000 }, (_, i) => `svc-${i}.default.svc.cluster.local`);
const cluster = await SimDnsServer.start({ handler: staticHandler(Object.fromEntries(names.map((n, i) => [n, { A: [`10.96.${i >> 8}.${i & 0xff}`], ttl: 3600 }])), { soaZone: 'cluster.local' }) });
const wildcard: SimHandler = (q) => {
  const name = q.questions?.[0]?.name ?? '';
  return { answers: [{ type: 'A', name, ttl: 3600, class: 'IN', data: '198.51.100.9' }] };
};
const external = await SimDnsServer.start({ handler: wildcard, faults: { latencyMs: 5 } });
const agent = await spawnAgent({ host: args.host, clusterPort: cluster.port, externalPort: external.port });
// The agent on CPU 1, dnsperf on CPU 0: each has a core (shared with whatever else runs on the machine).
pinProcess(agent.pid, '1');
const cpu = (): number => treeCpuSeconds(agent.pid) ?? NaN;
const dir = mkdtempSync(path.join(tmpdir(), 'nldns-overload-'));
const hitFile = path.join(dir, 'hit.txt');
writeFileSync(hitFile, names.map((n) => `${n} A`).join('\n') + '\n');
// Warm the cache with every name (dnsperf closed-loop, one pass).
await dnsperf(agent.host, agent.port, hitFile, { seconds: 5, outstanding: 100 });
let file = hitFile;
if (args.workload === 'mixed') {
  const lines: string[] = [];
  for (let i = 0; i < 2_000_000; i++) lines.push(i % 10 < 7 ? `${names[i % names.length]} A` : `m${i}.overload.example.com A`);
  file = path.join(dir, 'mixed.txt');
  writeFileSync(file, lines.join('\n') + '\n');
}

const COUNTERS = [
  'coredns_forward_max_concurrent_rejects_total',
  'nodelocal_upstream_inflight',
  'coredns_dns_requests_total',
];
const cpuCap0 = cpu();
const cap = await dnsperf(agent.host, agent.port, file, { seconds: 5, outstanding: 2000 });
const cpuCap = cpu() - cpuCap0;
const C = cap.qps;
console.log(`${args.workload}: saturating rate (closed loop, 2,000 outstanding): ${C.toFixed(0)} q/s, lost ${cap.lost}`);

const rssBefore = rssOf(agent.pid);
let rssPeak = rssBefore ?? 0;
const sampler = setInterval(() => {
  const r = rssOf(agent.pid);
  if (r !== null && r > rssPeak) rssPeak = r;
}, 1000);
const before = await scrape(agent.metricsUrl, COUNTERS);
const cpuOver0 = cpu();
const reqOver0 = (await scrape(agent.metricsUrl, COUNTERS)).get('coredns_dns_requests_total') ?? NaN;
const over = await dnsperf(agent.host, agent.port, file, { seconds: args.seconds, qps: 2 * C, outstanding: 20_000 });
const cpuOver = cpu() - cpuOver0;
const reqOver = ((await scrape(agent.metricsUrl, COUNTERS)).get('coredns_dns_requests_total') ?? NaN) - reqOver0;
const rssAfterOver = rssOf(agent.pid);
const recovery = await dnsperf(agent.host, agent.port, file, { seconds: 5, qps: 0.5 * C, outstanding: 20_000 });
clearInterval(sampler);
const after = await scrape(agent.metricsUrl, COUNTERS);
const rssEnd = rssOf(agent.pid);
const alive = agent.alive();
await agent.stop();
await Promise.all([cluster.close(), external.close()]);

const pct = (a: number, b: number): string => `${((100 * a) / Math.max(1, b)).toFixed(1)}%`;
console.log(`offered 2C = ${(2 * C).toFixed(0)} q/s for ${args.seconds} s: sent ${over.sent}, answered ${over.completed} (${(over.completed / args.seconds).toFixed(0)}/s = ${pct(over.completed / args.seconds, C)} of C), lost ${over.lost} (${pct(over.lost, over.sent)})`);
console.log(`agent CPU: at C ${cpuCap.toFixed(2)} s in 5 s (${((1e6 * cpuCap) / Math.max(1, cap.completed)).toFixed(1)} us per answer); at 2C ${cpuOver.toFixed(2)} s in ${args.seconds} s, ${reqOver} queries read (${((1e6 * cpuOver) / Math.max(1, reqOver)).toFixed(1)} us per query read), ${reqOver - over.completed} answered after dnsperf's 1 s timeout or dropped by the kernel on the way back`);
console.log(`then 0.5C = ${(0.5 * C).toFixed(0)} q/s for 5 s: sent ${recovery.sent}, answered ${recovery.completed} (${pct(recovery.completed, recovery.sent)}), lost ${recovery.lost}`);
console.log(`agent RSS: before ${mib(rssBefore)} MiB, peak ${mib(rssPeak)} MiB, right after the overload ${mib(rssAfterOver)} MiB, at the end ${mib(rssEnd)} MiB; alive ${alive}`);
for (const k of COUNTERS) console.log(`  ${k}: ${before.get(k) ?? '-'} -> ${after.get(k) ?? '-'}`);
process.exit(alive ? 0 : 1);
