/**
 * The two records TcpPool moves through its state machine: a Job (one
 * exchange, with our framed copy of its query) and a Conn (one upstream
 * connection, its state and its in-flight table). Plain data: every
 * transition is TcpPool's.
 */
import type net from 'node:net';
import { randomInt } from 'node:crypto';
import { FrameDecoder, frame } from '../dns/framing.js';
import type { UpstreamExchange } from './types.js';

export type ConnState = 'connecting' | 'open' | 'draining' | 'closed';

/** One exchange from send() until it completes. The framed copy is ours; its id is rewritten on each (re)send. */
export class Job {
  readonly ex: UpstreamExchange;
  readonly wire: Buffer;
  id: number;
  retried: boolean;
  done: boolean;
  /** Clock ms of the last write, for coredns_forward_request_duration_seconds. */
  sentAt: number;
  constructor(ex: UpstreamExchange) {
    this.ex = ex;
    this.wire = frame(ex.query);
    this.id = -1;
    this.sentAt = 0;
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
  }
}
