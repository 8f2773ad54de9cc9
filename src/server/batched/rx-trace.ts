/**
 * A diagnostic, off unless NODELOCAL_RX_TRACE names a file: each datagram a
 * batched worker receives, with its kernel receive timestamp and the times
 * its turn started, its recvmmsg returned and its turn's sendmmsg returned
 * (all CLOCK_REALTIME, microseconds since the epoch, the clock the kernel
 * stamps with), so a client that logs its own send and receive times can
 * join them per query (bench/rx-trace-join.ts) and see where a slow answer
 * spent its time. Written when the worker leaves its loop, as
 * `<file>.<pid>.w<index>`: rows of RX_TRACE_FIELDS float64s; and every turn
 * as `<file>.<pid>.w<index>.turns`: rows of TURN_FIELDS (turn start, the
 * main thread's messages taken, completions applied, sendmmsg returned,
 * report posted; the work it did: completions + datagrams; the worker's
 * wake-ups from poll so far).
 *
 * Off, it costs the loop one null check per turn and per datagram. On, it
 * holds TRACE_LIMIT rows (40 MB) and then stops recording.
 */
import { writeFileSync } from 'node:fs';

/** One row: kernel receive time (NaN: none), turn start, recvmmsg return, the turn's sendmmsg return (a miss's answer leaves later, from elsewhere), key. */
export const RX_TRACE_FIELDS = 5;
/** Row key: the client's UDP port * 65536 + the DNS message id, what a client can join on. */
export function traceKey(port: number, id: number): number {
  return port * 65536 + id;
}

const TRACE_LIMIT = 1_000_000;
export const TURN_FIELDS = 7;

export class RxTrace {
  readonly #file: string;
  readonly #rows: Float64Array;
  #n: number;
  /** First row of the current turn: its send time is filled in when the turn's answers have gone. */
  #turnFrom: number;
  #turnUs: number;
  /** This turn's intermediate times: [1] messages taken, [2] completions applied, [3] answers sent. */
  readonly #marks: Float64Array;
  readonly #turns: Float64Array;
  #t: number;

  /** The trace NODELOCAL_RX_TRACE asks for, or null (the usual case). */
  static fromEnv(worker: number): RxTrace | null {
    const f = process.env['NODELOCAL_RX_TRACE'];
    return f === undefined || f === '' ? null : new RxTrace(`${f}.${process.pid}.w${worker}`);
  }

  constructor(file: string) {
    this.#file = file;
    this.#rows = new Float64Array(TRACE_LIMIT * RX_TRACE_FIELDS);
    this.#n = 0;
    this.#turnFrom = 0;
    this.#turnUs = NaN;
    this.#turns = new Float64Array(TRACE_LIMIT * TURN_FIELDS);
    this.#t = 0;
    this.#marks = new Float64Array(4);
  }

  mark(k: number, us: number): void {
    this.#marks[k] = us;
  }

  turn(us: number): void {
    this.#turnUs = us;
    this.#turnFrom = this.#n;
  }

  /** The turn's end: its report posted at `us`; `work` completions and datagrams; `wakeups` so far. */
  endTurn(us: number, work: number, wakeups: number): void {
    if (this.#t >= TRACE_LIMIT) return;
    const at = this.#t++ * TURN_FIELDS;
    const r = this.#turns;
    const m = this.#marks;
    r[at] = this.#turnUs;
    r[at + 1] = m[1]!;
    r[at + 2] = m[2]!;
    r[at + 3] = m[3]!;
    r[at + 4] = us;
    r[at + 5] = work;
    r[at + 6] = wakeups;
  }

  datagram(kernelUs: number, rxUs: number, key: number): void {
    if (this.#n >= TRACE_LIMIT) return;
    const at = this.#n++ * RX_TRACE_FIELDS;
    const r = this.#rows;
    r[at] = kernelUs;
    r[at + 1] = this.#turnUs;
    r[at + 2] = rxUs;
    r[at + 3] = NaN;
    r[at + 4] = key;
  }

  /** The turn's answers went out at `us`: every datagram received in it gets that send time. */
  sent(us: number): void {
    const r = this.#rows;
    for (let i = this.#turnFrom; i < this.#n; i++) r[i * RX_TRACE_FIELDS + 3] = us;
    this.#turnFrom = this.#n;
    this.#marks[3] = us;
  }

  write(): void {
    writeFileSync(this.#file, new Uint8Array(this.#rows.buffer, 0, this.#n * RX_TRACE_FIELDS * 8));
    writeFileSync(`${this.#file}.turns`, new Uint8Array(this.#turns.buffer, 0, this.#t * TURN_FIELDS * 8));
  }
}
