/**
 * One try of one query at one server: over UDP from a fresh socket, or over a
 * one-shot TCP connection (after TC=1). Policy (which server, when to give
 * up) belongs to the caller; this only sends, filters and reports.
 *
 * Anti-spoofing (RFC 5452): a cryptographically random id and a fresh
 * ephemeral source port per try, and an answer is taken only if its source,
 * id and question all match. The UDP socket is connect()ed, which makes the
 * kernel drop datagrams from other addresses and, on Linux, is the only way
 * an ICMP port-unreachable reaches us (as ECONNREFUSED).
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { randomFillSync } from 'node:crypto';
import { HEADER_LEN } from '../dns/constants.js';
import { FrameDecoder, frame } from '../dns/framing.js';
import { answerMatchesQuery, readId, writeId } from '../dns/question.js';
import type { ServerAddress } from './types.js';

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

// Random ids drawn in bulk: one getrandom() per 512 queries instead of one per query.
const idPool = new Uint16Array(512);
let idNext = idPool.length;

export function randomId(): number {
  if (idNext === idPool.length) {
    randomFillSync(idPool);
    idNext = 0;
  }
  return idPool[idNext++]!;
}

/** Address equality with IPv6 spelled differently (case, zone) tolerated. */
function sameHost(a: string, b: string): boolean {
  if (a === b) return true;
  const strip = (h: string): string => {
    const pct = h.indexOf('%');
    return (pct >= 0 ? h.slice(0, pct) : h).toLowerCase();
  };
  return strip(a) === strip(b);
}

export class QueryAttempt<T> {
  readonly owner: T;
  readonly transport: AttemptTransport;
  readonly server: ServerAddress;
  readonly serverIndex: number;
  readonly id: number;
  /** Clock ms after which the owner gives up on this attempt. */
  readonly deadline: number;
  /** Clock ms when the query went out; set by the owner in onSent (this class keeps no clock). */
  sentAt: number;
  readonly #query: Buffer;
  readonly #events: AttemptEvents<T>;
  #udp: dgram.Socket | null;
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
  ) {
    this.owner = owner;
    this.transport = transport;
    this.server = server;
    this.serverIndex = serverIndex;
    this.id = randomId();
    this.deadline = deadline;
    this.sentAt = -1;
    this.#query = query;
    this.#events = events;
    this.#udp = null;
    this.#tcp = null;
    this.#state = 'active';
    if (transport === 'udp') this.#startUdp();
    else this.#startTcp();
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
    if (udp !== null) {
      try {
        udp.close();
      } catch {
        // Already closed by an error path.
      }
    }
    const tcp = this.#tcp;
    this.#tcp = null;
    if (tcp !== null) tcp.destroy();
  }

  #wire(): Buffer {
    const msg = Buffer.from(this.#query);
    writeId(msg, this.id);
    return msg;
  }

  #startUdp(): void {
    const sock = dgram.createSocket(net.isIPv6(this.server.host) ? 'udp6' : 'udp4');
    this.#udp = sock;
    sock.on('error', (err: NodeJS.ErrnoException) => this.#error(err.code ?? 'EUDP'));
    sock.on('message', (msg: Buffer, rinfo: dgram.RemoteInfo) => this.#onDatagram(msg, rinfo));
    sock.once('connect', () => {
      if (this.#state !== 'active') return;
      try {
        // Without a callback, send errors come back as 'error' events.
        sock.send(this.#wire());
      } catch (err) {
        this.#error((err as NodeJS.ErrnoException).code ?? 'EUDP');
        return;
      }
      this.#events.onSent(this);
    });
    // connect() binds to port 0 of the socket's family first: a fresh random source port per try.
    sock.connect(this.server.port, this.server.host);
  }

  #onDatagram(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (this.#state !== 'active') return;
    if (rinfo.port !== this.server.port || !sameHost(rinfo.address, this.server.host)) {
      this.#events.onSpoofed(this);
      return;
    }
    this.#onMessage(msg);
  }

  #onMessage(msg: Buffer): void {
    if (msg.length < HEADER_LEN || readId(msg) !== this.id || !answerMatchesQuery(this.#query, msg)) {
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
