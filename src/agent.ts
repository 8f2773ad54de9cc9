/**
 * Composes the parts and owns their start and stop order: upstreams before
 * listeners on the way up; on the way down listeners stop taking queries,
 * queries in flight finish, then sockets close.
 */
import { readFileSync } from 'node:fs';
import { formatHostPort, isLoopback, isWildcard } from './addr.js';
import { DnsCache } from './cache/cache.js';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import type { Listener } from './server/listener.js';
import { Resolver, type Route } from './server/resolver.js';
import { TcpListener } from './server/tcp-listener.js';
import { UdpListener } from './server/udp-listener.js';
import { HostResolvers } from './upstream/host-resolvers.js';
import { parseResolvConf } from './upstream/resolv-conf.js';
import { ZoneRouter, type ZoneRoute } from './upstream/router.js';
import { TcpPool } from './upstream/tcp-pool.js';
import type { ServerAddress, Upstream } from './upstream/types.js';

export class StartupError extends Error {
  override readonly name = 'StartupError';
}

export interface AgentDeps {
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly readFile?: (path: string) => string;
}

/** A pod's resolver gives up on its first try after 5 s: answer (even SERVFAIL) before that. */
const HOST_BUDGET_CAP_MS = 4500;

/** Reverse zones always belong to the cluster DNS: it owns the PTR records of Service and Pod IPs. */
const REVERSE_ZONES = ['in-addr.arpa', 'ip6.arpa'];

export class Agent {
  readonly config: Config;
  readonly cache: DnsCache;
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #readFile: (path: string) => string;
  readonly #upstreams: Upstream[];
  readonly #listeners: Listener[];
  #resolver: Resolver | null;

  constructor(config: Config, deps: AgentDeps) {
    this.config = config;
    this.#logger = deps.logger;
    this.#clock = deps.clock ?? systemClock;
    this.#readFile = deps.readFile ?? ((p) => readFileSync(p, 'utf8'));
    this.cache = new DnsCache({
      positiveCapacity: config.cacheSize,
      negativeCapacity: config.negativeCacheSize,
      successTtl: config.successTtl,
      denialTtl: config.denialTtl,
      minHits: config.prefetchMinHits,
      percent: config.prefetchPercent,
      staleMs: config.serveStaleMs,
    });
    this.#upstreams = [];
    this.#listeners = [];
    this.#resolver = null;
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
    const hostServers = this.#hostServers();
    this.#guardLoops([
      ...(c.clusterUpstream !== null ? [{ what: '--upstream-addr', addr: c.clusterUpstream }] : []),
      ...hostServers.servers.map((addr) => ({ what: hostServers.source, addr })),
      ...c.stubDomains.flatMap((d) => d.servers.map((addr) => ({ what: `stub domain ${d.zone}`, addr }))),
    ]);

    const external = this.#hostRoute('host-resolvers', hostServers.servers, hostServers.timeoutMs, hostServers.attempts ?? 2, hostServers.rotate);
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
      for (const zone of [c.clusterDomain, ...REVERSE_ZONES]) routes.push({ zone, target: { upstream: cluster, timeoutMs: c.timeoutMs } });
    } else {
      this.#logger.warn(
        'LOCAL MODE: no cluster DNS address (--upstream-addr, or the kube-dns-upstream Service environment); every name, cluster zone included, goes to the host resolvers',
        { clusterDomain: c.clusterDomain },
      );
    }
    for (const stub of c.stubDomains) {
      routes.push({ zone: stub.zone, target: this.#hostRoute(`stub:${stub.zone}`, stub.servers, undefined, 2, false) });
    }

    const resolver = new Resolver({
      cache: this.cache,
      router: new ZoneRouter(routes, external),
      clock: this.#clock,
      logger: this.#logger,
      maxUdpSize: c.maxUdpSize,
    });
    this.#resolver = resolver;
    for (const addr of c.listen) {
      this.#listeners.push(new UdpListener(addr, resolver, this.#logger));
      this.#listeners.push(
        new TcpListener(addr, resolver, this.#logger, {
          idleTimeoutMs: c.tcpIdleTimeoutMs,
          maxConnections: c.maxTcpConnections,
          maxQueriesPerConnection: c.maxTcpQueries,
        }),
      );
    }
    try {
      for (const l of this.#listeners) await l.start();
    } catch (err) {
      await this.stop(0);
      throw new StartupError((err as Error).message);
    }
    this.#logger.info('serving', {
      listen: this.#listeners.map((l) => l.name),
      clusterDns: c.clusterUpstream !== null ? `tcp://${formatHostPort(c.clusterUpstream)} (from ${c.clusterUpstreamSource})` : 'none (local mode)',
      hostResolvers: hostServers.servers.map(formatHostPort),
      hostResolversFrom: hostServers.source,
      stubDomains: c.stubDomains.map((d) => d.zone),
    });
  }

  /** Stops taking queries, lets those in flight finish (at most graceMs), closes everything. */
  async stop(graceMs: number): Promise<void> {
    for (const l of this.#listeners) l.pause();
    if (this.#resolver !== null && this.#resolver.inflight > 0 && graceMs > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.#resolver.drain(),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, graceMs);
        }),
      ]);
      clearTimeout(timer);
    }
    await Promise.all(this.#listeners.map((l) => l.close()));
    await Promise.all(this.#upstreams.map((u) => u.close()));
    this.#listeners.length = 0;
    this.#upstreams.length = 0;
  }

  /**
   * UDP servers tried in turn (host resolvers, stub domains). One try waits
   * resolv.conf's `timeout`, never longer than --timeout (glibc's 5 s default
   * would let a pod's own 5 s timer fire before we tried a second server); the
   * exchange may take all its tries, up to HOST_BUDGET_CAP_MS, and at least --timeout.
   */
  #hostRoute(name: string, servers: readonly ServerAddress[], attemptMs: number | undefined, attempts: number, rotate: boolean): Route {
    const c = this.config;
    const attemptTimeoutMs = Math.min(attemptMs ?? c.timeoutMs, c.timeoutMs);
    const upstream = new HostResolvers({ servers, attemptTimeoutMs, attempts, rotate, clock: this.#clock, logger: this.#logger, name });
    this.#upstreams.push(upstream);
    const budget = Math.max(c.timeoutMs, Math.min(attemptTimeoutMs * attempts * servers.length, HOST_BUDGET_CAP_MS));
    return { upstream, timeoutMs: budget };
  }

  #hostServers(): { servers: ServerAddress[]; source: string; timeoutMs: number | undefined; attempts: number | undefined; rotate: boolean } {
    const c = this.config;
    if (c.upstreamNameservers.length > 0) {
      return { servers: [...c.upstreamNameservers], source: '--upstream-nameservers', timeoutMs: undefined, attempts: undefined, rotate: false };
    }
    let text: string;
    try {
      text = this.#readFile(c.resolvConf);
    } catch (err) {
      throw new StartupError(`--resolv-conf ${c.resolvConf}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    const rc = parseResolvConf(text);
    for (const w of rc.warnings) this.#logger.warn('resolv.conf', { file: c.resolvConf, warning: w });
    if (rc.nameservers.length === 0) {
      throw new StartupError(`--resolv-conf ${c.resolvConf}: no nameserver lines; give --upstream-nameservers instead`);
    }
    return { servers: rc.nameservers, source: c.resolvConf, timeoutMs: rc.options.timeoutMs, attempts: rc.options.attempts, rotate: rc.options.rotate };
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
