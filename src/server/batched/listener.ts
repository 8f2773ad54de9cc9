/**
 * The batched UDP backend (--io batched): N worker threads, each owning one
 * SO_REUSEPORT socket per listen address, answering hits from its own hit
 * path with recvmmsg/sendmmsg (loop.ts), and handing misses to this
 * thread, which owns upstream I/O, the view, config and the cache:
 *
 *   worker i: sockets ─► HitPath_i + CacheReader_i ─ misses + their waiters ─┐
 *                              │ reads (no lock)       ▼ (a ring record per turn: packed-ring.ts)
 *   main:                 the one DnsCache ◄─ stores ─ MissExchange ─► Resolver (upstreams, view)
 *                                                       │ complete(token, answer | failure)
 *   clients ◄─ every outcome sent by main on worker i's sockets (direct.ts: answer, stale
 *               or SERVFAIL), one sendmmsg per socket per turn; main holds the waiting clients
 *   worker i ◄─ a ring record per main-loop turn, to close its questions: no wake-up (a
 *               client whose record came late is handed back to it, and that wakes it)
 *
 * One cache for all the threads: the main thread's DnsCache (the agent's,
 * which TCP uses too) is built on SharedArrayBuffers, is the only writer
 * (inserts, evictions, LRU order, snapshots), and every worker reads the
 * same store without locks (cache/reader.ts: a sequence word, retries, a
 * miss when the store keeps changing under the read). So every answer is
 * held once whatever the worker count, a name fetched through one worker
 * is a hit in all of them, and workers spend nothing on storing. A worker's
 * miss is asked of the cache again here (the exchange's shared lookup: the
 * entry may have arrived since, or the worker's read gave up), then goes
 * upstream once per name in flight.
 *
 * It is one Listener for all the UDP listen addresses, so the workers read
 * one cache whichever address a pod asks (link-local or kube-dns ClusterIP).
 * Its options are in listener-options.ts (re-exported here), starting one
 * worker in worker-spawn.ts, the sums a scrape reads in worker-totals.ts.
 */
import type { Worker } from 'node:worker_threads';
import { formatHostPort } from '../../addr.js';
import { DnsCache } from '../../cache/cache.js';
import { systemClock, type Clock } from '../../clock.js';
import { CACHE_COUNTERS } from '../../cache/stats.js';
import type { Logger } from '../../log.js';
import { Counters } from '../../stats/counters.js';
import type { UdpBatchSys } from '../../sys/udp-batch.js';
import type { HitPathHistograms, MissOutcome, MissSink } from '../hit-path.js';
import type { Listener } from '../listener.js';
import type { MissCompleter } from '../resolver.js';
import { UpstreamLoad } from '../upstream-load.js';
import { SERVER_COUNTERS, type ServerCounters } from '../stats.js';
import type { DirectDeps, DirectPolicy } from './direct.js';
import { workerSettings, type BatchedUdpOptions, type SettingsUpdate } from './listener-options.js';
import { MissExchange } from './miss-exchange.js';
import type { WorkerLink } from './worker-link.js';
import { openSockets, startWorker, whenStarted, type WorkerSockets } from './worker-spawn.js';
import { WorkerRestarts } from './worker-restarts.js';
import { TurnWatch } from './worker-watch.js';
import { Orphans, WORKER_STOP_WAIT_MS, abandonWorker, abortWorker, stopWorkers, terminateStuck } from './worker-stop.js';
import { isWildcardHost } from '../../sys/reuseport.js';
import { WorkerTotals, type BatchedTotals } from './worker-totals.js';
import { Ctl, type WorkerReport, type WorkerSettings } from './protocol.js';
import { takeItems } from './worker-items.js';
import { RING_WAKE, wakeTaken, type RingWake } from './packed-ring.js';
import { BATCHED_COUNTERS, type BatchedCounters, type WorkerCounters } from './stats.js';
import { hitPathHistograms } from '../../ops/histogram.js';
import { MISS_TRACE, traceReport } from '../../miss-trace.js';

