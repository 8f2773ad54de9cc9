/**
 * Everything the agent counts, registered once for /metrics: the counter
 * blocks of the hit path, cache, resolver, listeners, node setup and API
 * watch; one block per upstream name, kept across the reloads that keep the
 * name and dropped by the first that does not (retain()); the request
 * histograms (per upstream server too); and the gauges read at scrape time
 * (cache entries, upstream health and connections, view sync, interface and
 * interception). The hot path only ever touches typed arrays.
 */
import type { DnsCache } from '../cache/cache.js';
import { CACHE_BYTES_HELP, CACHE_ENTRIES_HELP } from '../cache/stats.js';
import type { Clock } from '../clock.js';
import type { ClusterView } from '../kube/view.js';
import type { HitPathHistograms } from '../server/hit-path.js';
import { Counters, type CounterSchema } from '../stats/counters.js';
import type { UpstreamCounterBlocks, UpstreamSeries } from '../routing.js';
import { ForwardDurations } from '../upstream/forward-durations.js';
import { HostResolvers, hostResolversCounters, type HostResolversCounter } from '../upstream/host-resolvers.js';
import { PROBE_COUNTERS, type ProbeCounter } from '../upstream/probe.js';
import { TcpPool } from '../upstream/tcp-pool.js';
import { tcpPoolCounters, type TcpPoolCounter } from '../upstream/tcp-pool-counters.js';
import type { Upstream } from '../upstream/types.js';
import { hitPathHistograms, type TypedHistogram } from './histogram.js';
import { MetricsRegistry, type Labels } from './metrics.js';

export interface AgentMetricSources {
  /** `dns://ADDR:PORT` of the first listen address: CoreDNS's `server` label. */
  readonly server: string;
  readonly cache: DnsCache;
  readonly clock: Clock;
  /** The upstreams in use now (they change on reload). */
  readonly upstreams: () => readonly Upstream[];
  /** Those a reload replaced that still finish queries in flight (a name may repeat one in use). */
  readonly retired?: () => Iterable<Upstream>;
  readonly view: () => ClusterView | null;
  /** The interface and interception the agent manages (none: not ours, no series). */
  readonly nodeParts?: () => readonly NodePartState[];
}

/** What /metrics reads of a node part (iface/node-setup.ts NodePart). */
export interface NodePartState {
  /** 'interface' or 'interception'. */
  readonly name: string;
  readonly inPlace: boolean;
  /** Interception backend once chosen ("iptables-nft", "nftables", ...); '' before. */
  readonly mode?: string;
}

/** What the batched UDP workers counted, added up over the workers (BatchedUdpListener.totals()). */
export type WorkerTotals = () => {
  readonly server: Counters<string>;
  readonly cache: Counters<string>;
  readonly io: Counters<string>;
  readonly hist: HitPathHistograms;
  readonly queueWait?: TypedHistogram;
};

export class AgentMetrics implements UpstreamCounterBlocks {
  readonly registry: MetricsRegistry;
  /** Run before each scrape: blocks that are sums of other blocks (the workers') are refreshed. */
  readonly #beforeScrape: (() => void)[];
  readonly histograms: HitPathHistograms;
  readonly #server: string;
  readonly #pools: Map<string, Counters<TcpPoolCounter>>;
  readonly #hosts: Map<string, Counters<HostResolversCounter>>;
  readonly #durations: Map<string, ForwardDurations>;
  readonly #probes: Map<string, Counters<ProbeCounter>>;

