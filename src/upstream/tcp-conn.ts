/**
 * The two records TcpPool moves through its state machine: a Job (one
 * exchange) and a Conn (one upstream connection, its state, its in-flight
 * table and the frames staged for its next write). Plain data and one
 * connection's pipelining (RFC 7766 6.2.1): ids allocated per connection,
 * frames staged under them, answers matched to their query in any order;
 * and opening one, its socket's events routed to the pool. Every transition
 * is TcpPool's.
 */
import net from 'node:net';
import tls from 'node:tls';
import { randomInt } from 'node:crypto';
import { dialableHost } from '../addr.js';
import { HEADER_LEN } from '../dns/constants.js';
import { FrameDecoder } from '../dns/framing.js';
import { answerMatchesQuery, readId } from '../dns/question.js';
import { IntTable } from '../int-table.js';
import { MISS_TRACE, traceMarks, traceNow, traceRecord } from '../miss-trace.js';
import type { ServerAddress, UpstreamExchange } from './types.js';

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
  /** Its connection's count of sends when it was staged there: written once a flush took it (Conn.wrote). */
  sendNo: number;
  retried: boolean;
  /** Moved off a stalled connection once already (tcp-pick.ts): never again. */
  moved: boolean;
  done: boolean;
  /** Waiting in its pool's queue (job-queue.ts). */
  queued: boolean;
  /** Clock ms of the last write, for coredns_forward_request_duration_seconds. */
  sentAt: number;
  /** Under NODELOCAL_MISS_TRACE only (src/miss-trace.ts): when it was staged, and when its write() returned, us. */
  tracedAt: number;
  constructor(ex: UpstreamExchange) {
    this.ex = ex;
    this.id = -1;
    this.sendNo = 0;
    this.sentAt = 0;
    this.tracedAt = 0;
    this.retried = false;
    this.moved = false;
    this.done = false;
    this.queued = false;
  }
}

export class Conn {
  state: ConnState;
  readonly socket: net.Socket;
  /** By id: a table that makes no garbage per query (int-table.ts: a Map here left old-generation garbage per miss). */
  readonly inflight: IntTable<Job>;
  readonly decoder: FrameDecoder;
  nextId: number;
  sent: number;
  answered: number;
  readonly startedAt: number;
  openedAt: number;
  /** Clock ms it last moved on: an answer read, or a query written while nothing was in flight (tcp-pick.ts stalled()). */
  progressAt: number;
  /** Nothing read this long with queries outstanding: stalled (tcp-pick.ts); Infinity for a server that answers out of order. */
  readonly stallMs: number;
  /** Queries timed out on it since it last read an answer (late ones too): a connection black-holed (its pod's node gone, no RST) only times out. */
  silentTimeouts: number;
  /** Clock ms of the last timeout counted in silentTimeouts. */
  silentAt: number;
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
  /** Frames in `out`: queries that count as sent once flush() writes them, and never if the connection closes first. */
  staged: number;
  /** Queries staged on it, and how many of those the last flush had written (the rest were staged since). */
  sends: number;
  written: number;
  constructor(socket: net.Socket, onFrame: (msg: Buffer) => void, now: number, stallMs: number) {
    this.state = 'connecting';
    this.socket = socket;
    this.inflight = new IntTable();
    this.decoder = new FrameDecoder(onFrame);
    // A random start keeps ids from repeating across reconnects; sequential after that, so reuse is 64k queries apart.
    this.nextId = randomInt(0, 0x10000);
    this.sent = 0;
    this.answered = 0;
    this.startedAt = now;
    this.openedAt = 0;
    this.progressAt = 0;
    this.stallMs = stallMs;
    this.silentTimeouts = 0;
    this.silentAt = 0;
    this.lastError = 'closed';
    this.out = Buffer.allocUnsafe(STAGING_BYTES);
    this.outLen = 0;
    this.staged = 0;
    this.sends = 0;
    this.written = 0;
  }

  /**
   * Puts `job` in flight under the next free id and stages its query; true
   * when it is the first frame since the last flush (the caller schedules
   * one).
   */
  send(job: Job): boolean {
    let id = this.nextId;
    // Terminates: in-flight is capped below 65536.
    while (this.inflight.get(id) !== undefined) id = (id + 1) & 0xffff;
    this.nextId = (id + 1) & 0xffff;
    job.id = id;
    job.sendNo = this.sends++;
    this.inflight.set(id, job);
    return this.stage(job.ex.query, id);
  }

  /**
   * The in-flight job `msg` answers, taken out of the table; or why none:
   * 'late' when nothing is in flight under its id (the query already timed
   * out), 'mismatched' when it is too short to tell or its question is not
   * the one sent under that id. A mismatched job keeps waiting: the right
   * answer may still come, and the deadline bounds the wait.
   */
  answerFor(msg: Buffer): Job | 'late' | 'mismatched' {
    if (msg.length < HEADER_LEN) return 'mismatched';
    const job = this.inflight.get(readId(msg));
    if (job === undefined) return 'late';
    if (!answerMatchesQuery(job.ex.query, msg)) return 'mismatched';
    this.inflight.delete(job.id);
    return job;
  }

