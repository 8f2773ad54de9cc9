/**
 * Which connection of a TcpPool (tcp-pool.ts) takes the next query, and when
 * the pool opens one more or gives a connection up.
 *
 * A connection whose queries time out with nothing read (SILENT_TIMEOUTS in a
 * row) is taken for dead, as CoreDNS forward drops one on a read timeout: a
 * pod whose node died sends no RST or FIN and TCP would retry for ~15 minutes.
 * Before that, one with a timeout since its last answer is chosen after the others.
 */
import type { Conn } from './tcp-conn.js';

export const SILENT_TIMEOUTS = 2;

/** 0 fine, 1 a timeout since its last answer: the lowest is chosen, then the least loaded. */
function rank(c: Conn): number {
  return c.silentTimeouts > 0 ? 1 : 0;
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
    const r = rank(c);
    if (best === null || r < bestRank || (r === bestRank && c.inflight.size < best.inflight.size)) {
      best = c;
      bestRank = r;
    }
  }
  return best;
}

/** Whether another connection should open: fewer than `size` connecting or open. */
export function wantsConnect(conns: readonly Conn[], size: number): boolean {
  let live = 0;
  for (const c of conns) if (c.state === 'connecting' || c.state === 'open') live++;
  return live < size;
}
