/**
 * Which of the host resolvers' servers have stopped answering, remembered
 * across exchanges, and the order of servers a new exchange tries.
 *
 * glibc keeps no such memory: without `options rotate` every query starts at
 * the first nameserver, so a black-holed first resolver costs every cache miss
 * of the node a whole try timeout. CoreDNS forward (what NodeLocal DNSCache
 * used) marks such a server down after max_fails (2) and skips it until its
 * health check passes; systemd-resolved moves its current server. Here:
 *
 *   try timed out after its full try timeout ──► streak + 1
 *   answer (any rcode) within the try timeout ──► streak 0
 *   streak >= SILENT_STREAK ──► the server goes after the others in each round
 *                               of a new exchange (still asked: never dropped)
 *
 * Otherwise glibc's order stands, `rotate`'s start included, and when every
 * server is silent the order is glibc's. A server moved back is rechecked at
 * most once per RECHECK_MS, with a copy of a client's query sent to it beside
 * that client's own exchange (which does not wait for it): an answer within
 * the try timeout puts it back in its place.
 */

/** Try timeouts in a row after which a server is asked after the others (CoreDNS forward's max_fails default). */
export const SILENT_STREAK = 2;
/** Between two rechecks of one server moved back: one extra query a second at most, to a server that may be gone. */
export const RECHECK_MS = 1000;

export class ServerOrder {
  readonly #streak: number[];
  /** Clock ms from which a server moved back may be rechecked. */
  readonly #recheckAt: number[];

  constructor(servers: number) {
    this.#streak = new Array<number>(servers).fill(0);
    this.#recheckAt = new Array<number>(servers).fill(0);
  }

  /** Server `idx` had a try wait out its whole try timeout without an answer. */
  timedOut(idx: number, now: number): void {
    if (++this.#streak[idx]! === SILENT_STREAK) this.#recheckAt[idx] = now + RECHECK_MS;
  }

  /** Server `idx` answered within its try timeout. */
  answered(idx: number): void {
    this.#streak[idx] = 0;
  }

  silent(idx: number): boolean {
    return this.#streak[idx]! >= SILENT_STREAK;
  }

  /** One round of a new exchange, glibc's order from `start`, servers on a silent streak after the others. */
  round(start: number): number[] {
    const n = this.#streak.length;
    const order: number[] = [];
    const last: number[] = [];
    for (let i = 0; i < n; i++) {
      const idx = (start + i) % n;
      (this.silent(idx) ? last : order).push(idx);
    }
    return last.length === 0 ? order : order.concat(last);
  }

  /**
   * The servers of `round` moved back behind one that answers and due for a
   * recheck at `now`; each is not due again for RECHECK_MS.
   */
  rechecks(round: readonly number[], now: number): number[] {
    const due: number[] = [];
    if (round.length === 0 || this.silent(round[0]!)) return due;
    for (const idx of round) {
      if (!this.silent(idx) || now < this.#recheckAt[idx]!) continue;
      this.#recheckAt[idx] = now + RECHECK_MS;
      due.push(idx);
    }
    return due;
  }
}