  constructor(src: AgentMetricSources, buildInfo: { version: string; revision: string }) {
    this.#server = src.server;
    this.registry = new MetricsRegistry({ buildInfo });
    this.#pools = new Map();
    this.#hosts = new Map();
    this.#beforeScrape = [];
    this.#durations = new Map();
    this.#probes = new Map();
    const server = { server: src.server };
    this.histograms = hitPathHistograms();
    this.registry.addHistogram(this.histograms.duration, server);
    for (const h of [...this.histograms.requestSize, ...this.histograms.responseSize]) this.registry.addHistogram(h, server);
    this.registry.addGauge('coredns_cache_entries', CACHE_ENTRIES_HELP, ['server', 'type'], () => [
      [{ server: src.server, type: 'success' }, src.cache.positiveSize],
      [{ server: src.server, type: 'denial' }, src.cache.negativeSize],
    ]);
    this.registry.addGauge('nodelocal_cache_bytes', CACHE_BYTES_HELP, ['server'], () => [[server, src.cache.bytes]]);
    // Not summed like the other gauges: a state, one series per name, of the upstream in use.
    this.registry.addGauge('nodelocal_upstream_healthy', 'Whether an upstream answers (1) or is marked failing (0).', ['to'], () => {
      const byName = new Map<string, number>();
      for (const u of src.upstreams()) if (!byName.has(u.name)) byName.set(u.name, u.health.healthy ? 1 : 0);
      return [...byName].map(([to, healthy]): [Labels, number] => [{ to }, healthy]);
    });
    // Resources: those of the upstreams in use, plus what replaced ones of the same name still hold; a name no longer used has no series.
    const held = (): Upstream[] => {
      const inUse = src.upstreams();
      const names = new Set(inUse.map((u) => u.name));
      return [...inUse, ...[...(src.retired?.() ?? [])].filter((u) => names.has(u.name))];
    };
    this.registry.addGauge('nodelocal_upstream_connections', 'TCP connections open to the cluster DNS (persistent, pipelined).', ['to'], () =>
      held().flatMap((u): [Labels, number][] => (u instanceof TcpPool ? [[{ to: u.name }, u.openConnections]] : [])),
    );
    this.registry.addGauge('nodelocal_upstream_exchanges_inflight', 'Questions sent to an upstream and not yet answered, failed or timed out.', ['to'], () =>
      held().flatMap((u): [Labels, number][] => (u instanceof TcpPool || u instanceof HostResolvers ? [[{ to: u.name }, u.inFlight]] : [])),
    );
    this.registry.addGauge('nodelocal_upstream_queued', 'Questions waiting for room on a cluster DNS connection (not sent yet).', ['to'], () =>
      held().flatMap((u): [Labels, number][] => (u instanceof TcpPool ? [[{ to: u.name }, u.queued]] : [])),
    );
    const parts = src.nodeParts ?? ((): readonly NodePartState[] => []);
    this.registry.addGauge('nodelocal_interface_up', 'Whether the node-local interface and its addresses are in place (1) or not (0); absent when the agent does not manage one.', [], () =>
      parts().flatMap((p): [Labels, number][] => (p.name === 'interface' ? [[{}, p.inPlace ? 1 : 0]] : [])),
    );
    this.registry.addGauge(
      'nodelocal_interception_active',
      'Whether the rules that steer pods\' DNS to the agent are in place (1) or not (0), by backend; absent when the agent installs none.',
      ['mode'],
      () => parts().flatMap((p): [Labels, number][] => (p.name === 'interception' ? [[{ mode: p.mode === undefined || p.mode === '' ? 'unknown' : p.mode }, p.inPlace ? 1 : 0]] : [])),
    );
    this.registry.addGauge('nodelocal_view_synced', 'Whether the cluster view has listed every kind (1) or not (0); absent when the fallback is off.', [], () => {
      const v = src.view();
      return v === null ? [] : [[{}, v.synced ? 1 : 0]];
    });
    this.registry.addGauge('nodelocal_view_api_silence_seconds', 'Seconds since every kind of the view was last known current: a whole list, a watch event or bookmark applied, or a watch taken from its resourceVersion with no ERROR in 5 s (the kind known current longest ago; +Inf: never).', [], () => {
      const v = src.view();
      if (v === null) return [];
      return [[{}, v.lastContactMs < 0 ? Infinity : (src.clock.now() - v.lastContactMs) / 1000]];
    });
  }

