/**
 * The end of batched workers at shutdown, bounded: a worker answers
 * 'abort' and 'close' within a turn, so one that has not after
 * WORKER_STOP_WAIT_MS is stuck (a bug), and is terminated rather than
 * holding the agent's stop past its grace period (the agent awaits
 * abortAll() and close() with no deadline of its own).
 */
import type { Logger } from '../../log.js';
import type { DirectAnswers } from './direct.js';
import type { WorkerLink } from './worker-link.js';

export const WORKER_STOP_WAIT_MS = 1000;

/** Tells each worker to close and waits for its exit; one still running after the wait is terminated, and waited for as long again at most. */
export async function stopWorkers(live: readonly WorkerLink[], logger: Logger): Promise<void> {
  const exits: Promise<void>[] = [];
  for (const l of live) {
    l.closing = true;
    l.lazy = false;
    exits.push(new Promise((resolve) => l.worker.once('exit', () => resolve())));
    l.post({ t: 'close' });
  }
  if (await settlesWithin(Promise.all(exits), WORKER_STOP_WAIT_MS)) return;
  for (const l of live) if (l.alive) terminateStuck(l, 'close', logger);
  // A thread blocked in a native call ends only when the call returns (poll: its idle timeout): the process exit takes it then.
  await settlesWithin(Promise.all(exits), WORKER_STOP_WAIT_MS);
}

/**
 * Shutdown past its grace, one worker: what this turn answered from here
 * goes first, with its completions (the worker applies those before it
 * aborts); then every client held here for it is answered (stale or
 * SERVFAIL: direct.ts abort()); the worker answers its own on 'abort'.
 */
export function abortWorker(l: WorkerLink): void {
  l.aborting = true;
  l.lazy = false;
  l.flushNow();
  l.direct?.abort();
  l.handBack();
  l.post({ t: 'abort' });
}

/**
 * A second stop signal, one worker (the process exits next): the clients
 * held here for it are answered now, and it is told to abort and close, and
 * woken, so the exit neither loses them nor waits for it asleep in poll (up
 * to its idle poll, 1 s). Returns the clients answered here.
 */
export function abandonWorker(l: WorkerLink): number {
  const n = l.direct?.abort() ?? 0;
  l.post({ t: 'abort' });
  l.post({ t: 'close' });
  return n;
}

/**
 * The clients held on the main thread for workers that died, still waiting
 * on their misses (direct.ts orphan()): a drain waits for them as for a
 * worker's, and no worker is told to abort them, so the listener's
 * abortAll() and abandon() answer them here.
 */
export class Orphans {
  readonly #held = new Set<DirectAnswers>();
  /** The last of them was answered (the listener looks whether it is drained). */
  readonly #idle: () => void;

  constructor(idle: () => void) {
    this.#idle = idle;
  }

  /** None waits. */
  get idle(): boolean {
    return this.#held.size === 0;
  }

  /** Worker `l` exited: kept while clients held for it wait. */
  keep(l: WorkerLink): void {
    const d = l.direct;
    if (d === null || !d.orphaned) return;
    this.#held.add(d);
    d.onClosed = () => {
      this.#held.delete(d);
      if (this.#held.size === 0) this.#idle();
    };
  }

  /** Every one answered now, stale or SERVFAIL, on a live sibling's sockets; returns how many. */
  abort(): number {
    let n = 0;
    // Each closes once answered (flush()), and leaves the set.
    for (const d of [...this.#held]) n += d.abort();
    return n;
  }
}

/** A worker that did not answer `what` in time: ended, its exit no death to restart. */
export function terminateStuck(l: WorkerLink, what: string, logger: Logger): void {
  l.closing = true;
  l.aborting = false;
  logger.error(`udp worker did not ${what} in time; terminated`, { worker: l.index, waitedMs: WORKER_STOP_WAIT_MS });
  void l.worker.terminate();
}

/** True when `p` settled within `ms`. */
function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  return Promise.race([p.then(() => true), late]).finally(() => clearTimeout(timer));
}
