/**
 * The built agent (dist/src/main.js) as a child process of its own, for
 * `npm run fuzz` and `npm run soak`: its own RSS and heap, a crash is an exit
 * code. Upstreams are the caller's fake servers on loopback; resolv.conf is
 * written here and names only loopback, so nothing can reach the machine's
 * resolver. /metrics on a free loopback port for the heap figures.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, waitUntilAnswering } from './targets.js';

export interface AgentProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly host: string;
  readonly port: number;
  readonly metricsUrl: string;
  readonly logFile: string;
  alive(): boolean;
  /** Exit code or signal once exited. */
  exit(): string | null;
  stop(): Promise<void>;
}

/** dist/src/main.js next to this file's dist/bench/. */
export const AGENT_MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'main.js');

export async function spawnAgent(opts: { host: string; clusterPort: number; externalPort: number; extraArgs?: readonly string[] }): Promise<AgentProcess> {
  const dir = mkdtempSync(path.join(tmpdir(), 'nldns-agentproc-'));
  const resolvConf = path.join(dir, 'resolv.conf');
  writeFileSync(resolvConf, 'nameserver 127.0.0.254\n');
  const port = await freePort(opts.host);
  const metricsPort = await freePort(opts.host);
  const logFile = path.join(dir, 'agent.log');
  const args = [
    AGENT_MAIN,
    '--listen', `${opts.host}:${port}`,
    '--upstream-addr', `127.0.0.1:${opts.clusterPort}`,
    '--upstream-nameservers', `127.0.0.1:${opts.externalPort}`,
    '--resolv-conf', resolvConf,
    '--no-kube',
    '--health-port', '0',
    '--metrics-listen-address', `${opts.host}:${metricsPort}`,
    '--log-level', 'warn',
    ...(opts.extraArgs ?? []),
  ];
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let log = '';
  const keep = (c: Buffer): void => {
    log = (log + c.toString()).slice(-64 * 1024);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let exited: string | null = null;
  const gone = new Promise<void>((resolve) => child.once('exit', (code, sig) => {
    exited = sig ?? String(code);
    writeFileSync(logFile, log);
    resolve();
  }));
  const alive = (): boolean => exited === null;
  try {
    await waitUntilAnswering({ host: opts.host, port }, 60_000, alive, 'the agent', null);
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(`${(err as Error).message}\n${log}`);
  }
  return {
    child, pid: child.pid!, host: opts.host, port, logFile,
    metricsUrl: `http://${opts.host}:${metricsPort}/metrics`,
    alive, exit: () => exited,
    stop: async () => {
      if (exited === null) {
        child.kill('SIGTERM');
        const hard = setTimeout(() => child.kill('SIGKILL'), 15_000);
        await gone;
        clearTimeout(hard);
      }
      writeFileSync(logFile, log);
    },
  };
}

/** VmRSS of `pid` in bytes (null once it is gone). */
export function rssOf(pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m === null ? null : Number(m[1]) * 1024;
  } catch {
    return null;
  }
}

/** One metric's value (first series) from a Prometheus text scrape, or null. */
export async function scrape(url: string, names: readonly string[]): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(3000) });
    const text = await res.text();
    for (const name of names) {
      const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)`, 'm').exec(text);
      if (m !== null) out.set(name, Number(m[1]));
    }
  } catch {
    /* a missed scrape is a gap in the curve, not a failure */
  }
  return out;
}

export const mib = (b: number | null | undefined): string => (b === null || b === undefined ? '-' : (b / 2 ** 20).toFixed(1));

/** Every series of the metrics whose names start with `prefix`, as text lines (empty if the scrape fails). */
export async function scrapeLines(url: string, prefix: string): Promise<string[]> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(3000) });
    return (await res.text()).split('\n').filter((l) => l.startsWith(prefix));
  } catch {
    return [];
  }
}
