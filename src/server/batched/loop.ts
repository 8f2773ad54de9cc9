/**
 * A batched UDP worker's life: one loop that receives a batch of queries
 * per socket with recvmmsg, answers every hit from its own hit path reading
 * the main thread's cache (cache/reader.ts: one store for all threads, never
 * written here), sends the answers with one sendmmsg, and hands misses to
 * the main thread. Each turn:
 *
 *   stamp the clock
 *   anything from the main thread? (shared `pending` word) ─► its completions ring
 *                 read, then receiveMessageOnPort(): configure / pause / abort / close apply
 *   up to 256 queued completions (32 while the sockets are behind: the last
 *                 receive filled its vector) ─► HitPath.complete() ─► answers into the vectors
 *                 (for clients the main thread has not answered; nothing is stored here)
 *   per socket: recvmmsg(MSG_DONTWAIT) ─► HitPath.handle() per datagram
 *                 its kernel receive timestamp says how long it waited in
 *                 the socket queue (nodelocal_udp_queue_wait_seconds); past
 *                 --max-query-age it is dropped unanswered (its client gave up)
 *                 answers go into that socket's send vector
 *                 a new miss while the main thread refuses misses at its cap
 *                 is answered here (stale, else SERVFAIL: shed-gate.ts), as is
 *                 every new miss after 'pause' and 'abort' (a wildcard's kept socket)
 *                 a miss's client is reported (sockaddr, datagram): the main thread
 *                 holds it and answers it whatever the outcome (direct.ts); only its
 *                 number stays here (one sampled for the query log is kept too)
 *   sendmmsg the filled vectors
 *   report: the turn's misses and waiting clients into the ring (a post of
 *                 RING_WAKE unless one is unread: packed-ring.ts), log lines posted
 *   nothing received? sleep in poll(sockets + eventfd): a datagram or the
 *                 main thread's wake ends it (idle costs ~0% CPU)
 *   quiet for a second after a burst? one full GC (ops/idle-gc.ts)
 *
 * Under load a turn is exactly two koffi calls per socket (recvmmsg and
 * sendmmsg); nothing is allocated per packet by this file (the views handed
 * to handle() are made once per slot and length: loop-parts.ts SlotViews).
 *
 * The send side: loop-send.ts; the completions (and clients handed back):
 * loop-completions.ts (limits re-exported here); the report: loop-report.ts.
 */
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { CacheReader } from '../../cache/reader.js';
import { HitPath, type MissSink } from '../hit-path.js';
import { EAGAIN, EINTR, MSG_DONTWAIT, type UdpBatchSys } from '../../sys/udp-batch.js';
import { Arena, MAX_DATAGRAM_BYTES, RecvVec, SendVec, SOCKADDR_SLOT_BYTES, recvVecBytes, vecBytes } from './msgvec.js';
import { RxTrace, traceKey } from './rx-trace.js';
import { HeapTrace } from './heap-trace.js';
import { Peer, Realtime, ReportLogger, SlotViews, SockaddrChunks, TurnClock, missLimiter } from './loop-parts.js';
import { COMPLETIONS_PER_TURN, COMPLETIONS_WHEN_BEHIND, Completions } from './loop-completions.js';
import { Outbox } from './loop-report.js';
import { Sender, SocketChannel } from './loop-send.js';
import { POLLFD_BYTES, Poller } from './loop-poll.js';
import { IdleCollector, exposeGc } from '../../ops/idle-gc.js';
import { ShedGate } from './shed-gate.js';
import { Ctl, PENDING_PORT, holdBlock, type ToWorker, type WorkerInit } from './protocol.js';
import { BATCHED_COUNTERS, workerCounters, type WorkerCounters } from './stats.js';
import type { TypedHistogram } from '../../ops/histogram.js';
import { MISS_TRACE, traceNow } from '../../miss-trace.js';
import { SERVER_COUNTERS } from '../stats.js';

export { COMPLETIONS_PER_TURN, COMPLETIONS_WHEN_BEHIND } from './loop-completions.js';

/** Bytes a query may take; a longer datagram arrives cut (MSG_TRUNC) and is dropped. Real queries are a few hundred bytes. */
export const RECV_SLOT_BYTES = 4096;
/** An idle worker's poll timeout: the eventfd wakes it for anything the main thread sends, so only a safety net (~0% CPU). */
const IDLE_POLL_MS = 1000;
const IO = BATCHED_COUNTERS.slot;

