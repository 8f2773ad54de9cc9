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
import { createOpsServers, defaultOpsHost, type OpsServer, type Readiness } from './ops/http.js';
import type { NamespaceRequests } from './ops/namespace-metrics.js';
import { Counters } from './stats/counters.js';
import { loadMallocTrim } from './sys/malloc-trim.js';

export interface OpsPartOptions {
  readonly config: Config;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  readonly serving: () => boolean;
  readonly readiness: () => Readiness;
  /** Told the servers as soon as they are created (the Agent publishes them as opsServers). */
  readonly created: (servers: OpsServer[]) => void;
}

/**
 * /metrics, /health and /ready: last up, first down. `tryEarly` binds them
 * before the rest when it can (then `start` has nothing left to do).
 */
export function opsPart(o: OpsPartOptions): Component & { tryEarly(): Promise<void> } {
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
      try {
        await bind();
      } catch (err) {
        o.logger.debug('ops http: binding after the interface instead', { error: (err as Error).message });
      }
    },
    start: async () => {
      if (!bound) await bind();
    },
    stop: async () => {
      bound = false;
      await Promise.all(servers.map((s) => s.stop()));
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
 * Warm restart: the cache is loaded before the listeners start, written
 * every --cache-snapshot-interval while serving (so that a new agent
 * started beside this one in an upgrade starts warm), and once more after
 * the listeners drained.
 */
export function snapshotPart(path: string, o: SnapshotPartOptions): Component {
  o.metrics.add(o.counters, false);
  const snapshots = new CacheSnapshots({
    cache: o.cache, path, intervalMs: o.intervalMs, clock: o.clock, logger: o.logger, counters: o.counters,
  });
  return {
    name: 'cache-snapshot',
    // Batched too: the agent's cache is the one cache, which the workers read.
    start: async () => {
      await snapshots.start();
    },
    stop: async () => {
      await snapshots.stop();
    },
  };
}

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
