/**
 * Running iptables/nft as child processes, behind a function type so tests run
 * them inside a network namespace (`ip netns exec NS ...`) and unit tests fake them.
 */
import { spawn } from 'node:child_process';

export interface CommandResult {
  /** Exit status; null when killed (timeout) or not started (see error). */
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Why it could not run (ENOENT: not installed), or null. */
  readonly error: string | null;
}

export type CommandRunner = (cmd: string, args: readonly string[], stdin?: string) => Promise<CommandResult>;

/**
 * A stuck iptables (waiting on a lock it was not told to wait for, or a hung
 * nft) is killed after this; -w 5 on restore stays well inside it.
 */
export const COMMAND_TIMEOUT_MS = 15_000;

export function spawnRunner(prefix: readonly string[] = [], timeoutMs = COMMAND_TIMEOUT_MS): CommandRunner {
  return (cmd, args, stdin) =>
    new Promise((resolve) => {
      const argv = [...prefix, cmd, ...args];
      const child = spawn(argv[0] ?? cmd, argv.slice(1), {
        stdio: ['pipe', 'pipe', 'pipe'],
        timeout: timeoutMs,
        killSignal: 'SIGKILL',
        env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' },
      });
      let stdout = '';
      let stderr = '';
      let error: string | null = null;
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        stdout += d;
      });
      child.stderr.setEncoding('utf8').on('data', (d: string) => {
        stderr += d;
      });
      child.stdin.on('error', () => {}); // the command may exit before reading its input
      child.on('error', (e) => {
        error = e.message;
      });
      child.on('close', (status, signal) => {
        if (signal !== null && error === null) error = `killed by ${signal} (timeout ${timeoutMs} ms)`;
        resolve({ status: error === null ? status : null, stdout, stderr, error });
      });
      child.stdin.end(stdin ?? '');
    });
}

/** "cmd: exit 2: <stderr lines>" (or why it did not run), for logs and errors. */
export function describeResult(cmd: string, r: CommandResult): string {
  if (r.error !== null) return `${cmd}: ${r.error}`;
  const msg = r.stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#')).join('; ');
  return `${cmd}: exit ${r.status ?? 'killed'}${msg === '' ? '' : `: ${msg}`}`;
}
