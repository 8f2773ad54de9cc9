/**
 * The entry handle of an answer store (store.ts): the CacheEntry a lookup
 * hands out, reading the store's slot fields in place (store-fields.ts).
 */
import type { Query } from '../dns/query.js';
import type { CacheEntry } from './entry.js';
import { NEGATIVE, NONE } from './store-layout.js';
import type { StoreFields } from './store-fields.js';

/**
 * The entry handle a lookup returns: one per store, pointing at the slot the
 * last lookup found, so a hit allocates nothing. It is valid until the next
 * call into the cache; the hit path uses it at once (serve, then
 * claimPrefetch). Whatever must outlive that (an insert's answer for its
 * waiters, a stale answer) is a copy (entry.ts AnswerCopy).
 */
export class StoredEntry implements CacheEntry {
  readonly #store: StoreFields;
  slot: number;

  constructor(store: StoreFields) {
    this.#store = store;
    this.slot = NONE;
  }

  get prefetchAt(): number {
    return this.#store.prefetchAt(this.slot);
  }
  get expiresAt(): number {
    return this.#store.expiresAt(this.slot);
  }
  get negative(): boolean {
    return this.#store.listOf(this.slot) === NEGATIVE;
  }
  get hits(): number {
    return this.#store.hits(this.slot);
  }

  serve(q: Query, now: number, limit: number, ednsSize: number): Buffer {
    const storedAt = this.#store.storedAt(this.slot);
    const age = now > storedAt ? Math.floor((now - storedAt) / 1000) : 0;
    return this.#store.serve(this.slot, q, age, -1, limit, ednsSize);
  }

  serveStale(q: Query, ttl: number, limit: number, ednsSize: number): Buffer {
    return this.#store.serve(this.slot, q, 0, ttl, limit, ednsSize);
  }
}
