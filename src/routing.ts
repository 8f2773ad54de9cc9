/**
 * Config -> routes: which upstream answers which zone, with which deadline,
 * and which route has the cluster view as its local answerer. Built at start
 * and again on every reload; a reload swaps the whole router in one
 * assignment, and upstreams no longer used finish what they have in flight
 * before they close, so no query is lost.
 *
 * The cluster pool (and its health and probe) survives a reload whose cluster
 * settings did not change: its health state and warm connections are worth
 * keeping. So do the DNS-over-TLS upstreams (their handshakes and sessions),
 * and each route's host resolvers (their health, and which server went
 * silent and is asked last).
 */
import { readFileSync } from 'node:fs';
import { dialableHost, formatHostPort } from './addr.js';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import { REVERSE_ZONES } from './config-types.js';
import { QType } from './dns/constants.js';
import { parseQuery } from './dns/query.js';
import { ViewAnswerer } from './kube/local-answerer.js';
import type { ClusterView } from './kube/view.js';
import type { Logger } from './log.js';
import type { Route } from './server/route.js';
import type { Counters } from './stats/counters.js';
import { HostResolvers, type HostResolversCounter } from './upstream/host-resolvers.js';
import { DEFAULT_ATTEMPTS, hostBudget, type HostServers } from './upstream/host-route.js';
import type { ForwardDurations } from './upstream/forward-durations.js';
import { HealthProbe, probeQuery, type ProbeCounter } from './upstream/probe.js';
import { ZoneRouter, type ZoneRoute } from './upstream/router.js';
import { TcpPool } from './upstream/tcp-pool.js';
import type { TcpPoolCounter } from './upstream/tcp-pool-counters.js';
import { loadCaFile } from './upstream/tls-connect.js';
import { TlsResolvers } from './upstream/tls-resolvers.js';
import type { ServerAddress, Upstream } from './upstream/types.js';


export interface ClusterUpstream {
  readonly pool: TcpPool;
  readonly probe: HealthProbe | null;
  /** The settings it was built from: equal settings on reload keep it. */
  readonly settings: string;
  readonly series: UpstreamSeries;
}

export interface Routing {
  readonly router: ZoneRouter<Route>;
  /** Every upstream the router uses, the cluster pool included. */
  readonly upstreams: readonly Upstream[];
  readonly cluster: ClusterUpstream | null;
  /** The DNS-over-TLS upstreams for external names; null when they go to the host resolvers. */
  readonly tls: TlsUpstream | null;
  /** Zones whose route has a local answerer (the cluster view): at the upstream side's limit those are answered locally, not refused. */
  readonly localZones: readonly string[];
  /** The host resolvers' routes by name: equal settings on reload keep them. */
  readonly hosts: ReadonlyMap<string, HostRoute>;
  /** The per-upstream series its upstreams publish: a reload drops the others (AgentMetrics.retain). */
  readonly series: UpstreamSeries;
}

/** The host resolvers of one route, by name ("host-resolvers", "stub:ZONE"), and the settings they were built from. */
interface HostRoute {
  readonly route: Route;
  readonly settings: string;
  readonly series: UpstreamSeries;
}

export interface TlsUpstream {
  readonly upstream: TlsResolvers;
  readonly route: Route;
  /** The settings and CA certificates it was built from: equal ones on reload keep it. */
  readonly settings: string;
  readonly series: UpstreamSeries;
}

export interface RoutingDeps {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly view: ClusterView | null;
  /**
   * The counter block of the upstream with this name: the same block across
   * reloads, so a rebuilt upstream's counters never go down on a scrape.
   */
  readonly counters: UpstreamCounterBlocks;
  /** Reads --tls-ca-file (default: the file system). */
  readonly readFile?: (path: string) => string;
}

export interface UpstreamCounterBlocks {
  pool(name: string): Counters<TcpPoolCounter>;
  host(name: string): Counters<HostResolversCounter>;
  /** coredns_forward_request_duration_seconds of one server, by "IP:port" (CoreDNS's `to`). */
  durations(to: string): ForwardDurations;
  /** coredns_forward_healthcheck_failures_total of one server, by "IP:port"; of a host route (probed as a whole), by its name. */
  probe(to: string): Counters<ProbeCounter>;
}

/** The names of the blocks an upstream was handed, by UpstreamCounterBlocks method: the series it publishes. */
export type UpstreamSeries = { readonly [K in keyof UpstreamCounterBlocks]: Set<string> };

