/**
 * The external-name transport: the node's resolvers (from resolv.conf) or a
 * stub domain's servers, queried the way glibc's res_send does it:
 *
 *   for try in 0 .. attempts*servers-1:  server = round[try % servers]
 *     UDP (shared socket, random id and port) ── TC=1 ──► same server over TCP
 *     FORMERR/NOTIMP without OPT (no EDNS there) ──► same server again without OPT (after FORMERR: for 15 min, host-job.ts)
 *     timeout / ICMP error / SERVFAIL / NOTIMP / REFUSED ──► next server
 *
 * `round` is glibc's order from `start` (0, or round-robin per query with
 * `options rotate`), except that servers whose last tries went unanswered are
 * asked after the others (server-order.ts). Everything is bounded by the
 * exchange's deadline. One sweep timer expires attempts.
 *
 * Differences from glibc, on purpose: the per-try timeout is fixed rather than
 * doubling per round (our caller's deadline is the real bound); when every
 * server said SERVFAIL/NOTIMP/REFUSED we pass that answer on (resolver.ts failedAnswer
 * takes it as a failure: the view's answer, stale, else SERVFAIL); and a try that timed out keeps
 * listening while the exchange lives, so a server slower than the try timeout
 * still gets its answer through (glibc closes it, and a resolver that always
 * takes 3 s against a 2 s timeout is never heard).
 *
 * Limits, so a silent resolver cannot eat the process's descriptors (5,000
 * new names/s once used 20,000 fds in 4 s, and client TCP accepts then failed):
 *
 *   exchanges in flight   <= maxInFlight             over it: reject('overloaded') at once
 *   tries per exchange    <= maxSocketsPerExchange   the oldest try stops listening first
 *   tries listening       <= maxInFlight * maxSocketsPerExchange
 *
 * A UDP try no longer has a socket of its own: it takes an id on one of a few
 * connected sockets per server that are replaced after 64 tries or 1 s
 * (udp-sockets.ts), which saves most of the syscalls of a miss and keeps the
 * random source port (see there why). UDP sockets are then at most
 * servers x 4 plus retired ones with tries still listening; a TCP try still
 * opens its own connection.
 *
 * One exchange's record and its order of servers are in host-job.ts, one try
 * in udp-client.ts, the options in host-resolvers-options.ts.
 */
import net from 'node:net';
import { dialableHost } from '../addr.js';
import { DEFAULTS } from '../config.js';
import { DEFAULT_ATTEMPTS } from './host-route.js';
import { systemClock, type Clock } from '../clock.js';
import { silentLogger, type Logger } from '../log.js';
import { FLAG_TC, OFF_FLAGS, RCODE_MASK } from '../dns/constants.js';
import { Counters } from '../stats/counters.js';
import { UpstreamHealth, serverFailed } from './health.js';
import type { ForwardDurations } from './forward-durations.js';
import { Lifecycle } from './lifecycle.js';
import { settle } from './settle.js';
import { EdnsMemory, type HostJob } from './host-job.js';
import { ServerOrder } from './server-order.js';
import type { HostResolversOptions } from './host-resolvers-options.js';
import { HealthProbe } from './probe.js';
import { QueryAttempt, type AttemptEvents } from './udp-client.js';
import { UdpSockets } from './udp-sockets.js';
import { KeyedSet } from '../int-table.js';
import type { ServerAddress, Upstream, UpstreamExchange, UpstreamFailure } from './types.js';
import { rcodeSlots } from './upstream-counters.js';
import { hostResolversCounters, type HostResolversCounter } from './host-resolvers-counters.js';

export { hostResolversCounters, type HostResolversCounter } from './host-resolvers-counters.js';

const SLOT = hostResolversCounters.slot;
const RCODE_SLOT = rcodeSlots(SLOT);

export type { HostResolversOptions } from './host-resolvers-options.js';
const ignoreAnswer = (): void => {};
// Overload warnings: the first, then one per this many rejects; a flood must not turn into a log flood.
const OVERLOAD_LOG_EVERY = 1000;

export class HostResolvers implements Upstream {
  readonly name: string;
  readonly health: UpstreamHealth;
  readonly counters: Counters<HostResolversCounter>;
  readonly #values: Float64Array;
  readonly #durations: readonly (ForwardDurations | null)[];
  readonly #servers: readonly ServerAddress[];
  readonly #attemptTimeoutMs: number;
  readonly #attempts: number;
  readonly #rotate: boolean;
  readonly #maxInFlight: number;
  readonly #maxSockets: number;
  readonly #clock: Clock;
  readonly #log: Logger;
  /** Exchanges in flight: a set that makes no garbage per exchange (int-table.ts says why a Set did). */
  readonly #active: KeyedSet<HostJob>;
  readonly #udp: UdpSockets;
  readonly #order: ServerOrder;
  readonly #edns: EdnsMemory;
  /** Bound once: every attempt reports through the same object. */
  readonly #events: AttemptEvents<HostJob>;
  #rr: number;
  #openSockets: number;
  /** Rejects at the cap since start, for the rate-limited warning (the counter block may be shared or preset). */
  #rejects: number;
  readonly #life: Lifecycle;
  readonly #probe: HealthProbe | null;
  /** Unregisters our sweep from the clock's shared timer; null while nothing is pending. */
  #sweep: (() => void) | null;

