/**
 * Composes the parts and owns their order. The parts are a ComponentStack
 * (lifecycle.ts): started in order, stopped in reverse, rolled back on a
 * failed start:
 *
 *   upstreams ─► kube-watch ─► interface ─► listeners ─► interception
 *
 * Shutdown runs that backwards: the interception rules go first (iptables-
 * mode traffic falls back to kube-dns at once), listeners stop taking
 * queries, queries in flight get until the grace deadline, whatever still
 * waits is answered stale or SERVFAIL, then sockets, the link and the
 * upstreams close. Nothing waits past the deadline.
 *
 * Reload (SIGHUP, a changed config file or kube-dns ConfigMap): a new config
 * is validated, its routes built, and swapped in; upstreams no longer used
 * finish their queries in flight and close. Settings that need a restart
 * (listen addresses, interface, cache sizes...) are reported and kept.
 */
import { readFileSync } from 'node:fs';
import { formatHostPort, isLoopback, isWildcard } from './addr.js';
import { DnsCache } from './cache/cache.js';
import { CACHE_COUNTERS } from './cache/stats.js';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config.js';
import { CacheSnapshots, SNAPSHOT_COUNTERS } from './cache/snapshot.js';
import { interceptionPart, interfacePart, type NodePart, type NodeSetupOptions } from './iface/node-setup.js';
import { setupCounterSchema } from './iface/setup-counters.js';
import { KubeApi, loadClusterConfig } from './kube/client.js';
import { PodWatch, podWatchCounterSchema } from './kube/pods.js';
import { ClusterView } from './kube/view.js';
import { KubeWatch, watchCounterSchema } from './kube/watch.js';
import { ComponentStack, StartupError, type Component } from './lifecycle.js';
import type { Logger } from './log.js';
import { AgentMetrics } from './ops/agent-metrics.js';
import { createOpsServers, defaultOpsHost, type OpsServer } from './ops/http.js';
import { NamespaceRequests, addNamespaceMetrics } from './ops/namespace-metrics.js';
import { buildRouting, type Routing } from './routing.js';
import { ClientMissLimiter } from './server/client-limit.js';
import { HitPath } from './server/hit-path.js';
import type { Listener } from './server/listener.js';
import { RESOLVER_COUNTERS, Resolver } from './server/resolver.js';
import { SERVER_COUNTERS } from './server/stats.js';
import { TcpListener } from './server/tcp-listener.js';
import type { BatchedUdpListener } from './server/batched/listener.js';
import { createUdpListeners, type UdpIo } from './server/batched/select.js';
import { Counters, defineCounters } from './stats/counters.js';
import type { HealthState } from './upstream/health.js';
import { listenersOn } from './sys/reuseport.js';
import { loadMallocTrim } from './sys/malloc-trim.js';
import { HEAP_TRIM_COUNTERS, HeapTrimmer } from './ops/heap-trim.js';
import { loadHostServers, type HostServers } from './upstream/host-route.js';
import { formatTlsServer } from './upstream/tls-address.js';
import type { ServerAddress, Upstream } from './upstream/types.js';

export { StartupError } from './lifecycle.js';

export interface AgentDeps {
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly readFile?: (path: string) => string;
  /** Applies a new log level on reload (main passes the logger's own setter). */
  readonly setLogLevel?: (level: Config['logLevel']) => void;
  /** For coredns_build_info. */
  readonly version?: string;
}

export const AGENT_COUNTERS = defineCounters({
  reloads: { name: 'nodelocal_config_reloads_total', labels: { result: 'applied' }, help: 'Configuration reloads, by result.' },
  reloadFailures: { name: 'nodelocal_config_reloads_total', labels: { result: 'refused' }, help: 'Configuration reloads, by result.' },
});

