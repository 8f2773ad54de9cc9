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
 * Writes: a query is framed straight into its connection's staging buffer
 * (no copy of its own), and every connection written to in this event-loop
 * turn is flushed once, by one setImmediate for the whole pool: the misses
 * that one poll phase read (libuv reads many datagrams per wake-up) leave in
 * one write() per connection, not one each. Nagle is off, so each flush goes
 * out at once.
 */
import net from 'node:net';
import tls from 'node:tls';
import { DEFAULTS } from '../config.js';
import { systemClock, type Clock } from '../clock.js';
import { silentLogger, type Logger } from '../log.js';
import { HEADER_LEN, OFF_FLAGS, RCODE_MASK, Rcode } from '../dns/constants.js';
import { UpstreamHealth } from './health.js';
import { answerMatchesQuery, readId } from '../dns/question.js';
import { Counters, defineCounters } from '../stats/counters.js';
import { Fifo } from './fifo.js';
import type { ForwardDurations } from './forward-durations.js';
import { Lifecycle } from './lifecycle.js';
import { settle } from './settle.js';
import { Conn, Job } from './tcp-conn.js';
import { MISS_TRACE, traceMarks, traceNow, traceRecord } from '../miss-trace.js';
import type { ServerAddress, Upstream, UpstreamExchange, UpstreamFailure } from './types.js';
import { ignoredAnswersFamily, rcodeSlots, upstreamCounterDefs } from './upstream-counters.js';

export const tcpPoolCounters = defineCounters({
  ...upstreamCounterDefs,
  // The question did not match the query sent under that id (or the frame was too short to tell).
  mismatched: { ...ignoredAnswersFamily, labels: { reason: 'mismatched' } },
  // Nothing in flight under that id: the query already timed out.
  late: { ...ignoredAnswersFamily, labels: { reason: 'late' } },
  connects: { name: 'nodelocal_upstream_tcp_connects_total', help: 'TCP connections to the cluster DNS established.' },
  reconnects: { name: 'nodelocal_upstream_tcp_reconnects_total', help: 'TCP connects started to replace a lost or failed connection.' },
  connectFailures: { name: 'nodelocal_upstream_tcp_connect_failures_total', help: 'TCP connects to the cluster DNS that failed or timed out.' },
  rotations: {
    name: 'nodelocal_upstream_tcp_rotations_total',
    help: 'Connections drained after their query count or age, so that load spreads over the pods behind the address.',
  },
  retried: { name: 'nodelocal_upstream_tcp_retries_total', help: 'Queries sent again on another connection after theirs closed with them in flight.' },
});

export type TcpPoolCounter = keyof typeof tcpPoolCounters.slot;

const SLOT = tcpPoolCounters.slot;
const RCODE_SLOT = rcodeSlots(SLOT);

export interface TcpPoolOptions {
  server: ServerAddress;
  /** Persistent connections (default 2): enough to spread over two kube-dns pods and survive one reconnecting. */
  connections?: number;
  maxInFlightPerConnection?: number;
  maxQueued?: number;
  rotateAfterQueries?: number;
  rotateAfterMs?: number;
  connectTimeoutMs?: number;
  /** Where this pool counts; a fresh block when omitted. */
  counters?: Counters<TcpPoolCounter>;
  /**
   * Opens one connection to `server` (default: plain TCP). A tls.TLSSocket
   * counts as open at 'secureConnect', so a handshake or certificate failure
   * is a connect failure like a refused one (DNS over TLS, tls-resolvers.ts).
   */
  connect?: (server: ServerAddress) => net.Socket;
  /** For logs and metrics (default tcp://IP:PORT). */
  name?: string;
  /** What the server is, in log lines (default "cluster dns"). */
  kind?: string;
  /** coredns_forward_request_duration_seconds of its server (none when omitted). */
  durations?: ForwardDurations | null;
  clock?: Clock;
  logger?: Logger;
}

