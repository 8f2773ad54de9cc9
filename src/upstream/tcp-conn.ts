/**
 * The two records TcpPool moves through its state machine: a Job (one
 * exchange) and a Conn (one upstream connection, its state, its in-flight
 * table and the frames staged for its next write). Plain data and the byte
 * staging: every transition is TcpPool's.
 */
import type net from 'node:net';
import { randomInt } from 'node:crypto';
import { FrameDecoder } from '../dns/framing.js';
import type { UpstreamExchange } from './types.js';

/** Room for ~100 typical queries per turn before the staging buffer grows. */
const STAGING_BYTES = 8192;

export type ConnState = 'connecting' | 'open' | 'draining' | 'closed';

/**
 * One exchange from send() until it completes. No copy of the query of its
 * own: each (re)send frames ex.query straight into its connection's staging
 * buffer under the id of that send.
 */
export class Job {
  readonly ex: UpstreamExchange;
  id: number;
  retried: boolean;
  done: boolean;
  /** Clock ms of the last write, for coredns_forward_request_duration_seconds. */
  sentAt: number;
  /** Under NODELOCAL_MISS_TRACE only (src/miss-trace.ts): when it was staged, and when its write() returned, us. */
  tracedAt: number;
  constructor(ex: UpstreamExchange) {
    this.ex = ex;
    this.id = -1;
    this.sentAt = 0;
    this.tracedAt = 0;
    this.retried = false;
    this.done = false;
  }
}

export class Conn {
  state: ConnState;
  readonly socket: net.Socket;
  readonly inflight: Map<number, Job>;
  readonly decoder: FrameDecoder;
  nextId: number;
  sent: number;
  answered: number;
  readonly startedAt: number;
  openedAt: number;
  /** errno code of the last socket error, for the unreachable log line. */
  lastError: string;
  /**
   * Frames written since the last flush, length-prefixed, ids in place: the
   * pool writes them with one write() per event-loop turn. Reused across
   * flushes while the kernel takes each write whole; a write left pending in
   * the stream keeps its buffer, and staging moves to a fresh one.
   */
  out: Buffer;
  outLen: number;
  constructor(socket: net.Socket, onFrame: (msg: Buffer) => void, now: number) {
    this.state = 'connecting';
    this.socket = socket;
    this.inflight = new Map();
    this.decoder = new FrameDecoder(onFrame);
    // A random start keeps ids from repeating across reconnects; sequential after that, so reuse is 64k queries apart.
    this.nextId = randomInt(0, 0x10000);
    this.sent = 0;
    this.answered = 0;
    this.startedAt = now;
    this.openedAt = 0;
    this.lastError = 'closed';
    this.out = Buffer.allocUnsafe(STAGING_BYTES);
    this.outLen = 0;
  }

  /** Appends `query` framed (RFC 7766 length prefix) under `id`; returns true when it is the first frame since the last flush. */
  stage(query: Buffer, id: number): boolean {
    const first = this.outLen === 0;
    const need = this.outLen + 2 + query.length;
    if (need > this.out.length) {
      const grown = Buffer.allocUnsafe(Math.max(need, this.out.length * 2));
      this.out.copy(grown, 0, 0, this.outLen);
      this.out = grown;
    }
    const at = this.outLen;
    this.out.writeUInt16BE(query.length, at);
    query.copy(this.out, at + 2);
    // The exchange's own buffer is never written: its id bytes are the caller's.
    this.out.writeUInt16BE(id, at + 2);
    this.outLen = need;
    return first;
  }

  /** Writes what is staged in one write(); the staging buffer is handed to the stream if it could not take it at once. */
  flush(): void {
    if (this.outLen === 0) return;
    const bytes = this.out.subarray(0, this.outLen);
    this.outLen = 0;
    this.socket.write(bytes);
    if (this.socket.writableLength > 0) this.out = Buffer.allocUnsafe(STAGING_BYTES);
  }
}

