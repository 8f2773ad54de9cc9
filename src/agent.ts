/**
 * Composes the parts and owns their order. The parts are a ComponentStack
 * (lifecycle.ts): started in order, stopped in reverse, rolled back on a
 * failed start. Today: upstreams, then listeners. Node integration slots in
 * around the listeners (interface before, interception after).
 *
 * Shutdown: listeners stop taking queries, queries in flight get until the
 * grace deadline, then whatever still waits is answered stale or SERVFAIL,
 * then sockets and upstreams close. Nothing waits past the deadline.
 */
import { readFileSync } from 'node:fs';
import { questionMessage, upstreamQuery } from './dns/build.js';
import { QType } from './dns/constants.js';
import { nameToWire } from './dns/name.js';
import { parseQuery } from './dns/query.js';
import { interceptionPart, interfacePart, type NodeSetupOptions } from './iface/node-setup.js';
import { setupCounterSchema } from './iface/setup-counters.js';
import { KubeApi, loadClusterConfig } from './kube/client.js';
import { ViewAnswerer } from './kube/local-answerer.js';
import { ClusterView } from './kube/view.js';
import { KubeWatch, watchCounterSchema } from './kube/watch.js';
import { formatHostPort, isLoopback, isWildcard } from './addr.js';
import { DnsCache } from './cache/cache.js';
import { CACHE_COUNTERS } from './cache/stats.js';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config.js';
import { ComponentStack, StartupError, type Component } from './lifecycle.js';
import type { Logger } from './log.js';
import { HitPath } from './server/hit-path.js';
import type { Listener } from './server/listener.js';
import { RESOLVER_COUNTERS, Resolver } from './server/resolver.js';
import type { Route } from './server/route.js';
import { SERVER_COUNTERS } from './server/stats.js';
import { TcpListener } from './server/tcp-listener.js';
import { UdpListener } from './server/udp-listener.js';
import { Counters } from './stats/counters.js';
import { HostResolvers } from './upstream/host-resolvers.js';
import { DEFAULT_ATTEMPTS, hostBudget, loadHostServers, type HostServers } from './upstream/host-route.js';
import type { HealthState } from './upstream/health.js';
import { HealthProbe } from './upstream/probe.js';
import { ZoneRouter, type ZoneRoute } from './upstream/router.js';
import { TcpPool } from './upstream/tcp-pool.js';
import type { ServerAddress, Upstream } from './upstream/types.js';

export { StartupError } from './lifecycle.js';

export interface AgentDeps {
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly readFile?: (path: string) => string;
}

/** Reverse zones always belong to the cluster DNS: it owns the PTR records of Service and Pod IPs. */
const REVERSE_ZONES = ['in-addr.arpa', 'ip6.arpa'];

export class Agent {
  readonly config: Config;
  readonly cache: DnsCache;
  readonly hitPath: HitPath;
  /** node-cache's coredns_nodecache_setup_errors_total and our repairs: interface and interception. */
  readonly setupCounters: Counters<keyof typeof setupCounterSchema.slot>;
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #readFile: (path: string) => string;
  readonly #upstreams: Upstream[];
  readonly #listeners: Listener[];
  readonly #parts: ComponentStack;
  #resolver: Resolver | null;
  /** The cluster view and its watch; null with --no-kube or no cluster config. */
  #view: ClusterView | null;
  #watch: KubeWatch | null;
  readonly #probes: HealthProbe[];
  #clusterUpstream: Upstream | null;

  constructor(config: Config, deps: AgentDeps) {
    this.config = config;
    this.#logger = deps.logger;
    this.#clock = deps.clock ?? systemClock;
    this.#readFile = deps.readFile ?? ((p) => readFileSync(p, 'utf8'));
    this.cache = new DnsCache(
      {
        positiveCapacity: config.cacheSize,
        negativeCapacity: config.negativeCacheSize,
        maxBytes: config.cacheMemoryBytes,
        successTtl: config.successTtl,
        denialTtl: config.denialTtl,
        minHits: config.prefetchMinHits,
        percent: config.prefetchPercent,
        staleMs: config.serveStaleMs,
      },
      new Counters(CACHE_COUNTERS),
    );
    this.hitPath = new HitPath({
      cache: this.cache,
      clock: this.#clock,
      logger: this.#logger,
      counters: new Counters(SERVER_COUNTERS),
      maxUdpSize: config.maxUdpSize,
    });
    this.setupCounters = new Counters(setupCounterSchema);
    this.#upstreams = [];
    this.#listeners = [];
    this.#parts = new ComponentStack(this.#logger);
    this.#resolver = null;
    this.#view = null;
    this.#watch = null;
    this.#probes = [];
    this.#clusterUpstream = null;
  }