export * from './listener-options.js';

type State = 'new' | 'running' | 'paused' | 'closed';

export class BatchedUdpListener implements Listener, MissCompleter {
  readonly name: string;
  readonly #opts: BatchedUdpOptions;
  readonly #sys: UdpBatchSys;
  readonly #logger: Logger;
  readonly #exchange: MissExchange;
  /** The one cache: written here, read by every worker. */
  readonly sharedCache: DnsCache;
  readonly #clock: Clock;
  /** Main-thread counters (restarts, cross-worker coalescing), summed with the workers'. */
  readonly #own: BatchedCounters;
  /** Answers the main thread sent on the workers' sockets (direct.ts), by rcode: summed with the workers' own. */
  readonly #ownServer: ServerCounters;
  /** The histograms of what this thread sends itself on the workers' sockets (direct.ts), summed with the workers'. */
  readonly #ownHist: HitPathHistograms;
  readonly #now: () => number;
  readonly #links: (WorkerLink | null)[];
  /** Bound ports, per listen address (port 0 resolves at start). */
  readonly #ports: number[];
  #policy: WorkerSettings;
  readonly #directPolicy: () => DirectPolicy;
  #state: State;
  #drainWaiters: (() => void)[];
  #abortWaiters: { total: number; resolve: (n: number) => void } | null;
  readonly #restarts: WorkerRestarts;
  /** Per listen address: a wildcard, whose sockets pause() leaves in their group (see pause()). */
  readonly #wildcard: readonly boolean[];
  /** What a scrape publishes: the workers' counters and ours added up, the dead workers' kept in. */
  readonly #totals: WorkerTotals;
  /** Clients held here for workers that died, still waiting on their misses: answered by abortAll() and abandon() too. */
  readonly #orphans = new Orphans(() => this.#checkDrained());
  readonly #turns = new TurnWatch();
  /** The resolver's count in flight and cap, where the workers read them (upstream-load.ts): buildServing hands it over. */
  readonly upstreamLoad: UpstreamLoad;

