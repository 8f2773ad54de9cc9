/**
 * One try of one query at one server: over UDP on one of the shared sockets
 * (udp-sockets.ts), or over a one-shot TCP connection (after TC=1). Policy
 * (which server, when to give up) belongs to the caller; this only sends,
 * filters and reports.
 *
 * Anti-spoofing (RFC 5452): a cryptographically random id per try, unique on
 * its socket; a random source port per socket, and a socket carries only a
 * few tries for a short time (udp-sockets.ts says why that keeps the
 * protection); an answer is taken only if its source, id and question all
 * match (or it is FORMERR with no question to a query with OPT, which only
 * makes the caller ask again without OPT: question.ts). The UDP sockets are connect()ed, which makes the kernel drop
 * datagrams from other addresses and, on Linux, is the only way an ICMP
 * port-unreachable reaches us (as ECONNREFUSED).
 */
import net from 'node:net';
import { HEADER_LEN } from '../dns/constants.js';
import { FrameDecoder, frame } from '../dns/framing.js';
import { answerMatchesQuery, questionlessFormerr, readId, writeId } from '../dns/question.js';
import type { ServerAddress } from './types.js';
import { randomId, type SharedSocket, type SharedTry, type UdpSockets } from './udp-sockets.js';

export { randomId };

export type AttemptTransport = 'udp' | 'tcp';

/** What an attempt reports to its owner. Each attempt reports onAnswer or onError at most once, then goes quiet. */
export interface AttemptEvents<T> {
  onSent(attempt: QueryAttempt<T>): void;
  /** Source, id and question matched. The buffer is the caller's. */
  onAnswer(attempt: QueryAttempt<T>, answer: Buffer): void;
  /** A datagram or frame that failed the checks; the attempt keeps waiting. */
  onSpoofed(attempt: QueryAttempt<T>): void;
  /** ICMP error, refused or reset connection, or the server closed TCP before answering. */
  onError(attempt: QueryAttempt<T>, code: string): void;
}

export class QueryAttempt<T> implements SharedTry {
  readonly owner: T;
  readonly transport: AttemptTransport;
  readonly server: ServerAddress;
  readonly serverIndex: number;
  readonly id: number;
  /** Clock ms after which the owner gives up on this attempt. */
  readonly deadline: number;
  /** Clock ms when the query went out; set by the owner in onSent (this class keeps no clock). */
  sentAt: number;
  /** What this try sends, but for its id (the caller's buffer, never written). */
  readonly query: Buffer;
  readonly #events: AttemptEvents<T>;
  /** The shared socket this try's id is registered on, until it finishes. */
  #udp: SharedSocket | null;
  #tcp: net.Socket | null;
  #state: 'active' | 'finished';

  constructor(
    owner: T,
    transport: AttemptTransport,
    server: ServerAddress,
    serverIndex: number,
    query: Buffer,
    deadline: number,
    events: AttemptEvents<T>,
    /** Where UDP tries get their socket (unused for TCP). */
    sockets: UdpSockets,
    now: number,
  ) {
    this.owner = owner;
    this.transport = transport;
    this.server = server;
    this.serverIndex = serverIndex;
    this.deadline = deadline;
    this.sentAt = -1;
    this.query = query;
    this.#events = events;
    this.#udp = null;
    this.#tcp = null;
    this.#state = 'active';
    if (transport === 'udp') {
      const sock = sockets.socketFor(serverIndex, server, now);
      this.#udp = sock;
      this.id = sock.attach(this);
      if (sock.ready) this.socketReady(sock);
    } else {
      this.id = randomId();
      this.#startTcp();
    }
  }

  get active(): boolean {
    return this.#state === 'active';
  }

  /** Releases the socket; no event is reported after this. */
  finish(): void {
    if (this.#state === 'finished') return;
    this.#state = 'finished';
    const udp = this.#udp;
    this.#udp = null;
    if (udp !== null) udp.detach(this.id, this);
    const tcp = this.#tcp;
    this.#tcp = null;
    if (tcp !== null) tcp.destroy();
  }

  #wire(): Buffer {
    const msg = Buffer.from(this.query);
    writeId(msg, this.id);
    return msg;
  }

  /** SharedTry: the socket is connected. */
  socketReady(sock: SharedSocket): void {
    if (this.#state !== 'active' || this.#udp !== sock) return;
    // A copy per send: the caller's query is never written, and the id is this try's.
    sock.send(this.#wire(), this.#afterSend);
    this.#events.onSent(this);
  }

  /**
   * A datagram the kernel would not send fails this try at once, as glibc's sendto() error does: no answer can come.
   * ECONNREFUSED is no error of this send but the port-unreachable of an earlier datagram on the socket, which the
   * kernel hands to whichever syscall comes next: it fails every try there, as the socket's 'error' does.
   */
  readonly #afterSend = (err: Error | null): void => {
    if (err === null) return;
    const code = (err as NodeJS.ErrnoException).code ?? 'ESEND';
    if (code === 'ECONNREFUSED' && this.#udp !== null) this.#udp.fail(code);
    else this.#error(code);
  };

  /** SharedTry: a datagram from this try's server under its id. */
  deliver(msg: Buffer): void {
    this.#onMessage(msg);
  }

  /** SharedTry: the socket failed; it has already let go of this try. */
  socketFailed(code: string): void {
    this.#udp = null;
    this.#error(code);
  }

  #onMessage(msg: Buffer): void {
    // One TCP read may carry several frames: those after the answer reach a try already over.
    if (this.#state !== 'active') return;
    if (msg.length < HEADER_LEN || readId(msg) !== this.id || !(answerMatchesQuery(this.query, msg) || questionlessFormerr(this.query, msg))) {
      this.#events.onSpoofed(this);
      return;
    }
    const events = this.#events;
    this.finish();
    events.onAnswer(this, msg);
  }

  #startTcp(): void {
    const sock = net.connect({ host: this.server.host, port: this.server.port, noDelay: true });
    this.#tcp = sock;
    // Frames are views of a read chunk: copy the one we keep.
    const decoder = new FrameDecoder((msg) => this.#onMessage(Buffer.from(msg)));
    sock.on('connect', () => {
      if (this.#state !== 'active') return;
      sock.write(frame(this.#wire()));
      this.#events.onSent(this);
    });
    sock.on('data', (chunk: Buffer) => {
      if (this.#state === 'active') decoder.push(chunk);
    });
    sock.on('error', (err: NodeJS.ErrnoException) => this.#error(err.code ?? 'ETCP'));
    sock.on('close', () => this.#error('ECLOSED'));
  }

  #error(code: string): void {
    if (this.#state !== 'active') return;
    const events = this.#events;
    this.finish();
    events.onError(this, code);
  }
}
