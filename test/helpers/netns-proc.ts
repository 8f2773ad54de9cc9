// Child processes for the network-namespace tests: bounded runs with a clean
// environment, a line reader with bounded waits, and a stop that escalates.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/** The only environment children get: nothing from the caller that glibc (LOCALDOMAIN, RES_OPTIONS, HOSTALIASES) or node would read. */
export const CHILD_ENV: NodeJS.ProcessEnv = {
  PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  LANG: 'C',
};

export interface Ran {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  error: string | null;
}

export function runSync(cmd: string, args: readonly string[], timeoutMs = 10_000, stdin?: string): Ran {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, killSignal: 'SIGKILL', env: CHILD_ENV, input: stdin });
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '', error: r.error ? r.error.message : null };
}

export function describeRan(r: Ran): string {
  return `status=${r.status} signal=${r.signal ?? '-'} stdout=${JSON.stringify(r.stdout.trim())} stderr=${JSON.stringify(r.stderr.trim())}${r.error ? ` error=${r.error}` : ''}`;
}

export function mustSync(cmd: string, args: readonly string[], timeoutMs = 10_000, stdin?: string): string {
  const r = runSync(cmd, args, timeoutMs, stdin);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${describeRan(r)}`);
  return r.stdout;
}

/** Asynchronous, so the test keeps reading its children's pipes meanwhile; killed at the timeout. */
export function run(cmd: string, args: readonly string[], timeoutMs: number): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: CHILD_ENV, timeout: timeoutMs, killSignal: 'SIGKILL', stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let error: string | null = null;
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.on('error', (err) => { error = err.message; });
    child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr, error }));
  });
}

export function hasCommand(cmd: string, args: readonly string[]): boolean {
  const r = spawnSync(cmd, args, { stdio: 'ignore', timeout: 5000, env: CHILD_ENV });
  return r.error === undefined && r.status !== null;
}

/** A child's output, line by line, with a bounded wait for the next line that matches. */
export class Lines {
  readonly #lines: string[] = [];
  readonly #waiters = new Set<() => void>();
  #closed = false;
  /** The last 2000 lines, for failure reports. */
  readonly all: string[] = [];

  constructor(stream: NodeJS.ReadableStream) {
    const rl = createInterface({ input: stream });
    rl.on('line', (line) => {
      this.#lines.push(line);
      this.all.push(line);
      if (this.all.length > 2000) this.all.shift();
      for (const w of this.#waiters) w();
    });
    rl.on('close', () => {
      this.#closed = true;
      for (const w of this.#waiters) w();
    });
  }

  /** Consumes lines until one satisfies `match`; null on timeout or end of stream. */
  next(match: (line: string) => boolean, timeoutMs: number): Promise<string | null> {
    return new Promise((resolve) => {
      const check = (): void => {
        while (this.#lines.length > 0) {
          const line = this.#lines.shift() ?? '';
          if (match(line)) return done(line);
        }
        if (this.#closed) done(null);
      };
      const timer = setTimeout(() => done(null), timeoutMs);
      const done = (v: string | null): void => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve(v);
      };
      this.#waiters.add(check);
      check();
    });
  }
}

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Resolves when the child has exited, or after `timeoutMs` (false). */
export function waitExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** `signal`, then SIGKILL after `graceMs`. */
export async function stopChild(child: ChildProcess, signal: NodeJS.Signals, graceMs: number): Promise<void> {
  if (exited(child)) return;
  child.kill(signal);
  if (await waitExit(child, graceMs)) return;
  child.kill('SIGKILL');
  await waitExit(child, 2000);
}
