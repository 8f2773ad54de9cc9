/**
 * Config -> routes: which upstream answers which zone, with which deadline,
 * and which route has the cluster view as its local answerer. Built at start
 * and again on every reload; a reload swaps the whole router in one
 * assignment, and upstreams no longer used finish what they have in flight
 * before they close, so no query is lost.
 *
 * The cluster pool (and its health and probe) survives a reload whose cluster
 * settings did not change: its health state and warm connections are worth
 * keeping.
 */
import { formatHostPort } from './addr.js';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import { questionMessage, upstreamQuery } from './dns/build.js';
import { QType } from './dns/constants.js';
import { nameToWire } from './dns/name.js';
import { parseQuery } from './dns/query.js';
import { ViewAnswerer } from './kube/local-answerer.js';
import type { ClusterView } from './kube/view.js';
import type { Logger } from './log.js';
import type { Route } from './server/route.js';
import type { Counters } from './stats/counters.js';
import { HostResolvers, type HostResolversCounter } from './upstream/host-resolvers.js';
import { DEFAULT_ATTEMPTS, hostBudget, type HostServers } from './upstream/host-route.js';
import type { ForwardDurations } from './upstream/forward-durations.js';
import { HealthProbe, type ProbeCounter } from './upstream/probe.js';
import { ZoneRouter, type ZoneRoute } from './upstream/router.js';
import { TcpPool, type TcpPoolCounter } from './upstream/tcp-pool.js';
import type { ServerAddress, Upstream } from './upstream/types.js';

/** Reverse zones always belong to the cluster DNS: it owns the PTR records of Service and Pod IPs. */
const REVERSE_ZONES = ['in-addr.arpa', 'ip6.arpa'];

export interface ClusterUpstream {
  readonly pool: TcpPool;
  readonly probe: HealthProbe | null;
  /** The settings it was built from: equal settings on reload keep it. */
  readonly settings: string;
}

export interface Routing {
  readonly router: ZoneRouter<Route>;
  /** Every upstream the router uses, the cluster pool included. */
  readonly upstreams: readonly Upstream[];
  readonly cluster: ClusterUpstream | null;
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
}

export interface UpstreamCounterBlocks {
  pool(name: string): Counters<TcpPoolCounter>;
  host(name: string): Counters<HostResolversCounter>;
  /** coredns_forward_request_duration_seconds of one server, by "IP:port" (CoreDNS's `to`). */
  durations(to: string): ForwardDurations;
  /** coredns_forward_healthcheck_failures_total of one server, by "IP:port". */
  probe(to: string): Counters<ProbeCounter>;
}

export function buildRouting(c: Config, host: HostServers, deps: RoutingDeps, previous: ClusterUpstream | null): Routing {
  const upstreams: Upstream[] = [];
  const hostRoute = (name: string, servers: readonly ServerAddress[], attemptMs: number | undefined, attempts: number, rotate: boolean): Route => {
    const { attemptTimeoutMs, budgetMs } = hostBudget(c.timeoutMs, attemptMs, attempts, servers.length);
    const upstream = new HostResolvers({
      servers, attemptTimeoutMs, attempts, rotate, maxInFlight: c.hostMaxInflight, clock: deps.clock, logger: deps.logger, name, counters: deps.counters.host(name),
      durations: servers.map((s) => deps.counters.durations(formatHostPort(s))),
    });
    upstreams.push(upstream);
    return { upstream, timeoutMs: budgetMs, local: null };
  };

  const external = hostRoute('host-resolvers', host.servers, host.attemptMs, host.attempts, host.rotate);
  const routes: ZoneRoute<Route>[] = [];
  let cluster: ClusterUpstream | null = null;
  if (c.clusterUpstream !== null) {
    const settings = JSON.stringify([c.clusterUpstream, c.upstreamConnections, c.upstreamMaxInFlight, c.upstreamRotateQueries, c.upstreamRotateAfterMs, c.clusterDomain]);
    cluster = previous !== null && previous.settings === settings ? previous : newCluster(c, deps, settings);
    upstreams.push(cluster.pool);
    const local =
      deps.view === null ? null : new ViewAnswerer({ view: deps.view, clock: deps.clock, zone: c.clusterDomain, ttl: c.localTtl, maxSilenceMs: c.maxApiSilenceMs });
    const route: Route = { upstream: cluster.pool, timeoutMs: c.timeoutMs, local };
    for (const zone of [c.clusterDomain, ...REVERSE_ZONES]) routes.push({ zone, target: route });
  }
  for (const stub of c.stubDomains) {
    routes.push({ zone: stub.zone, target: hostRoute(`stub:${stub.zone}`, stub.servers, undefined, DEFAULT_ATTEMPTS, false) });
  }
  return { router: new ZoneRouter(routes, external), upstreams, cluster };
}

function newCluster(c: Config, deps: RoutingDeps, settings: string): ClusterUpstream {
  const server = c.clusterUpstream!;
  const pool = new TcpPool({
    server,
    connections: c.upstreamConnections,
    maxInFlightPerConnection: c.upstreamMaxInFlight,
    rotateAfterQueries: c.upstreamRotateQueries,
    rotateAfterMs: c.upstreamRotateAfterMs,
    clock: deps.clock,
    logger: deps.logger,
    counters: deps.counters.pool(`tcp://${formatHostPort(server)}`),
    durations: deps.counters.durations(formatHostPort(server)),
  });
  // Probing matters only when there is a view to answer from meanwhile; without one, pods' own queries probe.
  const probe = deps.view === null ? null : new HealthProbe(pool, deps.clock, probeQuery(c.clusterDomain), deps.counters.probe(formatHostPort(server)));
  return { pool, probe, settings };
}

/** What proves the cluster DNS works: the API server's own Service, which every cluster has. */
function probeQuery(zone: string): Buffer {
  return upstreamQuery(parseQuery(questionMessage(nameToWire(`kubernetes.default.svc.${zone}`), QType.A)));
}
