/**
 * A batched UDP worker's life: one loop that receives a batch of queries
 * per socket with recvmmsg, answers every hit from its own hit path reading
 * the main thread's cache (cache/reader.ts: one store for all threads, never
 * written here), sends the answers with one sendmmsg, and hands misses to
 * the main thread. Each turn:
 *
 *   stamp the clock
 *   messages waiting? (shared `pending` word) ─► receiveMessageOnPort():
 *                 completions are queued; configure / pause / abort / close apply
 *   up to 256 queued completions (32 while the sockets are behind: the last
 *                 receive filled its vector) ─► HitPath.complete() ─► answers into the vectors
 *                 (for clients the main thread has not answered; nothing is stored here)
 *   per socket: recvmmsg(MSG_DONTWAIT) ─► HitPath.handle() per datagram
 *                 its kernel receive timestamp says how long it waited in
 *                 the socket queue (nodelocal_udp_queue_wait_seconds); past
 *                 --max-query-age it is dropped unanswered (its client gave up)
 *                 answers go into that socket's send vector
 *                 a new miss while the main thread refuses misses at its cap
 *                 is answered here (stale, else SERVFAIL: shed-gate.ts)
 *                 a miss parks its client (the peer is detached from the ring)
 *                 and reports it (sockaddr, datagram), so the main thread
 *                 sends the answer itself (direct.ts) and stores it in the
 *                 one cache; the completion then comes here only to release
 *                 the waiters, without waking us
 *   sendmmsg the filled vectors
 *   post one report: the turn's misses, waiting clients and log lines
 *   nothing received? sleep in poll(sockets + eventfd): a datagram or the
 *                 main thread's wake ends it (idle costs ~0% CPU)
 *   quiet for a second after a burst? one full GC (idle-gc.ts)
 *
 * Under load a turn is exactly two koffi calls per socket (recvmmsg and
 * sendmmsg); nothing is allocated per packet by this file except, for a
 * miss, the peer it keeps (the views handed to handle() are made once per
 * receive slot and length: loop-parts.ts SlotViews).
 */
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { CacheReader } from '../../cache/reader.js';
import { ClientMissLimiter } from '../client-limit.js';
import { HitPath, type MissSink } from '../hit-path.js';
import { Transport, type ClientChannel, type ClientPeer } from '../listener.js';
import { RCODE_SLOT_BASE, RCODE_SLOT_OTHER, SERVER_COUNTERS } from '../stats.js';
import { EAGAIN, EINTR, MSG_DONTWAIT, POLLIN, type UdpBatchSys } from '../../sys/udp-batch.js';
import { Arena, RecvVec, SendVec, SOCKADDR_SLOT_BYTES, recvVecBytes, vecBytes, type Timespec } from './msgvec.js';
import { RxTrace, traceKey } from './rx-trace.js';
import { Peer, ReportLogger, SlotViews, TurnClock } from './loop-parts.js';
import { IdleCollector, exposeGc } from './idle-gc.js';
import { ShedGate } from './shed-gate.js';
import { parseQuery, QueryStatus } from '../../dns/query.js';
import {
  Ctl, MISS_REFRESH, OUTCOMES, Packer, WAITER_SOCKADDR_WORDS, WAITER_STRIDE, itemBytes, itemExtra, itemTag, itemToken, msSince16, nextSeq, seqAtOrBefore, transferOf, waiterTag,
  type Packed, type ToWorker, type WorkerInit, type WorkerReport,
} from './protocol.js';
import { BATCHED_COUNTERS, workerCounters, type WorkerCounters } from './stats.js';
import type { TypedHistogram } from '../../ops/histogram.js';
import { MISS_TRACE, traceNow } from '../../miss-trace.js';

/** Bytes a query may take; a longer datagram arrives cut (MSG_TRUNC) and is dropped. Real queries are a few hundred bytes. */
export const RECV_SLOT_BYTES = 4096;
/**
 * How long an idle worker sleeps in poll before it looks around anyway. The
 * eventfd wakes it for anything the main thread sends, so this is only a
 * safety net (and one wakeup a second is ~0% CPU).
 */
