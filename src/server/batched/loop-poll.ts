/**
 * A batched worker's sleep (loop.ts): poll() on its eventfd and sockets,
 * announced in the shared SLEEPING word, which the main thread reads after
 * each post to know whether to write to the eventfd. The pollfds live in
 * the worker's native block; a socket the worker reads no more is taken out.
 */
import { POLLIN, type UdpBatchSys } from '../../sys/udp-batch.js';
import type { Arena } from './msgvec.js';
import { Ctl } from './protocol.js';

export const POLLFD_BYTES = 8;

export class Poller {
  readonly #sys: UdpBatchSys;
  readonly #arena: Arena;
  readonly #ctl: Int32Array;
  readonly #wakeFd: number;
  /** pollfd[0] is the eventfd, then one per socket. */
  readonly #off: number;
  readonly #count: number;
  /** 8 bytes of native memory the eventfd's counter is read into. */
  readonly #scratchOff: number;
  readonly #timeoutMs: number;

  constructor(sys: UdpBatchSys, arena: Arena, ctl: Int32Array, wakeFd: number, fds: readonly number[], scratchOff: number, timeoutMs: number) {
    this.#sys = sys;
    this.#arena = arena;
    this.#ctl = ctl;
    this.#wakeFd = wakeFd;
    this.#count = fds.length + 1;
    this.#off = arena.take(this.#count * POLLFD_BYTES);
    this.#scratchOff = scratchOff;
    this.#timeoutMs = timeoutMs;
    const pv = arena.view;
    [wakeFd, ...fds].forEach((fd, i) => {
      pv.setInt32(this.#off + i * POLLFD_BYTES, fd, true);
      pv.setInt16(this.#off + i * POLLFD_BYTES + 4, POLLIN, true);
    });
  }

  /** Sleeps until a datagram, the main thread's wake or the timeout; false when a message was already waiting (no sleep). */
  sleep(): boolean {
    const ctl = this.#ctl;
    let slept = false;
    Atomics.store(ctl, Ctl.SLEEPING, 1);
    // Checked after announcing the sleep: a message posted before this is seen here, one posted after finds SLEEPING and wakes us.
    if (Atomics.load(ctl, Ctl.PENDING) === 0) {
      this.#sys.poll(this.#arena.address + this.#off, this.#count, this.#timeoutMs);
      slept = true;
    }
    Atomics.store(ctl, Ctl.SLEEPING, 0);
    // The eventfd is level-triggered: drain it whether or not this wake came from it (read fails with EAGAIN when empty).
    if ((this.#arena.view.getInt16(this.#off + 6, true) & POLLIN) !== 0) {
      this.#sys.read8(this.#wakeFd, this.#arena.address + this.#scratchOff);
    }
    return slept;
  }

  /** Socket `s` is read no more: poll() skips a negative fd (a socket the kernel still fills would keep waking it). */
  skip(s: number): void {
    this.#arena.view.setInt32(this.#off + (s + 1) * POLLFD_BYTES, -1, true);
  }
}