  /** What GET /metrics serves (ops/http.ts MetricsSource): the registry, with the workers' sums brought up to date first. */
  get contentType(): string {
    return this.registry.contentType;
  }

  metrics(): Promise<string> {
    for (const f of this.#beforeScrape) f();
    return this.registry.metrics();
  }

  /**
   * The batched UDP workers' counters: the same names and labels as the
   * main thread's blocks (requests, responses, cache hits and misses, cache
   * entries and bytes), so each published series is the main thread's count
   * plus every worker's; plus the workers' own nodelocal_udp_* counters.
   * The sums live in blocks refreshed at scrape time (a worker bumps its own
   * block in shared memory; nothing on its hot path knows about /metrics).
   */
  addWorkerTotals(totals: WorkerTotals): void {
    const t = totals();
    this.add(t.server, true);
    this.add(t.cache, true);
    this.add(t.io, true);
    // Same names and labels as this thread's histograms: the registry publishes each series as their sum.
    const server = { server: this.#server };
    this.registry.addHistogram(t.hist.duration, server);
    for (const h of [...t.hist.requestSize, ...t.hist.responseSize]) this.registry.addHistogram(h, server);
    if (t.queueWait !== undefined) this.registry.addHistogram(t.queueWait, server);
    this.#beforeScrape.push(() => void totals());
  }

  /** A block for the agent-wide counters (`server` label when `perServer`). */
  add<K extends string>(block: Counters<K>, perServer: boolean): void {
    this.registry.addCounters(block, perServer ? { server: this.#server } : {});
  }

  addWithLabels<K extends string>(block: Counters<K>, labels: Labels): void {
    this.registry.addCounters(block, labels);
  }

  pool(name: string): Counters<TcpPoolCounter> {
    return this.#block(this.#pools, tcpPoolCounters, name);
  }

  host(name: string): Counters<HostResolversCounter> {
    return this.#block(this.#hosts, hostResolversCounters, name);
  }

  /** The histograms of one upstream server ("IP:port"), made and published on first use; the same ones across reloads. */
  durations(to: string): ForwardDurations {
    let d = this.#durations.get(to);
    if (d === undefined) {
      d = new ForwardDurations(to);
      this.#durations.set(to, d);
      for (const h of d.histograms) this.registry.addHistogram(h, { to });
    }
    return d;
  }

  probe(to: string): Counters<ProbeCounter> {
    return this.#block(this.#probes, PROBE_COUNTERS, to);
  }

  /**
   * After a reload: the per-upstream blocks and histograms no upstream in use
   * was handed (`inUse`, Routing.series) stop being published, counters with
   * the gauges among them: an alert or a dashboard must not go on reading a
   * server no longer configured, and the number of series must not grow with
   * every change. Prometheus marks the series stale; a name configured again
   * later gets fresh blocks (its counters start from 0, which rate() reads as
   * a reset). A block kept is the same object, so its counts go on. What a
   * replaced upstream still counts while it finishes its queries in flight
   * is lost with its series.
   */
  retain(inUse: UpstreamSeries): void {
    for (const [map, names] of [[this.#pools, inUse.pool], [this.#hosts, inUse.host], [this.#probes, inUse.probe]] as const) {
      for (const [name, block] of map as Map<string, Counters<string>>) {
        if (names.has(name)) continue;
        map.delete(name);
        this.registry.removeCounters(block);
      }
    }
    for (const [to, d] of this.#durations) {
      if (inUse.durations.has(to)) continue;
      this.#durations.delete(to);
      for (const h of d.histograms) this.registry.removeHistogram(h);
    }
  }

  #block<K extends string>(map: Map<string, Counters<K>>, schema: CounterSchema<K>, name: string): Counters<K> {
    let b = map.get(name);
    if (b === undefined) {
      b = new Counters(schema);
      map.set(name, b);
      this.registry.addCounters(b, { to: name });
    }
    return b;
  }
}
