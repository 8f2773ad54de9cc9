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
import { formatHostPort } from './addr.js';
import { AGENT_COUNTERS, cacheOptions, clientLimiter, configSourcePaths, hostServers, keepRestartOnly, nodeSetupOptions, type ReloadOutcome } from './agent-config.js';
import { startPodWatch, startView } from './agent-cluster.js';
import { exeTrimPart, heapTrimPart, idleGcPart, opsPart, podWatchPart, snapshotParts, watchPart, type OpsPart } from './agent-parts.js';
import { buildServing, listenersPart, reconfigureServing, retireReplaced, upstreamsPart } from './agent-serving.js';
import { DnsCache } from './cache/cache.js';
import { CACHE_COUNTERS } from './cache/stats.js';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config.js';
import { SNAPSHOT_COUNTERS } from './cache/snapshot.js';
import { interceptionPart, interfacePart, type NodePart } from './iface/node-setup.js';
import { setupCounterSchema } from './iface/setup-counters.js';
import type { PodWatch } from './kube/pods.js';
import type { ClusterView } from './kube/view.js';
import type { KubeWatch } from './kube/watch.js';
import { ComponentStack, StartupError } from './lifecycle.js';
import type { Logger } from './log.js';
import { AgentMetrics } from './ops/agent-metrics.js';
import type { OpsServer } from './ops/http.js';
import { NamespaceRequests, addNamespaceMetrics } from './ops/namespace-metrics.js';
import { buildRouting, type Routing } from './routing.js';
import { HitPath } from './server/hit-path.js';
import type { Listener } from './server/listener.js';
import type { Resolver } from './server/resolver.js';
import { SERVER_COUNTERS } from './server/stats.js';
import type { BatchedUdpListener } from './server/batched/listener.js';
import { EMPTY_LIVENESS_MS } from './server/batched/worker-restarts.js';
import type { UdpIo } from './server/batched/select.js';
import { Counters } from './stats/counters.js';
import type { HealthState } from './upstream/health.js';
import type { HostServers } from './upstream/host-route.js';
import { formatTlsServer } from './upstream/tls-address.js';
import type { Upstream } from './upstream/types.js';

export { StartCut, StartupError } from './lifecycle.js';
export type { ReloadOutcome } from './agent-config.js';

export interface AgentDeps {
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly readFile?: (path: string) => string;
  /** Applies a new log level on reload (main passes the logger's own setter). */
  readonly setLogLevel?: (level: Config['logLevel']) => void;
  /** For coredns_build_info. */
  readonly version?: string;
  /** --io batched: how long UDP may have no worker in its loop, or one stuck, before /health is 503 (EMPTY_LIVENESS_MS; tests shorten it). */
  readonly udpDownLivenessMs?: number;
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
  readonly #listeners: Listener[] = [];
  /** The batched UDP listener (also in #listeners) when --io batched runs; null with dgram. */
  #batched: BatchedUdpListener | null = null;
  #udpIo: UdpIo | null = null;
  /** The workers' last reconfiguration, applied (tests wait on it). */
  #workersConfigured: Promise<void> = Promise.resolve();
  readonly #parts: ComponentStack;
  #resolver: Resolver | null = null;
  #routing: Routing | null = null;
  /** Upstreams a reload replaced, still finishing their queries in flight. */
  readonly #retired = new Set<Upstream>();
  /** The cluster view and its watch; null with --no-kube or no cluster config. */
  #view: ClusterView | null = null;
  #watch: KubeWatch | null = null;
  /** Node parts, for /ready: what they set up is in place. */
  readonly #nodeParts: NodePart[] = [];
  /** Listeners bound and taking queries (false before start and once stopping). */
  #serving = false;
  #hasServed = false;
  readonly #udpDownLivenessMs: number;
  #ops: OpsServer[] = [];
  /** --metrics-by-namespace: the table the hit path tags with, and its pod watch (null when off or no cluster config). */
  readonly #byNamespace: NamespaceRequests | null;
  #podWatch: PodWatch | null = null;