/**
 * running: receiving. draining: paused by the main thread, which has taken
 * our sockets out of the group; we read what the kernel had already queued
 * for us, until a receive finds nothing. paused: no more receiving, but on
 * the sockets it left in their group (wildcards: listener.ts pause());
 * answers to queries taken still go out. closing: leave the loop.
 */
type State = 'running' | 'draining' | 'paused' | 'closing';

export class WorkerLoop implements MissSink {
  readonly #sys: UdpBatchSys;
  readonly #port: MessagePort;
  readonly #init: WorkerInit;
  readonly #ctl: Int32Array;
  readonly #counters: WorkerCounters;
  readonly #io: Float64Array;
  readonly #clock: TurnClock;
  readonly #logger: ReportLogger;
  readonly #cache: CacheReader;
  /** The datagrams as the hit path reads them: views of the receive slots, made once per slot and length. */
  readonly #views: SlotViews;
  /** Answers new misses here while the main thread refuses them for load (shed-gate.ts). */
  readonly #gate: ShedGate;
  readonly #hits: HitPath;
  readonly #fds: readonly number[];
  readonly #channels: SocketChannel[];
  readonly #arena: Arena;
  readonly #recv: RecvVec;
  /** Each socket's send vector, and which waiting clients the main thread answered itself (loop-send.ts). */
  readonly #sender: Sender;
  readonly #peers: Peer[];
  readonly #detached = new SockaddrChunks();
  readonly #poller: Poller;
  readonly #scratchOff: number;
  /** CLOCK_REALTIME after each receive, to age the datagrams by. */
  readonly #realtime: Realtime;
  /** Per socket: the kernel stamps its datagrams (SO_TIMESTAMPNS accepted); on a wildcard, they say where they went (pktinfo). */
  readonly #stamped: boolean[];
  readonly #wildcard: readonly boolean[];
  readonly #queueWait: TypedHistogram;
  /** --max-query-age in ns; 0: never drop. */
  readonly #maxAgeNs: number;
  /** NODELOCAL_RX_TRACE's per-datagram record; null (the usual case): off. */
  readonly #trace: RxTrace | null;
  /** The turn's misses, waiters and log lines for the main thread, and our misses in flight. */
  readonly #outbox: Outbox;
  readonly #completions: Completions;
  #state: State = 'running';
  /** The last receive filled its vector: the kernel has more queued (see COMPLETIONS_WHEN_BEHIND). */
  #behind = false;
  #free: (() => void) | null;
  /** Per socket, once paused: left in its group by the main thread, so still read (the 'pause' message). */
  #keep: readonly boolean[];
  /** Told to abort: once paused too, the agent closes next, and a miss taken since (on a kept socket) has nothing to wait for. */
  #aborted = false;
  readonly #idleGc: IdleCollector;