  constructor(opts: HostResolversOptions) {
    // A host name would be resolved by the system resolver on every try: maybe through us.
    for (const s of opts.servers) {
      if (net.isIP(s.host) === 0) throw new Error(`HostResolvers: server must be an IP address, got "${s.host}"`);
    }
    // Dialled as given, except that an interface index in a %zone becomes its name (addr.ts says why).
    this.#servers = opts.servers.map((s) => ({ host: dialableHost(s.host), port: s.port }));
    this.name = opts.name ?? 'host-resolvers';
    this.#attemptTimeoutMs = Math.max(1, opts.attemptTimeoutMs ?? DEFAULTS.timeoutMs);
    this.#attempts = Math.max(1, opts.attempts ?? DEFAULT_ATTEMPTS);
    this.#rotate = opts.rotate ?? false;
    this.#maxInFlight = Math.max(1, opts.maxInFlight ?? DEFAULTS.hostMaxInflight);
    this.#maxSockets = Math.max(1, opts.maxSocketsPerExchange ?? 3);
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.logger ?? silentLogger;
    this.health = new UpstreamHealth(this.name, this.#log, this.#clock.now());
    this.counters = opts.counters ?? new Counters(hostResolversCounters);
    this.#values = this.counters.values;
    this.#durations = opts.durations ?? [];
    this.#active = new KeyedSet();
    this.#events = {
      onSent: (attempt) => {
        attempt.sentAt = this.#clock.now();
        this.#values[SLOT.sent]!++;
      },
      onSpoofed: () => {
        this.#values[SLOT.spoofed]!++;
      },
      onAnswer: (attempt, answer) => this.#onAnswer(attempt, answer),
      onError: (attempt, code) => this.#onError(attempt, code),
    };
    this.#udp = new UdpSockets({
      perServer: opts.udpSocketsPerServer,
      rotateAfterTries: opts.udpRotateAfterTries,
      rotateAfterMs: opts.udpRotateAfterMs,
      onStray: () => {
        this.#values[SLOT.spoofed]!++;
      },
      onLate: () => {
        this.#values[SLOT.late]!++;
      },
      // Moved by deltas: after a reload the old and the new instance share the block; the gauge is their sum.
      onCount: (delta) => {
        this.#values[SLOT.udpSockets]! += delta;
      },
    });
    this.#order = new ServerOrder(this.#servers.length);
    this.#edns = new EdnsMemory(this.#servers.length);
    this.#rr = 0;
    this.#openSockets = 0;
    this.#rejects = 0;
    this.#life = new Lifecycle();
    this.#sweep = null;
    // A probe's deadline allows a try at every server: one silent server must not hide the others' recovery.
    const probeDeadlineMs = this.#attemptTimeoutMs * this.#servers.length;
    this.#probe = opts.probeQuery !== undefined ? new HealthProbe(this, this.#clock, opts.probeQuery, opts.probeCounters ?? null, probeDeadlineMs) : null;
  }

  /** Exchanges not yet completed. */
  get inFlight(): number {
    return this.#active.size;
  }

  /** Tries listening (an id on a shared UDP socket, or a TCP connection); never above maxInFlight * maxSocketsPerExchange. */
  get openSockets(): number {
    return this.#openSockets;
  }

  /** UDP sockets open: in use, or retired with tries still listening, or idle until their age retires them. */
  get udpSockets(): number {
    return this.#udp.open;
  }

  send(ex: UpstreamExchange): void {
    if (!this.#life.running) {
      settle(ex, null, 'closed', this.#log);
      return;
    }
    const n = this.#servers.length;
    if (n === 0) {
      this.#values[SLOT.networkErrors]!++;
      settle(ex, null, 'network', this.#log);
      return;
    }
    if (this.#active.size >= this.#maxInFlight) {
      this.#reject(ex);
      return;
    }
    const start = this.#rotate ? this.#rr++ % n : 0;
    if (this.#rr >= n) this.#rr = 0;
    const now = this.#clock.now();
    const round = this.#order.round(start);
    const job = this.#edns.job(ex, round, this.#attempts, false, now);
    this.#active.add(job);
    this.#next(job, now);
    for (const idx of this.#order.rechecks(round, now)) this.#recheck(ex.query, idx, now);
  }

  /** A server moved back gets a copy of a client's query, beside the client's exchange: an answer in time puts it back in place. */
  #recheck(query: Buffer, idx: number, now: number): void {
    if (!this.#life.running || this.#active.size >= this.#maxInFlight) return;
    // A copy: the client's buffer may be reused once its exchange completes, and this try may outlive it.
    const ex: UpstreamExchange = { query: Buffer.from(query), deadline: now + this.#attemptTimeoutMs, resolve: ignoreAnswer, reject: ignoreAnswer };
    const job = this.#edns.job(ex, [idx], 1, true, now);
    this.#active.add(job);
    this.#next(job, now);
  }

  /** In-flight exchanges run on until answered or past their deadline; new ones are rejected with 'closed'. */
  close(): Promise<void> {
    this.#probe?.stop();
    if (!this.#life.beginClose()) return this.#life.done;
    this.#maybeFinishClose();
    return this.#life.done;
  }

  abort(): void {
    this.#probe?.stop();
    this.#life.beginClose();
    for (const job of this.#active.values()) this.#finish(job, null, 'closed');
    this.#maybeFinishClose();
  }

  #reject(ex: UpstreamExchange): void {
    this.#values[SLOT.overloaded]!++;
    if (this.#rejects++ % OVERLOAD_LOG_EVERY === 0) {
      this.#log.warn('host resolvers at their in-flight cap: queries get SERVFAIL without being sent', {
        upstream: this.name,
        maxInFlight: this.#maxInFlight,
        rejected: this.#rejects,
      });
    }
    settle(ex, null, 'overloaded', this.#log);
  }

  #onAnswer(attempt: QueryAttempt<HostJob>, answer: Buffer): void {
    const job = attempt.owner;
    if (job.done) return;
    this.#forget(job, attempt);
    const wasCurrent = job.current === attempt;
    if (wasCurrent) job.current = null;
    const flags = (answer[OFF_FLAGS]! << 8) | answer[OFF_FLAGS + 1]!;
    const rcode = flags & RCODE_MASK;
    this.#values[RCODE_SLOT[rcode]!]!++;
    const now = this.#clock.now();
    // Only an answer within the try timeout puts a server back in place: a slow one should be asked after those that are not.
    if (now <= attempt.deadline) this.#order.answered(attempt.serverIndex);
    const durations = this.#durations[attempt.serverIndex];
    if (durations !== undefined && durations !== null && attempt.sentAt >= 0) durations.observeMs(rcode, now - attempt.sentAt);
    if ((flags & FLAG_TC) !== 0 && attempt.transport === 'udp') {
      // RFC 7766 5: a truncated answer is retried over TCP at the same server, the current try whichever try it came from.
      this.#values[SLOT.tcpFallbacks]!++;
      this.#start(job, 'tcp', attempt.serverIndex, now);
      return;
    }
    const edns = job.ednsRefusal(attempt.serverIndex, answer, attempt.query);
    if (edns !== null) {
      // RFC 6891 7: FORMERR (or NOTIMP) from a server before EDNS: asked again at once without OPT, as glibc; 'stale': that retry is under way.
      if (edns === 'retry') {
        this.#values[SLOT.ednsFallbacks]!++;
        this.#edns.refused(attempt.serverIndex, rcode, now);
        this.#start(job, attempt.transport, attempt.serverIndex, now);
      } else if (wasCurrent) this.#next(job, now);
      return;
    }
    if (serverFailed(rcode)) {
      // glibc moves on to the next server: this one may be lame, refusing us or lack the feature while another is fine.
      job.badAnswer = answer;
      (job.badServers ??= new Set()).add(attempt.serverIndex);
      // A late bad answer to an earlier try changes nothing: the current try is already elsewhere.
      if (wasCurrent) this.#next(job, now);
      return;
    }
    this.#finish(job, answer, 'network');
  }

  #onError(attempt: QueryAttempt<HostJob>, code: string): void {
    const job = attempt.owner;
    if (job.done) return;
    this.#forget(job, attempt);
    this.#values[code === 'EMFILE' || code === 'ENFILE' ? SLOT.attemptNoFds : SLOT.attemptErrors]!++;
    this.#log.debug('upstream attempt failed', { upstream: this.name, server: attempt.server.host, code });
    // An earlier try that errors only stops listening; the current one goes on.
    if (job.current !== attempt) return;
    job.current = null;
    job.lastFailure = 'network';
    this.#next(job, this.#clock.now());
  }

  /** Starts the next try, or completes the job when tries or time have run out. */
  #next(job: HostJob, now: number): void {
    const idx = job.nextServer(now);
    if (idx >= 0) {
      if (job.lastServer >= 0 && job.lastServer !== idx) this.#values[SLOT.failovers]!++;
      this.#start(job, 'udp', idx, now);
      return;
    }
    // Out of tries. Earlier tries still listening get until the last try's own timeout, as they would have had
    // the last server stayed silent: its quick SERVFAIL or ICMP error must not cut short a slow server's answer.
    if (job.live.length > 0 && now < job.lastDeadline) return;
    // Then tries still listening are closed too, as glibc does: a prompt failure (stale, SERVFAIL) beats the deadline.
    if (job.badAnswer !== null) {
      this.#finish(job, job.badAnswer, 'network');
      return;
    }
    this.#finish(job, null, now >= job.ex.deadline ? 'timeout' : job.lastFailure);
  }

  #start(job: HostJob, transport: 'udp' | 'tcp', idx: number, now: number): void {
    job.lastServer = idx;
    // The socket bound: the oldest try stops listening to make room for the new one.
    if (job.live.length >= this.#maxSockets) this.#forget(job, job.live[0]!).finish();
    const deadline = Math.min(now + this.#attemptTimeoutMs, job.ex.deadline);
    const attempt = new QueryAttempt(job, transport, this.#servers[idx]!, idx, job.queryFor(idx), deadline, this.#events, this.#udp, now);
    job.current = attempt;
    job.lastDeadline = deadline;
    job.live.push(attempt);
    this.#openSockets++;
    this.#values[SLOT.openSockets]!++;
    this.#armSweep();
  }

  /** Takes a try off the job's live list (it finished itself, or the caller finishes it next). */
  #forget(job: HostJob, attempt: QueryAttempt<HostJob>): QueryAttempt<HostJob> {
    const i = job.live.indexOf(attempt);
    if (i >= 0) {
      job.live.splice(i, 1);
      this.#openSockets--;
      this.#values[SLOT.openSockets]!--;
    }
    return attempt;
  }

  #finish(job: HostJob, answer: Buffer | null, reason: UpstreamFailure): void {
    if (job.done) return;
    job.done = true;
    for (const a of job.live) a.finish();
    this.#openSockets -= job.live.length;
    this.#values[SLOT.openSockets]! -= job.live.length;
    job.live.length = 0;
    job.current = null;
    this.#active.delete(job);
    // A recheck's try counted what it sent and heard; the exchange itself was nobody's.
    if (!job.recheck) this.#recordOutcome(job, answer, reason);
    settle(job.ex, answer, reason, this.#log);
    this.#maybeFinishClose();
  }

  /** How a client's exchange ended, in the exchange counters and the health state. */
  #recordOutcome(job: HostJob, answer: Buffer | null, reason: UpstreamFailure): void {
    if (answer === null) {
      if (reason === 'timeout') this.#values[SLOT.timeouts]!++;
      else if (reason === 'network') this.#values[SLOT.networkErrors]!++;
      if (reason === 'timeout' || reason === 'network') this.health.record(reason, this.#clock.now());
    } else {
      this.#values[SLOT.answered]!++;
      this.health.record(answer === job.badAnswer ? 'servfail' : 'answered', this.#clock.now());
    }
  }

  #armSweep(): void {
    if (this.#sweep === null) this.#sweep = this.#clock.sweep(this.#onSweep);
  }

  readonly #onSweep = (now: number): void => {
    for (const job of this.#active.values()) {
      // A copy: one finished since (by another's outcome) is skipped, as the Set's iteration skipped it.
      if (job.done) continue;
      const a = job.current;
      if (a === null) {
        // Out of tries, waiting for earlier ones (#next): until the last try's timeout, or nobody listens.
        if (now >= job.lastDeadline || job.live.length === 0) this.#next(job, now);
        continue;
      }
      if (now < a.deadline) continue;
      this.#values[SLOT.attemptTimeouts]!++;
      // A try the exchange's deadline cut short did not give the server its whole try timeout.
      if (a.deadline < job.ex.deadline) this.#order.timedOut(a.serverIndex, now);
      // It stays in job.live, still listening: a late answer to it is as good as any (bounded by #start).
      job.current = null;
      job.lastFailure = 'timeout';
      this.#next(job, now);
    }
    this.#udp.sweep(now);
    if (this.#active.size === 0 && this.#udp.open === 0 && this.#sweep !== null) {
      this.#sweep();
      this.#sweep = null;
    }
  };

  #maybeFinishClose(): void {
    if (!this.#life.closing || this.#active.size > 0) return;
    this.#udp.closeAll();
    if (this.#sweep !== null) this.#sweep();
    this.#sweep = null;
    this.#life.finish();
  }
}
