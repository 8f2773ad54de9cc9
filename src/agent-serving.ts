/**
 * The agent's serving path: the UDP and TCP listeners and the resolver
 * behind them, wired at start, and the two parts that take them down in
 * order on shutdown (listeners drain first, upstreams close last). Apart
 * from agent.ts because which UDP backend serves, and how a drain meets its
 * deadline, is one concern the composition need not spell out.
 */
import { formatHostPort } from './addr.js';
import { cacheOptions, cachePolicy, clientLimiter } from './agent-config.js';
import { until } from './agent-parts.js';
import type { DnsCache } from './cache/cache.js';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import type { Component } from './lifecycle.js';
import type { Logger } from './log.js';
import type { AgentMetrics } from './ops/agent-metrics.js';
import type { Routing, UpstreamSeries } from './routing.js';
import type { BatchedUdpListener } from './server/batched/listener.js';
import { createUdpListeners, type UdpIo } from './server/batched/select.js';
import type { HitPath } from './server/hit-path.js';
import { clientInflightCap } from './server/client-limit.js';
import type { Listener } from './server/listener.js';
import { RESOLVER_COUNTERS, Resolver } from './server/resolver.js';
import { scrubCounted } from './server/scrub.js';
import { TCP_UNSENT_ROOM_BYTES, TcpListener } from './server/tcp-listener.js';
import { TcpSlots } from './server/tcp-slots.js';
import { Counters } from './stats/counters.js';
import type { Upstream } from './upstream/types.js';

export interface ServingDeps {
  readonly hitPath: HitPath;
  readonly cache: DnsCache;
  readonly metrics: AgentMetrics;
  readonly clock: Clock;
  readonly logger: Logger;
}

export interface Serving {
  /** The UDP backend serving: batched, or dgram (asked for, or the fallback). */
  readonly io: UdpIo;
  /** The batched UDP listener (also in `listeners`); null with dgram. */
  readonly batched: BatchedUdpListener | null;
  readonly resolver: Resolver;
  /** UDP first, then one TCP listener per listen address; none started yet. */
  readonly listeners: Listener[];
}

/** Listeners and resolver for `c`, connected to the hit path and counted in `d.metrics`. */
export async function buildServing(c: Config, routing: Routing, d: ServingDeps): Promise<Serving> {
  // The namespace table lives on this thread: UDP must be read here too for every query to be counted.
  if (c.metricsByNamespace && c.io === 'batched') {
    d.logger.info('--metrics-by-namespace: UDP served by this thread (--io dgram), where the client namespaces are counted');
  }
  const udp = await createUdpListeners({
    io: c.metricsByNamespace ? 'dgram' : c.io,
    workers: c.workers,
    listen: c.listen,
    hitPath: d.hitPath,
    cache: cacheOptions(c),
    maxUdpSize: c.maxUdpSize,
    queryLogEvery: c.queryLogEvery,
    clientMissRate: c.clientMissRate,
    clientMissBurst: c.clientMissBurst,
    clientMissInflight: clientInflightCap(c.maxConcurrent),
    maxQueryAgeMs: c.maxQueryAgeMs,
    localZones: routing.localZones,
    store: d.cache,
    dgram: { reusePort: c.reusePort, clock: d.clock },
    logger: d.logger,
  });
  const resolver = new Resolver({
    router: routing.router,
    clock: d.clock,
    counters: new Counters(RESOLVER_COUNTERS),
    // Batched: every miss, the workers' and the main hit path's (TCP), goes through the listener's exchange.
    hits: udp.batched ?? d.hitPath,
    fallbackAfterMs: c.fallbackAfterMs,
    localNegative: c.localNegative,
    maxConcurrent: c.maxConcurrent,
    load: udp.batched?.upstreamLoad ?? null,
  });
  d.metrics.add(resolver.counters, false);
  const batched = udp.batched;
  if (batched !== null) {
    batched.connect(resolver);
    // The exchange stores what it fetches in the agent's cache: the hit path must not store it again.
    d.hitPath.connect(batched.mainSink(d.hitPath), null);
    d.metrics.addWorkerTotals(() => batched.totals());
  } else {
    d.hitPath.connect(resolver, scrubCounted);
  }
  const listeners: Listener[] = [...udp.listeners];
  // TCP stays on this thread whatever the UDP backend: a small share of pods' DNS, and more listeners here add no core.
  // One budget for them all: what clients that do not read make us hold is memory, and memory is the process's.
  const slots = new TcpSlots({ maxConnections: c.maxTcpConnections, maxConnectionsPerClient: c.maxTcpPerClient, unsentRoomBytes: TCP_UNSENT_ROOM_BYTES });
  for (const addr of c.listen) {
    const tcp = new TcpListener(addr, d.hitPath, d.logger, {
      idleTimeoutMs: c.tcpIdleTimeoutMs,
      readTimeoutMs: c.tcpReadTimeoutMs,
      slots,
      maxQueriesPerConnection: c.maxTcpQueries,
      clock: d.clock,
      reusePort: c.reusePort,
    });
    d.metrics.addWithLabels(tcp.counters, { server: `dns://${formatHostPort(addr)}` });
    listeners.push(tcp);
  }
  return { io: udp.io, batched, resolver, listeners };
}

/**
 * A reload's settings for the serving path, applied in place (no listener
 * restarts). Returns when the workers will have applied them; null without workers.
 */
