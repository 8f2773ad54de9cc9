/**
 * CPU time and memory of processes from /proc (Linux), and the facts about
 * the machine that go into results.json. CPU is utime+stime of a process and
 * all its descendants (a peer started through `sh -c`, an agent with worker
 * threads), read before and after each measured run.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants, readFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

let clkTck: number | null = null;

/** Clock ticks per second for /proc/<pid>/stat times (almost always 100). */
export function clockTicks(): number {
  if (clkTck === null) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 2000 }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

interface StatFields {
  readonly ppid: number;
  /** utime + stime in ticks. */
  readonly ticks: number;
}

function readStat(pid: number): StatFields | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
  return { ppid: Number(rest[1]), ticks: Number(rest[11]) + Number(rest[12]) };
}

/** `pid` and all its descendants alive now. */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [pid];
  }
  for (const e of entries) {
    if (!/^[0-9]+$/.test(e)) continue;
    const st = readStat(Number(e));
    if (st === null) continue;
    const list = children.get(st.ppid);
    if (list === undefined) children.set(st.ppid, [Number(e)]);
    else list.push(Number(e));
  }
  const out: number[] = [];
  const stack = [pid];
  while (stack.length > 0 && out.length < 10000) {
    const p = stack.pop() as number;
    out.push(p);
    for (const c of children.get(p) ?? []) stack.push(c);
  }
  return out;
}

/** CPU seconds (user+system) used so far by `pid` and its descendants; null if it is gone or /proc is unavailable. */
export function treeCpuSeconds(pid: number): number | null {
  let ticks = 0;
  let found = false;
  for (const p of processTree(pid)) {
    const st = readStat(p);
    if (st === null) continue;
    ticks += st.ticks;
    found = true;
  }
  return found ? ticks / clockTicks() : null;
}

export interface MemoryInfo {
  /** Resident set now (bytes), summed over the process tree. */
  readonly rssBytes: number;
  /** Peak resident set of the root process (VmHWM, bytes). */
  readonly peakRssBytes: number;
}

function statusKb(pid: number, field: string): number | null {
  try {
    const m = new RegExp(`^${field}:\\s+([0-9]+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m === null ? null : Number(m[1]);
  } catch {
    return null;
  }
}

export function memoryOf(pid: number): MemoryInfo | null {
  const peak = statusKb(pid, 'VmHWM');
  if (peak === null) return null;
  let rss = 0;
  for (const p of processTree(pid)) rss += statusKb(p, 'VmRSS') ?? 0;
  return { rssBytes: rss * 1024, peakRssBytes: peak * 1024 };
}

export interface Environment {
  readonly node: string;
  readonly v8: string;
  readonly platform: string;
  readonly arch: string;
  readonly kernel: string;
  readonly cpuModel: string;
  readonly cores: number;
  /** CPUs this process may run on (from /proc/self/status). */
  readonly cpusAllowed: string | null;
  readonly totalMemoryBytes: number;
  readonly loadAverage: readonly number[];
  readonly taskset: boolean;
  readonly dnsperf: string | null;
}

function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m?.[1] !== undefined) return m[1].trim();
  } catch {
    /* not Linux */
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

/** Full path of an executable on PATH, or null. */
export function which(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const p = path.join(dir, cmd);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* keep looking */
    }
  }
  return null;
}

export function environment(): Environment {
  let allowed: string | null = null;
  try {
    allowed = /^Cpus_allowed_list:\s*(.+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]?.trim() ?? null;
  } catch {
    allowed = null;
  }
  return {
    node: process.version,
    v8: process.versions.v8,
    platform: process.platform,
    arch: process.arch,
    kernel: os.release(),
    cpuModel: cpuModel(),
    cores: os.cpus().length,
    cpusAllowed: allowed,
    totalMemoryBytes: os.totalmem(),
    loadAverage: os.loadavg(),
    taskset: which('taskset') !== null,
    dnsperf: which('dnsperf'),
  };
}

/** Pins every thread of `pid` to `cpus` (a taskset list such as "0" or "0-1"). Throws with taskset's message on failure. */
export function pinProcess(pid: number, cpus: string): void {
  execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 5000 });
}