function noSeries(): UpstreamSeries {
  return { pool: new Set(), host: new Set(), durations: new Set(), probe: new Set() };
}

/** `blocks`, noting each name asked for in `into`: every block is asked for while its upstream is built. */
function noting(blocks: UpstreamCounterBlocks, into: UpstreamSeries): UpstreamCounterBlocks {
  return {
    pool: (name) => (into.pool.add(name), blocks.pool(name)),
    host: (name) => (into.host.add(name), blocks.host(name)),
    durations: (to) => (into.durations.add(to), blocks.durations(to)),
    probe: (to) => (into.probe.add(to), blocks.probe(to)),
  };
}

function allSeries(of: readonly UpstreamSeries[]): UpstreamSeries {
  const all = noSeries();
  for (const s of of) for (const k of Object.keys(all) as (keyof UpstreamSeries)[]) for (const name of s[k]) all[k].add(name);
  return all;
}

/** `previous`: the routing in use, whose upstreams are kept where their settings did not change (null at start). */
export function buildRouting(c: Config, host: HostServers, deps: RoutingDeps, previous: Routing | null): Routing {
  const upstreams: Upstream[] = [];
  const hosts = new Map<string, HostRoute>();
  /** `probe`: what proves the servers answer again while the route is failing. */
  const hostRoute = (name: string, servers: readonly ServerAddress[], attemptMs: number | undefined, attempts: number, rotate: boolean, probe: Buffer): Route => {
    const { attemptTimeoutMs, budgetMs } = hostBudget(c.timeoutMs, attemptMs, attempts, servers.length);
    // The addresses as dialled too: an interface index maps to another name once interfaces change (addr.ts).
    const settings = JSON.stringify([servers, servers.map((s) => dialableHost(s.host)), attemptTimeoutMs, budgetMs, attempts, rotate, c.hostMaxInflight]);
    // Names are unique: the config refuses a stub zone given twice.
    const kept = previous?.hosts.get(name);
    if (kept !== undefined && kept.settings === settings) {
      upstreams.push(kept.route.upstream);
      hosts.set(name, kept);
      return kept.route;
    }
    const series = noSeries();
    const counters = noting(deps.counters, series);
    const upstream = new HostResolvers({
      servers, attemptTimeoutMs, attempts, rotate, maxInFlight: c.hostMaxInflight, clock: deps.clock, logger: deps.logger, name, counters: counters.host(name),
      durations: servers.map((s) => counters.durations(formatHostPort(s))),
      // Else a failing route rarely asked (a stub domain) stays failing while idle after its servers recover.
      probeQuery: probe,
      probeCounters: counters.probe(name),
    });
    upstreams.push(upstream);
    const route: Route = { upstream, timeoutMs: budgetMs, local: null };
    hosts.set(name, { route, settings, series });
    return route;
  };

  const tls = c.upstreamTls.length > 0 ? tlsUpstream(c, deps, previous?.tls ?? null) : null;
  if (tls !== null) upstreams.push(tls.upstream, ...tls.upstream.servers.map((s) => s.pool));
  const external = tls !== null ? tls.route : hostRoute('host-resolvers', host.servers, host.attemptMs, host.attempts, host.rotate, probeQuery('.', QType.NS));
  const routes: ZoneRoute<Route>[] = [];
  let cluster: ClusterUpstream | null = null;
  if (c.clusterUpstream !== null) {
    const settings = JSON.stringify([c.clusterUpstream, c.upstreamConnections, c.upstreamMaxInFlight, c.upstreamRotateQueries, c.upstreamRotateAfterMs, c.clusterDomain]);
    const before = previous?.cluster ?? null;
    cluster = before !== null && before.settings === settings ? before : newCluster(c, deps, settings);
    upstreams.push(cluster.pool);
    const local =
      deps.view === null
        ? null
        : new ViewAnswerer({
          view: deps.view, clock: deps.clock, zone: c.clusterDomain, ttl: c.localTtl, maxSilenceMs: c.maxApiSilenceMs, dnsServiceIP: c.clusterUpstream.host,
        });
    const route: Route = { upstream: cluster.pool, timeoutMs: c.timeoutMs, local };
    for (const zone of [c.clusterDomain, ...REVERSE_ZONES]) routes.push({ zone, target: route });
  }
  for (const stub of c.stubDomains) {
    routes.push({ zone: stub.zone, target: hostRoute(`stub:${stub.zone}`, stub.servers, undefined, DEFAULT_ATTEMPTS, false, probeQuery(stub.zone, QType.SOA)) });
  }
  // As the router sees them: a later route for the same zone (a stub domain) replaces an earlier one.
  const byZone = new Map(routes.map((r) => [r.zone.toLowerCase().replace(/\.$/, ''), r]));
  const localZones = [...byZone.values()].filter((r) => r.target.local !== null).map((r) => r.zone);
  const series = allSeries([...(tls !== null ? [tls.series] : []), ...(cluster !== null ? [cluster.series] : []), ...[...hosts.values()].map((h) => h.series)]);
  return { router: new ZoneRouter(routes, external), upstreams, cluster, tls, localZones, hosts, series };
}