  constructor(sys: UdpBatchSys, port: MessagePort, init: WorkerInit) {
    this.#sys = sys;
    this.#port = port;
    this.#init = init;
    this.#ctl = new Int32Array(init.ctl);
    this.#counters = workerCounters(init.stats);
    this.#io = this.#counters.io.values;
    this.#clock = new TurnClock();
    this.#logger = new ReportLogger();
    // Read-only: the main thread stores every answer (it fetched them all), and the store's gauges are its.
    this.#cache = new CacheReader(init.store, init.cache, this.#counters.cache);
    this.#gate = new ShedGate(this.#ctl, init.load, init.localZones, this.#cache, { values: this.#io, slot: IO.shedBusy }, this.#clock);
    this.#hits = new HitPath({
      cache: this.#cache, clock: this.#clock, logger: this.#logger, counters: this.#counters.server, histograms: this.#counters.hist,
      maxUdpSize: init.maxUdpSize, queryLogEvery: init.queryLogEvery, gate: this.#gate, remoteWaiters: init.remoteWaiters,
      clientLimit: missLimiter(init.clientMissRate, init.clientMissBurst, init.clientMissInflight),
    });
    // The exchange scrubbed and stored every answer before it came back: this side only serves it.
    this.#hits.connect(this, null);
    this.#gate.watch(this.#hits);
    this.#fds = init.fds;
    // One native block for everything: the receive vector, a send vector per socket, the pollfds and a scratch sockaddr.
    const sendSlot = init.maxUdpSize;
    const block = sys.alloc(workerBlockBytes(init.batch, init.fds.length, sendSlot));
    this.#free = holdBlock(this.#ctl, block);
    this.#arena = new Arena(block.address, block.bytes);
    this.#recv = new RecvVec(this.#arena, init.batch, RECV_SLOT_BYTES);
    this.#views = new SlotViews(this.#arena.u8.buffer as ArrayBuffer, init.batch);
    const send = init.fds.map(() => new SendVec(this.#arena, init.batch, sendSlot));
    this.#peers = [];
    for (let i = 0; i < init.batch; i++) this.#peers.push(new Peer(this.#arena.u32, this.#recv.sockaddrOffset(i) >> 2));
    this.#scratchOff = this.#arena.take(SOCKADDR_SLOT_BYTES);
    this.#sender = new Sender(sys, init.fds, this.#arena, send, this.#counters);
    this.#channels = init.fds.map((_fd, i) => new SocketChannel(this.#sender, i));
    this.#realtime = new Realtime(sys, this.#arena, this.#arena.take(TIMESPEC_BYTES));
    this.#queueWait = this.#counters.queueWait;
    this.#maxAgeNs = init.maxQueryAgeMs * 1e6;
    this.#wildcard = init.fds.map((_fd, i) => init.wildcards?.[i] ?? true);
    this.#trace = RxTrace.fromEnv(init.index);
    // Best effort, per socket: without timestamps a socket's queries are neither aged nor dropped.
    this.#stamped = init.fds.map((fd, i) => {
      const err = sys.rxTimestamps(fd);
      if (err !== 0) this.#logger.warn('udp: no kernel receive timestamps (SO_TIMESTAMPNS refused): queue wait not measured, --max-query-age not applied', { socket: init.names[i], errno: err });
      return err === 0;
    });
    this.#poller = new Poller(sys, this.#arena, this.#ctl, init.wakeFd, init.fds, this.#scratchOff, init.idlePollMs ?? IDLE_POLL_MS);
    this.#outbox = new Outbox(port, this.#ctl, init.reports, this.#io, this.#logger, init.remoteWaiters === true);
    this.#completions = new Completions(this.#hits, this.#clock, { channels: this.#channels, settle: this.#settle, logger: this.#logger, remoteWaiters: init.remoteWaiters === true, lookups: this.#cache }, init.completions);
    this.#keep = [];
    this.#idleGc = new IdleCollector(exposeGc(), this.#clock.now());
  }

  /** Runs until told to close. Never returns early on a bad packet: handle() errors are counted and logged. */
  run(): void {
    this.#outbox.post({ misses: null, logs: null, ready: true });
    const heap = HeapTrace.fromEnv(this.#init.index);
    const fds = this.#fds;
    const trace = this.#trace;
    for (;;) {
      this.#clock.tick();
      if (trace !== null) trace.turn(this.#realtime.us());
      if (MISS_TRACE) this.#outbox.traceTurnAt = traceNow();
      // Messages first: a reload applies to this turn's queries, and completions go out with this turn's answers.
      const pending = Atomics.exchange(this.#ctl, Ctl.PENDING, 0);
      if (pending !== 0) this.#takeMessages(pending);
      if (trace !== null) trace.mark(1, this.#realtime.us());
      // Completions left over count as work: no sleeping while some wait.
      let got = this.#completions.waiting ? this.#completions.apply(this.#behind ? COMPLETIONS_WHEN_BEHIND : COMPLETIONS_PER_TURN) : 0;
      if (this.#state === 'closing') while (this.#completions.waiting) got += this.#completions.apply(); // The last turn: nothing left queued.
      this.#behind = false;
      if (trace !== null) trace.mark(2, this.#realtime.us());
      if (MISS_TRACE) this.#outbox.traceCompletedAt = traceNow();
      let received = 0;
      if (this.#state !== 'closing') {
        let detached = 0;
        for (let s = 0; s < fds.length; s++) {
          const kept = this.#keep[s] === true;
          if (this.#state === 'paused' && !kept) continue;
          const n = this.#receive(s);
          received += n;
          if (!kept) detached += n;
        }
        if (detached === 0 && this.#state === 'draining') this.#paused();
        got += received;
      }
      const missed = this.#outbox.missed;
      // Gauges before the answers leave: a client that reads them after its answer sees this turn's.
      this.#publish();
      this.#sender.flushFilled();
      if (trace !== null) trace.sent(this.#realtime.us());
      this.#outbox.send((this.#state === 'paused' || this.#state === 'closing') && this.#hits.inflight === 0);
      if (trace !== null) trace.endTurn(this.#realtime.us(), got, this.#io[IO.wakeups]!);
      if (this.#state === 'closing') break;
      if (got === 0 || (missed && !this.#completions.waiting && received < this.#init.batch)) this.#sleep();
      if (this.#idleGc.maybeCollect(this.#clock.now(), this.#io[IO.datagrams]!)) this.#io[IO.idleGcs]!++;
    }
    trace?.write();
    heap?.write({ ...this.#counters.server.snapshot(), ...this.#counters.io.snapshot() });
    // Before 'closed': the main thread terminates the thread on it, and no JavaScript runs after that.
    this.dispose();
    this.#outbox.post({ misses: null, logs: null, closed: true });
  }

  /** The native block goes (once): at the end of run(), or after it threw (worker.ts); a thread ended without either: freed by the main thread (holdBlock). */
  dispose(): void {
    const free = this.#free;
    this.#free = null;
    free?.();
  }

  /** MissSink: queued for this turn's report; refused at once past the limit (the main thread is behind). */
  forward(token: number, key: string, query: Buffer, refresh = false): void {
    // Answered now, stale or SERVFAIL, as the abort answered the others: close() would otherwise end us with its client waiting (closing: no report is read).
    if ((this.#aborted && this.#state !== 'running') || this.#state === 'closing') return this.#hits.complete(token, null, 'closed');
    // A read that gave up on a store mid-change is no miss: it always goes to the main thread, which answers it from the store.
    if (this.#hits.inflight > this.#init.maxInflight && !this.#cache.lastGaveUp) {
      this.#io[IO.overloaded]!++;
      this.#hits.complete(token, null, 'overloaded');
      return;
    }
    this.#outbox.miss(token, key, query, refresh);
  }

  #receive(s: number): number {
    const recv = this.#recv;
    const n = this.#sys.recvmmsg(this.#fds[s]!, recv.address, recv.count, MSG_DONTWAIT);
    if (n <= 0) {
      if (n !== -EAGAIN && n !== -EINTR && n !== 0) this.#io[IO.recvErrors]!++;
      return 0;
    }
    if (n === recv.count) this.#behind = true;
    const io = this.#io;
    io[IO.batches]!++;
    io[IO.datagrams]! += n;
    const views = this.#views;
    const channel = this.#channels[s]!;
    const hits = this.#hits;
    const peers = this.#peers;
    const stamped = this.#stamped[s]!;
    const wildcard = this.#wildcard[s]!;
    const now = this.#realtime.now;
    // One clock read per batch, after the receive: a datagram's age is its whole wait, up to the moment it was taken.
    if (stamped) this.#realtime.read();
    const maxAgeNs = this.#maxAgeNs;
    const trace = this.#trace;
    for (let i = 0; i < n; i++) {
      if (recv.truncated(i)) {
        io[IO.oversize]!++;
        continue;
      }
      if (stamped) {
        const age = recv.ageNs(i, now);
        if (age >= 0) {
          this.#queueWait.observe(age / 1e9);
          if (maxAgeNs > 0 && age > maxAgeNs) {
            io[IO.stale]!++;
            continue;
          }
        }
      }
      // Source port 0 (spoofed): nowhere to answer, so no request and no miss; dropped and counted, as dgram does.
      if (this.#arena.u32[recv.sockaddrOffset(i) >> 2]! >>> 16 === 0) {
        this.#counters.server.values[SERVER_COUNTERS.slot.dropped]!++;
        continue;
      }
      recv.keepDestination(i, wildcard); // a wildcard socket's answer leaves from where its query went (SendVec.push)
      const peer = peers[i]!;
      peer.sock = s;
      peer.answered = false;
      peer.nameLen = recv.nameLength(i);
      const msg = views.get(i, recv.dataOffset(i), recv.length(i));
      if (trace !== null && msg.length >= 2) trace.datagram(recv.kernelTimeUs(i), now.sec * 1e6 + now.nsec / 1000, traceKey(peer.port, msg.readUInt16BE(0)));
      try {
        hits.handle(msg, channel, peer);
      } catch (err) {
        this.#logger.error('query handler threw', { error: String(err) });
        // It may have made the query a waiter (answered here, unreported): keep it off the slot the next datagram refills.
        if (!peer.answered) {
          peer.detach(this.#detached);
          peers[i] = new Peer(this.#arena.u32, recv.sockaddrOffset(i) >> 2);
        }
        continue;
      }
      // The query waits on a miss and keeps this peer: the slot gets a fresh one.
      if (!this.#settle(peer, s, msg)) peers[i] = new Peer(this.#arena.u32, recv.sockaddrOffset(i) >> 2);
    }
    recv.reset(n);
    return n;
  }

  /**
   * After handle(): a client left unanswered waits on a miss; the main thread
   * hears of it and answers it (direct.ts). False: it is kept here (the query
   * log, or no direct answers), its sockaddr detached: not the slot's now.
   */
  readonly #settle = (peer: Peer, s: number, msg: Buffer, arrivedAt = this.#clock.stamp): boolean => {
    if (peer.answered) return true;
    this.#outbox.waiter(peer, s, msg, this.#hits.waitsOn, arrivedAt);
    if (!this.#hits.waitsLocally) return true;
    peer.detach(this.#detached);
    return false;
  };

  /** The completions ring before each message (and what it wrote while we applied the last): a record is always read before what the main thread posted after it (packed-ring.ts). */
  #takeMessages(pending: number): void {
    this.#completions.takeRing();
    if ((pending & PENDING_PORT) === 0) return;
    for (let m = receiveMessageOnPort(this.#port); m !== undefined; m = receiveMessageOnPort(this.#port)) {
      this.#completions.takeRing();
      this.#apply(m.message as ToWorker);
    }
  }

  #apply(m: ToWorker): void {
    switch (m.t) {
      case 'done':
        this.#completions.push(m.items);
        if (m.overflow === true) Atomics.sub(this.#ctl, Ctl.DONE_OVERFLOW, 1);
        return;
      case 'again':
        this.#completions.push(m.items, true);
        return;
      case 'configure':
        this.#cache.configure(m.cache);
        // Only its settings are taken: the hit path keeps its own limiter's buckets (keepBuckets), as the main thread's does.
        this.#hits.configure({ maxUdpSize: m.maxUdpSize, queryLogEvery: m.queryLogEvery, clientLimit: missLimiter(m.clientMissRate, m.clientMissBurst, m.clientMissInflight) });
        this.#gate.configure(m.localZones);
        this.#outbox.post({ misses: null, logs: null, configured: true });
        return;
      case 'pause':
        if (this.#state === 'running') this.#state = 'draining';
        this.#keep = m.keep ?? [];
        return;
      case 'abort': {
        // Before the clients handed back run: a new miss of theirs is answered at once (forward()).
        this.#aborted = true;
        const n = this.#completions.abort(() => this.#hits.abortAll(this.#completions.heldByMain));
        this.#outbox.post({ misses: null, logs: null, aborted: n });
        return;
      }
      case 'close':
        this.#state = 'closing';
        return;
    }
  }

  /**
   * Also right after a turn that posted misses, when it took less than a
   * full batch and no completions wait: the main thread needs the CPU to
   * forward them (with the agent on one CPU it runs only once we sleep), and
   * another turn would only find the sockets empty. poll() returns at once
   * if a datagram came meanwhile, so nothing waits longer for it.
   */
  #sleep(): void {
    if (!this.#poller.sleep()) return;
    this.#io[IO.wakeups]!++;
    if (MISS_TRACE) this.#outbox.traceSlept = true;
  }

  /** The detached sockets are empty: neither read nor polled any more. */
  #paused(): void {
    this.#state = 'paused';
    for (let s = 0; s < this.#fds.length; s++) if (this.#keep[s] !== true) this.#poller.skip(s);
  }

  #publish(): void {
    this.#io[IO.inflight] = this.#hits.inflight; // The cache's entry and byte gauges are the main thread's: one store.
    Atomics.add(this.#ctl, Ctl.TURNS, 1); // This loop still turns (worker-watch.ts).
  }
}
const TIMESPEC_BYTES = 16;

/** Native bytes of one worker: the receive vector (with its control slots), a send vector per socket, a scratch sockaddr, a timespec and the pollfds. */
export function workerBlockBytes(batch: number, sockets: number, maxUdpSize: number): number {
  // Each take() rounds up to 64 bytes: the sockaddr, the timespec and the pollfds one 64 each at least, plus the pollfds themselves.
  return recvVecBytes(batch, RECV_SLOT_BYTES) + sockets * vecBytes(batch, maxUdpSize) + vecBytes(1, MAX_DATAGRAM_BYTES) + 64 * 3 + (sockets + 1) * POLLFD_BYTES;
}