/** Settings read once at start: a reload that changes them is told they need a restart. */
const RESTART_ONLY: readonly (keyof Config)[] = [
  'listen', 'clusterDomain', 'cacheSize', 'negativeCacheSize', 'cacheMemoryBytes', 'tcpIdleTimeoutMs', 'tcpReadTimeoutMs', 'maxTcpConnections',
  'maxTcpQueries', 'kube', 'kubeconfig', 'setupInterface', 'interfaceName', 'interfaceKind', 'firewall', 'failOpenTo', 'skipTeardown', 'syncIntervalMs', 'healthPort',
  'metricsListen', 'cacheSnapshot', 'cacheSnapshotIntervalMs', 'metricsByNamespace', 'metricsNamespacesMax', 'nodeName', 'io', 'workers',
  'mallocTrimIntervalMs',
];

export interface ReloadOutcome {
  readonly applied: boolean;
  /** Why it was refused (the old config keeps serving). */
  readonly error: string | null;
  /** Changed settings that take effect only after a restart. */
  readonly restartNeeded: readonly string[];
}

export class Agent {
  readonly cache: DnsCache;
  readonly hitPath: HitPath;
  readonly counters: Counters<keyof typeof AGENT_COUNTERS.slot>;
  /** node-cache's coredns_nodecache_setup_errors_total and our repairs: interface and interception. */
  readonly setupCounters: Counters<keyof typeof setupCounterSchema.slot>;
  /** Cache snapshot writes and loads (published only with --cache-snapshot). */
  readonly snapshotCounters: Counters<keyof typeof SNAPSHOT_COUNTERS.slot>;
  /** Everything /metrics publishes. */
  readonly metrics: AgentMetrics;
  #config: Config;
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #readFile: (path: string) => string;
  readonly #setLogLevel: ((level: Config['logLevel']) => void) | null;
  readonly #listeners: Listener[];
  /** The batched UDP listener (also in #listeners) when --io batched runs; null with dgram. */
  #batched: BatchedUdpListener | null;
  #udpIo: UdpIo | null;
  /** The workers' last reconfiguration, applied (tests wait on it). */
  #workersConfigured: Promise<void>;
  readonly #parts: ComponentStack;
  #resolver: Resolver | null;
  #routing: Routing | null;
  /** Upstreams a reload replaced, still finishing their queries in flight. */
  readonly #retired: Set<Upstream>;
  /** The cluster view and its watch; null with --no-kube or no cluster config. */
  #view: ClusterView | null;
  #watch: KubeWatch | null;
  /** Node parts, for /ready: what they set up is in place. */
  readonly #nodeParts: NodePart[];
  /** Listeners bound and taking queries (false before start and once stopping). */
  #serving: boolean;
  #ops: OpsServer[];
  /** --metrics-by-namespace: the table the hit path tags with, and its pod watch (null when off or no cluster config). */
  readonly #byNamespace: NamespaceRequests | null;
  #podWatch: PodWatch | null;