const IDLE_POLL_MS = 1000;
const POLLFD_BYTES = 8;
/**
 * Completions answered per turn at most. A main thread that fell behind
 * hands back thousands at once; answering them all in one turn would hold
 * the hits queued behind them for milliseconds (measured: hit p99 from
 * 3 ms to 50 ms under a miss flood). 256 is about a batch's worth of work.
 */
export const COMPLETIONS_PER_TURN = 256;
/**
 * Completions per turn while a socket is behind (its last recvmmsg filled the
 * vector, so the kernel holds more). Under a miss flood a completion is
 * cache work (~4 us: the main thread answered its clients already) and the
 * queries behind in the socket queue are hits waiting: 256 took two thirds
 * of each turn, and a hit waited ~15 turns of it (measured with per-datagram
 * kernel timestamps: 20-28 ms). 32 take ~130 us beside a full batch's
 * ~600 us, and still apply ~40k completions a second while behind, more than
 * the main thread produces.
 */
export const COMPLETIONS_WHEN_BEHIND = 32;

const IO = BATCHED_COUNTERS.slot;

/**
 * running: receiving. draining: paused by the main thread, which has taken
 * our sockets out of the group; we read what the kernel had already queued
 * for us, until a receive finds nothing. paused: no more receiving; answers
 * to queries taken still go out. closing: leave the loop.
 */
type State = 'running' | 'draining' | 'paused' | 'closing';

