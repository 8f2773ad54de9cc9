/**
 * The cluster-DNS transport: a few persistent TCP connections to one address
 * (the kube-dns ClusterIP), many queries pipelined on each (RFC 7766 6.2.1),
 * matched by ids we allocate per connection, answers accepted in any order.
 *
 * TCP sidesteps the UDP conntrack races behind the classic 5 s stalls, and
 * pipelining lets two connections carry the whole node's misses.
 *
 *   send() ─► least-loaded open connection with room ─► in-flight Map id -> job
 *               │ none
 *               ▼
 *             queue (FIFO, bounded) ─► drained when a connection opens or frees room
 *
 * Connection states:
 *   connecting ─► open ─► draining ─► closed
 *        └────────────┴───────┴────────► closed  (connect failure, server close, pool close)
 * `draining` takes no new queries; it closes when its in-flight map is empty
 * (or its last deadline passes). Rotation drains a connection after a number
 * of queries or some time, so a new connect may land on another kube-dns pod
 * behind the ClusterIP and load spreads.
 *
 * Deadlines, connect timeouts, age rotation and backoff expiry are all handled
 * by one sweep timer that runs only while something is pending.
 *
 * This module is the pool: its queue and the connections' lifecycle. The
 * choice of a connection (stalled and silent ones) is in tcp-pick.ts, one
 * connection's ids, staging and answer matching in tcp-conn.ts, the
 * once-per-turn flush in tcp-write-batch.ts, the queue's O(1) cancel in job-queue.ts, connect backoff and the
 * unreachable state in tcp-reachability.ts, the counters in
 * tcp-pool-counters.ts, its options in tcp-pool-options.ts.
 */
import net from 'node:net';
import { DEFAULTS } from '../config.js';
import { systemClock, type Clock } from '../clock.js';
import { silentLogger, type Logger } from '../log.js';
import { OFF_FLAGS, RCODE_MASK } from '../dns/constants.js';
import { UpstreamHealth, serverFailed } from './health.js';
import { Counters } from '../stats/counters.js';
import type { ForwardDurations } from './forward-durations.js';
import { Lifecycle } from './lifecycle.js';
import { settle } from './settle.js';
import { JobQueue } from './job-queue.js';
import { Job, openConn, plainConnect, type Conn, type ConnEvents } from './tcp-conn.js';
import { Mover, SILENT_TIMEOUTS, STALL_MS, pickConn, stalled, surplus, wantsConnect } from './tcp-pick.js';
import type { TcpPoolOptions } from './tcp-pool-options.js';
import { tcpPoolCounters, type TcpPoolCounter } from './tcp-pool-counters.js';
import { TcpReachability } from './tcp-reachability.js';
import { WriteBatch } from './tcp-write-batch.js';
import { MISS_TRACE, traceMarks, traceRecord } from '../miss-trace.js';
import type { ServerAddress, Upstream, UpstreamExchange, UpstreamFailure } from './types.js';
import { rcodeSlots } from './upstream-counters.js';

const SLOT = tcpPoolCounters.slot;
const RCODE_SLOT = rcodeSlots(SLOT);

export type { TcpPoolOptions } from './tcp-pool-options.js';

export class TcpPool implements Upstream {
  readonly name: string;
  readonly health: UpstreamHealth;
  readonly counters: Counters<TcpPoolCounter>;
  readonly #values: Float64Array;
  readonly #durations: ForwardDurations | null;
  readonly #server: ServerAddress;
  readonly #size: number;
  readonly #maxInFlight: number;
  readonly #maxQueued: number;
  readonly #rotateAfterQueries: number;
  readonly #rotateAfterMs: number;
  readonly #connectTimeoutMs: number;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #connectFn: (server: ServerAddress) => net.Socket;
  readonly #kind: string;
  readonly #servfailCounts: (query: Buffer) => boolean;
  /** A connection is stalled after this long with nothing read (tcp-pick.ts); Infinity: never. */
  readonly #stallMs: number;
  readonly #conns: Conn[] = [];
  readonly #queue = new JobQueue();
  readonly #life = new Lifecycle();
  /** Unregisters our sweep from the clock's shared timer; null while nothing is pending. */
  #sweep: (() => void) | null = null;
  readonly #reach: TcpReachability;
  readonly #batch: WriteBatch;
  readonly #events: ConnEvents;
  readonly #rotate = (c: Conn): void => this.#drain(c, true);
  readonly #mover = new Mover();

