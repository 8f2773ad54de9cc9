/**
 * What the agent derives from a Config, at start and again on every reload:
 * which settings only a restart applies, the host resolvers checked against
 * forwarding loops, the cache policy and client limiter, and the node-setup
 * options. Pure functions of the config (and what they are handed), kept
 * apart from agent.ts so that start and reload share them without the
 * Agent's state.
 */
import { networkInterfaces } from 'node:os';
import { formatHostPort, isLoopback, isWildcard, reaches } from './addr.js';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import type { NodeSetupOptions } from './iface/node-setup.js';
import { otherListenersOn } from './iface/other-listeners.js';
import type { setupCounterSchema } from './iface/setup-counters.js';
import { StartupError } from './lifecycle.js';
import type { Logger } from './log.js';
import { ClientMissLimiter, clientInflightCap } from './server/client-limit.js';
import { defineCounters, type Counters } from './stats/counters.js';
import { loadHostServers, type HostServers } from './upstream/host-route.js';
import type { ServerAddress } from './upstream/types.js';

/** The agent's own counters: its configuration reloads. */
export const AGENT_COUNTERS = defineCounters({
  reloads: { name: 'nodelocal_config_reloads_total', labels: { result: 'applied' }, help: 'Configuration reloads, by result.' },
  reloadFailures: { name: 'nodelocal_config_reloads_total', labels: { result: 'refused' }, help: 'Configuration reloads, by result.' },
  // A state, not only a count: an alert on the count's increase() would resolve once its window passed, unfixed.
  reloadRefused: {
    name: 'nodelocal_config_reload_refused', type: 'gauge',
    help: 'Whether the last configuration reload was refused (1: the agent serves an older configuration than its files hold, and a restart may fail on them) or applied (0, also before any reload).',
  },
});

/** Settings read once at start: a reload that changes them is told they need a restart. */
const RESTART_ONLY: readonly (keyof Config)[] = [
  'listen', 'clusterDomain', 'cacheSize', 'negativeCacheSize', 'cacheMemoryBytes', 'tcpIdleTimeoutMs', 'tcpReadTimeoutMs', 'maxTcpConnections',
  'maxTcpPerClient', 'maxTcpQueries', 'kube', 'kubeconfig', 'setupInterface', 'interfaceName', 'interfaceKind', 'firewall', 'failOpenTo', 'skipTeardown', 'syncIntervalMs', 'healthPort',
  'metricsListen', 'cacheSnapshot', 'cacheSnapshotIntervalMs', 'metricsByNamespace', 'metricsNamespacesMax', 'nodeName', 'io', 'workers',
  'mallocTrimIntervalMs', 'exeTrimIntervalMs', 'reusePort', 'maxQueryAgeMs',
];

export interface ReloadOutcome {
  readonly applied: boolean;
  /** Why it was refused (the old config keeps serving). */
  readonly error: string | null;
  /** Changed settings that take effect only after a restart. */
  readonly restartNeeded: readonly string[];
}

/** `next` with the RESTART_ONLY settings kept at their running values, and the names of those that changed. */
export function keepRestartOnly(old: Config, next: Config): { merged: Config; restartNeeded: string[] } {
  const restartNeeded = RESTART_ONLY.filter((k) => JSON.stringify(old[k]) !== JSON.stringify(next[k])).map(String);
  const kept: Partial<Record<keyof Config, unknown>> = {};
  for (const k of RESTART_ONLY) kept[k] = old[k];
  return { merged: { ...next, ...kept } as Config, restartNeeded };
}

/** The files `c` comes from, for the watcher. */
export function configSourcePaths(c: Config): string[] {
  const paths: string[] = [];
  if (c.configFile !== '') paths.push(c.configFile);
  if (c.kubeDnsConfigDir !== '') paths.push(`${c.kubeDnsConfigDir}/stubDomains`, `${c.kubeDnsConfigDir}/upstreamNameservers`);
  paths.push(c.resolvConf);
  if (c.tlsCaFile !== '') paths.push(c.tlsCaFile);
  return paths;
}

const TLS_ONLY: HostServers = { servers: [], source: '--upstream-nameservers (tls)', attemptMs: undefined, attempts: 1, rotate: false, warnings: [] };

/** Host resolvers for `c`, checked against forwarding loops. Throws Error with an operator's message. */
export function hostServers(c: Config, readFile: (path: string) => string, logger: Logger): HostServers {
  // DNS over TLS replaces the resolv.conf servers: that file need not exist or list anything then.
  const host = c.upstreamTls.length > 0 ? TLS_ONLY : loadHostServers(c.upstreamNameservers, c.resolvConf, readFile);
  for (const w of host.warnings) logger.warn('resolv.conf', { file: host.source, warning: w });
  guardLoops(c.listen, [
    ...(c.clusterUpstream !== null ? [{ what: '--upstream-addr', addr: c.clusterUpstream }] : []),
    ...host.servers.map((addr) => ({ what: host.source, addr })),
    ...c.upstreamTls.map((addr) => ({ what: '--upstream-nameservers', addr })),
    ...c.stubDomains.flatMap((d) => d.servers.map((addr) => ({ what: `stub domain ${d.zone}`, addr }))),
  ]);
  return host;
}

/** Forwarding to ourselves would loop each query until it times out: refuse. */
function guardLoops(listen: readonly ServerAddress[], upstreams: readonly { what: string; addr: ServerAddress }[]): void {
  // A wildcard listen receives on every address of the host: a resolv.conf naming the node's own IP loops too.
  const local = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((i) => i.address));
  for (const { what, addr } of upstreams) {
    for (const l of listen) {
      if (l.port === addr.port && reaches(addr.host, l.host, local)) {
        throw new StartupError(`${what}: upstream ${formatHostPort(addr)} is one of our own listen addresses (${formatHostPort(l)}); forwarding there would loop`);
      }
    }
  }
}

/** The limit `c` asks for (null: off). On a reload HitPath.configure takes its settings and keeps the running limiter's buckets. */
export function clientLimiter(c: Config): ClientMissLimiter | null {
  return c.clientMissRate > 0 ? new ClientMissLimiter(c.clientMissRate, c.clientMissBurst, clientInflightCap(c.maxConcurrent)) : null;
}

/** The cache's sizes (fixed at start) and its policy (reloadable). */
export function cacheOptions(c: Config): { positiveCapacity: number; negativeCapacity: number; maxBytes: number } & ReturnType<typeof cachePolicy> {
  return { positiveCapacity: c.cacheSize, negativeCapacity: c.negativeCacheSize, maxBytes: c.cacheMemoryBytes, ...cachePolicy(c) };
}

export function cachePolicy(c: Config): { successTtl: number; denialTtl: number; minHits: number; percent: number; staleMs: number } {
  return { successTtl: c.successTtl, denialTtl: c.denialTtl, minHits: c.prefetchMinHits, percent: c.prefetchPercent, staleMs: c.serveStaleMs };
}

/** What node integration works on: the listen addresses that are not loopback (loopback needs no link and no rules). */
export function nodeSetupOptions(
  c: Config,
  o: { readonly clock: Clock; readonly logger: Logger; readonly counters: Counters<keyof typeof setupCounterSchema.slot> },
): NodeSetupOptions {
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
    clock: o.clock,
    logger: o.logger,
    counters: o.counters,
    // A new agent already listens on our address (an upgrade by surge): the link and rules are its now.
    // Only others' listeners count: ours may already be closed when the interface part asks.
    successor: () => c.reusePort && c.listen.some((l) => addresses.includes(l.host) && otherListenersOn(l) > 0),
  };
}
