/**
 * The writer's half of the store's version protocol (reader.ts has the
 * reader's): the odd windows around a change, and the global sequence word.
 * AnswerStore (store.ts) calls these around every change it makes.
 *
 * A change is seen by the readers of the key it changes only. The writer
 * makes a slot's version odd while it changes that slot's fields or record
 * bytes (a new entry in it, a sweep moving its record) and moves it by
 * two when it frees the slot, and readers check the version of the slot
 * they read around their read; the
 * hash table never moves a cell (deletions leave tombstones, store-table.ts).
 * A reader that keeps finding its slot odd gives up and its query goes to
 * the main thread: under a miss flood the writer shares its CPU and is
 * preempted inside a change now and then, and with one global window per
 * change every worker read of every key gave up meanwhile (600-5,000 reads
 * per 8 s beside a 20k/s flood, each then as slow as the saturated main
 * thread). Now only the readers of the slot in change wait.
 *
 * The global sequence word stays for what changes everything at once, and
 * is odd only then: clear, and the table's rebuild when tombstones pile up
 * (amortised: a quarter of the table must have come into use since the
 * last; with the default capacities the table is at most a third full and
 * 1e6 insert/evict cycles at capacity rebuilt it never). The slot versions
 * alone keep a reader from serving another key's bytes (clear frees every
 * slot as a removal does); the global word keeps a probe through a table
 * being rebuilt from counting a present key as a miss.
 */
import { NO_RECORD, SEQ, type StoreView } from './store-layout.js';

/**
 * The global sequence word odd: every reader retries (or gives up) what
 * it read meanwhile (reader.ts). Only for what changes everything (clear,
 * rebuild). The load after the add keeps the changes that follow from
 * being seen before the odd word on arm64 (there the add's store is only a
 * store-release; a load-acquire after it orders what comes next).
 */
export function beginAll(v: StoreView): void {
  Atomics.add(v.header, SEQ, 1);
  Atomics.load(v.header, SEQ);
}

export function endAll(v: StoreView): void {
  Atomics.add(v.header, SEQ, 1);
}

/** The slot's version odd: readers of this slot retry, or give up this key (the same arm64 note as beginAll). */
export function openSlot(v: StoreView, slot: number): void {
  Atomics.add(v.ver, slot, 1);
  Atomics.load(v.ver, slot);
}

export function closeSlot(v: StoreView, slot: number): void {
  Atomics.add(v.ver, slot, 1);
}

/**
 * A freed slot's offset points nowhere, and its version moves on: one
 * word changes, so no odd window is needed. A reader that took the
 * version before sees it moved; one that took it after reads NO_RECORD
 * (the add orders the store before it, on arm64 as a store-release).
 */
export function unpointSlot(v: StoreView, slot: number): void {
  v.off[slot] = NO_RECORD;
  Atomics.add(v.ver, slot, 2);
}