  constructor(opts: TcpPoolOptions) {
    // A host name would make net.connect resolve it through the system resolver: maybe through us.
    if (net.isIP(opts.server.host) === 0) throw new Error(`TcpPool: server must be an IP address, got "${opts.server.host}"`);
    this.#server = opts.server;
    this.name = opts.name ?? `tcp://${net.isIPv6(opts.server.host) ? `[${opts.server.host}]` : opts.server.host}:${opts.server.port}`;
    this.#connectFn = opts.connect ?? plainConnect;
    this.#kind = opts.kind ?? 'cluster dns';
    this.#servfailCounts = opts.servfailCounts ?? (() => true);
    this.#stallMs = opts.stallMs === undefined ? STALL_MS : (opts.stallMs ?? Infinity);
    this.#size = Math.max(1, opts.connections ?? DEFAULTS.upstreamConnections);
    // Ids are 16 bits and unique per connection.
    this.#maxInFlight = Math.min(0xffff, Math.max(1, opts.maxInFlightPerConnection ?? DEFAULTS.upstreamMaxInFlight));
    this.#maxQueued = Math.max(0, opts.maxQueued ?? 4096);
    this.#rotateAfterQueries = opts.rotateAfterQueries ?? DEFAULTS.upstreamRotateQueries;
    this.#rotateAfterMs = opts.rotateAfterMs ?? DEFAULTS.upstreamRotateAfterMs;
    this.#connectTimeoutMs = opts.connectTimeoutMs ?? 1000;
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.logger ?? silentLogger;
    this.health = new UpstreamHealth(this.name, this.#log, this.#clock.now());
    this.counters = opts.counters ?? new Counters(tcpPoolCounters);
    this.#values = this.counters.values;
    this.#durations = opts.durations ?? null;
    this.#reach = new TcpReachability(this.name, this.#kind, this.#values, this.health, this.#log);
    this.#batch = new WriteBatch((queries) => {
      this.#values[SLOT.sent]! += queries;
    });
    this.#events = {
      open: (c) => this.#onConnect(c),
      frame: this.#onFrame,
      lost: (c) => this.#setClosed(c, 'lost'),
      error: (c) => this.#log.debug(`${this.#kind} connection error`, { upstream: this.name, code: c.lastError }),
    };
  }

  get openConnections(): number {
    let n = 0;
    for (const c of this.#conns) if (c.state === 'open') n++;
    return n;
  }

  get inFlight(): number {
    let n = 0;
    for (const c of this.#conns) n += c.inflight.size;
    return n;
  }

  get queued(): number { return this.#queue.length; }

  /** Returns the exchange's record, for cancel(). */
  send(ex: UpstreamExchange): Job {
    const job = new Job(ex);
    const now = this.#clock.now();
    if (!this.#life.running) this.#fail(job, 'closed');
    else if (now >= ex.deadline) this.#fail(job, 'timeout');
    else this.#dispatch(job, now);
    return job;
  }

  /** Forgets `job` uncompleted, its caller answered elsewhere (a failover's other server): no health record; a reply counts late. */
  cancel(job: Job): void {
    if (job.done) return;
    job.done = true;
    // A queued job no longer counts at once, and is skipped in place (job-queue.ts): O(1), cancels come on every DoT answer.
    if (this.#queue.cancel(job)) return;
    for (const c of this.#conns) {
      if (c.inflight.get(job.id) === job) c.inflight.delete(job.id);
    }
  }

  close(): Promise<void> {
    if (!this.#life.beginClose()) return this.#life.done;
    for (const job of this.#queue.drain()) this.#fail(job, 'closed');
    for (const c of [...this.#conns]) {
      // Iterating a copy: closing here is safe, and an idle connection has nothing to wait for.
      if (c.state === 'connecting' || c.inflight.size === 0) this.#setClosed(c, 'ours');
      else this.#drain(c, false);
    }
    this.#armSweep();
    this.#maybeFinishClose();
    return this.#life.done;
  }

  abort(): void {
    void this.close();
    for (const c of [...this.#conns]) this.#setClosed(c, 'ours');
    this.#maybeFinishClose();
  }

  #dispatch(job: Job, now: number): void {
    if (this.#queue.length === 0) {
      const c = this.#pick(now);
      if (c !== null) {
        this.#write(c, job, now);
        return;
      }
    }
    if (this.#reach.failsFast(now)) {
      this.#fail(job, 'network');
      return;
    }
    if (this.#queue.length >= this.#maxQueued) {
      this.#fail(job, 'overloaded');
      return;
    }
    this.#queue.push(job);
    this.#ensureConnecting(now);
    this.#armSweep();
  }

  /** Best open connection with room (tcp-pick.ts), opening another once it is busy; null: wait for one on its way, not queue behind a stalled query (`moved`: any). */
  #pick(now: number, moved = false): Conn | null {
    const best = pickConn(this.#conns, now, this.#maxInFlight, this.#rotateAfterMs, this.#rotate);
    if (best === null || best.inflight.size > 0) this.#ensureConnecting(now);
    if (best !== null && (moved ? best.inflight.size > 0 : stalled(best, now)) && this.#conns.some((c) => c.state === 'connecting')) return null;
    return best;
  }

  #write(c: Conn, job: Job, now: number): void {
    if (c.send(job)) this.#batch.add(c);
    if (c.inflight.size === 1) c.progressAt = now;
    job.sentAt = now;
    if (MISS_TRACE) this.#batch.traceStaged(job);
    c.sent++;
    if (c.sent >= this.#rotateAfterQueries) this.#drain(c, true);
    this.#armSweep();
  }

  #ensureConnecting(now: number): void {
    if (this.#life.running && this.#reach.mayConnect(now) && wantsConnect(this.#conns, this.#size, now)) this.#connect(now);
  }

  #connect(now: number): void {
    this.#reach.connecting();
    this.#conns.push(openConn(this.#connectFn(this.#server), now, this.#events, this.#stallMs));
    this.#armSweep();
  }

  #onConnect(c: Conn): void {
    if (c.state !== 'connecting') return;
    c.state = 'open';
    c.openedAt = this.#clock.now();
    c.socket.setNoDelay(true);
    this.#reach.connected(c.openedAt);
    this.#pump(c.openedAt);
  }

  /** An arrow bound once: ConnEvents.frame, called straight from each connection's decoder. */
  readonly #onFrame = (c: Conn, msg: Buffer): void => {
    const job = c.answerFor(msg);
    if (job === 'late' || job === 'mismatched') {
      // A late answer is still an answer: the server is alive, only slow (not silent), and moving on (not stalled).
      if (job === 'late') c.heard(this.#clock.now());
      this.#values[job === 'late' ? SLOT.late : SLOT.mismatched]!++;
      return;
    }
    if (MISS_TRACE) traceRecord('write.data', traceMarks.dataAt - job.tracedAt);
    // Success is an answer, not a connect: a server that accepts and then drops us must keep backing off.
    if (c.answered++ === 0) this.#reach.answered();
    const rcode = msg[OFF_FLAGS + 1]! & RCODE_MASK;
    const now = this.#clock.now();
    c.heard(now);
    this.#values[SLOT.answered]!++;
    this.#values[RCODE_SLOT[rcode]!]!++;
    if (this.#durations !== null) this.#durations.observeMs(rcode, now - job.sentAt);
    const failed = serverFailed(rcode) && this.#servfailCounts(job.ex.query);
    this.health.record(failed ? 'servfail' : 'answered', now);
    this.#mover.answered(job, now);
    // Copy: the frame is a view of a read chunk, and the caller may keep the answer (in the cache) for long.
    this.#resolve(job, Buffer.from(msg));
    if (c.state === 'open' && c.inflight.size === 0 && surplus(this.#conns, this.#size, now)) this.#drain(c, false);
    if (c.state === 'draining' && c.inflight.size === 0) this.#setClosed(c, 'ours');
    else if (this.#queue.length > 0) this.#pump(this.#clock.now());
  };

  /** Sends queued jobs while some connection has room. */
  #pump(now: number): void {
    while (this.#queue.length > 0) {
      const job = this.#queue.peek() as Job;
      const c = this.#pick(now, job.moved);
      if (c === null) break;
      this.#queue.shift();
      this.#write(c, job, now);
    }
    if (this.#queue.length > 0) this.#ensureConnecting(now);
  }

  /** Never closes synchronously (callers may be iterating the pool): an empty draining connection is closed by the next sweep, or by its last answer. */
  #drain(c: Conn, rotation: boolean): void {
    if (c.state !== 'open') return;
    c.state = 'draining';
    if (rotation) this.#values[SLOT.rotations]!++;
    this.#armSweep();
  }

  /**
   * The one way out of every state. 'lost': the server closed or the connect
   * failed; in-flight queries are sent again while their deadline allows (once,
   * unless the connection had answered). 'ours': we closed it (drained, rotated, connect timeout, pool close).
   */
  #setClosed(c: Conn, cause: 'lost' | 'ours' | 'connectTimeout' | 'silent'): void {
    if (c.state === 'closed') return;
    const was = c.state;
    c.state = 'closed';
    c.unstage();
    const i = this.#conns.indexOf(c);
    if (i >= 0) this.#conns.splice(i, 1);
    c.socket.destroy();
    const now = this.#clock.now();
    if (cause !== 'ours') {
      const error = cause === 'connectTimeout' ? 'connect timeout' : cause === 'silent' ? 'queries time out, nothing read' : c.lastError;
      if (cause === 'silent') this.#log.info(`${this.#kind} connection replaced: ${error}`, { upstream: this.name });
      this.#reach.lost(now, c, was === 'connecting', this.#conns, error);
    }
    if (c.inflight.size > 0) {
      const jobs = c.inSendOrder();
      c.inflight.clear();
      // Re-queue at the head, oldest first: these waited longer than anything in the queue.
      for (let k = jobs.length - 1; k >= 0; k--) {
        const job = jobs[k]!;
        // Sent again as often as the deadline allows, or once more (tcp-conn.ts resend); one never written is no retry.
        const again = this.#life.running && now < job.ex.deadline ? c.resend(job) : null;
        if (again !== null) {
          if (again === 'again') this.#values[SLOT.retried]!++;
          this.#queue.unshift(job);
        } else {
          // The pool closing (a shutdown, a pool retired by a reload), whoever closed this: 'closed', so the caller may ask again on its new route.
          this.#fail(job, this.#life.running ? 'network' : 'closed');
        }
      }
    }
    if (this.#reach.unreachable && !this.#conns.some((o) => o.state === 'open')) {
      for (const job of this.#queue.drain()) this.#fail(job, 'network');
    }
    if (this.#queue.length > 0) this.#pump(now);
    this.#maybeFinishClose();
  }

  #armSweep(): void {
    if (this.#sweep === null) this.#sweep = this.#clock.sweep(this.#onSweep);
  }

  readonly #onSweep = (now: number): void => {
    for (const c of [...this.#conns]) {
      if (c.state === 'connecting') {
        if (now - c.startedAt >= this.#connectTimeoutMs) this.#setClosed(c, 'connectTimeout');
        continue;
      }
      for (const job of c.inSendOrder()) {
        if (now >= job.ex.deadline) {
          c.inflight.delete(job.id);
          c.timedOut(job, now);
          this.#fail(job, 'timeout');
        }
      }
      // Queries behind a stalled connection's slow one go back to the queue: the pump below sends them on another.
      // Not while the pool closes: nothing would send them, and they may still be answered where they are.
      if (c.silentTimeouts >= SILENT_TIMEOUTS) this.#setClosed(c, 'silent');
      else if (this.#life.running) this.#values[SLOT.retried]! += this.#mover.move(c, now, this.#queue);
      if (c.state === 'open' && now - c.openedAt >= this.#rotateAfterMs) this.#drain(c, true);
      if (c.state === 'draining' && c.inflight.size === 0) this.#setClosed(c, 'ours');
    }
    if (this.#queue.length > 0) {
      this.#queue.retain((job) => {
        if (now < job.ex.deadline) return true;
        this.#fail(job, 'timeout');
        return false;
      });
      this.#pump(now);
    }
    if (!this.#hasPending() && this.#sweep !== null) {
      this.#sweep();
      this.#sweep = null;
    }
  };

  #hasPending(): boolean {
    if (this.#queue.length > 0) return true;
    for (const c of this.#conns) if (c.state !== 'open' || c.inflight.size > 0) return true;
    return false;
  }

  #maybeFinishClose(): void {
    if (!this.#life.closing || this.#conns.length > 0) return;
    if (this.#sweep !== null) this.#sweep();
    this.#sweep = null;
    this.#life.finish();
  }

  #resolve(job: Job, answer: Buffer): void {
    if (job.done) return;
    job.done = true;
    settle(job.ex, answer, 'network', this.#log);
  }

  #fail(job: Job, reason: UpstreamFailure): void {
    if (job.done) return;
    job.done = true;
    if (reason === 'timeout') this.#values[SLOT.timeouts]!++;
    else if (reason === 'network') this.#values[SLOT.networkErrors]!++;
    else if (reason === 'overloaded') this.#values[SLOT.overloaded]!++;
    if (reason === 'timeout' || reason === 'network') this.health.record(reason, this.#clock.now());
    settle(job.ex, null, reason, this.#log);
  }
}
