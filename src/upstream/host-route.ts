/**
 * Where external names go and how long they may take: the host resolvers
 * from resolv.conf (or --upstream-nameservers), and the retry-budget
 * arithmetic that keeps our answer inside a pod's own first timeout.
 */
import { parseResolvConf } from './resolv-conf.js';
import type { ServerAddress } from './types.js';

/** A pod's resolver gives up on its first try after 5 s: answer (even SERVFAIL) before that. */
export const HOST_BUDGET_CAP_MS = 4500;
/** glibc's `options attempts:` default. */
export const DEFAULT_ATTEMPTS = 2;

export interface HostServers {
  readonly servers: readonly ServerAddress[];
  /** Where they came from, for logs and errors. */
  readonly source: string;
  /** resolv.conf `options timeout:`, when given. */
  readonly attemptMs: number | undefined;
  readonly attempts: number;
  readonly rotate: boolean;
  readonly warnings: readonly string[];
}

/**
 * The external-name servers: --upstream-nameservers when given, else the
 * resolv.conf ones with their options. Throws an Error whose message names
 * the file and what is wrong.
 */
export function loadHostServers(
  upstreamNameservers: readonly ServerAddress[], resolvConfPath: string, readFile: (path: string) => string,
): HostServers {
  if (upstreamNameservers.length > 0) {
    return { servers: [...upstreamNameservers], source: '--upstream-nameservers', attemptMs: undefined, attempts: DEFAULT_ATTEMPTS, rotate: false, warnings: [] };
  }
  let text: string;
  try {
    text = readFile(resolvConfPath);
  } catch (err) {
    throw new Error(`--resolv-conf ${resolvConfPath}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const rc = parseResolvConf(text);
  if (rc.nameservers.length === 0) throw new Error(`--resolv-conf ${resolvConfPath}: no nameserver lines; give --upstream-nameservers instead`);
  return {
    servers: rc.nameservers,
    source: resolvConfPath,
    attemptMs: rc.options.timeoutMs,
    attempts: rc.options.attempts ?? DEFAULT_ATTEMPTS,
    rotate: rc.options.rotate,
    warnings: rc.warnings,
  };
}

/**
 * One try waits resolv.conf's `timeout`, never longer than --timeout
 * (glibc's 5 s default would let a pod's own 5 s timer fire before we tried a
 * second server); the exchange may take all its tries, up to
 * HOST_BUDGET_CAP_MS, and at least --timeout.
 */
export function hostBudget(timeoutMs: number, attemptMs: number | undefined, attempts: number, servers: number): { attemptTimeoutMs: number; budgetMs: number } {
  const attemptTimeoutMs = Math.min(attemptMs ?? timeoutMs, timeoutMs);
  const budgetMs = Math.max(timeoutMs, Math.min(attemptTimeoutMs * attempts * servers, HOST_BUDGET_CAP_MS));
  return { attemptTimeoutMs, budgetMs };
}
