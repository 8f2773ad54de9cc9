/**
 * Single settings whose value needs more than its kind's parsing (config.ts
 * reads the kinds): the upstream nameserver list, the ops address, the log
 * sample share, paths and names, each refused with a ConfigError naming its
 * flag and value.
 */
import { refuseDuplicateServers, type Warn } from './config-sources.js';
import { ConfigError } from './config-options.js';
import { parseHostPort, portLikeLastGroup } from './addr.js';
import type { ServerAddress } from './upstream/types.js';
import { isTlsAddress, parseTlsServer, TLS_SCHEME, type TlsServer } from './upstream/tls-address.js';

/**
 * Plain servers or DNS-over-TLS ones, never both: a list that mixed them would
 * send some external names in clear text while the operator believes them
 * encrypted (CoreDNS's forward takes one protocol per block for the same reason).
 */
export function upstreamNameservers(items: readonly string[], plain: (s: string) => ServerAddress, warn: Warn): { upstreamNameservers: ServerAddress[]; upstreamTls: TlsServer[] } {
  const tls = items.filter(isTlsAddress);
  if (tls.length === 0) {
    const servers = items.map(plain);
    refuseDuplicateServers('--upstream-nameservers', servers, items);
    return { upstreamNameservers: servers, upstreamTls: [] };
  }
  if (tls.length < items.length) {
    const other = items.find((s) => !isTlsAddress(s))!;
    throw new ConfigError(`--upstream-nameservers: "${tls[0]}" and "${other.trim()}": all plain or all tls://, not both (a mixed list would send some names in clear text)`);
  }
  const servers = tls.map((s) => {
    const t = parseTlsServer(s);
    if (typeof t === 'string') throw new ConfigError(`--upstream-nameservers ${t}`);
    const w = portLikeLastGroup(s.trim().slice(TLS_SCHEME.length).split('@')[0]!, t);
    if (w !== null) warn(`--upstream-nameservers ${w}`);
    return t;
  });
  refuseDuplicateServers('--upstream-nameservers', servers, tls);
  return { upstreamNameservers: [], upstreamTls: servers };
}

export function snapshotPath(text: string | undefined): string {
  if (text === undefined || text === '') return '';
  if (!text.startsWith('/')) throw new ConfigError(`--cache-snapshot "${text}": must be an absolute path`);
  return text;
}

/** --metrics-listen-address: given, "off", or the first listen host at node-cache's 9253 (loopback for a wildcard). */
export function metricsListen(text: string | undefined, listen: readonly ServerAddress[], warn: Warn): ServerAddress | null {
  if (text === 'off') return null;
  if (text !== undefined) {
    const a = parseHostPort(text, 9253);
    if (typeof a === 'string') throw new ConfigError(`--metrics-listen-address ${a}`);
    const w = portLikeLastGroup(text, a);
    if (w !== null) warn(`--metrics-listen-address ${w}`);
    return a;
  }
  const first = listen[0]?.host ?? '127.0.0.1';
  const host = first === '0.0.0.0' ? '127.0.0.1' : first === '::' ? '::1' : first;
  return { host, port: 9253 };
}

/**
 * A share (0..1) as "one query in N", N fractional (0.7: one in 1.43): a
 * countdown that carries its remainder (hit-path.ts) logs exactly that share,
 * and is cheaper on the hot path than a random draw per query.
 */
export function sampleEvery(text: string): number {
  const share = Number(text);
  // Decimal only (YAML writes a small share as 1e-7): Number() also reads 0x1, 0b1 and 0o1.
  if (!/^(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(text.trim()) || !Number.isFinite(share) || share < 0 || share > 1) throw new ConfigError(`--query-log-sample "${text}": expected a share between 0 and 1, such as 0.01`);
  return share === 0 ? 0 : 1 / share;
}

export function formatMs(ms: number): string {
  if (ms === Infinity) return 'unbounded';
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/** Kubernetes' IsDNS1123Subdomain (node names are such). */
export function dns1123Subdomain(name: string): boolean {
  return name.length <= 253 && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/.test(name);
}
