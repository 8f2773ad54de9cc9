/**
 * Whether each batched worker's loop still turns. Every turn adds one to
 * its Ctl.TURNS word (loop.ts #publish), and an idle worker turns at least
 * once a poll timeout (a second): a count that stands still is a worker
 * stuck (a loop that never ends, a native call that never returns), alive
 * and in its loop as far as this thread knows, its sockets still taking the
 * share of the clients the kernel hashes to them, who get no answer.
 * worker.terminate() would end a JavaScript loop but not a native call
 * that never returns, so this only says how long: /health fails on it
 * (agent.ts), and the kubelet's restart ends either (SIGKILL at worst).
 * Read when asked, no timer: each read compares the count with the last
 * one seen and keeps when it last moved.
 */
import { performance } from 'node:perf_hooks';
import { Ctl } from './protocol.js';
import type { WorkerLink } from './worker-link.js';

export class TurnWatch {
  readonly #seen = new WeakMap<WorkerLink, { turns: number; at: number }>();

  /** How long the live worker whose count has stood longest has not turned, as far as the reads so far show; 0: all turn. */
  stillFor(links: readonly (WorkerLink | null)[]): number {
    const now = performance.now();
    let longest = 0;
    for (const l of links) {
      if (l === null || !l.alive || !l.ready) continue;
      const turns = Atomics.load(l.ctl, Ctl.TURNS);
      const seen = this.#seen.get(l);
      if (seen === undefined || seen.turns !== turns) this.#seen.set(l, { turns, at: now });
      else longest = Math.max(longest, now - seen.at);
    }
    return longest;
  }
}
