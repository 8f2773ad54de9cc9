/**
 * What the isolation and scaling benches start: the upstream simulator with
 * long TTLs (nothing the probe warmed expires or is prefetched during a
 * run), the agent against it with one UDP backend, the hit probe as a
 * process of its own (optionally real-time and pinned), and dnsperf. All on
 * loopback; the agent gets the simulator as both upstreams and a resolv.conf
 * naming only loopback (targets.ts startAgent), never the machine's resolver.
 */
import { execFile, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { HIT_PROBE_SCRIPT, type ProbeResult, type WarmResult } from './hit-probe.js';
import { parseDnsperfOutput } from './dnsperf.js';
import { processTree } from './proc-stats.js';
import type { DnsperfStats } from './results.js';
import { SimProcess } from './sim/control.js';
import { DEFAULT_ZONES, type ZoneConfig } from './sim/zones.js';
import { formatEndpoint, freePort, startAgent, type Target } from './targets.js';

/**
 * What the isolation and scaling benches started and have not stopped: the
 * simulator, agents, probe and dnsperf processes, killed at once by a second
 * signal or when the bench exits abnormally (interrupt.ts).
 */
export const running = new Set<{ killNow(): void }>();

/** Stops what startSim or startBenchAgent started. */
export async function stopStarted(x: { stop(): Promise<void>; killNow(): void }): Promise<void> {
  try {
    await x.stop();
  } finally {
    running.delete(x);
  }
}

/** Cached answers outlive any run: TTL one hour at the simulator and in the agent. */
export const LONG_TTL_S = 3600;

export const BENCH_ZONES: ZoneConfig = { ...DEFAULT_ZONES, clusterTtl: LONG_TTL_S, externalTtl: LONG_TTL_S };

/** The simulator (its own process), no added latency or loss; the caller pins it. */
export async function startSim(host: string): Promise<SimProcess> {
  const none = { port: 0, latencyMs: 0, jitterMs: 0, lossRate: 0 };
  const sim = await SimProcess.start({ host, zones: BENCH_ZONES, cluster: none, external: none, api: null });
  running.add(sim);
  return sim;
}

export interface AgentRun {
  readonly target: Target;
  readonly pid: number;
  readonly port: number;
  readonly metricsUrl: string;
}

/** The agent with `--io io` (and `--workers` for batched), no cluster view, long TTLs, no prefetch. */
export async function startBenchAgent(o: { agentPath: string; sim: SimProcess; host: string; io: 'batched' | 'dgram'; workers: number; workDir: string; name: string; readyTimeoutMs: number; agentArgs?: readonly string[]; nodeArgs?: readonly string[] }): Promise<AgentRun> {
  const metrics = { host: o.host, port: await freePort(o.host) };
  const extraArgs = [
    '--no-kube', '--io', o.io, ...(o.io === 'batched' ? ['--workers', String(o.workers)] : []),
    '--success-ttl', `${LONG_TTL_S}s`, '--prefetch-min-hits', '0',
    '--health-port', '0', '--metrics-listen-address', formatEndpoint(metrics),
    ...(o.agentArgs ?? []),
  ];
  const target = await startAgent({
    name: o.name, agentPath: o.agentPath, extraArgs, nodeArgs: o.nodeArgs ?? [], kubeconfig: null, clusterDomain: BENCH_ZONES.clusterDomain,
    host: o.host, sim: o.sim, workDir: o.workDir, pin: null, readyTimeoutMs: o.readyTimeoutMs,
  });
  running.add(target);
  if (target.pid === null) {
    await stopStarted(target);
    throw new Error('the agent has no pid');
  }
  return { target, pid: target.pid, port: target.routes[0].port, metricsUrl: `http://${formatEndpoint(metrics)}/metrics` };
}

export interface ProbeSpawn {
  readonly host: string;
  readonly port: number;
  readonly names: number;
  /** taskset CPU list, or null. */
  readonly cpu: string | null;
  /** SCHED_FIFO priority through chrt, or 0 for none. */
  readonly rtPriority: number;
  /** Kills the probe (the run is being stopped). */
  readonly signal?: AbortSignal;
}

/** Runs the hit probe (warm or probe mode) and returns its JSON line. */
export function runProbe(s: ProbeSpawn & { mode: 'warm' }): Promise<WarmResult>;
export function runProbe(s: ProbeSpawn & { mode: 'probe'; rate: number; seconds: number }): Promise<ProbeResult>;
export function runProbe(s: ProbeSpawn & { mode: 'warm' | 'probe'; rate?: number; seconds?: number }): Promise<WarmResult | ProbeResult> {
  const node = [process.execPath, ...process.execArgv, HIT_PROBE_SCRIPT, s.mode, '--host', s.host, '--port', String(s.port), '--names', String(s.names)];
  if (s.mode === 'probe') node.push('--rate', String(s.rate), '--seconds', String(s.seconds));
  const pinned = s.cpu === null ? node : ['taskset', '-c', s.cpu, ...node];
  const argv = s.rtPriority > 0 ? ['chrt', '-f', String(s.rtPriority), ...pinned] : pinned;
  const limitMs = ((s.seconds ?? 0) + 60) * 1000;
  return new Promise((resolve, reject) => {
    const child = execFile(argv[0]!, argv.slice(1), { timeout: limitMs, maxBuffer: 1 << 20, ...(s.signal === undefined ? {} : { signal: s.signal }) }, (err, stdout, stderr) => {
      running.delete(entry);
      const line = String(stdout).trim().split('\n').pop() ?? '';
      if (err !== null || !line.startsWith('{')) {
        reject(new Error(`hit probe (${argv.join(' ')}): ${err?.message ?? 'no result'}\n${String(stderr).slice(-1000)}`));
        return;
      }
      resolve(JSON.parse(line) as WarmResult | ProbeResult);
    });
    // chrt and taskset exec the probe: the child is the probe itself.
    const entry = { killNow: (): void => void child.kill('SIGKILL') };
    running.add(entry);
  });
}

export interface DnsperfSpawn {
  readonly host: string;
  readonly port: number;
  readonly dataFile: string;
  readonly seconds: number;
  readonly outstanding: number;
  /** -Q: an open-loop rate; null: closed loop (as fast as answers come). */
  readonly qps: number | null;
  readonly cpu: string | null;
  /** Interrupts dnsperf (SIGINT: it stops sending and prints its statistics) when this settles. */
  readonly stopOn?: Promise<unknown>;
  /** Interrupts it too (the run is being stopped). */
  readonly signal?: AbortSignal;
}

/** dnsperf's statistics, the CPU it used (user+system seconds, its threads) and how long it ran. */
export type DnsperfRun = DnsperfStats & { readonly cpuS: number; readonly runTimeS: number };

/**
 * dnsperf with a 1 s timeout and 16 client sockets (so SO_REUSEPORT spreads
 * them over the workers), through `sh -c '...; times'`: the shell's `times`
 * prints its children's CPU, i.e. dnsperf's, once it has been reaped.
 */
export function runDnsperfRate(d: DnsperfSpawn): Promise<DnsperfRun> {
  const args = ['-s', d.host, '-p', String(d.port), '-d', d.dataFile, '-l', String(d.seconds), '-q', String(d.outstanding), '-t', '1', '-c', '16'];
  if (d.qps !== null) args.push('-Q', String(Math.round(d.qps)));
  const argv = d.cpu === null ? ['dnsperf', ...args] : ['taskset', '-c', d.cpu, 'dnsperf', ...args];
  if (d.signal?.aborted === true) return Promise.reject(d.signal.reason as Error);
  return new Promise((resolve, reject) => {
    // Not detached: a session of its own would also be a scheduler autogroup of its own (see --autogroup-nice).
    // The shell ignores SIGINT, so interrupting its children stops dnsperf and the shell still reports.
    const child = spawn('sh', ['-c', 'trap "" INT; "$@"; times', 'sh', ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    let exited = false;
    const signalTree = (sig: NodeJS.Signals, withShell: boolean): void => {
      const sh = child.pid;
      if (exited || sh === undefined) return;
      for (const p of processTree(sh)) {
        if (p === sh && !withShell) continue;
        try {
          process.kill(p, sig);
        } catch {
          /* already gone */
        }
      }
    };
    const interrupt = (): void => signalTree('SIGINT', false);
    void d.stopOn?.finally(interrupt);
    d.signal?.addEventListener('abort', interrupt, { once: true });
    const entry = { killNow: (): void => signalTree('SIGKILL', true) };
    running.add(entry);
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out = (out + c.toString()).slice(-1 << 20)));
    const hard = setTimeout(() => signalTree('SIGKILL', true), (d.seconds + 30) * 1000);
    child.on('error', (e) => {
      clearTimeout(hard);
      reject(e);
    });
    child.on('exit', () => {
      exited = true;
      running.delete(entry);
      d.signal?.removeEventListener('abort', interrupt);
      clearTimeout(hard);
      // Last line of `times`: the children's user and system time, e.g. "0m1.230000s 0m0.450000s".
      // (Anchored on the pattern, not the end: dnsperf's stderr can arrive after it.)
      const t = [...out.matchAll(/^(\d+)m([\d.]+)s\s+(\d+)m([\d.]+)s\s*$/gm)].pop();
      const cpuS = t === undefined ? NaN : Number(t[1]) * 60 + Number(t[2]) + Number(t[3]) * 60 + Number(t[4]);
      try {
        const stats = parseDnsperfOutput(out, argv.join(' '));
        resolve({ ...stats, cpuS, runTimeS: stats.runTimeS ?? NaN });
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  });
}

/** dnsperf input: every line a name no one asked before, cluster services (TCP to kube-dns) and/or external names (UDP). */
export function writeMissFile(file: string, lines: number, mix: 'cluster' | 'external' | 'both'): void {
  const tag = Math.floor(Math.random() * 0xffff).toString(16);
  const out: string[] = [];
  for (let i = 0; i < lines; i++) {
    const cluster = mix === 'cluster' || (mix === 'both' && i % 2 === 0);
    out.push(cluster ? `u-${tag}-${i}.ns-${i % BENCH_ZONES.namespaces}.svc.${BENCH_ZONES.clusterDomain} A` : `u-${tag}-${i}.site-${i % 10}.example A`);
  }
  writeFileSync(file, out.join('\n') + '\n');
}

/** dnsperf input: the probe's names (already cached), type A. */
export function writeHitFile(file: string, names: readonly string[]): void {
  writeFileSync(file, names.map((n) => `${n} A`).join('\n') + '\n');
}

/**
 * Datagrams the kernel dropped at the UDP sockets bound to `port` on IPv4
 * (receive queue full), summed: the last column of /proc/net/udp.
 */
export function udpDrops(port: number): number {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  let drops = 0;
  for (const line of readFileSync('/proc/net/udp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[1]?.endsWith(hex) === true) drops += Number(f[f.length - 1]);
  }
  return drops;
}
