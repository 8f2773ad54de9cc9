/**
 * Which connection of a TcpPool (tcp-pool.ts) takes the next query, and when
 * the pool opens one more, moves queries, or gives a connection up.
 *
 * CoreDNS (miekg/dns serveTCPConn) and dnsmasq serve a TCP connection one
 * query at a time: read, answer, then read the next. Queries pipelined behind
 * a slow one (an outside reverse lookup CoreDNS forwards to its own upstream,
 * seconds for a lame delegation) wait for it. So a connection with queries
 * outstanding that has read nothing for STALL_MS is *stalled*: it is chosen
 * last, it does not count toward the pool's size (another connection opens,
 * up to twice the size), and the queries behind its oldest are moved to a
 * connection with nothing in flight, the new one if need be (each query once;
 * the old connection's late answer to it is ignored). A move re-sends, so one
 * query goes first, and the rest follow only if it is answered at once (class
 * Mover): a server slow for every query is not given each one twice. An extra
 * connection going idle once enough others are not stalled is closed.
 *
 * A connection whose queries time out with nothing read (SILENT_TIMEOUTS in a
 * row, each sent after the one before timed out: queries in flight together
 * gave a late answer no time to come) is taken for dead, as CoreDNS forward
 * drops one on a read timeout: a pod whose node died sends no RST or FIN and
 * TCP would retry for ~15 minutes.
 * Before that, one with a timeout since its last answer is chosen after the others.
 */
import type { JobQueue } from './job-queue.js';
import type { Conn, Job } from './tcp-conn.js';

/**
 * Cluster names are answered in about a millisecond: this long with nothing read means a query ahead is slow. The
 * cluster pool's default (TcpPoolOptions.stallMs); a DNS-over-TLS resolver answers out of order, and takes longer
 * for a name not in its cache, so its pools have none.
 */
export const STALL_MS = 300;
export const SILENT_TIMEOUTS = 2;

export function stalled(c: Conn, now: number): boolean {
  return c.inflight.size > 0 && now - c.progressAt >= c.stallMs;
}

/** 0 fine, 1 a timeout since its last answer, 2 stalled: the lowest is chosen, then the least loaded. */
function rank(c: Conn, now: number): number {
  return stalled(c, now) ? 2 : c.silentTimeouts > 0 ? 1 : 0;
}

/** The best open connection with room, or null; `rotate` drains any past its age on the way. */
export function pickConn(conns: readonly Conn[], now: number, maxInFlight: number, rotateAfterMs: number, rotate: (c: Conn) => void): Conn | null {
  let best: Conn | null = null;
  let bestRank = 0;
  for (const c of conns) {
    if (c.state !== 'open') continue;
    if (now - c.openedAt >= rotateAfterMs) {
      rotate(c);
      continue;
    }
    if (c.inflight.size >= maxInFlight) continue;
    const r = rank(c, now);
    if (best === null || r < bestRank || (r === bestRank && c.inflight.size < best.inflight.size)) {
      best = c;
      bestRank = r;
    }
  }
  return best;
}

/** Whether another connection should open: fewer than `size` connecting or open and not stalled, fewer than twice `size` in all. */
export function wantsConnect(conns: readonly Conn[], size: number, now: number): boolean {
  let usable = 0;
  let all = 0;
  for (const c of conns) {
    if (c.state !== 'connecting' && c.state !== 'open') continue;
    all++;
    if (c.state === 'connecting' || !stalled(c, now)) usable++;
  }
  return usable < size && all < size * 2;
}

/** Whether an idle connection is one too many: more than `size` open ones not stalled (an extra opened beside stalled ones). */
export function surplus(conns: readonly Conn[], size: number, now: number): boolean {
  let usable = 0;
  for (const c of conns) if (c.state === 'open' && !stalled(c, now)) usable++;
  return usable > size;
}

/** How long after a move's outcome the next moves follow it: none after a moved query was slow, all waiting ones after one was answered at once. */
export const MOVE_HOLD_MS = 5000;

/**
 * Takes the queries waiting behind a stalled connection's oldest off it, to be sent on another. A move re-sends: the
 * server still answers the copy it has. That pays when the query ahead is slow (an outside PTR), but a server slow
 * for every query (kube-dns overloaded) is only given each query twice, and answers it no sooner on another
 * connection. So one query is moved first: answered on its new connection before that stalls too, every waiting
 * query is moved for MOVE_HOLD_MS; answered later or not at all, none is.
 */
export class Mover {
  /** The query moved to find out; null once its answer told. */
  #probe: Job | null = null;
  #heldUntil = 0;
  #openUntil = 0;

  /** An answer to `job` (sent at job.sentAt) came at `now`. */
  answered(job: Job, now: number): void {
    if (!job.moved) return;
    if (job === this.#probe) this.#probe = null;
    if (now - job.sentAt < STALL_MS) this.#openUntil = Math.max(this.#openUntil, now + MOVE_HOLD_MS);
    else this.#hold(now);
  }

  /** Moves the queries waiting behind stalled `c`'s oldest (not moved before) to the head of `queue`, oldest first, as the last outcome allows; how many. */
  move(c: Conn, now: number, queue: JobQueue): number {
    if (!stalled(c, now) || c.inflight.size < 2) return 0;
    const all = now < this.#openUntil;
    if (!all && now < this.#heldUntil) return 0;
    if (!all && this.#probe !== null) {
      // Done without an answer (answered() clears it): it timed out, or failed, on its new connection too.
      if (this.#probe.done) this.#hold(now);
      return 0;
    }
    const moving: Job[] = [];
    let first = true;
    for (const job of c.inSendOrder()) {
      if (!first && !job.moved) moving.push(job);
      first = false;
      if (!all && moving.length === 1) break;
    }
    if (!all && moving.length === 1) this.#probe = moving[0]!;
    for (let k = moving.length - 1; k >= 0; k--) {
      const job = moving[k]!;
      c.inflight.delete(job.id);
      job.moved = true;
      queue.unshift(job);
    }
    return moving.length;
  }

  #hold(now: number): void {
    this.#probe = null;
    this.#openUntil = 0;
    this.#heldUntil = now + MOVE_HOLD_MS;
  }
}