  /** Health of the cluster DNS upstream; null in local mode or before start. */
  get clusterHealth(): HealthState | null {
    return this.#clusterUpstream?.health.state ?? null;
  }

  /** The cluster view (for tests and, later, metrics); null when the fallback is off. */
  get view(): ClusterView | null {
    return this.#view;
  }

  get resolver(): Resolver {
    if (this.#resolver === null) throw new Error('agent not started');
    return this.#resolver;
  }

  /** Listeners as started (ports resolved when configured as 0). */
  get listeners(): readonly Listener[] {
    return this.#listeners;
  }

  async start(): Promise<void> {
    const c = this.config;
    let host: HostServers;
    try {
      host = loadHostServers(c.upstreamNameservers, c.resolvConf, this.#readFile);
    } catch (err) {
      throw new StartupError((err as Error).message);
    }
    for (const w of host.warnings) this.#logger.warn('resolv.conf', { file: host.source, warning: w });
    this.#guardLoops([
      ...(c.clusterUpstream !== null ? [{ what: '--upstream-addr', addr: c.clusterUpstream }] : []),
      ...host.servers.map((addr) => ({ what: host.source, addr })),
      ...c.stubDomains.flatMap((d) => d.servers.map((addr) => ({ what: `stub domain ${d.zone}`, addr }))),
    ]);

    this.#startView();
    const resolver = new Resolver({
      router: this.#routes(host),
      clock: this.#clock,
      counters: new Counters(RESOLVER_COUNTERS),
      hits: this.hitPath,
      fallbackAfterMs: c.fallbackAfterMs,
      localNegative: c.localNegative,
    });
    this.#resolver = resolver;
    this.hitPath.connect(resolver);
    for (const addr of c.listen) {
      this.#listeners.push(new UdpListener(addr, this.hitPath, this.#logger));
      this.#listeners.push(
        new TcpListener(addr, this.hitPath, this.#logger, {
          idleTimeoutMs: c.tcpIdleTimeoutMs,
          readTimeoutMs: c.tcpReadTimeoutMs,
          maxConnections: c.maxTcpConnections,
          maxQueriesPerConnection: c.maxTcpQueries,
          clock: this.#clock,
        }),
      );
    }
    const node = this.#nodeSetup();
    this.#parts.add(this.#upstreamsPart());
    if (this.#watch !== null) this.#parts.add(this.#watchPart(this.#watch));
    const iface = interfacePart(node);
    if (iface !== null) this.#parts.add(iface);
    this.#parts.add(this.#listenersPart());
    // Only once we answer: from here on pods' DNS is steered to us.
    const interception = interceptionPart(node);
    if (interception !== null) this.#parts.add(interception);
    await this.#parts.start(() => this.#clock.now());
    this.#logger.info('serving', {
      listen: this.#listeners.map((l) => l.name),
      clusterDns: c.clusterUpstream !== null ? `tcp://${formatHostPort(c.clusterUpstream)} (from ${c.clusterUpstreamSource})` : 'none (local mode)',
      hostResolvers: host.servers.map(formatHostPort),
      hostResolversFrom: host.source,
      stubDomains: c.stubDomains.map((d) => d.zone),
      clusterRecordsFallback: this.#view !== null ? 'on' : 'off',
    });
  }

  /** What node integration works on: the listen addresses that are not loopback (loopback needs no link and no rules). */
  #nodeSetup(): NodeSetupOptions {
    const c = this.config;
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
      skipTeardown: c.skipTeardown,
      syncIntervalMs: c.syncIntervalMs,
      clock: this.#clock,
      logger: this.#logger,
      counters: this.setupCounters,
    };
  }

  /**
   * The cluster view and its API watch, when there is a cluster to watch.
   * Without one the agent still runs, and says once that the fallback is off.
   */
  #startView(): void {
    const c = this.config;
    if (!c.kube) {
      this.#logger.info('cluster-records fallback off (--no-kube): cluster names are answered by the cluster DNS only');
      return;
    }
    const cfg = loadClusterConfig({ kubeconfig: c.kubeconfig });
    if (cfg.kind === 'error') throw new StartupError(`--kubeconfig: ${cfg.reason}`);
    if (cfg.kind === 'none') {
      this.#logger.info('cluster-records fallback off: no cluster config (not in a cluster and no --kubeconfig)', { reason: cfg.reason });
      return;
    }
    this.#view = new ClusterView();
    this.#watch = new KubeWatch(new KubeApi(cfg), this.#view, { clock: this.#clock, log: this.#logger, counters: new Counters(watchCounterSchema) });
    this.#logger.info('cluster-records fallback on: watching the API', { server: cfg.server, source: cfg.source });
  }

  /** Stops taking queries, lets those in flight finish until `graceMs` from now, answers the rest, closes everything. */
  async stop(graceMs: number): Promise<void> {
    await this.#parts.stop(this.#clock.now() + graceMs);
  }

  #routes(host: HostServers): ZoneRouter<Route> {
    const c = this.config;
    const external = this.#hostRoute('host-resolvers', host.servers, host.attemptMs, host.attempts, host.rotate);
    const routes: ZoneRoute<Route>[] = [];
    if (c.clusterUpstream !== null) {
      const cluster = new TcpPool({
        server: c.clusterUpstream,
        connections: c.upstreamConnections,
        maxInFlightPerConnection: c.upstreamMaxInFlight,
        rotateAfterQueries: c.upstreamRotateQueries,
        rotateAfterMs: c.upstreamRotateAfterMs,
        clock: this.#clock,
        logger: this.#logger,
      });
      this.#upstreams.push(cluster);
      this.#clusterUpstream = cluster;
      const local =
        this.#view === null
          ? null
          : new ViewAnswerer({ view: this.#view, clock: this.#clock, zone: c.clusterDomain, ttl: c.localTtl, maxSilenceMs: c.maxApiSilenceMs });
      if (local !== null) this.#probes.push(new HealthProbe(cluster, this.#clock, probeQuery(c.clusterDomain)));
      const route: Route = { upstream: cluster, timeoutMs: c.timeoutMs, local };
      for (const zone of [c.clusterDomain, ...REVERSE_ZONES]) routes.push({ zone, target: route });
    } else {
      this.#logger.warn(
        'LOCAL MODE: no cluster DNS address (--upstream-addr, or the kube-dns-upstream Service environment); every name, cluster zone included, goes to the host resolvers',
        { clusterDomain: c.clusterDomain },
      );
    }
    for (const stub of c.stubDomains) {
      routes.push({ zone: stub.zone, target: this.#hostRoute(`stub:${stub.zone}`, stub.servers, undefined, DEFAULT_ATTEMPTS, false) });
    }
    return new ZoneRouter(routes, external);
  }

  #hostRoute(name: string, servers: readonly ServerAddress[], attemptMs: number | undefined, attempts: number, rotate: boolean): Route {
    const { attemptTimeoutMs, budgetMs } = hostBudget(this.config.timeoutMs, attemptMs, attempts, servers.length);
    const upstream = new HostResolvers({
      servers, attemptTimeoutMs, attempts, rotate, maxInFlight: this.config.hostMaxInflight, clock: this.#clock, logger: this.#logger, name,
    });
    this.#upstreams.push(upstream);
    return { upstream, timeoutMs: budgetMs, local: null };
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
        for (const p of this.#probes) p.stop();
        this.#resolver?.close();
        await this.#until(deadline, Promise.all(this.#upstreams.map((u) => u.close())).then(() => undefined));
        // Past the deadline nothing waits on them any more (the hit path answered its clients): drop what is left.
        for (const u of this.#upstreams) u.abort();
        this.#upstreams.length = 0;
      },
    };
  }

  #listenersPart(): Component {
    return {
      name: 'listeners',
      start: async () => {
        try {
          for (const l of this.#listeners) await l.start();
        } catch (err) {
          // This part never counts as started: close what did bind before the error.
          await Promise.all(this.#listeners.map((l) => l.close()));
          throw err;
        }
      },
      stop: async (deadline) => {
        for (const l of this.#listeners) l.pause();
        if (this.hitPath.inflight > 0) await this.#until(deadline, this.hitPath.drain());
        const aborted = this.hitPath.abortAll();
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

  /** Forwarding to ourselves would loop each query until it times out: refuse to start. */
  #guardLoops(upstreams: readonly { what: string; addr: ServerAddress }[]): void {
    for (const { what, addr } of upstreams) {
      for (const l of this.config.listen) {
        if (l.port !== addr.port) continue;
        const same = l.host === addr.host || (isWildcard(l.host) && (isLoopback(addr.host) || isWildcard(addr.host)));
        if (same) {
          throw new StartupError(`${what}: upstream ${formatHostPort(addr)} is one of our own listen addresses (${formatHostPort(l)}); forwarding there would loop`);
        }
      }
    }
  }
}

/** What proves the cluster DNS works: the API server's own Service, which every cluster has. */
function probeQuery(zone: string): Buffer {
  return upstreamQuery(parseQuery(questionMessage(nameToWire(`kubernetes.default.svc.${zone}`), QType.A)));
}