  constructor(config: Config, deps: AgentDeps) {
    this.#config = config;
    this.#logger = deps.logger;
    this.#clock = deps.clock ?? systemClock;
    this.#readFile = deps.readFile ?? ((p) => readFileSync(p, 'utf8'));
    this.#setLogLevel = deps.setLogLevel ?? null;
    this.#udpDownLivenessMs = deps.udpDownLivenessMs ?? EMPTY_LIVENESS_MS;
    const server = `dns://${config.listen[0] !== undefined ? formatHostPort(config.listen[0]) : ''}`;
    this.cache = new DnsCache(
      cacheOptions(config),
      new Counters(CACHE_COUNTERS),
      // Batched: the workers read this very store (SharedArrayBuffers); it is the only cache.
      { shared: config.io === 'batched' && !config.metricsByNamespace },
    );
    this.metrics = new AgentMetrics(
      {
        server,
        cache: this.cache,
        clock: this.#clock,
        upstreams: () => this.#routing?.upstreams ?? [], retired: () => this.#retired,
        view: () => this.#view,
        nodeParts: () => this.#nodeParts,
      },
      { version: deps.version ?? 'unknown', revision: '' },
    );
    this.#byNamespace = config.metricsByNamespace ? new NamespaceRequests({ maxNamespaces: config.metricsNamespacesMax, clock: this.#clock }) : null;
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
    this.#parts = new ComponentStack(this.#logger);
    this.metrics.add(this.hitPath.counters, true);
    this.metrics.add(this.cache.counters, true);
    this.metrics.add(this.counters, false);
    this.metrics.add(this.setupCounters, false);
    if (this.#byNamespace !== null) addNamespaceMetrics(this.metrics.registry, server, this.#byNamespace);
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
    // member). On a fresh node the address comes with our interface: they bind right after it (#build).
    const ops = opsPart({
      config: this.#config,
      metrics: this.metrics,
      logger: this.#logger,
      clock: this.#clock,
      // Liveness: 200 from the moment the port is bound, starting included. In a surge upgrade the new agent's port
      // takes the old pod's probes too, and a slow start (the xtables lock) must not get the healthy old pod killed.
      // Then 503 once batched UDP has had no worker (each restart failing) or one stuck (not ended at a third of the
      // bound) for the bound: only a restart helps.
      serving: () => (this.#serving || !this.#hasServed) && (this.#batched?.udpDownMs(this.#udpDownLivenessMs / 3) ?? 0) < this.#udpDownLivenessMs,
      readiness: () => this.readiness(),
      created: (servers) => {
        this.#ops = servers;
      },
    });
    await ops.tryEarly();
    try {
      await this.#build(ops);
    } catch (err) {
      await this.#parts.stop(this.#clock.now(), 'rollback');
      await ops.stop(0, 'rollback');
      throw err;
    }
    // Every block is published by now: a family with two help texts or two sets of label names is a bug to see.
    for (const warning of this.metrics.registry.warnings) this.#logger.warn('metric family inconsistent', { warning });
  }

  /** Everything after the ops servers: routing, listeners, node set-up, in start order. */
  async #build(ops: OpsPart): Promise<void> {
    const c = this.#config;
    const d = { metrics: this.metrics, clock: this.#clock, logger: this.#logger };
    let host: HostServers;
    try {
      host = hostServers(c, this.#readFile, this.#logger);
    } catch (err) {
      throw new StartupError((err as Error).message);
    }
    const cluster = await startView(c, d);
    if (cluster !== null) {
      this.#view = cluster.view;
      this.#watch = cluster.watch;
    }
    this.#podWatch = await startPodWatch(c, this.#byNamespace, d);
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
    const serving = await buildServing(c, routing, { ...d, hitPath: this.hitPath, cache: this.cache });
    this.#udpIo = serving.io;
    this.#batched = serving.batched;
    this.#resolver = serving.resolver;
    this.#listeners.push(...serving.listeners);
    const node = nodeSetupOptions(c, { clock: this.#clock, logger: this.#logger, counters: this.setupCounters });
    this.#parts.add(upstreamsPart({ routing: () => this.#routing, resolver: () => this.#resolver, retired: this.#retired, clock: this.#clock }));
    if (this.#watch !== null) this.#parts.add(watchPart(this.#watch));
    if (this.#podWatch !== null) this.#parts.add(podWatchPart(this.#podWatch, this.#byNamespace));
    const iface = interfacePart(node);
    if (iface !== null) {
      this.#nodeParts.push(iface);
      this.#parts.add(iface);
      // A fresh node: the address exists now. Liveness answers from here, not after the listeners and the rules.
      this.#parts.add({ name: 'ops-http (early)', start: () => ops.tryEarly(), stop: () => Promise.resolve() });
    }
    const snapshot = c.cacheSnapshot === '' ? null : snapshotParts(c.cacheSnapshot, { ...d, cache: this.cache, intervalMs: c.cacheSnapshotIntervalMs, counters: this.snapshotCounters });
    if (snapshot !== null) this.#parts.add(snapshot.load);
    if (c.mallocTrimIntervalMs > 0) this.#parts.add(heapTrimPart(c.mallocTrimIntervalMs, d));
    if (c.exeTrimIntervalMs > 0) this.#parts.add(exeTrimPart(c.exeTrimIntervalMs, d));
    this.#parts.add(idleGcPart(d));
    this.#parts.add(listenersPart({
      listeners: this.#listeners,
      hitPath: this.hitPath,
      batched: this.#batched,
      clock: this.#clock,
      logger: this.#logger,
      setServing: (serving) => {
        this.#serving = serving;
        if (serving) this.#hasServed = true;
      },
    }));
    // Only once we answer: from here on pods' DNS is steered to us.
    const interception = interceptionPart(node);
    if (interception !== null) {
      this.#nodeParts.push(interception);
      this.#parts.add(interception);
    }
    this.#parts.add(ops);
    // Last: a start that fails (however long it took) writes no snapshot over the file it found.
    if (snapshot !== null) this.#parts.add(snapshot.periodic);
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

  /** A stop while start() runs: start() throws StartCut once what it had started is stopped as stop(graceMs) would. */
  cutStart(graceMs: number): void { this.#parts.cutStart(this.#clock.now() + graceMs); }

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
    // Settings that need a restart keep their running values; the rest come from the new config.
    const { merged, restartNeeded } = keepRestartOnly(old, next);
    let routing: Routing;
    try {
      const host = hostServers(merged, this.#readFile, this.#logger);
      routing = buildRouting(merged, host, { clock: this.#clock, logger: this.#logger, view: this.#view, counters: this.metrics, readFile: this.#readFile }, this.#routing);
    } catch (err) {
      return this.#refused((err as Error).message);
    }
    const previous = this.#routing;
    this.#routing = routing;
    const workers = reconfigureServing(merged, routing, { resolver, cache: this.cache, hitPath: this.hitPath, batched: this.#batched });
    if (workers !== null) this.#workersConfigured = workers;
    this.#setLogLevel?.(merged.logLevel);
    retireReplaced(previous, routing, this.#retired, this.metrics);
    this.#config = merged;
    this.counters.values[AGENT_COUNTERS.slot.reloads]!++;
    this.counters.values[AGENT_COUNTERS.slot.reloadRefused] = 0;
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
    return configSourcePaths(this.#config);
  }

  #refused(error: string): ReloadOutcome {
    this.counters.values[AGENT_COUNTERS.slot.reloadFailures]!++;
    this.counters.values[AGENT_COUNTERS.slot.reloadRefused] = 1;
    this.#logger.error('configuration reload refused: the running configuration keeps serving', { error });
    return { applied: false, error, restartNeeded: [] };
  }

  /**
   * Ready means: listeners bound (with --io batched, a UDP worker in its
   * loop), the link and rules in place (when ours), and at least one path
   * that answers cluster names (the cluster DNS healthy, or the view
   * synced); in local mode the listeners are enough.
   */
  readiness(): { ready: boolean; missing: string[] } {
    const missing: string[] = [];
    if (!this.#serving) missing.push('listeners');
    // Serving with no batched worker in its loop (all dead, restarts failing): UDP is down, whatever TCP does.
    else if (this.#batched !== null && this.#batched.liveWorkers === 0) missing.push('udp workers (none running; restarting)');
    for (const p of this.#nodeParts) if (!p.inPlace) missing.push(p.name);
    const cluster = this.#routing?.cluster ?? null;
    if (cluster !== null && !cluster.pool.health.healthy && this.#view?.synced !== true) missing.push('cluster names (cluster DNS failing, view not synced)');
    return { ready: missing.length === 0, missing };
  }

  /** Ops servers as started (ports resolved when configured as 0). */
  get opsServers(): readonly OpsServer[] {
    return this.#ops;
  }
}
