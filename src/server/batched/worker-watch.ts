/**
 * Whether each batched worker's loop still turns. Every turn adds one to
 * its Ctl.TURNS word (loop.ts #publish), and an idle worker turns at least
 * once a poll timeout (a second): a count that stands still is a worker
 * stuck (a loop that never ends, a native call that never returns), alive
 * and in its loop as far as this thread knows, its sockets still taking the
 * share of the clients the kernel hashes to them, who get no answer. One
 * that stands still past `endAfterMs` is terminated once: that ends a
 * JavaScript loop (its exit is a death: worker-restarts.ts replaces it),
 * not a native call that never returns, so how long it has stood still
 * is also what /health fails on (agent.ts), and the kubelet's restart ends
 * either (SIGKILL at worst). Read when asked, no timer: each read compares
 * the count with the last one seen and keeps when it last moved.
 */
import { performance } from 'node:perf_hooks';
import type { Logger } from '../../log.js';
import { Ctl } from './protocol.js';
import type { WorkerLink } from './worker-link.js';

export class TurnWatch {
  readonly #seen = new WeakMap<WorkerLink, { turns: number; at: number; ended: boolean }>();

  /** How long the live worker whose count has stood longest has not turned, as far as the reads so far show; 0: all turn. */
  stillFor(links: readonly (WorkerLink | null)[], endAfterMs: number, logger: Logger): number {
    const now = performance.now();
    let longest = 0;
    for (const l of links) {
      if (l === null || !l.alive || !l.ready) continue;
      const turns = Atomics.load(l.ctl, Ctl.TURNS);
      const seen = this.#seen.get(l);
      if (seen === undefined || seen.turns !== turns) {
        this.#seen.set(l, { turns, at: now, ended: false });
        continue;
      }
      const still = now - seen.at;
      longest = Math.max(longest, still);
      if (still < endAfterMs || seen.ended) continue;
      seen.ended = true;
      logger.error('udp worker stuck: its loop has not turned; terminated (it is started again once it has ended)', { worker: l.index, stillMs: Math.round(still) });
      void l.worker.terminate();
    }
    return longest;
  }
}