  constructor(config: Config, deps: AgentDeps) {
    this.#config = config;
    this.#logger = deps.logger;
    this.#clock = deps.clock ?? systemClock;
    this.#readFile = deps.readFile ?? ((p) => readFileSync(p, 'utf8'));
    this.#setLogLevel = deps.setLogLevel ?? null;
    this.cache = new DnsCache(
      {
        positiveCapacity: config.cacheSize,
        negativeCapacity: config.negativeCacheSize,
        maxBytes: config.cacheMemoryBytes,
        ...cachePolicy(config),
      },
      new Counters(CACHE_COUNTERS),
      // Batched: the workers read this very store (SharedArrayBuffers); it is the only cache.
      { shared: config.io === 'batched' && !config.metricsByNamespace },
    );
    this.metrics = new AgentMetrics(
      {
        server: `dns://${config.listen[0] !== undefined ? formatHostPort(config.listen[0]) : ''}`,
        cache: this.cache,
        clock: this.#clock,
        upstreams: () => [...(this.#routing?.upstreams ?? []), ...this.#retired],
        view: () => this.#view,
        nodeParts: () => this.#nodeParts,
      },
      { version: deps.version ?? 'unknown', revision: '' },
    );
    this.#byNamespace = config.metricsByNamespace ? new NamespaceRequests({ maxNamespaces: config.metricsNamespacesMax, clock: this.#clock }) : null;
    this.#podWatch = null;
    this.hitPath = new HitPath({
      tagger: this.#byNamespace,
      cache: this.cache,
      clock: this.#clock,
      logger: this.#logger,
      counters: new Counters(SERVER_COUNTERS),
      maxUdpSize: config.maxUdpSize,
      queryLogEvery: config.queryLogEvery,
      clientLimit: clientLimiter(config),
      histograms: this.metrics.histograms,
    });
    this.counters = new Counters(AGENT_COUNTERS);
    this.setupCounters = new Counters(setupCounterSchema);
    this.snapshotCounters = new Counters(SNAPSHOT_COUNTERS);
    this.#listeners = [];
    this.#batched = null;
    this.#udpIo = null;
    this.#workersConfigured = Promise.resolve();
    this.#parts = new ComponentStack(this.#logger);
    this.#resolver = null;
    this.#routing = null;
    this.#retired = new Set();
    this.#view = null;
    this.#watch = null;
    this.#nodeParts = [];
    this.#serving = false;
    this.#ops = [];
    this.metrics.add(this.hitPath.counters, true);
    this.metrics.add(this.cache.counters, true);
    this.metrics.add(this.counters, false);
    this.metrics.add(this.setupCounters, false);
    if (this.#byNamespace !== null) addNamespaceMetrics(this.metrics.registry, `dns://${config.listen[0] !== undefined ? formatHostPort(config.listen[0]) : ''}`, this.#byNamespace);
  }

  get config(): Config {
    return this.#config;
  }

  get resolver(): Resolver {
    if (this.#resolver === null) throw new Error('agent not started');
    return this.#resolver;
  }

  /** Listeners as started (ports resolved when configured as 0). */
  get listeners(): readonly Listener[] {
    return this.#listeners;
  }

  /** The UDP backend serving (after start): batched, or dgram (asked for, or the fallback). */
  get udpIo(): UdpIo | null {
    return this.#udpIo;
  }

  /** The batched UDP listener (its workers' totals, shared cache); null with dgram. */
  get batched(): BatchedUdpListener | null {
    return this.#batched;
  }

  /** Questions waiting on the upstream side: the main hit path's and the workers'. */
  get inflight(): number {
    return this.hitPath.inflight + (this.#batched?.inflight ?? 0);
  }

  /** Resolves once every worker has applied the last reload (at once with dgram). */
  get reloadApplied(): Promise<void> {
    return this.#workersConfigured;
  }

  /** Health of the cluster DNS upstream; null in local mode or before start. */
  get clusterHealth(): HealthState | null {
    return this.#routing?.cluster?.pool.health.state ?? null;
  }

  /** The cluster view; null when the fallback is off. */
  get view(): ClusterView | null {
    return this.#view;
  }

  async start(): Promise<void> {
    // The probes' and scrapes' ports first when their address already exists (an upgrade: the old agent's link
    // holds it), answering 503 until we serve: until this agent has bound them, the kubelet's readiness probe
    // of the new pod reaches the old agent and its 200 (ops/http.ts then steers new connections to the newest
    // member). On a fresh node the address comes with our interface: they bind in their place in the order.
    const ops = this.#opsPart();
    await ops.tryEarly();
    try {
      await this.#build(ops);
    } catch (err) {
      await this.#parts.stop(this.#clock.now());
      await ops.stop(0);
      throw err;
    }
  }

  /** Everything after the ops servers: routing, listeners, node set-up, in start order. */
  async #build(ops: Component): Promise<void> {
    const c = this.#config;
    let host: HostServers;
    try {
      host = this.#hostServers(c);
    } catch (err) {
      throw new StartupError((err as Error).message);
    }
    await this.#startView();
    await this.#startPodWatch();
    let routing: Routing;
    try {
      routing = buildRouting(c, host, { clock: this.#clock, logger: this.#logger, view: this.#view, counters: this.metrics, readFile: this.#readFile }, null);
    } catch (err) {
      throw new StartupError((err as Error).message);
    }
    this.#routing = routing;
    if (routing.cluster === null) {
      this.#logger.warn(
        'LOCAL MODE: no cluster DNS address (--upstream-addr, or the kube-dns-upstream Service environment); every name, cluster zone included, goes to the host resolvers',
        { clusterDomain: c.clusterDomain },
      );
    }
    // The namespace table lives on this thread: UDP must be read here too for every query to be counted.
    if (c.metricsByNamespace && c.io === 'batched') {
      this.#logger.info('--metrics-by-namespace: UDP served by this thread (--io dgram), where the client namespaces are counted');
    }
    const udp = await createUdpListeners({
      io: c.metricsByNamespace ? 'dgram' : c.io,
      workers: c.workers,
      listen: c.listen,
      hitPath: this.hitPath,
      cache: { positiveCapacity: c.cacheSize, negativeCapacity: c.negativeCacheSize, maxBytes: c.cacheMemoryBytes, ...cachePolicy(c) },
      maxUdpSize: c.maxUdpSize,
      queryLogEvery: c.queryLogEvery,
      clientMissRate: c.clientMissRate,
      clientMissBurst: c.clientMissBurst,
      maxQueryAgeMs: c.maxQueryAgeMs,
      localZones: routing.localZones,
      store: this.cache,
      dgram: { reusePort: c.reusePort, clock: this.#clock },
      logger: this.#logger,
    });
    this.#udpIo = udp.io;
    this.#batched = udp.batched;
    const resolver = new Resolver({
      router: routing.router,
      clock: this.#clock,
      counters: new Counters(RESOLVER_COUNTERS),
      // Batched: every miss, the workers' and the main hit path's (TCP), goes through the listener's exchange.
      hits: udp.batched ?? this.hitPath,
      fallbackAfterMs: c.fallbackAfterMs,
      localNegative: c.localNegative,
      maxConcurrent: c.maxConcurrent,
    });
    this.#resolver = resolver;
    this.metrics.add(resolver.counters, false);
    const batched = udp.batched;
    if (batched !== null) {
      batched.connect(resolver);
      // The exchange stores what it fetches in this.cache: the hit path must not store it again.
      this.hitPath.connect(batched.mainSink(this.hitPath), true);
      this.metrics.addWorkerTotals(() => batched.totals());
    } else {
      this.hitPath.connect(resolver);
    }
    this.#listeners.push(...udp.listeners);
    // TCP stays on this thread whatever the UDP backend: a small share of pods' DNS, and more listeners here add no core.
    for (const addr of c.listen) {
      const tcp = new TcpListener(addr, this.hitPath, this.#logger, {
        idleTimeoutMs: c.tcpIdleTimeoutMs,
        readTimeoutMs: c.tcpReadTimeoutMs,
        maxConnections: c.maxTcpConnections,
        maxQueriesPerConnection: c.maxTcpQueries,
        clock: this.#clock,
        reusePort: c.reusePort,
      });
      this.metrics.addWithLabels(tcp.counters, { server: `dns://${formatHostPort(addr)}` });
      this.#listeners.push(tcp);
    }
    const node = this.#nodeSetup();
    this.#parts.add(this.#upstreamsPart());
    if (this.#watch !== null) this.#parts.add(this.#watchPart(this.#watch));
    if (this.#podWatch !== null) this.#parts.add(this.#podWatchPart(this.#podWatch));
    const iface = interfacePart(node);
    if (iface !== null) {
      this.#nodeParts.push(iface);
      this.#parts.add(iface);
    }
    if (c.cacheSnapshot !== '') this.#parts.add(this.#snapshotPart(c.cacheSnapshot));
    if (c.mallocTrimIntervalMs > 0) this.#parts.add(this.#heapTrimPart(c.mallocTrimIntervalMs));
    this.#parts.add(this.#listenersPart());
    // Only once we answer: from here on pods' DNS is steered to us.
    const interception = interceptionPart(node);
    if (interception !== null) {
      this.#nodeParts.push(interception);
      this.#parts.add(interception);
    }
    this.#parts.add(ops);
    await this.#parts.start(() => this.#clock.now());
    this.#logger.info('serving', {
      listen: this.#listeners.map((l) => l.name),
      clusterDns: c.clusterUpstream !== null ? `tcp://${formatHostPort(c.clusterUpstream)} (from ${c.clusterUpstreamSource})` : 'none (local mode)',
      hostResolvers: c.upstreamTls.length > 0 ? c.upstreamTls.map(formatTlsServer) : host.servers.map(formatHostPort),
      hostResolversFrom: host.source,
      stubDomains: c.stubDomains.map((d) => d.zone),
      clusterRecordsFallback: this.#view !== null ? 'on' : 'off',
    });
  }

  /** Stops taking queries, lets those in flight finish until `graceMs` from now, answers the rest, closes everything. */
  async stop(graceMs: number): Promise<void> {
    await this.#parts.stop(this.#clock.now() + graceMs);
  }

  /**
   * Applies a new configuration without dropping a query: routes (stub
   * domains, upstream nameservers, resolv.conf, timeouts), cache policy,
   * fallback settings and the log level. A config that cannot be applied is
   * refused whole and the old one keeps serving.
   */
  reload(next: Config): ReloadOutcome {
    const old = this.#config;
    const resolver = this.#resolver;
    if (resolver === null || this.#routing === null) return this.#refused('agent not started');
    const restartNeeded = RESTART_ONLY.filter((k) => JSON.stringify(old[k]) !== JSON.stringify(next[k])).map(String);
    // Settings that need a restart keep their running values; the rest come from the new config.
    const kept: Partial<Record<keyof Config, unknown>> = {};
    for (const k of RESTART_ONLY) kept[k] = old[k];
    const merged = { ...next, ...kept } as Config;
    let routing: Routing;
    try {
      const host = this.#hostServers(merged);
      routing = buildRouting(merged, host, { clock: this.#clock, logger: this.#logger, view: this.#view, counters: this.metrics, readFile: this.#readFile }, this.#routing);
    } catch (err) {
      return this.#refused((err as Error).message);
    }
    const previous = this.#routing;
    this.#routing = routing;
    resolver.configure({ router: routing.router, fallbackAfterMs: merged.fallbackAfterMs, localNegative: merged.localNegative, maxConcurrent: merged.maxConcurrent });
    this.cache.configure(cachePolicy(merged));
    this.hitPath.configure({ maxUdpSize: merged.maxUdpSize, queryLogEvery: merged.queryLogEvery, clientLimit: clientLimiter(merged) });
    if (this.#batched !== null) {
      this.#workersConfigured = this.#batched.configure({
        cache: cachePolicy(merged),
        maxUdpSize: merged.maxUdpSize,
        queryLogEvery: merged.queryLogEvery,
        clientMissRate: merged.clientMissRate,
        clientMissBurst: merged.clientMissBurst,
        localZones: routing.localZones,
      });
    }
    this.#setLogLevel?.(merged.logLevel);
    if (previous.cluster !== null && previous.cluster !== routing.cluster) previous.cluster.probe?.stop();
    for (const u of previous.upstreams) {
      if (routing.upstreams.includes(u)) continue;
      // Finishes its queries in flight (each has a deadline), then closes.
      this.#retired.add(u);
      void u.close().then(() => this.#retired.delete(u));
    }
    this.#config = merged;
    this.counters.values[AGENT_COUNTERS.slot.reloads]!++;
    this.#logger.info('configuration reloaded', {
      stubDomains: merged.stubDomains.map((d) => d.zone),
      upstreams: routing.upstreams.map((u) => u.name),
      ...(restartNeeded.length > 0 ? { restartNeeded } : {}),
    });
    if (restartNeeded.length > 0) this.#logger.warn('changed settings take effect only after a restart', { settings: restartNeeded });
    return { applied: true, error: null, restartNeeded };
  }

  /** A reload whose configuration could not even be read or validated: refused, counted, logged. */
  reloadFailed(error: string): ReloadOutcome {
    return this.#refused(error);
  }

  /** The files the running configuration comes from, for the watcher. */
  get configSources(): string[] {
    const c = this.#config;
    const paths: string[] = [];
    if (c.configFile !== '') paths.push(c.configFile);
    if (c.kubeDnsConfigDir !== '') paths.push(`${c.kubeDnsConfigDir}/stubDomains`, `${c.kubeDnsConfigDir}/upstreamNameservers`);
    paths.push(c.resolvConf);
    if (c.tlsCaFile !== '') paths.push(c.tlsCaFile);
    return paths;
  }

  #refused(error: string): ReloadOutcome {
    this.counters.values[AGENT_COUNTERS.slot.reloadFailures]!++;
    this.#logger.error('configuration reload refused: the running configuration keeps serving', { error });
    return { applied: false, error, restartNeeded: [] };
  }

  /** Host resolvers for `c`, checked against forwarding loops. Throws Error with an operator's message. */
  #hostServers(c: Config): HostServers {
    // DNS over TLS replaces the resolv.conf servers: that file need not exist or list anything then.
    const host = c.upstreamTls.length > 0 ? TLS_ONLY : loadHostServers(c.upstreamNameservers, c.resolvConf, this.#readFile);
    for (const w of host.warnings) this.#logger.warn('resolv.conf', { file: host.source, warning: w });
    guardLoops(c.listen, [
      ...(c.clusterUpstream !== null ? [{ what: '--upstream-addr', addr: c.clusterUpstream }] : []),
      ...host.servers.map((addr) => ({ what: host.source, addr })),
      ...c.upstreamTls.map((addr) => ({ what: '--upstream-nameservers', addr })),
      ...c.stubDomains.flatMap((d) => d.servers.map((addr) => ({ what: `stub domain ${d.zone}`, addr }))),
    ]);
    return host;
  }

  /** What node integration works on: the listen addresses that are not loopback (loopback needs no link and no rules). */
  #nodeSetup(): NodeSetupOptions {
    const c = this.#config;
    const addresses = [...new Set(c.listen.filter((l) => !isLoopback(l.host) && !isWildcard(l.host)).map((l) => l.host))];
    const ports = new Set(c.listen.filter((l) => addresses.includes(l.host)).map((l) => l.port));
    if (ports.size > 1) throw new StartupError(`node setup: the non-loopback listen addresses use several ports (${[...ports].join(', ')}); interception needs one`);
    return {
      addresses,
      port: [...ports][0] ?? 53,
      healthPort: c.healthPort,
      setupInterface: c.setupInterface,
      interfaceName: c.interfaceName,
      interfaceKind: c.interfaceKind,
      firewall: c.firewall,
      failOpenTo: c.failOpenTo,
      skipTeardown: c.skipTeardown,
      syncIntervalMs: c.syncIntervalMs,
      clock: this.#clock,
      logger: this.#logger,
      counters: this.setupCounters,
      // A new agent already listens on our address (an upgrade by surge): the link and rules are its now.
      successor: () => c.reusePort && c.listen.some((l) => addresses.includes(l.host) && listenersOn(l) > 1),
    };
  }

  /**
   * The cluster view and its API watch, when there is a cluster to watch.
   * Without one the agent still runs, and says once that the fallback is off.
   */
  async #startView(): Promise<void> {
    const c = this.#config;
    if (!c.kube) {
      this.#logger.info('cluster-records fallback off (--no-kube): cluster names are answered by the cluster DNS only');
      return;
    }
    const cfg = await loadClusterConfig({ kubeconfig: c.kubeconfig });
    if (cfg.kind === 'error') throw new StartupError(`--kubeconfig: ${cfg.reason}`);
    if (cfg.kind === 'none') {
      this.#logger.info('cluster-records fallback off: no cluster config (not in a cluster and no --kubeconfig)', { reason: cfg.reason });
      return;
    }
    this.#view = new ClusterView();
    const watchCounters = new Counters(watchCounterSchema);
    this.metrics.add(watchCounters, false);
    this.#watch = new KubeWatch(new KubeApi(cfg), this.#view, { clock: this.#clock, log: this.#logger, counters: watchCounters });
    this.#logger.info('cluster-records fallback on: watching the API', { server: cfg.server, source: cfg.source, auth: cfg.auth });
  }

  /**
   * --metrics-by-namespace: a watch of this node's pods, on the same cluster
   * config as the view (independent of --kube: it is a metric, not the
   * fallback). No cluster config is not worth refusing to serve DNS for:
   * said once, and every query counts as "_unknown".
   */
  async #startPodWatch(): Promise<void> {
    const c = this.#config;
    const table = this.#byNamespace;
    if (table === null) return;
    const cfg = await loadClusterConfig({ kubeconfig: c.kubeconfig });
    if (cfg.kind !== 'ok') {
      this.#logger.error('--metrics-by-namespace: no cluster config, every request counts as "_unknown"', { reason: cfg.reason });
      return;
    }
    const counters = new Counters(podWatchCounterSchema);
    this.metrics.add(counters, false);
    this.#podWatch = new PodWatch(new KubeApi(cfg), table.pods, { nodeName: c.nodeName, clock: this.#clock, log: this.#logger, counters });
    this.#logger.info('requests by namespace on: watching the pods of this node', { node: c.nodeName, maxNamespaces: c.metricsNamespacesMax });
  }

  #podWatchPart(watch: PodWatch): Component {
    const table = this.#byNamespace;
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

  /**
   * Ready means: listeners bound, the link and rules in place (when ours),
   * and at least one path that answers cluster names (the cluster DNS
   * healthy, or the view synced); in local mode the listeners are enough.
   */
  readiness(): { ready: boolean; missing: string[] } {
    const missing: string[] = [];
    if (!this.#serving) missing.push('listeners');
    for (const p of this.#nodeParts) if (!p.inPlace) missing.push(p.name);
    const cluster = this.#routing?.cluster ?? null;
    if (cluster !== null && !cluster.pool.health.healthy && this.#view?.synced !== true) missing.push('cluster names (cluster DNS failing, view not synced)');
    return { ready: missing.length === 0, missing };
  }

  /** /metrics, /health and /ready: last up, first down. */
  /** The ops servers as a part; `tryEarly` binds them before the rest when it can (then `start` has nothing left to do). */
  #opsPart(): Component & { tryEarly(): Promise<void> } {
    const c = this.#config;
    let bound = false;
    const bind = async (): Promise<void> => {
      const host = defaultOpsHost(c.listen);
      this.#ops = createOpsServers({
        metrics: c.metricsListen,
        health: c.healthPort === 0 ? null : { host, port: c.healthPort },
        handlers: { metrics: this.metrics, serving: () => this.#serving, readiness: () => this.readiness() },
        logger: this.#logger,
        reusePort: c.reusePort,
      });
      try {
        for (const s of this.#ops) await s.start();
      } catch (err) {
        await Promise.all(this.#ops.map((s) => s.stop()));
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
          this.#logger.debug('ops http: binding after the interface instead', { error: (err as Error).message });
        }
      },
      start: async () => {
        if (!bound) await bind();
      },
      stop: async () => {
        bound = false;
        await Promise.all(this.#ops.map((s) => s.stop()));
      },
    };
  }


  /** Ops servers as started (ports resolved when configured as 0). */
  get opsServers(): readonly OpsServer[] {
    return this.#ops;
  }

  /**
   * Warm restart: the cache is loaded before the listeners start, written
   * every --cache-snapshot-interval while serving (so that a new agent
   * started beside this one in an upgrade starts warm), and once more after
   * the listeners drained.
   */
  #snapshotPart(path: string): Component {
    this.metrics.add(this.snapshotCounters, false);
    const snapshots = new CacheSnapshots({
      cache: this.cache, path, intervalMs: this.#config.cacheSnapshotIntervalMs, clock: this.#clock, logger: this.#logger, counters: this.snapshotCounters,
    });
    return {
      name: 'cache-snapshot',
      // Batched too: this.cache is the one cache, which the workers read.
      start: async () => {
        await snapshots.start();
      },
      stop: async () => {
        await snapshots.stop();
      },
    };
  }

  /** Freed heap memory back to the kernel now and then (ops/heap-trim.ts); nothing where glibc's calls are missing. */
  #heapTrimPart(intervalMs: number): Component {
    let trimmer: HeapTrimmer | null = null;
    return {
      name: 'heap-trim',
      start: async () => {
        const sys = await loadMallocTrim();
        if (typeof sys === 'string') {
          this.#logger.info('malloc_trim unavailable: freed heap memory is not handed back early', { reason: sys });
          return;
        }
        const counters = new Counters(HEAP_TRIM_COUNTERS);
        this.metrics.add(counters, false);
        trimmer = new HeapTrimmer({ sys, clock: this.#clock, intervalMs, counters, logger: this.#logger });
        trimmer.start();
      },
      stop: () => {
        trimmer?.stop();
        return Promise.resolve();
      },
    };
  }

  #watchPart(watch: KubeWatch): Component {
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

  /** Upstreams close last (stopped after the listeners): in-flight exchanges are answered by then. */
  #upstreamsPart(): Component {
    return {
      name: 'upstreams',
      start: () => Promise.resolve(),
      stop: async (deadline) => {
        this.#routing?.cluster?.probe?.stop();
        this.#resolver?.close();
        const all = [...(this.#routing?.upstreams ?? []), ...this.#retired];
        await this.#until(deadline, Promise.all(all.map((u) => u.close())).then(() => undefined));
        // Past the deadline nothing waits on them any more (the hit path answered its clients): drop what is left.
        for (const u of all) u.abort();
        this.#retired.clear();
      },
    };
  }

  #listenersPart(): Component {
    return {
      name: 'listeners',
      start: async () => {
        try {
          for (const l of this.#listeners) await l.start();
          this.#serving = true;
        } catch (err) {
          // This part never counts as started: close what did bind before the error.
          await Promise.all(this.#listeners.map((l) => l.close()));
          throw err;
        }
      },
      stop: async (deadline) => {
        this.#serving = false;
        for (const l of this.#listeners) l.pause();
        // A handover: what the kernel queued for us before pause() still comes in; take it all before waiting for answers.
        await this.#until(deadline, Promise.all(this.#listeners.map((l) => l.drained())).then(() => undefined));
        const batched = this.#batched;
        const draining = [this.hitPath.inflight > 0 ? this.hitPath.drain() : Promise.resolve(), batched?.drain() ?? Promise.resolve()];
        await this.#until(deadline, Promise.all(draining).then(() => undefined));
        const aborted = this.hitPath.abortAll() + (batched !== null ? await batched.abortAll() : 0);
        if (aborted > 0) this.#logger.warn('shutdown grace over: answered queries still in flight with stale or SERVFAIL', { queries: aborted });
        await Promise.all(this.#listeners.map((l) => l.close()));
        this.#listeners.length = 0;
      },
    };
  }

  /** Waits for `p`, but not past `deadline` (Clock ms). */
  async #until(deadline: number, p: Promise<void>): Promise<void> {
    const left = deadline - this.#clock.now();
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
}

const TLS_ONLY: HostServers = { servers: [], source: '--upstream-nameservers (tls)', attemptMs: undefined, attempts: 1, rotate: false, warnings: [] };

function clientLimiter(c: Config): ClientMissLimiter | null {
  return c.clientMissRate > 0 ? new ClientMissLimiter(c.clientMissRate, c.clientMissBurst) : null;
}

function cachePolicy(c: Config): { successTtl: number; denialTtl: number; minHits: number; percent: number; staleMs: number } {
  return { successTtl: c.successTtl, denialTtl: c.denialTtl, minHits: c.prefetchMinHits, percent: c.prefetchPercent, staleMs: c.serveStaleMs };
}

/** Forwarding to ourselves would loop each query until it times out: refuse. */
function guardLoops(listen: readonly ServerAddress[], upstreams: readonly { what: string; addr: ServerAddress }[]): void {
  for (const { what, addr } of upstreams) {
    for (const l of listen) {
      if (l.port !== addr.port) continue;
      const same = l.host === addr.host || (isWildcard(l.host) && (isLoopback(addr.host) || isWildcard(addr.host)));
      if (same) {
        throw new StartupError(`${what}: upstream ${formatHostPort(addr)} is one of our own listen addresses (${formatHostPort(l)}); forwarding there would loop`);
      }
    }
  }
}