/** Answers for one socket go into its send vector. */
class SocketChannel implements ClientChannel {
  readonly transport = Transport.UDP;
  readonly #loop: WorkerLoop;
  readonly #sock: number;
  constructor(loop: WorkerLoop, sock: number) {
    this.#loop = loop;
    this.#sock = sock;
  }
  send(answer: Buffer, peer: ClientPeer): void {
    this.#loop.queue(this.#sock, answer, peer as Peer);
  }
  discard(peer: ClientPeer): void {
    (peer as Peer).answered = true;
  }
}

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
  readonly #send: SendVec[];
  readonly #peers: Peer[];
  /** pollfd[0] is the eventfd, then one per socket. */
  readonly #pollOff: number;
  readonly #scratchOff: number;
  /** A struct timespec in the arena: clock_gettime(CLOCK_REALTIME) after each receive, to age the datagrams by. */
  readonly #nowOff: number;
  readonly #now: Timespec;
  /** Per socket: the kernel stamps its datagrams (SO_TIMESTAMPNS accepted). */
  readonly #stamped: boolean[];
  readonly #queueWait: TypedHistogram;
  /** --max-query-age in ns; 0: never drop. */
  readonly #maxAgeNs: number;
  /** NODELOCAL_RX_TRACE's per-datagram record; null (the usual case): off. */
  readonly #trace: RxTrace | null;
  readonly #misses: Packer;
  /** This turn's waiting clients, for the main thread to answer itself (protocol.ts WAITER_STRIDE). */
  readonly #waiters: Packer;
  #waiterSeq: number;
  /** The token forward() was given during the current handle() (0: none): a new miss's first waiter. */
  #forwarded: number;
  /** Our misses in flight, both ways, so a waiter that joined one is reported under its token. */
  readonly #tokenOf: Map<string, number>;
  readonly #keyOf: Map<number, string>;
  /** While a completion is applied: its clients with a sequence number up to this were answered by the main thread (0: none). */
  #answeredThrough: number;
  readonly #answeredByMain = (peer: ClientPeer): boolean => seqAtOrBefore((peer as Peer).seq, this.#answeredThrough);
  /** Completions taken from the port and not yet applied, oldest first; #doneAt indexes into the first. */
  readonly #done: Packed[];
  #doneAt: number;
  #state: State;
  /** The last receive filled its vector: the kernel has more queued (see COMPLETIONS_WHEN_BEHIND). */
  #behind: boolean;
  #drainedSent: boolean;
  readonly #free: () => void;
  readonly #idleGc: IdleCollector;
  /** Under NODELOCAL_MISS_TRACE only: when this turn began, and whether it followed a sleep in poll. */
  #traceTurnAt: number;
  #traceSlept: boolean;
  #traceCompletedAt: number;

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
    this.#gate = new ShedGate(this.#ctl, init.localZones, this.#cache, { values: this.#io, slot: IO.shedBusy });
    this.#hits = new HitPath({
      cache: this.#cache,
      clock: this.#clock,
      logger: this.#logger,
      counters: this.#counters.server,
      histograms: this.#counters.hist,
      maxUdpSize: init.maxUdpSize,
      queryLogEvery: init.queryLogEvery,
      clientLimit: missLimiter(init.clientMissRate, init.clientMissBurst),
      gate: this.#gate,
    });
    // The exchange scrubbed and stored every answer before it came back: this side only serves it.
    this.#hits.connect(this, true);
    this.#gate.watch(this.#hits);
    this.#fds = init.fds;
    this.#channels = init.fds.map((_fd, i) => new SocketChannel(this, i));
    // One native block for everything: the receive vector, a send vector per socket, the pollfds and a scratch sockaddr.
    const sendSlot = init.maxUdpSize;
    const block = sys.alloc(workerBlockBytes(init.batch, init.fds.length, sendSlot));
    this.#free = block.free;
    this.#arena = new Arena(block.address, block.bytes);
    this.#recv = new RecvVec(this.#arena, init.batch, RECV_SLOT_BYTES);
    this.#views = new SlotViews(this.#arena.u8.buffer as ArrayBuffer, init.batch);
    this.#send = init.fds.map(() => new SendVec(this.#arena, init.batch, sendSlot));
    this.#peers = [];
    for (let i = 0; i < init.batch; i++) this.#peers.push(new Peer(this.#arena.u32, this.#recv.sockaddrOffset(i) >> 2));
    this.#scratchOff = this.#arena.take(SOCKADDR_SLOT_BYTES);
    this.#nowOff = this.#arena.take(TIMESPEC_BYTES);
    this.#now = { sec: 0, nsec: 0 };
    this.#queueWait = this.#counters.queueWait;
    this.#maxAgeNs = init.maxQueryAgeMs * 1e6;
    this.#trace = RxTrace.fromEnv(init.index);
    // Best effort, per socket: without timestamps a socket's queries are neither aged nor dropped.
    this.#stamped = init.fds.map((fd, i) => {
      const err = sys.rxTimestamps(fd);
      if (err !== 0) this.#logger.warn('udp: no kernel receive timestamps (SO_TIMESTAMPNS refused): queue wait not measured, --max-query-age not applied', { socket: init.names[i], errno: err });
      return err === 0;
    });
    this.#pollOff = this.#arena.take((init.fds.length + 1) * POLLFD_BYTES);
    const pv = this.#arena.view;
    const all = [init.wakeFd, ...init.fds];
    all.forEach((fd, i) => {
      pv.setInt32(this.#pollOff + i * POLLFD_BYTES, fd, true);
      pv.setInt16(this.#pollOff + i * POLLFD_BYTES + 4, POLLIN, true);
    });
    this.#misses = new Packer(true);
    this.#waiters = new Packer(false, WAITER_STRIDE);
    this.#waiterSeq = 0;
    this.#forwarded = 0;
    this.#tokenOf = new Map();
    this.#keyOf = new Map();
    this.#answeredThrough = 0;
    this.#done = [];
    this.#doneAt = 0;
    this.#state = 'running';
    this.#behind = false;
    this.#drainedSent = false;
    this.#idleGc = new IdleCollector(exposeGc(), this.#clock.now());
    this.#traceTurnAt = 0;
    this.#traceSlept = false;
    this.#traceCompletedAt = 0;
  }

  /** Runs until told to close. Never returns early on a bad packet: handle() errors are counted and logged. */
  run(): void {
    this.#post({ misses: null, logs: null, ready: true });
    const fds = this.#fds;
    const trace = this.#trace;
    for (;;) {
      this.#clock.tick();
      if (trace !== null) trace.turn(this.#realtimeUs());
      if (MISS_TRACE) this.#traceTurnAt = traceNow();
      // Messages first: a reload applies to this turn's queries, and completions go out with this turn's answers.
      if (Atomics.exchange(this.#ctl, Ctl.PENDING, 0) !== 0) this.#takeMessages();
      if (trace !== null) trace.mark(1, this.#realtimeUs());
      // Completions left over count as work: no sleeping while some wait.
      let got = this.#done.length > 0 ? this.#complete(this.#behind ? COMPLETIONS_WHEN_BEHIND : COMPLETIONS_PER_TURN) : 0;
      this.#behind = false;
      if (trace !== null) trace.mark(2, this.#realtimeUs());
      if (MISS_TRACE) this.#traceCompletedAt = traceNow();
      let received = 0;
      if (this.#state === 'running' || this.#state === 'draining') {
        for (let s = 0; s < fds.length; s++) received += this.#receive(s);
        if (received === 0 && this.#state === 'draining') this.#state = 'paused';
        got += received;
      }
      const missed = this.#misses.count > 0;
      // Gauges before the answers leave: a client that reads them after its answer sees this turn's.
      this.#publish();
      for (let s = 0; s < fds.length; s++) if (this.#send[s]!.filled > 0) this.#flush(s);
      if (trace !== null) trace.sent(this.#realtimeUs());
      this.#report();
      if (trace !== null) trace.endTurn(this.#realtimeUs(), got, this.#io[IO.wakeups]!);
      if (this.#state === 'closing') break;
      if (got === 0 || (missed && this.#done.length === 0 && received < this.#init.batch)) this.#sleep();
      if (this.#idleGc.maybeCollect(this.#clock.now(), this.#io[IO.datagrams]!)) this.#io[IO.idleGcs]!++;
    }
    trace?.write();
    this.#post({ misses: null, logs: null, closed: true });
    this.#free();
  }

  /** MissSink: queued for this turn's report; refused at once past the limit (the main thread is behind). */
  forward(token: number, key: string, query: Buffer, refresh = false): void {
    // A read that gave up on a store mid-change is no miss: it always goes to the main thread, which answers it from the store.
    if (this.#hits.inflight > this.#init.maxInflight && !this.#cache.lastGaveUp) {
      this.#io[IO.overloaded]!++;
      this.#hits.complete(token, null, 'overloaded');
      return;
    }
    this.#misses.push(token, refresh ? MISS_REFRESH : 0, query, key);
    this.#forwarded = token;
    this.#tokenOf.set(key, token);
    this.#keyOf.set(token, key);
  }

  /** An answer for `peer`, from handle() now or from complete() later. */
  queue(sock: number, answer: Buffer, peer: Peer): void {
    peer.answered = true;
    if (this.#answeredThrough !== 0 && seqAtOrBefore(peer.seq, this.#answeredThrough)) {
      // The main thread already sent this client its answer, and counted it as it left (direct.ts): the hit path just
      // counted it again (HitPath.#send counts the rcode and TC before handing the answer over), so take that back.
      const sv = this.#counters.server.values;
      const rcode = answer[3]! & 0x0f;
      sv[rcode <= 5 ? RCODE_SLOT_BASE + rcode : RCODE_SLOT_OTHER]!--;
      if ((answer[2]! & 0x02) !== 0) sv[SERVER_COUNTERS.slot.truncated]!--;
      return;
    }
    const vec = this.#send[sock]!;
    if (answer.length > vec.slotBytes) {
      // A reload raised --max-udp-size past the slots: this answer goes alone.
      const words = this.#arena.u32;
      const dst = this.#scratchOff >> 2;
      for (let w = 0; w < peer.nameLen >> 2; w++) words[dst + w] = peer.words[peer.wordOff + w]!;
      if (this.#sys.sendto(this.#fds[sock]!, answer, this.#arena.address + this.#scratchOff, peer.nameLen) < 0) this.#io[IO.sendErrors]!++;
      return;
    }
    if (vec.full) this.#flush(sock);
    vec.push(answer, peer.words, peer.wordOff, peer.nameLen);
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
    const now = this.#now;
    // One clock read per batch, after the receive: a datagram's age is its whole wait, up to the moment it was taken.
    if (stamped) this.#readNow();
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
      const peer = peers[i]!;
      peer.sock = s;
      peer.answered = false;
      peer.nameLen = recv.nameLength(i);
      const msg = views.get(i, recv.dataOffset(i), recv.length(i));
      if (trace !== null && msg.length >= 2) trace.datagram(recv.kernelTimeUs(i), now.sec * 1e6 + now.nsec / 1000, traceKey(peer.port, msg.readUInt16BE(0)));
      this.#forwarded = 0;
      try {
        hits.handle(msg, channel, peer);
      } catch (err) {
        this.#logger.error('query handler threw', { error: String(err) });
        peer.answered = true;
      }
      if (!peer.answered) {
        // The query waits on a miss and keeps this peer: give the slot a fresh one.
        peer.detach();
        peers[i] = new Peer(this.#arena.u32, recv.sockaddrOffset(i) >> 2);
        this.#reportWaiter(peer, s, msg);
      }
    }
    recv.reset(n);
    return n;
  }

  /**
   * Tells the main thread about a waiting client, so it sends the answer
   * itself as soon as it has it (no wake-up of this thread on the way back).
   * A new miss's waiter is under the token forward() was just given; one that
   * joined a miss in flight is found by its key (a second parse, only then).
   */
  #reportWaiter(peer: Peer, s: number, msg: Buffer): void {
    let token = this.#forwarded;
    if (token === 0) {
      const q = parseQuery(msg);
      token = q.status === QueryStatus.OK ? (this.#tokenOf.get(q.key) ?? 0) : 0;
      // Not ours to report (cannot happen: every miss with waiters went through forward()): we answer it at completion.
      if (token === 0) return;
    }
    this.#waiterSeq = nextSeq(this.#waiterSeq);
    peer.seq = this.#waiterSeq;
    this.#waiters.push(token, waiterTag(s, peer.nameLen), msg, null);
    this.#waiters.extraWords(peer.words, peer.wordOff, WAITER_SOCKADDR_WORDS);
  }

  /** CLOCK_REALTIME now, into #now. */
  #readNow(): void {
    this.#sys.realtime(this.#arena.address + this.#nowOff);
    const u32 = this.#arena.u32;
    const w = this.#nowOff >> 2;
    this.#now.sec = u32[w]! + u32[w + 1]! * 0x100000000;
    this.#now.nsec = u32[w + 2]!;
  }

  /** CLOCK_REALTIME now in microseconds since the epoch (the trace's clock). */
  #realtimeUs(): number {
    this.#readNow();
    return this.#now.sec * 1e6 + this.#now.nsec / 1000;
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

  #takeMessages(): void {
    for (let m = receiveMessageOnPort(this.#port); m !== undefined; m = receiveMessageOnPort(this.#port)) {
      this.#apply(m.message as ToWorker);
    }
  }

  #apply(m: ToWorker): void {
    switch (m.t) {
      case 'done':
        this.#done.push(m.items);
        return;
      case 'configure':
        this.#cache.configure(m.cache);
        // A fresh limiter, as the main thread's hit path gets on reload: buckets start full.
        this.#hits.configure({ maxUdpSize: m.maxUdpSize, queryLogEvery: m.queryLogEvery, clientLimit: missLimiter(m.clientMissRate, m.clientMissBurst) });
        this.#gate.configure(m.localZones);
        this.#post({ misses: null, logs: null, configured: true });
        return;
      case 'pause':
        if (this.#state === 'running') this.#state = 'draining';
        return;
      case 'abort': {
        // Completions taken first: their clients may have had their answer from the main thread, and must not get a SERVFAIL after it.
        while (this.#done.length > 0) this.#complete();
        const n = this.#hits.abortAll();
        this.#tokenOf.clear();
        this.#keyOf.clear();
        this.#post({ misses: null, logs: null, aborted: n });
        return;
      }
      case 'close':
        this.#state = 'closing';
        return;
    }
  }

  /** Applies up to `limit` queued completions; returns how many. */
  #complete(limit = COMPLETIONS_PER_TURN): number {
    let n = 0;
    while (n < limit && this.#done.length > 0) {
      const p = this.#done[0]!;
      const i = this.#doneAt++;
      if (this.#doneAt >= p.count) {
        this.#done.shift();
        this.#doneAt = 0;
      }
      if (i >= p.count) continue;
      const token = itemToken(p, i);
      const key = this.#keyOf.get(token);
      if (key !== undefined) {
        this.#keyOf.delete(token);
        if (this.#tokenOf.get(key) === token) this.#tokenOf.delete(key);
      }
      const through = itemExtra(p, i, 0);
      const turn = this.#clock.stamp;
      if (through !== 0) {
        this.#answeredThrough = through;
        // Every client of it had its answer from the main thread, which stored it too: only the question to close.
        if (this.#hits.release(token, this.#answeredByMain)) {
          this.#answeredThrough = 0;
          n++;
          continue;
        }
        // Its clients had their answer when the main thread sent it: logged with their duration as of then.
        this.#clock.stamp = turn - msSince16(itemExtra(p, i, 1), turn);
      }
      try {
        this.#hits.complete(token, itemBytes(p, i), OUTCOMES[itemTag(p, i)] ?? 'network');
      } finally {
        this.#answeredThrough = 0;
        this.#clock.stamp = turn;
      }
      n++;
    }
    return n;
  }

  /**
   * Also right after a turn that posted misses, when it took less than a
   * full batch and no completions wait: the main thread needs the CPU to
   * forward them (with the agent on one CPU it runs only once we sleep), and
   * another turn would only find the sockets empty. poll() returns at once
   * if a datagram came meanwhile, so nothing waits longer for it.
   */
  #sleep(): void {
    const ctl = this.#ctl;
    Atomics.store(ctl, Ctl.SLEEPING, 1);
    // Checked after announcing the sleep: a message posted before this is seen here, one posted after finds SLEEPING and wakes us.
    if (Atomics.load(ctl, Ctl.PENDING) === 0) {
      const nfds = this.#state === 'running' || this.#state === 'draining' ? this.#fds.length + 1 : 1;
      this.#sys.poll(this.#arena.address + this.#pollOff, nfds, IDLE_POLL_MS);
      this.#io[IO.wakeups]!++;
      if (MISS_TRACE) this.#traceSlept = true;
    }
    Atomics.store(ctl, Ctl.SLEEPING, 0);
    // The eventfd is level-triggered: drain it whether or not this wake came from it (read fails with EAGAIN when empty).
    if ((this.#arena.view.getInt16(this.#pollOff + 6, true) & POLLIN) !== 0) {
      this.#sys.read8(this.#init.wakeFd, this.#arena.address + this.#scratchOff);
    }
  }

  #publish(): void {
    // The cache's entry and byte gauges are the main thread's: one store, not one per worker.
    this.#io[IO.inflight] = this.#hits.inflight;
  }

  #report(): void {
    const misses = this.#misses.count > 0 ? this.#misses.take() : null;
    const waiters = this.#waiters.count > 0 ? this.#waiters.take() : null;
    const logs = this.#logger.records.length > 0 ? this.#logger.records : null;
    if (logs !== null) this.#logger.records = [];
    const drained = (this.#state === 'paused' || this.#state === 'closing') && !this.#drainedSent && this.#hits.inflight === 0;
    if (drained) this.#drainedSent = true;
    if (misses === null && waiters === null && logs === null && !drained) return;
    const report: WorkerReport = drained ? { misses, waiters, logs, drained: true } : MISS_TRACE && misses !== null ? this.#traced(misses, waiters, logs) : { misses, waiters, logs };
    const transfer = misses === null ? [] : transferOf(misses);
    if (waiters !== null) transfer.push(...transferOf(waiters));
    this.#port.postMessage(report, transfer);
  }

  #traced(misses: Packed, waiters: Packed | null, logs: WorkerReport['logs']): WorkerReport {
    const trace = [this.#traceTurnAt, traceNow(), this.#traceSlept ? 1 : 0, this.#traceCompletedAt];
    this.#traceSlept = false;
    return { misses, waiters, logs, trace };
  }

  #post(r: WorkerReport): void {
    this.#port.postMessage(r);
  }
}

/**
 * The worker's own per-client miss limiter: the check happens here, before
 * a miss crosses to the main thread, because only the worker knows the
 * client's address (the boundary carries a token, a key and the query).
 */
function missLimiter(rate: number, burst: number): ClientMissLimiter | null {
  return rate > 0 ? new ClientMissLimiter(rate, burst) : null;
}

const TIMESPEC_BYTES = 16;

/** Native bytes of one worker: the receive vector (with its control slots), a send vector per socket, a scratch sockaddr, a timespec and the pollfds. */
export function workerBlockBytes(batch: number, sockets: number, maxUdpSize: number): number {
  // Each take() rounds up to 64 bytes: the sockaddr, the timespec and the pollfds one 64 each at least, plus the pollfds themselves.
  return recvVecBytes(batch, RECV_SLOT_BYTES) + sockets * vecBytes(batch, maxUdpSize) + 64 * 3 + (sockets + 1) * POLLFD_BYTES;
}