/**
 * External names over DNS over TLS (--upstream-nameservers tls://...), in
 * place of the host resolvers: each server tried once in order, a try waiting
 * at most --timeout while another server is left (the host resolvers' budget
 * arithmetic with one round: a persistent connection does not lose queries the
 * way UDP does, so asking the same server twice buys nothing).
 */
function tlsUpstream(c: Config, deps: RoutingDeps, previous: TlsUpstream | null): TlsUpstream {
  const { attemptTimeoutMs, budgetMs } = hostBudget(c.timeoutMs, undefined, 1, c.upstreamTls.length);
  // Read on every build: a rotated CA file is a changed setting.
  const ca = c.tlsCaFile === '' ? undefined : loadCaFile(c.tlsCaFile, deps.readFile ?? ((p) => readFileSync(p, 'utf8')));
  const settings = JSON.stringify([c.upstreamTls, ca ?? null, c.timeoutMs, c.upstreamConnections, c.upstreamMaxInFlight, c.upstreamRotateQueries, c.upstreamRotateAfterMs]);
  if (previous !== null && previous.settings === settings) return previous;
  const series = noSeries();
  const blocks = noting(deps.counters, series);
  const upstream = new TlsResolvers({
    servers: c.upstreamTls,
    ...(ca !== undefined ? { ca } : {}),
    attemptTimeoutMs,
    connections: c.upstreamConnections,
    maxInFlightPerConnection: c.upstreamMaxInFlight,
    rotateAfterQueries: c.upstreamRotateQueries,
    rotateAfterMs: c.upstreamRotateAfterMs,
    // A TCP connect and a handshake to a resolver maybe far away: as long as a try may wait.
    connectTimeoutMs: attemptTimeoutMs,
    counters: (name) => blocks.pool(name),
    durations: (server) => blocks.durations(formatHostPort(server)),
    probeCounters: (server) => blocks.probe(formatHostPort(server)),
    clock: deps.clock,
    logger: deps.logger,
  });
  // The servers' pools are listed among the upstreams too: their health is each server's (nodelocal_upstream_healthy{to="tls://..."}).
  return { upstream, route: { upstream, timeoutMs: budgetMs, local: null }, settings, series };
}

function newCluster(c: Config, deps: RoutingDeps, settings: string): ClusterUpstream {
  const server = c.clusterUpstream!;
  const series = noSeries();
  const counters = noting(deps.counters, series);
  const pool = new TcpPool({
    server,
    connections: c.upstreamConnections,
    maxInFlightPerConnection: c.upstreamMaxInFlight,
    rotateAfterQueries: c.upstreamRotateQueries,
    rotateAfterMs: c.upstreamRotateAfterMs,
    clock: deps.clock,
    logger: deps.logger,
    counters: counters.pool(`tcp://${formatHostPort(server)}`),
    durations: counters.durations(formatHostPort(server)),
    // Reverse zones share the pool: there the cluster DNS passes on its own upstream's failures (outside addresses).
    servfailCounts: inZone(c.clusterDomain),
  });
  // Probing matters only when there is a view to answer from meanwhile; without one, pods' own queries probe.
  // What proves the cluster DNS works: the API server's own Service, which every cluster has.
  const query = probeQuery(`kubernetes.default.svc.${c.clusterDomain}`, QType.A);
  const probe = deps.view === null ? null : new HealthProbe(pool, deps.clock, query, counters.probe(formatHostPort(server)));
  return { pool, probe, settings, series };
}


/** Whether an upstream query's question is `zone` or a name under it. */
function inZone(zone: string): (query: Buffer) => boolean {
  const router = new ZoneRouter([{ zone, target: true }], false);
  return (query) => router.route(parseQuery(query).key);
}