  constructor(opts: BatchedUdpOptions) {
    if (opts.workers < 1) throw new Error('BatchedUdpListener needs at least one worker');
    this.#opts = opts;
    this.#sys = opts.sys;
    this.#logger = opts.logger;
    this.name = `udp://${opts.listen.map(formatHostPort).join(',')} (batched, ${opts.workers} worker${opts.workers === 1 ? '' : 's'})`;
    this.#own = new Counters(BATCHED_COUNTERS);
    this.#ownServer = new Counters(SERVER_COUNTERS);
    this.#ownHist = hitPathHistograms();
    const clock = opts.clock ?? systemClock;
    this.#clock = clock;
    this.#now = () => clock.now();
    this.sharedCache = opts.store ?? new DnsCache(opts.cache, new Counters(CACHE_COUNTERS), { shared: true });
    // An ordinary ArrayBuffer would be copied into each worker: they would read a snapshot, never what is stored after.
    if (!(this.sharedCache.layout.index instanceof SharedArrayBuffer)) throw new Error('BatchedUdpListener needs a cache built { shared: true }');
    this.upstreamLoad = new UpstreamLoad({ workers: opts.workers });
    // Its lookups in a block of their own: they follow a worker miss already counted, so publishing them would count the query twice.
    this.#exchange = new MissExchange({
      counters: this.#own, server: this.#ownServer, shared: this.sharedCache.exchangeView(new Counters(CACHE_COUNTERS)), clock: this.#clock, load: this.upstreamLoad,
    });
    this.#links = new Array<WorkerLink | null>(opts.workers).fill(null);
    this.#ports = opts.listen.map((a) => a.port);
    this.#policy = workerSettings(opts, opts.workers);
    this.#directPolicy = () => this.#policy;
    this.#state = 'new';
    this.#drainWaiters = [];
    this.#abortWaiters = null;
    this.#restarts = new WorkerRestarts(opts.workers, {
      spawn: (i) => this.#spawn(i),
      // 'new' too: a worker that was ready and died while the others still started is restarted like any other.
      running: () => this.#state === 'running' || this.#state === 'new',
      restarted: () => void this.#own.values[BATCHED_COUNTERS.slot.restarts]!++,
      logger: this.#logger,
    });
    this.#wildcard = opts.listen.map((a) => isWildcardHost(a.host));
    this.#totals = new WorkerTotals(this.#own, this.#ownServer, this.#ownHist, this.sharedCache, opts.store === undefined);
  }

  /** Wires the upstream side (a Resolver whose `hits` is this listener); before start(). */
  connect(sink: MissSink): void {
    this.#exchange.connect(sink);
  }

  /** Bound port of each listen address, in order. */
  get ports(): readonly number[] {
    return this.#ports;
  }

  get workers(): number {
    return this.#links.length;
  }

  async start(): Promise<void> {
    try {
      // Sockets are opened in order (the first fixes a port 0), the threads then start together.
      const started: Promise<void>[] = [];
      for (let i = 0; i < this.#links.length; i++) started.push(this.#spawn(i));
      const results = await Promise.allSettled(started);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
      for (let i = 0; i < this.#links.length; i++) this.#restarts.ready(i);
    } catch (err) {
      this.#state = 'closed';
      await this.#shutdownAll();
      throw new Error(`cannot listen on ${this.name}: ${err instanceof Error ? err.message : String(err)}`);
    }
    this.#state = 'running';
  }

  /**
   * Stops taking queries: each socket is connected to its own address, so the
   * kernel stops choosing it (a new agent beside us gets the traffic; alone,
   * clients get a port-unreachable and move on), the workers answer what was
   * queued, then stop receiving; answers to queries taken still go out. Not a
   * wildcard's: connect() would fix its source to loopback (answers to other
   * hosts: EINVAL). Those stay in their group, answered until close() (new
   * queries too); what is queued at close is lost.
   */
  pause(): void {
    if (this.#state !== 'running') return;
    this.#state = 'paused';
    for (const l of this.#links) {
      if (l === null || !l.alive) continue;
      l.fds.forEach((fd, a) => {
        if (this.#wildcard[a] === true) return;
        const err = this.#sys.detach(fd);
        // Not fatal: the worker still stops receiving, and what the kernel hands this socket meanwhile is lost as before.
        if (err !== 0) this.#logger.warn('udp: could not take a socket out of its group at pause', { worker: l.index, errno: err });
      });
      // No datagram will wake it any more: every completion from now on does.
      l.lazy = false;
      l.post({ t: 'pause', keep: this.#wildcard });
    }
  }

  /** Questions the workers have waiting on the upstream side (as of each worker's last loop turn). */
  get inflight(): number {
    let n = 0;
    for (const l of this.#links) if (l !== null && l.alive) n += l.counters.io.values[BATCHED_COUNTERS.slot.inflight]!;
    return n;
  }

  /** The Listener contract: after pause() the workers read what their sockets had queued themselves, and drain() waits for the answers. */
  drained(): Promise<void> {
    return Promise.resolve();
  }

  /** After pause(): resolves once every worker has answered all its waiting queries (and those held here for dead ones). */
  drain(): Promise<void> {
    if (this.#allDrained()) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  /**
   * Shutdown past its grace period: every worker answers its waiting
   * clients stale or SERVFAIL now (those held here for dead ones too). Resolves with how many were answered;
   * a worker silent after WORKER_STOP_WAIT_MS is terminated (clients retry).
   */
  abortAll(): Promise<number> {
    const orphans = this.#orphans.abort();
    const live = this.#links.filter((l): l is WorkerLink => l !== null && l.alive);
    if (live.length === 0) return Promise.resolve(orphans);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const a = this.#abortWaiters;
        this.#abortWaiters = null;
        for (const l of this.#links) if (l !== null && l.aborting) terminateStuck(l, 'abort', this.#logger);
        a?.resolve(a.total);
      }, WORKER_STOP_WAIT_MS);
      timer.unref();
      this.#abortWaiters = { total: orphans, resolve: (n) => (clearTimeout(timer), resolve(n)) };
      for (const l of live) abortWorker(l);
    });
  }

  /** A second stop signal, the process exits next (worker-stop.ts abandonWorker): returns the clients answered. */
  abandon(): number {
    return this.#links.reduce((n, l) => n + (l !== null && l.alive ? abandonWorker(l) : 0), this.#orphans.abort());
  }

  /**
   * A reload: TTL caps, prefetch, stale window, largest UDP answer and
   * query-log sampling, from each worker's next turn. Resolves when every
   * live worker has applied it (a restarted worker starts with it).
   */
  configure(o: SettingsUpdate): Promise<void> {
    const policy = workerSettings(o, this.#links.length);
    this.#policy = policy;
    this.sharedCache.configure(o.cache);
    const live = this.#links.filter((l): l is WorkerLink => l !== null && l.alive);
    return Promise.all(
      live.map(
        (l) =>
          new Promise<void>((resolve) => {
            l.configuring.push(resolve);
            l.post({ t: 'configure', ...policy });
          }),
      ),
    ).then(() => undefined);
  }

  async close(): Promise<void> {
    this.#state = 'closed';
    await this.#shutdownAll();
  }

  /**
   * A MissSink for the main thread's own hit path (TCP, and anything else
   * answered on this thread): its misses go through the same exchange as the
   * workers', so a question asked over TCP and UDP at once goes upstream
   * once. The exchange stores what it fetches: connect that hit path with
   * `stores` false. The outcome comes back synchronously, as the Resolver
   * would give it.
   */
  mainSink(hits: MissCompleter): MissSink {
    // This thread's own misses are refused by the resolver directly: nothing to shed ahead of it.
    return this.#exchange.sinkFor({ listening: true, deliver: (token, answer, outcome) => hits.complete(token, answer, outcome), refusedForLoad: () => {} });
  }

  /** MissCompleter, for the Resolver. */
  complete(token: number, answer: Buffer | null, outcome: MissOutcome): void {
    this.#exchange.complete(token, answer, outcome);
  }

  /** Workers in their loop, taking queries (fewer than `workers` while one is being restarted). */
  get liveWorkers(): number {
    return this.#links.filter((l) => l !== null && l.alive && l.ready).length;
  }

  /** How long UDP has been down for some clients: no worker in its loop (each restart failing), or one stuck (ended past `endAfterMs`: worker-watch.ts). */
  udpDownMs(endAfterMs: number): number {
    return Math.max(this.#restarts.emptyForMs, this.#turns.stillFor(this.#links, endAfterMs, this.#logger));
  }

  /** The thread of worker i (tests, diagnostics); null before start or after a failed restart. */
  workerThread(i: number): Worker | null {
    const l = this.#links[i];
    return l === undefined || l === null || !l.alive ? null : l.worker;
  }

  /** Each worker's counter blocks (shared memory, live). */
  workerCounters(): WorkerCounters[] {
    return this.#links.filter((l): l is WorkerLink => l !== null).map((l) => l.counters);
  }

  /** Every worker's counters added up, what a scrape publishes; the io block has the main thread's slots (restarts, coalescing). */
  totals(): BatchedTotals {
    this.#own.values[BATCHED_COUNTERS.slot.workersLive] = this.liveWorkers;
    return this.#totals.sum(this.workerCounters());
  }

  /** Opens worker i's sockets (the ports of the first worker for the rest) and starts its thread; resolves when it is in its loop. */
  #spawn(i: number): Promise<void> {
    let sockets: WorkerSockets;
    try {
      sockets = openSockets(this.#sys, this.#opts.listen, this.#ports);
    } catch (err) {
      return Promise.reject(err);
    }
    const direct: DirectDeps | null = this.#opts.directAnswers === false ? null : {
      policy: this.#directPolicy, counters: this.#own, server: this.#ownServer, hist: this.#ownHist, now: this.#now, stale: (key, now, served) => this.sharedCache.stale(key, now, served), lookup: (key, now) => this.sharedCache.lookup(key, now), logger: this.#logger, serving: () => this.#state === 'running' || this.#state === 'new',
    };
    const link = startWorker(i, sockets, this.#opts, this.#ports, this.#policy, { store: this.sharedCache.layout, load: this.upstreamLoad.buffer }, direct);
    link.siblings = () => this.#links.find((l) => l !== null && l !== link && l.alive)?.fds ?? null;
    this.#links[i] = link;
    return whenStarted(link, this.#logger, (r) => this.#onReport(link, r), (code) => this.#exited(link, code));
  }

  /** Worker `link` left its loop after it started (closed, or died). */
  #exited(link: WorkerLink, code: number): void {
    // Its counts stay published after a successor replaces it; its gauges (entries, bytes, in flight) went with it.
    if (!link.closing) this.#totals.died(link.counters);
    this.#orphans.keep(link);
    // A dead worker applies nothing more; its successor starts with the latest settings.
    for (const done of link.configuring.splice(0)) done();
    if (!link.closing) this.#restarts.died(link.index, code);
    this.#checkDrained();
    this.#checkAborted(link, 0);
  }

  /** Any message from a worker: the turns it wrote to the ring first (they came before it: packed-ring.ts), then the message. */
  #onReport(link: WorkerLink, r: WorkerReport | RingWake): void {
    wakeTaken(link.ctl);
    const taken = link.reports.drain((m, w) => takeItems(link, m, w, this.#exchange, this.sharedCache, this.#clock));
    if (r === RING_WAKE) return;
    if (MISS_TRACE && r.trace !== undefined) traceReport(r.trace);
    if (r.overflow === true) {
      takeItems(link, r.misses, r.waiters ?? null, this.#exchange, this.sharedCache, this.#clock);
      Atomics.sub(link.ctl, Ctl.OVERFLOW, 1);
    }
    if (r.logs !== null) {
      for (const [level, msg, fields] of r.logs) this.#logger[level](msg, { worker: link.index, ...fields });
    }
    if (r.drained !== undefined) {
      // A worker says drained with nothing in flight, so what the ring held besides was taken after it said so (on a
      // kept wildcard socket): not drained after all. The worker says it again once that is answered.
      link.drained = r.drained && taken === 0;
      this.#checkDrained();
    }
    if (r.aborted !== undefined) this.#checkAborted(link, r.aborted);
    if (r.configured === true) link.configuring.shift()?.();
    // Out of its loop: nothing of ours keeps the thread busy, but its port may keep it alive.
    if (r.closed === true) void link.worker.terminate();
  }

  #allDrained(): boolean {
    return this.#links.every((l) => l === null || !l.alive || l.drained) && this.#orphans.idle;
  }

  #checkDrained(): void {
    if (this.#drainWaiters.length === 0 || !this.#allDrained()) return;
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const w of waiters) w();
  }

  /** A worker answered 'abort' (or died meanwhile, answering nothing more). */
  #checkAborted(link: WorkerLink, n: number): void {
    const a = this.#abortWaiters;
    if (a === null || !link.aborting) return;
    link.aborting = false;
    a.total += n;
    if (this.#links.some((l) => l !== null && l.aborting)) return;
    this.#abortWaiters = null;
    a.resolve(a.total);
  }

  async #shutdownAll(): Promise<void> {
    this.#restarts.cancel();
    await stopWorkers(this.#links.filter((l): l is WorkerLink => l !== null && l.alive), this.#logger);
  }
}