// Backoff after connect failures: fast enough to catch a restarting CoreDNS, capped so a dead one is not hammered.
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 5000;

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
  readonly #conns: Conn[];
  readonly #queue: Fifo<Job>;
  readonly #life: Lifecycle;
  /** Unregisters our sweep from the clock's shared timer; null while nothing is pending. */
  #sweep: (() => void) | null;
  #backoffMs: number;
  #nextConnectAt: number;
  #lostSinceConnect: boolean;
  /** Connections with frames staged since the last flush; the flush is scheduled while this is non-empty. */
  readonly #dirty: Conn[];
  /**
   * The last connect failed and nothing is open: queries fail at once
   * ('network' -> SERVFAIL now) instead of each waiting out its deadline,
   * until a connect succeeds. A pod behind us would otherwise wait the whole
   * --timeout for every search-list candidate while kube-dns is down.
   */
  #unreachable: boolean;
  /** Under NODELOCAL_MISS_TRACE only: the jobs staged since the last flush. */
  readonly #traced: Job[];

  constructor(opts: TcpPoolOptions) {
    // A host name would make net.connect resolve it through the system resolver: maybe through us.
    if (net.isIP(opts.server.host) === 0) throw new Error(`TcpPool: server must be an IP address, got "${opts.server.host}"`);
    this.#server = opts.server;
    this.name = opts.name ?? `tcp://${net.isIPv6(opts.server.host) ? `[${opts.server.host}]` : opts.server.host}:${opts.server.port}`;
    this.#connectFn = opts.connect ?? plainConnect;
    this.#kind = opts.kind ?? 'cluster dns';
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
    this.#conns = [];
    this.#queue = new Fifo<Job>(64);
    this.#life = new Lifecycle();
    this.#sweep = null;
    this.#backoffMs = BACKOFF_MIN_MS;
    this.#nextConnectAt = 0;
    this.#lostSinceConnect = false;
    this.#dirty = [];
    this.#unreachable = false;
    this.#traced = [];
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

  get queued(): number {
    return this.#queue.length;
  }

  send(ex: UpstreamExchange): void {
    if (!this.#life.running) {
      settle(ex, null, 'closed', this.#log);
      return;
    }
    const now = this.#clock.now();
    const job = new Job(ex);
    if (now >= ex.deadline) {
      this.#fail(job, 'timeout');
      return;
    }
    this.#dispatch(job, now);
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
    if (this.#unreachable && now < this.#nextConnectAt) {
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

  /** Least-loaded open connection with room; opens another (up to the pool size) once the best one is busy. */
  #pick(now: number): Conn | null {
    let best: Conn | null = null;
    for (const c of this.#conns) {
      if (c.state !== 'open') continue;
      if (now - c.openedAt >= this.#rotateAfterMs) {
        this.#drain(c, true);
        continue;
      }
      if (c.inflight.size >= this.#maxInFlight) continue;
      if (best === null || c.inflight.size < best.inflight.size) best = c;
    }
    if (best === null || best.inflight.size > 0) this.#ensureConnecting(now);
    return best;
  }

  #write(c: Conn, job: Job, now: number): void {
    let id = c.nextId;
    // Terminates: in-flight is capped below 65536.
    while (c.inflight.has(id)) id = (id + 1) & 0xffff;
    c.nextId = (id + 1) & 0xffff;
    job.id = id;
    c.inflight.set(id, job);
    if (c.stage(job.ex.query, id)) {
      if (this.#dirty.length === 0) setImmediate(this.#flush);
      this.#dirty.push(c);
    }
    job.sentAt = now;
    if (MISS_TRACE) {
      job.tracedAt = traceNow();
      this.#traced.push(job);
    }
    c.sent++;
    this.#values[SLOT.sent]!++;
    if (c.sent >= this.#rotateAfterQueries) this.#drain(c, true);
    this.#armSweep();
  }

  /** Bound once: one write per connection for everything staged this turn. */
  readonly #flush = (): void => {
    const dirty = this.#dirty;
    // Index loop: a write error surfaces later as an event, never re-entrantly, so the list only shrinks here.
    for (let i = 0; i < dirty.length; i++) {
      const c = dirty[i]!;
      // A connection closed meanwhile dropped its staging; its jobs were re-queued or failed by #setClosed.
      if (c.state !== 'open' && c.state !== 'draining') continue;
      if (!MISS_TRACE) c.flush();
      else {
        const at = traceNow();
        c.flush();
        traceRecord('write.call', traceNow() - at);
      }
    }
    dirty.length = 0;
    if (MISS_TRACE) this.#traceFlush();
  };

  #traceFlush(): void {
    const now = traceNow();
    for (const job of this.#traced) {
      traceRecord('stage.write', now - job.tracedAt);
      job.tracedAt = now;
    }
    this.#traced.length = 0;
    if (traceMarks.reportAt > 0) traceRecord('report.write', now - traceMarks.reportAt);
    traceMarks.reportAt = 0;
  }

  #ensureConnecting(now: number): void {
    if (!this.#life.running || now < this.#nextConnectAt) return;
    let live = 0;
    for (const c of this.#conns) if (c.state === 'connecting' || c.state === 'open') live++;
    if (live < this.#size) this.#connect(now);
  }

  #connect(now: number): void {
    if (this.#lostSinceConnect) this.#values[SLOT.reconnects]!++;
    const socket = this.#connectFn(this.#server);
    const c: Conn = new Conn(socket, (msg) => this.#onFrame(c, msg), now);
    this.#conns.push(c);
    // TLS: usable once the handshake and certificate checks are done, not at the TCP connect.
    socket.on(socket instanceof tls.TLSSocket ? 'secureConnect' : 'connect', () => this.#onConnect(c));
    socket.on('data', MISS_TRACE ? (chunk: Buffer) => tracedData(c, chunk) : (chunk: Buffer) => c.decoder.push(chunk));
    // The server's FIN: CoreDNS closing an idle connection, or a pod going away. Nothing more will be answered on it.
    socket.on('end', () => this.#setClosed(c, 'lost'));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      c.lastError = err.code ?? err.message;
      this.#log.debug(`${this.#kind} connection error`, { upstream: this.name, code: c.lastError });
    });
    socket.on('close', () => this.#setClosed(c, 'lost'));
    this.#armSweep();
  }

  #onConnect(c: Conn): void {
    if (c.state !== 'connecting') return;
    c.state = 'open';
    c.openedAt = this.#clock.now();
    c.socket.setNoDelay(true);
    this.#values[SLOT.connects]!++;
    this.health.record('connected', c.openedAt);
    this.#lostSinceConnect = false;
    if (this.#unreachable) {
      this.#unreachable = false;
      this.#log.info(`${this.#kind} reachable again`, { upstream: this.name });
    }
    this.#pump(c.openedAt);
  }

  #onFrame(c: Conn, msg: Buffer): void {
    if (msg.length < HEADER_LEN) {
      this.#values[SLOT.mismatched]!++;
      return;
    }
    const job = c.inflight.get(readId(msg));
    if (job === undefined) {
      this.#values[SLOT.late]!++;
      return;
    }
    // Keep waiting on a mismatch: the right answer may still come, and the deadline bounds the wait.
    if (!answerMatchesQuery(job.ex.query, msg)) {
      this.#values[SLOT.mismatched]!++;
      return;
    }
    c.inflight.delete(job.id);
    if (MISS_TRACE) traceRecord('write.data', traceMarks.dataAt - job.tracedAt);
    // Success is an answer, not a connect: a server that accepts and then drops us must keep backing off.
    if (c.answered++ === 0) this.#backoffMs = BACKOFF_MIN_MS;
    const rcode = msg[OFF_FLAGS + 1]! & RCODE_MASK;
    const now = this.#clock.now();
    this.#values[SLOT.answered]!++;
    this.#values[RCODE_SLOT[rcode]!]!++;
    if (this.#durations !== null) this.#durations.observeMs(rcode, now - job.sentAt);
    this.health.record(rcode === Rcode.SERVFAIL || rcode === Rcode.REFUSED ? 'servfail' : 'answered', now);
    // Copy: the frame is a view of a read chunk, and the caller may keep the answer (in the cache) for long.
    this.#resolve(job, Buffer.from(msg));
    if (c.state === 'draining' && c.inflight.size === 0) this.#setClosed(c, 'ours');
    else if (this.#queue.length > 0) this.#pump(this.#clock.now());
  }

  /** Sends queued jobs while some connection has room. */
  #pump(now: number): void {
    while (this.#queue.length > 0) {
      const job = this.#queue.peek() as Job;
      if (job.done) {
        this.#queue.shift();
        continue;
      }
      const c = this.#pick(now);
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
   * failed; in-flight queries get one more try elsewhere while their deadline
   * allows. 'ours': we closed it (drained, rotated, connect timeout, pool close).
   */
  #setClosed(c: Conn, cause: 'lost' | 'ours' | 'connectTimeout'): void {
    if (c.state === 'closed') return;
    const was = c.state;
    c.state = 'closed';
    c.outLen = 0;
    const i = this.#conns.indexOf(c);
    if (i >= 0) this.#conns.splice(i, 1);
    c.socket.destroy();
    const now = this.#clock.now();
    if (cause !== 'ours') {
      this.#lostSinceConnect = true;
      if (was === 'connecting') this.#values[SLOT.connectFailures]!++;
      // A connection that never answered anything (refused at connect, or accepted and dropped) gets backoff, so a
      // sick server is not hammered in a tight loop.
      if (was === 'connecting' || c.answered === 0) this.#backOff(now);
      if (was === 'connecting' && !this.#unreachable && !this.#conns.some((o) => o.state === 'open')) {
        this.#unreachable = true;
        this.health.record('unreachable', now);
        this.#log.warn(`${this.#kind} unreachable: queries to it fail at once until it is back (then answered from the view, stale, or SERVFAIL)`, {
          upstream: this.name,
          error: cause === 'connectTimeout' ? 'connect timeout' : c.lastError,
        });
      }
    }
    if (c.inflight.size > 0) {
      const jobs = [...c.inflight.values()];
      c.inflight.clear();
      // Re-queue at the head, oldest first: these waited longer than anything in the queue.
      for (let k = jobs.length - 1; k >= 0; k--) {
        const job = jobs[k]!;
        if (this.#life.running && !job.retried && now < job.ex.deadline) {
          job.retried = true;
          this.#values[SLOT.retried]!++;
          this.#queue.unshift(job);
        } else {
          this.#fail(job, 'network');
        }
      }
    }
    if (this.#unreachable && !this.#conns.some((o) => o.state === 'open')) {
      for (const job of this.#queue.drain()) this.#fail(job, 'network');
    }
    if (this.#queue.length > 0) this.#pump(now);
    this.#maybeFinishClose();
  }

  #backOff(now: number): void {
    // Jitter in [delay/2, delay] keeps the agents of a whole cluster from reconnecting in step after a CoreDNS restart.
    const delay = this.#backoffMs * (0.5 + Math.random() * 0.5);
    this.#nextConnectAt = Math.max(this.#nextConnectAt, now + delay);
    this.#backoffMs = Math.min(this.#backoffMs * 2, BACKOFF_MAX_MS);
    this.#log.debug(`${this.#kind} connect backoff`, { upstream: this.name, delayMs: Math.round(delay) });
  }

  #armSweep(): void {
    if (this.#sweep !== null) return;
    this.#sweep = this.#clock.sweep(this.#onSweep);
  }

  readonly #onSweep = (now: number): void => this.#tick(now);

  #tick(now: number): void {
    for (const c of [...this.#conns]) {
      if (c.state === 'connecting') {
        if (now - c.startedAt >= this.#connectTimeoutMs) this.#setClosed(c, 'connectTimeout');
        continue;
      }
      for (const job of c.inflight.values()) {
        if (now >= job.ex.deadline) {
          c.inflight.delete(job.id);
          this.#fail(job, 'timeout');
        }
      }
      if (c.state === 'open' && now - c.openedAt >= this.#rotateAfterMs) this.#drain(c, true);
      if (c.state === 'draining' && c.inflight.size === 0) this.#setClosed(c, 'ours');
    }
    if (this.#queue.length > 0) {
      this.#queue.retain((job) => {
        if (job.done) return false;
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
  }

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

function tracedData(c: Conn, chunk: Buffer): void {
  const at = traceNow();
  traceMarks.dataAt = at;
  c.decoder.push(chunk);
  traceRecord('data.handled', traceNow() - at);
}

function plainConnect(server: ServerAddress): net.Socket {
  return net.connect({ host: server.host, port: server.port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000 });
}
