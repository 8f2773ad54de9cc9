/**
 * The send side of a batched worker's loop (loop.ts): each socket's send
 * vector, the answers queued into it (from handle() now or a completion
 * later), and the sendmmsg that flushes it.
 * Kept apart so loop.ts reads as the turn (messages, completions, receive,
 * send, report, sleep), and this file as where answers go.
 */
import { Transport, type ClientChannel, type ClientPeer } from '../listener.js';
import type { UdpBatchSys } from '../../sys/udp-batch.js';
import { MAX_DATAGRAM_BYTES, SendVec, type Arena } from './msgvec.js';
import type { Peer } from './loop-parts.js';
import { BATCHED_COUNTERS, type WorkerCounters } from './stats.js';

const IO = BATCHED_COUNTERS.slot;

/** Answers for one socket go into its send vector. */
export class SocketChannel implements ClientChannel {
  readonly transport = Transport.UDP;
  readonly #sender: Sender;
  readonly #sock: number;
  constructor(sender: Sender, sock: number) {
    this.#sender = sender;
    this.#sock = sock;
  }
  send(answer: Buffer, peer: ClientPeer): void {
    this.#sender.queue(this.#sock, answer, peer as Peer);
  }
  discard(peer: ClientPeer): void {
    (peer as Peer).answered = true;
  }
}

export class Sender {
  readonly #sys: UdpBatchSys;
  readonly #fds: readonly number[];
  readonly #send: SendVec[];
  /** An answer too big for its socket's slots goes out alone from here, with its source address as any other. */
  readonly #alone: SendVec;
  readonly #io: Float64Array;

  constructor(sys: UdpBatchSys, fds: readonly number[], arena: Arena, send: SendVec[], counters: WorkerCounters) {
    this.#sys = sys;
    this.#fds = fds;
    this.#send = send;
    this.#alone = new SendVec(arena, 1, MAX_DATAGRAM_BYTES);
    this.#io = counters.io.values;
  }

  /** An answer for `peer`, from handle() now or from complete() later. */
  queue(sock: number, answer: Buffer, peer: Peer): void {
    peer.answered = true;
    const vec = this.#send[sock]!;
    if (answer.length > vec.slotBytes) {
      // A reload raised --max-udp-size past the slots: this answer goes alone.
      this.#alone.push(answer, peer.words, peer.wordOff, peer.nameLen);
      if (this.#sys.sendmmsg(this.#fds[sock]!, this.#alone.address, 1) < 1) this.#io[IO.sendErrors]!++;
      this.#alone.clear();
      return;
    }
    if (vec.full) this.#flush(sock);
    vec.push(answer, peer.words, peer.wordOff, peer.nameLen);
  }

  /** Sends every vector that holds answers: once a turn. */
  flushFilled(): void {
    const fds = this.#fds;
    for (let s = 0; s < fds.length; s++) if (this.#send[s]!.filled > 0) this.#flush(s);
  }

  #flush(s: number): void {
    const vec = this.#send[s]!;
    const fd = this.#fds[s]!;
    const filled = vec.filled;
    let k = 0;
    // Bounded: every round either sends something or gives up on one message.
    while (k < filled) {
      const r = this.#sys.sendmmsg(fd, vec.at(k), filled - k);
      this.#io[IO.sends]!++;
      if (r > 0) {
        k += r;
      } else {
        // EAGAIN (send buffer full), EPERM (a firewall), ...: that client's answer is lost, and it will retry.
        this.#io[IO.sendErrors]!++;
        k++;
      }
    }
    vec.clear();
  }
}