export function reconfigureServing(
  c: Config,
  routing: Routing,
  s: { readonly resolver: Resolver; readonly cache: DnsCache; readonly hitPath: HitPath; readonly batched: BatchedUdpListener | null },
): Promise<void> | null {
  s.resolver.configure({ router: routing.router, fallbackAfterMs: c.fallbackAfterMs, localNegative: c.localNegative, maxConcurrent: c.maxConcurrent });
  s.cache.configure(cachePolicy(c));
  s.hitPath.configure({ maxUdpSize: c.maxUdpSize, queryLogEvery: c.queryLogEvery, clientLimit: clientLimiter(c) });
  if (s.batched === null) return null;
  return s.batched.configure({
    cache: cachePolicy(c),
    maxUdpSize: c.maxUdpSize,
    queryLogEvery: c.queryLogEvery,
    clientMissRate: c.clientMissRate,
    clientMissBurst: c.clientMissBurst,
    clientMissInflight: clientInflightCap(c.maxConcurrent),
    localZones: routing.localZones,
  });
}

/**
 * What a reload's routing no longer uses: the old cluster probe stops now; old upstreams wait in `retired` until their
 * queries in flight finish; the series of servers and routes no longer configured leave /metrics now.
 */
export function retireReplaced(previous: Routing, next: Routing, retired: Set<Upstream>, metrics: { retain(inUse: UpstreamSeries): void }): void {
  metrics.retain(next.series);
  if (previous.cluster !== null && previous.cluster !== next.cluster) previous.cluster.probe?.stop();
  for (const u of previous.upstreams) {
    if (next.upstreams.includes(u)) continue;
    // Finishes its queries in flight (each has a deadline), then closes.
    retired.add(u);
    void u.close().then(() => retired.delete(u));
  }
}

export interface ListenersPartOptions {
  /** The agent's own list (emptied once they are closed). */
  readonly listeners: Listener[];
  readonly hitPath: HitPath;
  readonly batched: BatchedUdpListener | null;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Told when the listeners take queries, and when they stop to. */
  readonly setServing: (serving: boolean) => void;
}

export function listenersPart(o: ListenersPartOptions): Component {
  const listeners = o.listeners;
  return {
    name: 'listeners',
    start: async () => {
      try {
        for (const l of listeners) await l.start();
        o.setServing(true);
      } catch (err) {
        // This part never counts as started: close what did bind before the error.
        await Promise.all(listeners.map((l) => l.close()));
        throw err;
      }
    },
    stop: async (deadline) => {
      o.setServing(false);
      for (const l of listeners) l.pause();
      // A handover: what the kernel queued for us before pause() still comes in; take it all before waiting for answers.
      await until(o.clock, deadline, Promise.all(listeners.map((l) => l.drained())).then(() => undefined));
      const batched = o.batched;
      await until(o.clock, deadline, Promise.all([batched?.drain(), drainHitPath(o.hitPath, o.clock, deadline)]).then(() => undefined));
      // TCP clients' misses the main thread took while the workers drained: waited for too, within the same deadline.
      await drainHitPath(o.hitPath, o.clock, deadline);
      // The workers' abort takes a turn of the event loop: what the main thread takes meanwhile is aborted after it,
      // and the listeners close in the same step, so no miss is left without an answer.
      let aborted = batched !== null ? await batched.abortAll() : 0;
      // Each answer the abort gives frees a TCP connection's in-flight slot, and a query it read before the pause and
      // kept waiting is taken at once, a new miss: aborted in turn.
      aborted += abortUntilIdle(o.hitPath);
      if (aborted > 0) o.logger.warn('shutdown grace over: answered queries still in flight with stale or SERVFAIL', { queries: aborted });
      await Promise.all(listeners.map((l) => l.close()));
      listeners.length = 0;
    },
  };
}

/**
 * Every query in flight on the hit path answered now (stale or SERVFAIL),
 * again while answering frees a TCP connection's in-flight slot and a query
 * it had read goes in flight (a finite number: reading has stopped). Bounded
 * all the same: a synchronous loop that did not end would also block the
 * hard stop's timer. Returns how many were answered.
 */
export function abortUntilIdle(hitPath: HitPath): number {
  let aborted = 0;
  for (let round = 0; round < 1000 && hitPath.inflight > 0; round++) {
    const n = hitPath.abortAll();
    aborted += n;
    if (n === 0) break;
  }
  return aborted;
}

/**
 * Until nothing is in flight on the hit path, or `deadline`. Not one drain():
 * an answer frees a TCP connection's in-flight slot (--max-tcp-queries), and
 * a query it read before the pause and kept waiting then goes in flight.
 */
async function drainHitPath(hitPath: HitPath, clock: Clock, deadline: number): Promise<void> {
  while (hitPath.inflight > 0) {
    let drained = false;
    await until(clock, deadline, hitPath.drain().then(() => {
      drained = true;
    }));
    if (!drained) return;
  }
}

export interface UpstreamsPartOptions {
  /** Read at stop: a reload may have replaced the routing since start. */
  readonly routing: () => Routing | null;
  readonly resolver: () => Resolver | null;
  /** Upstreams a reload replaced, still finishing their queries in flight. */
  readonly retired: Set<Upstream>;
  readonly clock: Clock;
}

/** Upstreams close last (stopped after the listeners): in-flight exchanges are answered by then. */
export function upstreamsPart(o: UpstreamsPartOptions): Component {
  return {
    name: 'upstreams',
    start: () => Promise.resolve(),
    stop: async (deadline) => {
      const routing = o.routing();
      routing?.cluster?.probe?.stop();
      o.resolver()?.close();
      const all = [...(routing?.upstreams ?? []), ...o.retired];
      await until(o.clock, deadline, Promise.all(all.map((u) => u.close())).then(() => undefined));
      // Past the deadline nothing waits on them any more (the hit path answered its clients): drop what is left.
      for (const u of all) u.abort();
      o.retired.clear();
    },
  };
}
