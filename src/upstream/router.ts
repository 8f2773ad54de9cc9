/**
 * Which upstream answers a name: longest-suffix match of the query name
 * against the configured zones (cluster domain, reverse zones, stub domains),
 * else the default (host resolvers). Works on the lower-cased wire name inside
 * the cache key, so routing is case-insensitive by construction. Pure.
 */
import { nameToWire } from '../dns/name.js';

export interface ZoneRoute<T> {
  readonly zone: string;
  readonly target: T;
}

export class ZoneRouter<T> {
  /** Wire-format zone (latin1 string) -> target. */
  readonly #zones: Map<string, T>;
  readonly #fallback: T;

  /** Later routes for the same zone replace earlier ones. */
  constructor(routes: readonly ZoneRoute<T>[], fallback: T) {
    this.#zones = new Map(routes.map((r) => [nameToWire(r.zone).toString('latin1'), r.target]));
    this.#fallback = fallback;
  }

  /** `key` is a cache key (dns/query.ts): lower-cased wire name followed by 5 bytes of type, class and flags. */
  route(key: string): T {
    const nameEnd = key.length - 5;
    // Each label start is a suffix, longest first: the first hit is the longest match.
    let off = 0;
    while (off < nameEnd) {
      const t = this.#zones.get(key.slice(off, nameEnd));
      if (t !== undefined) return t;
      const labelLen = key.charCodeAt(off);
      if (labelLen === 0) break;
      off += labelLen + 1;
    }
    return this.#fallback;
  }
}