  /** What is in flight on it, oldest send first (a copy: the caller may take jobs out meanwhile). */
  inSendOrder(): Job[] {
    return this.inflight.values().sort((a, b) => a.sendNo - b.sendNo);
  }

  /** An answer read (one in time, or late): the connection moves on, and is not silent. */
  heard(now: number): void {
    this.progressAt = now;
    this.silentTimeouts = 0;
  }

  /**
   * `job` timed out on it at `now`: one more toward silent, unless it was sent before the last one counted. Those
   * were in flight together, and the late answer that tells a slow server from a dead one had no time to come.
   */
  timedOut(job: Job, now: number): void {
    if (this.silentTimeouts > 0 && job.sentAt < this.silentAt) return;
    this.silentTimeouts++;
    this.silentAt = now;
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
    this.staged++;
    return first;
  }

  /**
   * Writes what is staged in one write(); the staging buffer is handed to the stream if it could not take it at once.
   * Returns how many queries that wrote.
   */
  flush(): number {
    if (this.outLen === 0) return 0;
    const bytes = this.out.subarray(0, this.outLen);
    const frames = this.staged;
    this.written = this.sends;
    this.outLen = 0;
    this.staged = 0;
    this.socket.write(bytes);
    if (this.socket.writableLength > 0) this.out = Buffer.allocUnsafe(STAGING_BYTES);
    return frames;
  }

  /** Whether `job`, in flight here, was written (not only staged since the last flush). */
  wrote(job: Job): boolean {
    return job.sendNo < this.written;
  }

  /**
   * Whether `job`, in flight on this connection as it closed, may be sent again: 'again' (a retry, and for one that
   * answered nothing its one more try used), 'unsent' (only staged, never written: not a retry), or null: no more.
   * A connection that answered is a live server closing it (a per-connection query limit, a pod restarting, an idle
   * close racing a burst): what it left unanswered is re-sent as often as the deadline allows. One that answered
   * nothing may be failing on these very queries: one more try only.
   */
  resend(job: Job): 'again' | 'unsent' | null {
    if (!this.wrote(job)) return 'unsent';
    if (this.answered > 0) return 'again';
    if (job.retried) return null;
    job.retried = true;
    return 'again';
  }

  /** Drops what is staged unwritten (the connection closed first): its jobs are re-queued or failed, and were never sent. */
  unstage(): void {
    this.outLen = 0;
    this.staged = 0;
  }
}


/** What a connection's socket tells the pool (bound once per pool; each connection closes over its Conn). */
export interface ConnEvents {
  /** Usable: connected, or for TLS the handshake and certificate checks done. */
  readonly open: (c: Conn) => void;
  readonly frame: (c: Conn, msg: Buffer) => void;
  /** The server closed it or the socket closed: nothing more will be answered on it. */
  readonly lost: (c: Conn) => void;
  /** A socket error, its code in c.lastError ('close' follows). */
  readonly error: (c: Conn) => void;
}

/** A new connection over `socket` (just connecting), its events routed to `ev`, stalled after `stallMs` with nothing read. */
export function openConn(socket: net.Socket, now: number, ev: ConnEvents, stallMs: number): Conn {
  const c: Conn = new Conn(socket, (msg) => ev.frame(c, msg), now, stallMs);
  // TLS: usable once the handshake and certificate checks are done, not at the TCP connect.
  socket.on(socket instanceof tls.TLSSocket ? 'secureConnect' : 'connect', () => ev.open(c));
  socket.on('data', MISS_TRACE ? (chunk: Buffer) => tracedData(c, chunk) : (chunk: Buffer) => c.decoder.push(chunk));
  // The server's FIN: CoreDNS closing an idle connection, or a pod going away. Nothing more will be answered on it.
  socket.on('end', () => ev.lost(c));
  socket.on('error', (err: NodeJS.ErrnoException) => {
    c.lastError = err.code ?? err.message;
    ev.error(c);
  });
  socket.on('close', () => ev.lost(c));
  return c;
}

function tracedData(c: Conn, chunk: Buffer): void {
  const at = traceNow();
  traceMarks.dataAt = at;
  c.decoder.push(chunk);
  traceRecord('data.handled', traceNow() - at);
}

/**
 * The default connect of a TcpPool: plain TCP. A %zone given as an interface index is mapped to its name at each
 * connect (addr.ts says why): the pool outlives reloads, and the interface may have come up after it was built.
 */
export function plainConnect(server: ServerAddress): net.Socket {
  return net.connect({ host: dialableHost(server.host), port: server.port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000 });
}
