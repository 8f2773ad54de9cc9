/**
 * The agent's lifecycle parts that need only a few values, not the Agent's
 * private state: each is built from what it uses, so agent.ts reads as the
 * order of the parts and not as their insides. Their place in the start
 * order is decided in agent.ts.
 */
import type { DnsCache } from './cache/cache.js';
import { CacheSnapshots, type SNAPSHOT_COUNTERS } from './cache/snapshot.js';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import type { PodWatch } from './kube/pods.js';
import type { KubeWatch } from './kube/watch.js';
import type { Component } from './lifecycle.js';
import type { Logger } from './log.js';
import type { AgentMetrics } from './ops/agent-metrics.js';
import { HEAP_TRIM_COUNTERS, HeapTrimmer } from './ops/heap-trim.js';
import { EXE_TRIM_COUNTERS, ExeTrimmer } from './ops/exe-trim.js';
import { loadExePages } from './sys/exe-pages.js';
import { CHECK_EVERY_MS, IdleCollector, exposeGc } from './ops/idle-gc.js';
import { createOpsServers, defaultOpsHost, type OpsServer, type Readiness } from './ops/http.js';
import type { NamespaceRequests } from './ops/namespace-metrics.js';
import { Counters, defineCounters } from './stats/counters.js';
import { loadMallocTrim } from './sys/malloc-trim.js';

export interface OpsPartOptions {
  readonly config: Config;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly serving: () => boolean;
  readonly readiness: () => Readiness;
  /** Told the servers as soon as they are created (the Agent publishes them as opsServers). */
  readonly created: (servers: OpsServer[]) => void;
}

/** The ops servers' part, and its early binding. */
export type OpsPart = Component & { tryEarly(): Promise<void> };

/**
 * /metrics, /health and /ready: last up, first down. `tryEarly` binds them
 * before the rest when their address exists, first thing, and again once
 * the interface has made it (then `start` has nothing left to do).
 */
export function opsPart(o: OpsPartOptions): OpsPart {
  const c = o.config;
  let servers: OpsServer[] = [];
  let bound = false;
  const bind = async (): Promise<void> => {
    const host = defaultOpsHost(c.listen);
    servers = createOpsServers({
      metrics: c.metricsListen,
      health: c.healthPort === 0 ? null : { host, port: c.healthPort },
      handlers: { metrics: o.metrics, serving: o.serving, readiness: o.readiness },
      logger: o.logger,
      reusePort: c.reusePort,
      clock: o.clock,
    });
    o.created(servers);
    try {
      for (const s of servers) await s.start();
    } catch (err) {
      await Promise.all(servers.map((s) => s.stop()));
      throw err;
    }
    bound = true;
  };
  return {
    name: 'ops-http',
    tryEarly: async () => {
      if (bound) return;
      try {
        await bind();
      } catch (err) {
        o.logger.debug('ops http: not bound yet; again after the interface, else last', { error: (err as Error).message });
      }
    },
    start: async () => {
      if (!bound) await bind();
    },
    stop: async (deadline) => {
      bound = false;
      await Promise.all(servers.map((s) => s.stop(deadline)));
    },
  };
}

export interface SnapshotPartOptions {
  readonly cache: DnsCache;
  readonly intervalMs: number;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly counters: Counters<keyof typeof SNAPSHOT_COUNTERS.slot>;
  readonly metrics: AgentMetrics;
}

/**
 * Warm restart: the cache is loaded before the listeners start (`load`),
 * written every --cache-snapshot-interval while serving (so that a new
 * agent started beside this one in an upgrade starts warm), and once more
 * after the listeners drained. The periodic writes are a part of their own
 * (`periodic`), to go last in the start order: a start that fails, or that
 * a stop cuts short, leaves the file as it found it, however long it took.
 */
export function snapshotParts(path: string, o: SnapshotPartOptions): { load: Component; periodic: Component } {
  o.metrics.add(o.counters, false);
  const snapshots = new CacheSnapshots({
    cache: o.cache, path, intervalMs: o.intervalMs, clock: o.clock, logger: o.logger, counters: o.counters,
  });
  // The whole start succeeded (this part is last): only then does the stop write the final snapshot.
  let started = false;
  const periodic: Component = {
    name: 'cache-snapshot-periodic',
    start: () => {
      started = true;
      return Promise.resolve(snapshots.startPeriodic());
    },
    // A write under way is waited for by the load part's stop, before its final write.
    stop: () => Promise.resolve(snapshots.stopPeriodic()),
  };
  const load: Component = {
    name: 'cache-snapshot',
    // Batched too: the agent's cache is the one cache, which the workers read.
    start: async () => {
      await snapshots.load();
    },
    // Bounded like every other part (a hung disk must not keep the link and rules on the node), with a second at
    // least for the final write when draining took the whole grace period. A rollback, or the stop of a start cut
    // short (a SIGTERM during start-up), writes nothing: that start only read the file (CacheSnapshots.cancel).
    stop: async (deadline, why) => {
      const done = why === 'rollback' || !started ? snapshots.cancel() : snapshots.stop().then(() => undefined);
      await until(o.clock, Math.max(deadline, o.clock.now() + FINAL_SNAPSHOT_MIN_MS), done);
    },
  };
  return { load, periodic };
}

