/**
 * The read side of an answer store (store.ts) on the writer's own thread:
 * the lookups (find, findBytes), an entry's fields, its answer copied and
 * patched from the slab, and the entry handle lookups return
 * (stored-entry.ts). The main thread's hit path runs through these.
 * AnswerStore extends this class with every change (insert, removal,
 * eviction, LRU order, clear, the slab's room). Reads here need no version
 * checks: nothing changes a slot between the writer's own calls. Reader
 * threads have their own read side, with the checks (reader.ts).
 *
 * The hash table's key hash is dns/query.ts hashKey, seeded per process:
 * names are chosen by whoever sends queries, and a fixed hash would let them
 * build long probe chains. The hit path looks up by the key's bytes and the
 * hash the parser computed while building them (findBytes), everything else
 * by the key string (find); both hash the same bytes the same way, so both
 * find the same slot.
 */
import { hashKey, type Query } from '../dns/query.js';
import { FLAG_REFRESHING, type ListId, type StoreLayout, type StoreView } from './store-layout.js';
import { StoredEntry } from './stored-entry.js';

/** The writer thread's lookups and entry fields; AnswerStore (store.ts) adds the changes. */
export class StoreFields {
  readonly #v: StoreView;
  readonly #hashMask: number;

  /** The one entry handle lookups return (see StoredEntry). */
  readonly view: StoredEntry;

  constructor(v: StoreView, hashMask: number) {
    this.#v = v;
    this.#hashMask = hashMask;
    this.view = new StoredEntry(this);
  }

  /** The buffers and shape a reader thread attaches to (reader.ts). */
  get layout(): StoreLayout {
    return this.#v.layout;
  }

  // ---- lookups (the hit path: no allocation) ----

  /** The slot holding `key`, or -1. Does not touch LRU order. */
  find(key: string): number {
    // The writer's own thread: no version checks (StoreView.findOwn).
    return this.#v.findOwn(key, (hashKey(key) & this.#hashMask) >>> 0);
  }

  /**
   * find for the key in bytes[0, len) whose hashKey is `hash` (the parser
   * computes it while building the key): the hit path's lookup, no string.
   */
  findBytes(bytes: Uint8Array, len: number, hash: number): number {
    return this.#v.findBytesOwn(bytes, len, (hash & this.#hashMask) >>> 0);
  }

  listOf(slot: number): ListId {
    return this.#v.list[slot] as ListId;
  }
  storedAt(slot: number): number {
    return this.#v.storedAtA[slot]!;
  }
  expiresAt(slot: number): number {
    return this.#v.expiresAtA[slot]!;
  }
  prefetchAt(slot: number): number {
    return this.#v.prefetchAtA[slot]!;
  }
  hits(slot: number): number {
    return this.#v.hitsA[slot]!;
  }
  addHit(slot: number): void {
    this.#v.hitsA[slot]!++;
  }
  refreshing(slot: number): boolean {
    return (this.#v.flags[slot]! & FLAG_REFRESHING) !== 0;
  }
  setRefreshing(slot: number): void {
    this.#v.flags[slot]! |= FLAG_REFRESHING;
  }
  /** Whether a reader has marked `slot` since it was last used here or given its second chance. */
  referenced(slot: number): boolean {
    return this.#v.ref[slot] !== 0;
  }

  /** The slot's answer for one client: copy and patch straight from the slab. */
  serve(slot: number, q: Query, ageSec: number, fixedTtl: number, limit: number, ednsSize: number): Buffer {
    // The writer's own fields always describe a record in the slab.
    return this.#v.serve(slot, q, ageSec, fixedTtl, limit, ednsSize)!;
  }

  /** A copy of the slot's stored wire bytes. */
  wireCopy(slot: number): Buffer {
    return this.#v.wireCopy(slot);
  }

  /** A copy of the slot's TTL offsets. */
  ttlOffsetsCopy(slot: number): Uint16Array {
    return this.#v.ttlOffsetsCopy(slot);
  }

  questionEnd(slot: number): number {
    return this.#v.questionEndA[slot]!;
  }

  keyOf(slot: number): string {
    return this.#v.keyOf(slot);
  }
}
