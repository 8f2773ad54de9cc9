/**
 * The ops HTTP addresses (/metrics, /health and /ready) against the DNS listen
 * addresses. Both are bound with SO_REUSEPORT by this one process
 * (--reuse-port, the default), so the kernel lets an ops server bind a DNS
 * address:port and then spreads new TCP connections over both sockets:
 * DNS-over-TCP clients reach the HTTP server and scrapes the DNS listener,
 * with nothing logged. A wildcard takes every address of its port.
 */
import { isIP } from 'node:net';
import { canonicalIp, formatHostPort, isLoopback, isWildcard } from './addr.js';
import { ConfigError } from './config-options.js';
import { defaultOpsHost } from './ops/http.js';
import type { ServerAddress } from './upstream/types.js';

/** Throws a ConfigError naming both flags when an ops address shares a DNS listen address's TCP port, or the two ops servers one port. */
export function refuseOpsOnDnsPorts(listen: readonly ServerAddress[], metrics: ServerAddress | null, healthPort: number): void {
  const health = healthPort === 0 ? null : { host: defaultOpsHost(listen), port: healthPort };
  const ops: [string, ServerAddress | null][] = [
    ['--metrics-listen-address', metrics],
    ['--health-port', health],
  ];
  for (const [flag, a] of ops) {
    const clash = a === null ? undefined : listen.find((l) => overlaps(l, a));
    if (a === null || clash === undefined) continue;
    throw new ConfigError(
      `${flag} ${formatHostPort(a)} and --listen/--localip ${formatHostPort(clash)}: the same TCP port (both bound with SO_REUSEPORT, the kernel would hand DNS clients to the HTTP server and scrapes to the DNS listener); give the ops server another port`,
    );
  }
  // One address is one server for all three paths (ops/http.ts createOpsServers); two that overlap are two servers on one port.
  if (metrics === null || health === null || metrics.port !== health.port || metrics.host === health.host) return;
  if (covers(metrics.host, health.host) || covers(health.host, metrics.host)) {
    throw new ConfigError(
      `--metrics-listen-address ${formatHostPort(metrics)} and --health-port ${formatHostPort(health)}: one port under two addresses, one of them a wildcard (two HTTP servers: the more specific address takes its connections, so a path the other serves answers 404 there); give both one address or use two ports`,
    );
  }
}

/** A wildcard HTTP server takes `host`'s connections too: `::` is dual-stack (Node's default), `0.0.0.0` IPv4 only. */
function covers(wildcard: string, host: string): boolean {
  return wildcard === '::' || (wildcard === '0.0.0.0' && isIP(host) === 4);
}

/**
 * A DNS listen address and an ops address that would share connections: one
 * port, and one address, or a wildcard that takes the other's. A DNS
 * wildcard is of its own family (`::` is bound IPV6_V6ONLY: sys/reuseport.ts,
 * tcp-listener.ts), an ops wildcard as covers() says.
 */
function overlaps(dns: ServerAddress, ops: ServerAddress): boolean {
  if (dns.port !== ops.port) return false;
  if (isWildcard(dns.host) && isIP(dns.host) === isIP(ops.host)) return true;
  if (isWildcard(ops.host) && covers(ops.host, dns.host)) return true;
  return (canonicalIp(dns.host) ?? dns.host) === (canonicalIp(ops.host) ?? ops.host);
}

/**
 * The node-local listen addresses (neither loopback nor a wildcard: the ones
 * the link carries and the rules intercept) must share one port; interception
 * redirects one. A ConfigError naming the flags, before anything starts.
 */
export function refuseSeveralNodePorts(listen: readonly ServerAddress[]): void {
  const node = listen.filter((l) => !isLoopback(l.host) && !isWildcard(l.host));
  const ports = [...new Set(node.map((l) => l.port))];
  if (ports.length > 1) {
    throw new ConfigError(`--listen/--localip ${node.map(formatHostPort).join(', ')}: the non-loopback listen addresses use several ports (${ports.join(', ')}); interception needs one`);
  }
}
