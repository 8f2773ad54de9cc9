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

/** `signal`: once aborted (the stop's time is up) the command is killed, or not started, and answered at once. */
export type CommandRunner = (cmd: string, args: readonly string[], stdin?: string, signal?: AbortSignal) => Promise<CommandResult>;

/** The error of a command `signal` cut short. */
export const CUT_SHORT = 'cut short: the stop deadline passed';

/**
 * A stuck iptables (waiting on a lock it was not told to wait for, or a hung
 * nft) is killed after this; -w 5 on restore stays well inside it.
 */
export const COMMAND_TIMEOUT_MS = 15_000;

export function spawnRunner(prefix: readonly string[] = [], timeoutMs = COMMAND_TIMEOUT_MS): CommandRunner {
  return (cmd, args, stdin, signal) =>
    new Promise((resolve) => {
      if (signal?.aborted === true) {
        resolve({ status: null, stdout: '', stderr: '', error: `not run: ${CUT_SHORT}` });
        return;
      }
      const argv = [...prefix, cmd, ...args];
      // Its own process group, killed whole at the timeout: spawn's `timeout` kills only the direct child, and a
      // grandchild still holding stdout (a wrapper's helper) would keep 'close', and this promise, pending past it.
      const child = spawn(argv[0] ?? cmd, argv.slice(1), {
        stdio: ['pipe', 'pipe', 'pipe'],
        detached: true,
        env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' },
      });
      let stdout = '';
      let stderr = '';
      let error: string | null = null;
      let settled = false;
      const settle = (status: number | null): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', cut);
        resolve({ status: error === null ? status : null, stdout, stderr, error });
      };
      let exited: number | null = null;
      // Output cut short is no answer, even from a command that exited: its save may be incomplete.
      const kill = (why: string): void => {
        error = why;
        killGroup(child.pid);
        // Whatever still holds its pipes (a process that left the group), the answer is due now.
        child.stdout.destroy();
        child.stderr.destroy();
        settle(null);
      };
      const timer = setTimeout(() => {
        kill(exited === null ? `killed by SIGKILL (timeout ${timeoutMs} ms)` : `exited ${exited}, but its output was held open past ${timeoutMs} ms`);
      }, timeoutMs);
      const cut = (): void => kill(`killed by SIGKILL (${CUT_SHORT})`);
      signal?.addEventListener('abort', cut, { once: true });
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        stdout += d;
      });
      child.stderr.setEncoding('utf8').on('data', (d: string) => {
        stderr += d;
      });
      child.stdin.on('error', () => {}); // the command may exit before reading its input
      child.on('error', (e) => {
        error = e.message;
        settle(null); // not started: no 'close' may follow
      });
      child.on('exit', (status) => {
        exited = status ?? -1;
      });
      child.on('close', (status, signal) => {
        if (signal !== null && error === null) error = `killed by ${signal}`;
        settle(status);
      });
      child.stdin.end(stdin ?? '');
    });
}

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** "cmd: exit 2: <stderr lines>" (or why it did not run), for logs and errors. */
export function describeResult(cmd: string, r: CommandResult): string {
  if (r.error !== null) return `${cmd}: ${r.error}`;
  const msg = r.stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#')).join('; ');
  return `${cmd}: exit ${r.status ?? 'killed'}${msg === '' ? '' : `: ${msg}`}`;
}