/** The least time the final snapshot write gets at shutdown. */
const FINAL_SNAPSHOT_MIN_MS = 1000;

/** Freed heap memory back to the kernel now and then (ops/heap-trim.ts); nothing where glibc's calls are missing. */
export function heapTrimPart(intervalMs: number, o: { readonly metrics: AgentMetrics; readonly clock: Clock; readonly logger: Logger }): Component {
  let trimmer: HeapTrimmer | null = null;
  return {
    name: 'heap-trim',
    start: async () => {
      const sys = await loadMallocTrim();
      if (typeof sys === 'string') {
        o.logger.info('malloc_trim unavailable: freed heap memory is not handed back early', { reason: sys });
        return;
      }
      const counters = new Counters(HEAP_TRIM_COUNTERS);
      o.metrics.add(counters, false);
      trimmer = new HeapTrimmer({ sys, clock: o.clock, intervalMs, counters, logger: o.logger });
      trimmer.start();
    },
    stop: () => {
      trimmer?.stop();
      return Promise.resolve();
    },
  };
}

/** The node binary's pages touched once dropped now and then (ops/exe-trim.ts); nothing where madvise or /proc is missing. */
export function exeTrimPart(intervalMs: number, o: { readonly metrics: AgentMetrics; readonly clock: Clock; readonly logger: Logger }): Component {
  let trimmer: ExeTrimmer | null = null;
  return {
    name: 'exe-trim',
    start: async () => {
      const sys = await loadExePages();
      if (typeof sys === 'string') {
        o.logger.info('madvise unavailable: the node binary\'s start-up pages stay resident', { reason: sys });
        return;
      }
      const counters = new Counters(EXE_TRIM_COUNTERS);
      o.metrics.add(counters, false);
      let elu = performance.eventLoopUtilization();
      const quiet = (): boolean => {
        const next = performance.eventLoopUtilization();
        const busy = performance.eventLoopUtilization(next, elu).utilization;
        elu = next;
        return busy <= MAIN_QUIET_UTILIZATION;
      };
      trimmer = new ExeTrimmer({ sys, clock: o.clock, intervalMs, counters, logger: o.logger, quiet });
      trimmer.start();
    },
    stop: () => {
      trimmer?.stop();
      return Promise.resolve();
    },
  };
}

export const IDLE_GC_COUNTERS = defineCounters({
  collections: { name: 'nodelocal_idle_gcs_total', help: 'Full garbage collections the main thread ran once quiet after a burst (ops/idle-gc.ts).' },
});

/** Event-loop utilization at or under which the main thread counts as quiet (a few hundred misses a second is more). */
export const MAIN_QUIET_UTILIZATION = 0.05;

/**
 * The main thread's full collection once it goes quiet after a burst
 * (ops/idle-gc.ts): its event loop does run V8's memory reducer, but when that
 * comes is V8's guess (after a 100,000-name fill the heap stayed 15 MiB larger
 * for over 20 s in some runs, not in others); this makes the figure at rest one
 * an operator can size a limit by.
 */
export function idleGcPart(o: { readonly metrics: AgentMetrics; readonly clock: Clock }): Component {
  const clock = o.clock;
  let stopSweep: (() => void) | null = null;
  return {
    name: 'idle-gc',
    start: () => {
      const counters = new Counters(IDLE_GC_COUNTERS);
      o.metrics.add(counters, false);
      const collector = new IdleCollector(exposeGc(), clock.now());
      let checkedAt = clock.now();
      let elu = performance.eventLoopUtilization();
      stopSweep = clock.sweep((now) => {
        if (now - checkedAt < CHECK_EVERY_MS) return;
        checkedAt = now;
        const next = performance.eventLoopUtilization();
        const busy = performance.eventLoopUtilization(next, elu).utilization;
        elu = next;
        if (collector.check(now, busy <= MAIN_QUIET_UTILIZATION)) counters.values[IDLE_GC_COUNTERS.slot.collections]!++;
      });
      return Promise.resolve();
    },
    stop: () => {
      stopSweep?.();
      stopSweep = null;
      return Promise.resolve();
    },
  };
}

export function watchPart(watch: KubeWatch): Component {
  return {
    name: 'kube-watch',
    // Not awaited: the agent serves (forwarding) while the view syncs; the view knows when it has.
    start: () => {
      watch.start();
      return Promise.resolve();
    },
    stop: () => watch.stop(),
  };
}

export function podWatchPart(watch: PodWatch, table: NamespaceRequests | null): Component {
  return {
    name: 'pod-watch',
    start: () => {
      table?.start();
      watch.start();
      return Promise.resolve();
    },
    stop: async () => {
      await watch.stop();
      table?.stop();
    },
  };
}

/** Waits for `p`, but not past `deadline` (Clock ms). */
export async function until(clock: Clock, deadline: number, p: Promise<void>): Promise<void> {
  const left = deadline - clock.now();
  if (left <= 0) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    p,
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, left);
    }),
  ]);
  clearTimeout(timer);
}
