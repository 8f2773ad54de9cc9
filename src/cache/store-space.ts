/**
 * Where the slab's next record goes, and how removed records' bytes come
 * back (the record format and the moves are store-slab.ts's; store.ts owns
 * everything else).
 *
 * Records are appended at the head. When the head reaches the soft end, the
 * soft end moves up (x1.5, nothing copied) while the slab is mostly live and
 * under its cap. Past that a lap begins: the head goes back to the slab's
 * start, and a sweep walks the records appended before (from the start to
 * where the head was), sliding each live one down to the head and passing
 * over the dead ones, whose bytes become the free gap between the head and
 * the sweep. New records go into that gap. When the sweep reaches the lap's
 * end, the head goes on up to the soft end, and so on.
 *
 * The sweep walks its pace in bytes for every byte appended (the lap's bytes
 * over its dead bytes, at least 2), so that it ends before the gap it opens
 * runs out, and it walks further on demand when the gap is short of a
 * record. So an insert moves a few records, not the slab: the whole-slab
 * compaction this replaces held the writing thread for up to 5 ms with
 * 10,000 entries and 75 ms with 1,000,000 (a miss and every answer behind it
 * waited that long). The bytes moved over a lap are what that compaction
 * moved: at most LIVE_SHARE's 4 per byte freed at the cap.
 */
import { DEAD, type StoreView } from './store-layout.js';
import { grownSoftEnd, MOVE_CHUNK, moveRun } from './store-slab.js';

const NO_LAP = -1;

export class SlabSpace {
  /** The slab's length: the byte budget. */
  readonly cap: number;
  /** What the slab uses for now: appends stop here. */
  softEnd: number;
  /** Bytes of removed records not yet passed over by a sweep. */
  dead: number;
  readonly #v: StoreView;
  /** Where the next record goes. */
  #head: number;
  /** In a lap: the next record to walk; [head, sweep) is free. */
  #sweep: number;
  /** In a lap: where its records end (the head when it began); NO_LAP between laps. */
  #lapEnd: number;
  /** In a lap: bytes walked per byte appended. */
  #pace: number;
  /** Bytes the sweep owes (its pace times what was appended) and has not walked yet. */
  #owed: number;

  constructor(v: StoreView, cap: number, softEnd: number) {
    this.#v = v;
    this.cap = cap;
    this.softEnd = softEnd;
    this.dead = 0;
    this.#head = 0;
    this.#sweep = 0;
    this.#lapEnd = NO_LAP;
    this.#pace = 0;
    this.#owed = 0;
  }

  /**
   * Makes `rec` bytes free at the head: as they are, by moving the soft end
   * up, or by sweeping. False when only an eviction can make room.
   */
  reserve(rec: number): boolean {
    for (;;) {
      if (this.#lapEnd === NO_LAP) {
        const end = this.softEnd;
        if (this.#head + rec <= end) return true;
        const live = this.#head - this.dead;
        if ((live + rec) * 4 > end * 3 && end < this.cap) {
          this.softEnd = grownSoftEnd(end, this.#head + rec, this.cap);
          if (this.#head + rec <= this.softEnd) return true;
        }
        // A lap ends with everything live slid down and the rest free: it makes room only if the record fits beside that.
        if (this.dead === 0 || live + rec > this.softEnd) return false;
        this.#beginLap();
      }
      if (this.#sweep - this.#head >= rec) return true;
      this.#walk(MOVE_CHUNK);
    }
  }

  /** Takes `rec` bytes reserve() made free; returns their offset. The sweep then walks its share, sliding records in above them, never into them. */
  take(rec: number): number {
    const off = this.#head;
    this.#head = off + rec;
    if (this.#lapEnd !== NO_LAP) {
      this.#owed += rec * this.#pace;
      while (this.#owed > 0 && this.#lapEnd !== NO_LAP) this.#owed -= this.#walk(this.#owed);
    }
    return off;
  }

  /** A record of `rec` bytes was marked DEAD. */
  freed(rec: number): void {
    this.dead += rec;
  }

  /** Nothing stored: the soft end stays where it is (its pages are resident anyway). */
  clear(): void {
    this.dead = 0;
    this.#head = 0;
    this.#endLap();
  }

  #beginLap(): void {
    this.#lapEnd = this.#head;
    this.#head = 0;
    this.#sweep = 0;
    // Walking this many bytes per byte appended, the lap ends before the gap (its dead bytes) is used up, if they are spread evenly; if not, reserve() walks on.
    this.#pace = Math.max(2, Math.ceil(this.#lapEnd / this.dead));
    this.#owed = 0;
  }

  #endLap(): void {
    this.#lapEnd = NO_LAP;
    this.#sweep = 0;
    this.#owed = 0;
  }

  /** Walks one run of dead records, or slides one run of live ones down to the head: at least one record, then while under `limit` bytes (and MOVE_CHUNK); returns the bytes walked. */
  #walk(limit: number): number {
    const u32 = this.#v.slabU32;
    const start = this.#sweep;
    const end = this.#lapEnd;
    const stop = Math.min(limit, MOVE_CHUNK);
    let at = start;
    if (u32[at >>> 2] === DEAD) {
      // Passing over dead records costs no move: a longer run is as cheap as the limit's.
      while (at < end && at - start < MOVE_CHUNK && u32[at >>> 2] === DEAD) at += u32[(at >>> 2) + 1]!;
      this.dead -= at - start;
    } else {
      do at += u32[(at >>> 2) + 1]!;
      while (at < end && at - start < stop && u32[at >>> 2] !== DEAD);
      this.#head = moveRun(this.#v, start, at, this.#head);
    }
    this.#sweep = at;
    if (at === end) this.#endLap();
    return at - start;
  }
}
