/**
 * The process's open-file limit (RLIMIT_NOFILE, soft), as /proc/self/limits
 * gives it. Node raises the soft limit to the hard one at start, so this is
 * what the agent may hold: past it accept() fails with EMFILE, and libuv then
 * accepts and closes every queued connection with a spare descriptor it keeps
 * for that, with nothing reported to us (the client sees its connection
 * closed at once). Read at a listener's start and again at most once a second
 * while it accepts (FdCeiling), never per connection.
 */
import { readFileSync } from 'node:fs';

/** The soft limit; -1 when unlimited or unreadable (no /proc). */
export function openFileLimit(path = '/proc/self/limits'): number {
  try {
    const line = readFileSync(path, 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
    const soft = line?.slice('Max open files'.length).trim().split(/\s+/)[0];
    const n = soft === undefined ? NaN : Number(soft);
    return Number.isSafeInteger(n) && n > 0 ? n : -1;
  } catch {
    return -1;
  }
}

/**
 * Descriptors left for the rest of the agent (upstream sockets, TCP retries
 * after TC, the HTTP endpoints, files read on reload): a flood of clients is
 * refused and counted, not failing those or meeting libuv's silent EMFILE close.
 */
export const FD_RESERVE = 128;

/**
 * How often the limit is read again while clients connect: a limit changed
 * while running (prlimit) holds within a second. Lowered and read only at
 * start, newcomers past it met libuv's silent close again; raised (the remedy
 * for fd_limit refusals, without a restart), they were still refused. A read
 * costs tens of us; at most one a second is nothing beside the accepts.
 */
const REREAD_MS = 1000;

/** Accepted descriptors at or above the limit less FD_RESERVE are refused. */
export class FdCeiling {
  readonly #read: () => number;
  /** -1: no limit known. */
  #ceiling = -1;
  #readAt = -Infinity;

  constructor(read: () => number = openFileLimit) {
    this.#read = read;
  }

  /** The limit the ceiling was last taken from; -1 when none is known. */
  get limit(): number {
    return this.#ceiling < 0 ? -1 : this.#ceiling + FD_RESERVE;
  }

  /** At a listener's start. */
  load(now: number): void {
    const limit = this.#read();
    this.#ceiling = limit < 0 ? -1 : Math.max(0, limit - FD_RESERVE);
    this.#readAt = now;
  }

  /** Whether the accepted descriptor `fd` (at clock ms `now`) is too near the limit to keep. */
  refuses(fd: number, now: number): boolean {
    if (now - this.#readAt >= REREAD_MS) this.load(now);
    return this.#ceiling >= 0 && fd >= this.#ceiling;
  }
}
