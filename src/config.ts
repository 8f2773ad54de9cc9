/**
 * Configuration: flags and an optional config file (YAML or JSON) turned into
 * one validated, typed Config. Every default lives in OPTIONS below, with its
 * reason. Flags win over the file. A bad value is a ConfigError naming the
 * flag and the value (main.ts exits 2 with it).
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { formatHostPort, parseHostPort } from './addr.js';
import type { LogLevel } from './log.js';
import { nameToWire } from './dns/name.js';
import type { ServerAddress } from './upstream/types.js';
import { isTlsAddress, parseTlsServer, type TlsServer } from './upstream/tls-address.js';
import type { FirewallChoice } from './iface/node-setup.js';

const FIREWALL_CHOICES: readonly FirewallChoice[] = ['auto', 'iptables', 'iptables-legacy', 'iptables-nft', 'nftables', 'none'];

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export interface StubDomain {
  readonly zone: string;
  readonly servers: readonly ServerAddress[];
}

export interface Config {
  /** --config, '' when none: watched for reloads. */
  readonly configFile: string;
  /** The kube-dns ConfigMap directory, '' when none: watched for reloads. */
  readonly kubeDnsConfigDir: string;
  readonly listen: readonly ServerAddress[];
  readonly clusterDomain: string;
  /** The cluster DNS (kube-dns) address; null = local mode, every name goes to the host resolvers. */
  readonly clusterUpstream: ServerAddress | null;
  /** Where clusterUpstream came from, for the start-up log. */
  readonly clusterUpstreamSource: string;
  readonly resolvConf: string;
  /** Overrides the resolv.conf nameservers when not empty (kube-dns `upstreamNameservers`). */
  readonly upstreamNameservers: readonly ServerAddress[];
  /** --upstream-nameservers given as tls://: external names go over DNS over TLS to these (then upstreamNameservers is empty). */
  readonly upstreamTls: readonly TlsServer[];
  /** PEM CA file that replaces the default trust store for upstreamTls; '' = Node's bundled Mozilla roots. */
  readonly tlsCaFile: string;
  readonly stubDomains: readonly StubDomain[];
  readonly timeoutMs: number;
  readonly upstreamConnections: number;
  readonly upstreamMaxInFlight: number;
  readonly upstreamRotateQueries: number;
  readonly upstreamRotateAfterMs: number;
  readonly cacheSize: number;
  readonly negativeCacheSize: number;
  /** Byte budget of the cache (answer bytes plus per-entry overhead). */
  readonly cacheMemoryBytes: number;
  readonly successTtl: number;
  readonly denialTtl: number;
  readonly prefetchMinHits: number;
  /** How long past expiry a cached answer may still be given when its upstream fails; 0 = never. */
  readonly serveStaleMs: number;
  readonly prefetchPercent: number;
  readonly maxUdpSize: number;
  readonly tcpIdleTimeoutMs: number;
  readonly tcpReadTimeoutMs: number;
  readonly maxTcpConnections: number;
  readonly maxTcpQueries: number;
  /** New upstream questions a client (pod IP) may start per second; 0 = no limit. */
  readonly clientMissRate: number;
  readonly clientMissBurst: number;
  /** Upstream queries in flight across all upstreams (CoreDNS max_concurrent). */
  readonly maxConcurrent: number;
  /** Host-resolver (and stub-domain) exchanges in flight per upstream; beyond it SERVFAIL at once. */
  readonly hostMaxInflight: number;
  readonly shutdownGraceMs: number;
  /** Bind listeners with SO_REUSEPORT so a new agent can start beside this one and take over with no gap. */
  readonly reusePort: boolean;
  /** UDP backend: recvmmsg/sendmmsg worker threads (falls back to dgram where they cannot run), or dgram on the main thread. */
  readonly io: 'batched' | 'dgram';
  /** Batched workers drop a query older than this (kernel receive timestamp to recvmmsg); 0: never. */
  readonly maxQueryAgeMs: number;
  /** Batched UDP worker threads; 0 = the CPUs this process may use, capped (select.ts defaultWorkers). */
  readonly workers: number;
  /** Watch the Kubernetes API and answer cluster names from it when the cluster DNS fails. */
  readonly kube: boolean;
  /** --kubeconfig; '' = in-cluster config. */
  readonly kubeconfig: string;
  /** A cluster-zone forward unanswered this long is answered from the view; 0 = only on failure. */
  readonly fallbackAfterMs: number;
  /** API silence past which the view may no longer deny a name (SERVFAIL instead of NXDOMAIN). */
  readonly maxApiSilenceMs: number;
  readonly localNegative: boolean;
  /** TTL of records answered from the view, seconds. */
  readonly localTtl: number;
  /** Create the link and hold the (non-loopback) listen addresses on it. */
  readonly setupInterface: boolean;
  readonly interfaceName: string;
  readonly interfaceKind: string;
  readonly firewall: FirewallChoice;
  /** IPVS mode: DNAT pods' DNS to the link-local address here while the agent is down; null = no DNAT. */
  readonly failOpenTo: ServerAddress | null;
  readonly skipTeardown: boolean;
  readonly syncIntervalMs: number;
  readonly healthPort: number;
  /** Warm restart file; '' = off. */
  readonly cacheSnapshot: string;
  /** ms between snapshots written while serving (with cacheSnapshot); 0: only at shutdown. */
  readonly cacheSnapshotIntervalMs: number;
  /** --malloc-trim-interval: how often freed heap memory is handed back (ops/heap-trim.ts); 0 = never. */
  readonly mallocTrimIntervalMs: number;
  /** /metrics; null = off. */
  readonly metricsListen: ServerAddress | null;
  readonly logLevel: LogLevel;
  /** Log one query in this many (0: off), from --query-log-sample. */
  readonly queryLogEvery: number;
  /** nodelocal_dns_requests_by_namespace_total from a watch of this node's pods. */
  readonly metricsByNamespace: boolean;
  /** Namespaces with a series of their own; the rest count under "_other". */
  readonly metricsNamespacesMax: number;
  /** --node-name, else $NODE_NAME (the downward API's spec.nodeName); '' when neither. */
  readonly nodeName: string;
}

type Kind = 'string' | 'int' | 'duration' | 'bool' | 'list' | 'bytes';
interface OptionSpec {
  readonly flag: string;
  readonly kind: Kind;
  readonly def: string | undefined;
  readonly help: string;
  /** Bounds: whole numbers for int and bytes, milliseconds for duration. */
  readonly min?: number;
  readonly max?: number;
}

/** Every option, its default and why. Config-file keys are the flags in camelCase. */
export const OPTIONS: readonly OptionSpec[] = [
  { flag: 'config', kind: 'string', def: undefined, help: 'YAML or JSON file with the same settings (camelCase keys) plus stubDomains; flags win' },
  { flag: 'listen', kind: 'list', def: undefined, help: 'ADDR:PORT to serve UDP and TCP on; repeatable. Default 127.0.0.1:5353 when neither --listen nor --localip is given' },
  { flag: 'localip', kind: 'string', def: undefined, help: 'IP[,IP] to serve on, with --port (node-cache spelling); e.g. 169.254.20.10,10.96.0.10' },
  { flag: 'port', kind: 'int', def: '53', help: 'port for --localip addresses', min: 1, max: 65535 },
  { flag: 'cluster-domain', kind: 'string', def: 'cluster.local', help: 'cluster zone forwarded to the cluster DNS (with in-addr.arpa and ip6.arpa)' },
  { flag: 'upstream-addr', kind: 'string', def: undefined, help: 'cluster DNS (kube-dns) IP[:PORT], spoken to over TCP; default from the --upstream-svc Service environment' },
  { flag: 'upstream-svc', kind: 'string', def: 'kube-dns-upstream', help: 'Service whose <NAME>_SERVICE_HOST/_PORT environment gives the cluster DNS address' },
  { flag: 'require-cluster-dns', kind: 'bool', def: 'false', help: 'fail at start when no cluster DNS address is found (set in the DaemonSet) instead of running in local mode' },
  { flag: 'resolv-conf', kind: 'string', def: '/etc/resolv.conf', help: 'resolv.conf whose nameservers answer external names' },
  {
    flag: 'upstream-nameservers', kind: 'list', def: undefined,
    help: 'IP[:PORT][,...] for external names, instead of the resolv.conf nameservers (kube-dns upstreamNameservers); or tls://IP[:PORT][@NAME][,...] for DNS over TLS (port 853; the certificate must be valid for NAME, or for the IP without one); all plain or all tls://',
  },
  { flag: 'tls-ca-file', kind: 'string', def: undefined, help: 'PEM file of the CA certificates trusted for tls:// upstreams, instead of Node\'s bundled Mozilla roots (a private resolver\'s CA)' },
  { flag: 'stub-domain', kind: 'list', def: undefined, help: 'ZONE=IP[:PORT][,IP[:PORT]] forwards ZONE to those servers; repeatable (kube-dns stubDomains)' },
  { flag: 'timeout', kind: 'duration', def: '2s', min: 100, max: 30_000, help: 'deadline of a cluster DNS query, and the longest one host-resolver try may wait (resolv.conf timeout: may shorten it); then SERVFAIL, well inside a pod\'s own 5 s' },
  { flag: 'upstream-connections', kind: 'int', def: '2', help: 'persistent TCP connections to the cluster DNS (queries are pipelined on each)', min: 1, max: 64 },
  { flag: 'upstream-max-inflight', kind: 'int', def: '1000', help: 'queries in flight on one upstream TCP connection', min: 1, max: 65000 },
  { flag: 'upstream-rotate-queries', kind: 'int', def: '10000', help: 'replace an upstream connection after this many queries, so load spreads over kube-dns pods', min: 1 },
  { flag: 'upstream-rotate-after', kind: 'duration', def: '60s', min: 1000, max: 86_400_000, help: 'replace an upstream connection after this long, for the same reason' },
  { flag: 'cache-size', kind: 'int', def: '9984', help: 'positive cache capacity in entries (node-cache default)', min: 1 },
  { flag: 'negative-cache-size', kind: 'int', def: '9984', help: 'negative cache capacity in entries (node-cache default)', min: 1 },
  {
    flag: 'cache-memory', kind: 'bytes', def: '64Mi', min: 1 << 20, max: 64 * 2 ** 30,
    help: 'byte budget of the cache (answers plus about 1 KiB per entry; a quarter for negative answers); 64Mi holds the default 2 x 9984 entries of ordinary answers with room to spare, and bounds big ones',
  },
  { flag: 'success-ttl', kind: 'duration', def: '30s', max: 86_400_000, help: 'longest a positive answer is cached (node-cache `success`)' },
  { flag: 'denial-ttl', kind: 'duration', def: '5s', max: 86_400_000, help: 'longest a negative answer (NXDOMAIN, NODATA) is cached (node-cache `denial`)' },
  { flag: 'prefetch-min-hits', kind: 'int', def: '3', help: 'hits in its lifetime that make an entry worth refreshing before it expires; 0 disables prefetch', min: 0 },
  { flag: 'prefetch-percent', kind: 'int', def: '10', help: 'refresh popular entries in the last PERCENT of their TTL (at least 1 s)', min: 1, max: 99 },
  { flag: 'serve-stale', kind: 'duration', def: '1h', min: 0, max: 7 * 86_400_000, help: 'when an upstream fails, answer from an entry expired at most this long ago, with TTL 30 (RFC 8767); 0 turns it off' },
  { flag: 'max-udp-size', kind: 'int', def: '1232', help: 'largest UDP answer, whatever the client advertises (DNS Flag Day 2020); larger ones go TC=1', min: 512, max: 65535 },
  { flag: 'tcp-idle-timeout', kind: 'duration', def: '10s', min: 100, max: 3_600_000, help: 'close an idle client TCP connection after this long (RFC 7766 6.2.3)' },
  // A pod's query is a few hundred bytes in one write, so it arrives in one segment; a split one completes
  // within an RTT unless a segment is lost. 2 s covers one retransmission at TCP's initial 1 s RTO (RFC 6298)
  // and caps what a slow-loris connection can hold a slot for.
  {
    flag: 'tcp-read-timeout', kind: 'duration', def: '2s', min: 100, max: 60_000,
    help: 'a client TCP message must be complete this long after its first byte (slow-loris); a pod sends one segment, 2 s allows a retransmission',
  },
  { flag: 'max-tcp-connections', kind: 'int', def: '1024', help: 'client TCP connections at once; at the cap a newcomer closes the connection idle longest, and is refused only when all are busy', min: 1 },
  { flag: 'max-tcp-queries', kind: 'int', def: '128', help: 'queries in flight on one client TCP connection; reading pauses beyond it', min: 1 },
  {
    flag: 'max-concurrent', kind: 'int', def: '1000', min: 1, max: 1_000_000,
    help: 'upstream queries in flight across every upstream (CoreDNS forward max_concurrent, about 2 KB each); beyond it new misses get a stale answer or SERVFAIL at once, hits are still served',
  },
  {
    flag: 'client-miss-rate', kind: 'int', def: '0', min: 0, max: 1_000_000,
    help: 'opt-in: new upstream questions one client (pod IP) may start per second; over it the client gets stale or SERVFAIL and nothing is sent; hits are never limited. 0 = off; 200 is far above what a normal pod sends',
  },
  { flag: 'client-miss-burst', kind: 'int', def: '1000', min: 1, max: 1_000_000, help: 'misses a client may start at once under --client-miss-rate (a pod starting up resolves everything it knows)' },
  {
    flag: 'host-max-inflight', kind: 'int', def: '1000', min: 1, max: 100_000,
    help: 'external-name (and stub-domain) queries in flight per upstream, each holding at most 3 UDP sockets; beyond it SERVFAIL at once (CoreDNS forward max_concurrent)',
  },
  { flag: 'reuse-port', kind: 'bool', def: 'true', help: 'bind with SO_REUSEPORT (through koffi) so a new agent can start beside this one; on SIGTERM this one hands new queries to it and answers those already queued (upgrade with no gap); --no-reuse-port: an exclusive bind' },
  {
    flag: 'io', kind: 'string', def: 'batched',
    help: 'UDP backend: batched (worker threads answering cache hits with recvmmsg/sendmmsg, SO_REUSEPORT sockets through koffi; falls back to dgram with a warning where koffi or the calls are missing) or dgram (Node sockets on the main thread). TCP is served on the main thread either way',
  },
  { flag: 'workers', kind: 'int', def: '0', min: 0, max: 64, help: 'batched UDP worker threads, each with its own socket per listen address; 0 = the CPUs this process may use (affinity and cgroup quota), at most 4' },
  // 5 s: a pod's stub (glibc, musl, Go: resolv.conf's default timeout) has given up on a try that old; what is
  // dropped is work no client waits for (its retry, queued behind, is answered). Shorter would drop answers a
  // client still waits for, to save about a microsecond of a worker's time each.
  {
    flag: 'max-query-age', kind: 'duration', def: '5s', min: 0, max: 60_000,
    help: 'batched UDP: drop a query that waited longer than this in the kernel before a worker read it (its client has timed out; kernel receive timestamps, nodelocal_udp_queue_wait_seconds); 0 = never',
  },
  { flag: 'shutdown-grace', kind: 'duration', def: '5s', min: 0, max: 300_000, help: 'on SIGTERM, how long queries in flight may take to finish' },
  { flag: 'kube', kind: 'bool', def: 'true', help: 'watch Services, EndpointSlices and Namespaces and answer cluster names from them when the cluster DNS fails; --no-kube turns the watch and the fallback off' },
  { flag: 'kubeconfig', kind: 'string', def: undefined, help: 'kubeconfig file for the API watch outside a cluster (default: in-cluster service account; none found: the fallback is off)' },
  {
    flag: 'fallback-after', kind: 'duration', def: '1s', min: 0, max: 30_000,
    help: 'a cluster-zone query the cluster DNS has not answered after this long is answered from the view, so pods never wait out their own 5 s; 0 = only when it fails',
  },
  {
    flag: 'max-api-silence', kind: 'duration', def: '5m', min: 1000, max: 86_400_000,
    help: 'once the API server has been silent this long the view may no longer deny a name (SERVFAIL, never an invented NXDOMAIN); positive answers keep being served',
  },
  { flag: 'local-negative', kind: 'bool', def: 'false', help: 'answer cluster-zone names that certainly do not exist (ndots:5 search-path junk) from the synced view, without asking the cluster DNS. Off by default: a cluster DNS may carry custom records' },
  { flag: 'local-ttl', kind: 'duration', def: '5s', max: 3_600_000, help: 'TTL of records answered from the view (CoreDNS kubernetes plugin default)' },
  {
    flag: 'kube-dns-config-dir', kind: 'string', def: '/etc/kube-dns',
    help: 'the kube-dns ConfigMap mounted as a directory: stubDomains and upstreamNameservers (JSON), as node-cache reads them; watched and reloaded; missing = none',
  },
  { flag: 'setup-interface', kind: 'bool', def: 'true', help: 'create the link (--interface-name, kind dummy) and put the non-loopback listen addresses on it through netlink (node-cache -setupinterface); needs CAP_NET_ADMIN' },
  { flag: 'interface-name', kind: 'string', def: 'nodelocaldns', help: 'name of that link (node-cache -interfacename)' },
  { flag: 'interface-kind', kind: 'string', def: 'dummy', help: 'link kind to create; dummy in production (tests use bridge on kernels without the dummy driver)' },
  {
    flag: 'firewall', kind: 'string', def: 'auto',
    help: 'interception rules (raw NOTRACK + filter ACCEPT, as node-cache): auto (follow kube-proxy and kubelet, as iptables-wrappers does), iptables, iptables-legacy, iptables-nft, nftables, or none',
  },
  {
    flag: 'fail-open-to', kind: 'string', def: undefined,
    help: 'IPVS mode: the kube-dns ClusterIP[:PORT] (local to the node under IPVS) that pods\' DNS to the link-local address is DNATed to whenever no socket of ours is listening (agent killed); leave unset in iptables mode, where pods use the ClusterIP and kube-proxy takes over by itself',
  },
  { flag: 'skip-teardown', kind: 'bool', def: 'false', help: 'leave the link, addresses and rules in place on exit (node-cache -skipteardown)' },
  { flag: 'sync-interval', kind: 'duration', def: '60s', min: 1000, max: 3_600_000, help: 'how often the link, addresses and rules are checked and repaired (node-cache -syncinterval)' },
  { flag: 'health-port', kind: 'int', def: '8080', min: 0, max: 65535, help: 'port of /health and /ready on the first local IP (node-cache 8080); also NOTRACKed by the interception rules; 0 turns them off' },
  {
    flag: 'cache-snapshot', kind: 'string', def: undefined,
    help: 'file the cache is written to on shutdown and loaded from at start (warm restart: hits in the first second); an absolute path; off by default',
  },
  {
    flag: 'malloc-trim-interval', kind: 'duration', def: '10s', min: 0, max: 86_400_000,
    help: 'this often, when the malloc heaps hold over 4 MiB of freed memory, hand it back to the kernel (glibc malloc_trim, run off the main thread); 0 = never',
  },
  {
    flag: 'cache-snapshot-interval', kind: 'duration', def: '60s', min: 0, max: 86_400_000,
    help: 'with --cache-snapshot, also write it this often while serving (in slices, without stalling hits), so that an upgrade\'s new agent started beside this one loads a recent cache; 0 = only on shutdown',
  },
  {
    flag: 'metrics-listen-address', kind: 'string', def: undefined,
    help: 'IP:PORT of /metrics (node-cache flag); default the first local IP, port 9253 (never all interfaces unless given, e.g. 0.0.0.0:9253 so Prometheus on other nodes can scrape); "off" turns it off',
  },
  {
    flag: 'metrics-by-namespace', kind: 'bool', def: 'false',
    help: 'opt-in: count requests by the client pod\'s namespace (nodelocal_dns_requests_by_namespace_total) from a watch of this node\'s pods; needs --node-name and get/list/watch on pods (docs/install.md)',
  },
  // A node runs at most 110 pods by kubelet's default: 100 namespaces cover nearly every node, and bound the series a node can add.
  { flag: 'metrics-namespaces-max', kind: 'int', def: '100', min: 1, max: 10_000, help: 'namespaces with a series of their own under --metrics-by-namespace; the rest count as "_other"' },
  { flag: 'node-name', kind: 'string', def: undefined, help: 'this node\'s name, for the pod watch of --metrics-by-namespace (default $NODE_NAME, which the DaemonSet sets from spec.nodeName)' },
  { flag: 'log-level', kind: 'string', def: 'info', help: 'debug, info, warn or error' },
  { flag: 'query-log-sample', kind: 'string', def: '0', help: 'log this share of queries (0.01 = one in a hundred) with client, name, type, rcode, duration and where the answer came from (cache, upstream, view, stale, servfail); 0 = off' },
];

export const HELP_FLAGS = ['help', 'version'] as const;

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
}

/** Raw settings as strings (list options as arrays), before validation. */
type Raw = Map<string, string | string[]>;

/** "64Mi", "64MiB", "512Ki", "1Gi", or a bare number of bytes. */
export function parseBytes(text: string): number | undefined {
  const m = /^(\d+)\s*(Ki|Mi|Gi|KiB|MiB|GiB)?$/.exec(text.trim());
  if (m === null) return undefined;
  const unit = m[2] === undefined ? 1 : m[2].startsWith('K') ? 1024 : m[2].startsWith('M') ? 1024 ** 2 : 1024 ** 3;
  return Number(m[1]) * unit;
}

/** "500ms", "2s", "1m", "1m30s", or a bare number of seconds. */
export function parseDuration(text: string): number | undefined {
  const s = text.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Math.round(Number(s) * 1000);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(s); m !== null; m = re.exec(s)) {
    const unit = m[2] === 'ms' ? 1 : m[2] === 's' ? 1000 : m[2] === 'm' ? 60_000 : 3_600_000;
    total += Number(m[1]) * unit;
    matched = re.lastIndex;
  }
  return matched === s.length && s.length > 0 ? Math.round(total) : undefined;
}

/** Flags (argv without node and script) into raw settings; ConfigError on unknown flags or missing values. */
export function parseFlags(argv: readonly string[]): { raw: Raw; help: boolean; version: boolean } {
  const raw: Raw = new Map();
  let help = false;
  let version = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') { help = true; continue; }
    if (arg === '--version') { version = true; continue; }
    if (!arg.startsWith('--')) throw new ConfigError(`unexpected argument "${arg}" (flags start with --; see --help)`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq >= 0 ? eq : undefined);
    const spec = OPTIONS.find((o) => o.flag === name);
    // --no-X turns a boolean X off (--no-kube).
    if (spec === undefined && name.startsWith('no-') && eq < 0) {
      const positive = OPTIONS.find((o) => o.flag === name.slice(3) && o.kind === 'bool');
      if (positive !== undefined) {
        raw.set(positive.flag, 'false');
        continue;
      }
    }
    if (spec === undefined) throw new ConfigError(`unknown flag --${name} (see --help)`);
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (spec.kind === 'bool' && (i + 1 >= argv.length || argv[i + 1]!.startsWith('--'))) value = 'true';
    else if (i + 1 < argv.length) value = argv[++i]!;
    else throw new ConfigError(`--${name} needs a value`);
    if (spec.kind === 'list') {
      const prev = raw.get(name);
      raw.set(name, [...(Array.isArray(prev) ? prev : []), value]);
    } else raw.set(name, value);
  }
  return { raw, help, version };
}

/** A config file's settings into raw settings. `stubDomains` (a map zone -> [servers]) is kept apart. */
export function parseConfigFile(path: string, text: string): { raw: Raw; stubDomains: StubDomain[] } {
  let doc: unknown;
  try {
    doc = parseYaml(text); // YAML 1.2 is a superset of JSON: one parser for both
  } catch (e) {
    throw new ConfigError(`config file ${path}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (doc === null || doc === undefined) doc = {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(`config file ${path}: expected a mapping of settings`);
  const raw: Raw = new Map();
  const stubDomains: StubDomain[] = [];
  for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
    if (key === 'stubDomains') {
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        throw new ConfigError(`config file ${path}: stubDomains must map a zone to a list of servers`);
      }
      for (const [zone, servers] of Object.entries(value as Record<string, unknown>)) {
        if (!Array.isArray(servers) || servers.length === 0) throw new ConfigError(`config file ${path}: stubDomains.${zone} must be a non-empty list of IP[:PORT]`);
        stubDomains.push(stubDomain(`stubDomains.${zone}`, zone, servers.map(String)));
      }
      continue;
    }
    const spec = OPTIONS.find((o) => camel(o.flag) === key && o.flag !== 'config');
    if (spec === undefined) throw new ConfigError(`config file ${path}: unknown setting "${key}"`);
    if (spec.kind === 'list') {
      const items: unknown[] = Array.isArray(value) ? value : [value];
      for (const item of items) {
        if (typeof item !== 'string' && typeof item !== 'number') {
          throw new ConfigError(`config file ${path}: ${key}: each item must be a string such as "127.0.0.1:53", got ${JSON.stringify(item)}`);
        }
      }
      raw.set(spec.flag, items.map(String));
    } else if (value === null || typeof value === 'object') {
      throw new ConfigError(`config file ${path}: ${key} must be a single value, got ${JSON.stringify(value)}`);
    } else if (spec.kind === 'bool' && typeof value !== 'boolean') {
      // YAML says `yes` is a string and 1 a number: neither is a boolean, and guessing hides typos.
      throw new ConfigError(`config file ${path}: ${key} must be true or false, got ${JSON.stringify(value)}`);
    } else raw.set(spec.flag, String(value));
  }
  return { raw, stubDomains };
}

function stubDomain(where: string, zone: string, servers: readonly string[]): StubDomain {
  try {
    nameToWire(zone);
  } catch {
    throw new ConfigError(`${where}: "${zone}" is not a valid zone name`);
  }
  const addrs = servers.flatMap((s) => s.split(',')).map((s) => {
    const a = parseHostPort(s, 53);
    if (typeof a === 'string') throw new ConfigError(`${where}: ${a}`);
    return a;
  });
  return { zone: zone.toLowerCase().replace(/\.$/, ''), servers: addrs };
}

/** kube-dns allows at most 3 upstream nameservers (as glibc's MAXNS); node-cache refuses more too. */
const KUBE_DNS_MAX_UPSTREAMS = 3;

/**
 * `stubDomains` (a JSON map zone -> [IP[:PORT]]) and `upstreamNameservers` (a
 * JSON list) from the kube-dns ConfigMap mounted at --kube-dns-config-dir, as
 * node-cache reads them. A missing directory or file is no configuration; a
 * malformed one is a ConfigError (at start: exit 2; on reload: refused, the
 * old config keeps serving).
 */
function readKubeDnsConfig(raw: Raw, readFile: (path: string) => string): { stubDomains: StubDomain[]; upstreamNameservers: string[] } | null {
  const v = raw.get('kube-dns-config-dir') ?? OPTIONS.find((o) => o.flag === 'kube-dns-config-dir')?.def;
  const dir = Array.isArray(v) ? v[v.length - 1] : v;
  if (dir === undefined || dir === '') return null;
  const read = (file: string): string | null => {
    try {
      return readFile(`${dir}/${file}`);
    } catch {
      return null;
    }
  };
  const parse = (file: string, text: string): unknown => {
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new ConfigError(`kube-dns ConfigMap ${dir}/${file}: not JSON (${(e as Error).message})`);
    }
  };
  const stubDomains: StubDomain[] = [];
  const stubText = read('stubDomains');
  if (stubText !== null && stubText.trim() !== '') {
    const doc = parse('stubDomains', stubText);
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(`kube-dns ConfigMap ${dir}/stubDomains: expected a map of zone to a list of servers`);
    for (const [zone, servers] of Object.entries(doc as Record<string, unknown>)) {
      if (!Array.isArray(servers) || servers.length === 0 || !servers.every((x) => typeof x === 'string')) {
        throw new ConfigError(`kube-dns ConfigMap ${dir}/stubDomains: ${zone} must be a non-empty list of "IP[:PORT]" strings`);
      }
      stubDomains.push(stubDomain(`kube-dns ConfigMap stubDomains.${zone}`, zone, servers as string[]));
    }
  }
  let upstreamNameservers: string[] = [];
  const upText = read('upstreamNameservers');
  if (upText !== null && upText.trim() !== '') {
    const doc = parse('upstreamNameservers', upText);
    if (!Array.isArray(doc) || !doc.every((x) => typeof x === 'string')) throw new ConfigError(`kube-dns ConfigMap ${dir}/upstreamNameservers: expected a list of "IP[:PORT]" strings`);
    if (doc.length > KUBE_DNS_MAX_UPSTREAMS) throw new ConfigError(`kube-dns ConfigMap ${dir}/upstreamNameservers: at most ${KUBE_DNS_MAX_UPSTREAMS} servers, got ${doc.length}`);
    // kube-dns reads the same ConfigMap and takes plain IPs only; DNS over TLS is our flag's (or config file's).
    const tls = (doc as string[]).find(isTlsAddress);
    if (tls !== undefined) throw new ConfigError(`kube-dns ConfigMap ${dir}/upstreamNameservers: "${tls}": plain IP[:PORT] only (kube-dns reads this too); give tls:// upstreams with --upstream-nameservers`);
    upstreamNameservers = doc as string[];
  }
  return { stubDomains, upstreamNameservers };
}

export interface LoadOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly readFile?: (path: string) => string;
}

/** argv (without node and script) -> Config, or help/version requests. Throws ConfigError. */
export function loadConfig(argv: readonly string[], opts: LoadOptions = {}): { config: Config; help: boolean; version: boolean } {
  const env = opts.env ?? process.env;
  const readFile = opts.readFile ?? ((p: string) => readFileSync(p, 'utf8'));
  const flags = parseFlags(argv);
  let merged: Raw = new Map();
  let stubs: StubDomain[] = [];
  const configPath = flags.raw.get('config');
  if (typeof configPath === 'string') {
    let text: string;
    try {
      text = readFile(configPath);
    } catch (e) {
      throw new ConfigError(`--config ${configPath}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    const file = parseConfigFile(configPath, text);
    merged = file.raw;
    stubs = file.stubDomains;
  }
  for (const [k, v] of flags.raw) merged.set(k, v);
  // The kube-dns ConfigMap (node-cache reads the same two keys): the lowest precedence, under our own file and flags.
  const kubeDns = readKubeDnsConfig(merged, readFile);
  if (kubeDns !== null) {
    stubs = [...kubeDns.stubDomains.filter((k) => !stubs.some((d) => d.zone === k.zone)), ...stubs];
    if (!merged.has('upstream-nameservers') && kubeDns.upstreamNameservers.length > 0) merged.set('upstream-nameservers', kubeDns.upstreamNameservers);
  }
  for (const s of listOf(merged, 'stub-domain')) {
    const eq = s.indexOf('=');
    if (eq <= 0) throw new ConfigError(`--stub-domain "${s}": expected ZONE=IP[:PORT][,IP[:PORT]]`);
    stubs = stubs.filter((d) => d.zone !== s.slice(0, eq).toLowerCase().replace(/\.$/, ''));
    stubs.push(stubDomain(`--stub-domain`, s.slice(0, eq), [s.slice(eq + 1)]));
  }
  return { config: validate(merged, stubs, env), help: flags.help, version: flags.version };
}

function listOf(raw: Raw, flag: string): string[] {
  const v = raw.get(flag);
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

function validate(raw: Raw, stubDomains: StubDomain[], env: NodeJS.ProcessEnv): Config {
  const str = (flag: string): string | undefined => {
    const v = raw.get(flag) ?? OPTIONS.find((o) => o.flag === flag)?.def;
    return Array.isArray(v) ? v[v.length - 1] : v;
  };
  const int = (flag: string): number => {
    const spec = OPTIONS.find((o) => o.flag === flag)!;
    const v = str(flag)!;
    const n = Number(v);
    if (!/^\d+$/.test(v.trim()) || (spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) {
      const range = spec.max !== undefined ? `${spec.min ?? 0}-${spec.max}` : `>= ${spec.min ?? 0}`;
      throw new ConfigError(`--${flag} "${v}": expected a whole number ${range}`);
    }
    return n;
  };
  const duration = (flag: string, allowZero = false): number => {
    const spec = OPTIONS.find((o) => o.flag === flag)!;
    const v = str(flag)!;
    const ms = parseDuration(v);
    if (ms === undefined || (ms <= 0 && !(allowZero && ms === 0))) throw new ConfigError(`--${flag} "${v}": expected a duration such as 500ms, 2s or 1m`);
    if ((spec.min !== undefined && ms < spec.min) || (spec.max !== undefined && ms > spec.max)) {
      throw new ConfigError(`--${flag} "${v}": must be between ${formatMs(spec.min ?? 0)} and ${formatMs(spec.max ?? Infinity)}`);
    }
    return ms;
  };
  const bytes = (flag: string): number => {
    const spec = OPTIONS.find((o) => o.flag === flag)!;
    const v = str(flag)!;
    const n = parseBytes(v);
    if (n === undefined) throw new ConfigError(`--${flag} "${v}": expected a size such as 64Mi, 512Ki or 1Gi`);
    if ((spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) {
      throw new ConfigError(`--${flag} "${v}": must be between ${spec.min ?? 0} and ${spec.max ?? Infinity} bytes`);
    }
    return n;
  };
  // DNS TTLs are whole seconds: "500ms" would silently mean "never cache".
  const seconds = (flag: string): number => {
    const ms = duration(flag);
    if (ms < 1000) throw new ConfigError(`--${flag} "${str(flag)}": must be at least 1s (DNS TTLs are whole seconds)`);
    return Math.floor(ms / 1000);
  };
  const bool = (flag: string): boolean => {
    const v = str(flag)!;
    if (v === 'true') return true;
    if (v === 'false') return false;
    throw new ConfigError(`--${flag} "${v}": expected true or false`);
  };
  const addr = (flag: string, text: string, defPort: number | undefined): ServerAddress => {
    const a = parseHostPort(text, defPort);
    if (typeof a === 'string') throw new ConfigError(`--${flag} ${a}`);
    return a;
  };

  const port = int('port');
  const listen: ServerAddress[] = listOf(raw, 'listen').flatMap((l) => l.split(',')).map((l) => addr('listen', l, undefined));
  const localip = str('localip');
  if (localip !== undefined) for (const ip of localip.split(',')) listen.push(addr('localip', ip, port));
  if (listen.length === 0) listen.push({ host: '127.0.0.1', port: 5353 });
  const seen = new Set<string>();
  for (const l of listen) {
    const k = formatHostPort(l);
    if (seen.has(k)) throw new ConfigError(`--listen ${k}: given twice`);
    seen.add(k);
  }

  const clusterDomain = str('cluster-domain')!.toLowerCase().replace(/\.$/, '');
  try {
    nameToWire(clusterDomain);
  } catch {
    throw new ConfigError(`--cluster-domain "${clusterDomain}": not a valid domain name`);
  }

  let clusterUpstream: ServerAddress | null = null;
  let clusterUpstreamSource = 'none';
  const upstreamAddr = str('upstream-addr');
  const svc = str('upstream-svc')!;
  const envPrefix = svc.toUpperCase().replace(/[^A-Z0-9]/g, '_');
  if (upstreamAddr !== undefined) {
    clusterUpstream = addr('upstream-addr', upstreamAddr, 53);
    clusterUpstreamSource = '--upstream-addr';
  } else if (env[`${envPrefix}_SERVICE_HOST`]) {
    const host = env[`${envPrefix}_SERVICE_HOST`]!;
    const p = env[`${envPrefix}_SERVICE_PORT`] ?? '53';
    const a = parseHostPort(host.includes(':') ? `[${host}]:${p}` : `${host}:${p}`, 53);
    if (typeof a === 'string') throw new ConfigError(`${envPrefix}_SERVICE_HOST/_PORT ${a}`);
    clusterUpstream = a;
    clusterUpstreamSource = `${envPrefix}_SERVICE_HOST`;
  }
  if (clusterUpstream === null && bool('require-cluster-dns')) {
    throw new ConfigError(
      `--require-cluster-dns: no cluster DNS address: --upstream-addr is not set and ${envPrefix}_SERVICE_HOST is not in the environment (is the ${svc} Service created in this namespace, and was the pod started after it?)`,
    );
  }

  const firewall = str('firewall')!;
  if (!FIREWALL_CHOICES.includes(firewall as FirewallChoice)) {
    throw new ConfigError(`--firewall "${firewall}": expected one of ${FIREWALL_CHOICES.join(', ')}`);
  }
  const interfaceName = str('interface-name')!;
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(interfaceName)) throw new ConfigError(`--interface-name "${interfaceName}": 1-15 letters, digits, "_", "." or "-"`);

  const metricsByNamespace = bool('metrics-by-namespace');
  const nodeName = str('node-name') ?? env['NODE_NAME'] ?? '';
  if (metricsByNamespace && nodeName === '') {
    throw new ConfigError('--metrics-by-namespace: no node name: give --node-name or set NODE_NAME (the DaemonSet sets it from spec.nodeName)');
  }
  const io = str('io')!;
  if (io !== 'batched' && io !== 'dgram') throw new ConfigError(`--io "${io}": expected batched or dgram`);

  const logLevel = str('log-level')!;
  if (!['debug', 'info', 'warn', 'error'].includes(logLevel)) throw new ConfigError(`--log-level "${logLevel}": expected debug, info, warn or error`);

  return {
    configFile: str('config') ?? '',
    kubeDnsConfigDir: str('kube-dns-config-dir') ?? '',
    listen,
    clusterDomain,
    clusterUpstream,
    clusterUpstreamSource,
    resolvConf: str('resolv-conf')!,
    ...upstreamNameservers(listOf(raw, 'upstream-nameservers').flatMap((s) => s.split(',')), (s) => addr('upstream-nameservers', s, 53)),
    tlsCaFile: str('tls-ca-file') ?? '',
    stubDomains,
    timeoutMs: duration('timeout'),
    upstreamConnections: int('upstream-connections'),
    upstreamMaxInFlight: int('upstream-max-inflight'),
    upstreamRotateQueries: int('upstream-rotate-queries'),
    upstreamRotateAfterMs: duration('upstream-rotate-after'),
    cacheSize: int('cache-size'),
    negativeCacheSize: int('negative-cache-size'),
    cacheMemoryBytes: bytes('cache-memory'),
    successTtl: seconds('success-ttl'),
    denialTtl: seconds('denial-ttl'),
    prefetchMinHits: int('prefetch-min-hits'),
    prefetchPercent: int('prefetch-percent'),
    serveStaleMs: duration('serve-stale', true),
    maxUdpSize: int('max-udp-size'),
    tcpIdleTimeoutMs: duration('tcp-idle-timeout'),
    tcpReadTimeoutMs: duration('tcp-read-timeout'),
    maxTcpConnections: int('max-tcp-connections'),
    maxTcpQueries: int('max-tcp-queries'),
    hostMaxInflight: int('host-max-inflight'),
    maxConcurrent: int('max-concurrent'),
    clientMissRate: int('client-miss-rate'),
    clientMissBurst: int('client-miss-burst'),
    shutdownGraceMs: duration('shutdown-grace', true),
    reusePort: bool('reuse-port'),
    io,
    workers: int('workers'),
    maxQueryAgeMs: duration('max-query-age', true),
    kube: bool('kube'),
    kubeconfig: str('kubeconfig') ?? '',
    fallbackAfterMs: duration('fallback-after', true),
    maxApiSilenceMs: duration('max-api-silence'),
    localNegative: bool('local-negative'),
    localTtl: seconds('local-ttl'),
    setupInterface: bool('setup-interface'),
    interfaceName,
    interfaceKind: str('interface-kind')!,
    firewall: firewall as FirewallChoice,
    failOpenTo: str('fail-open-to') === undefined ? null : addr('fail-open-to', str('fail-open-to')!, 53),
    skipTeardown: bool('skip-teardown'),
    syncIntervalMs: duration('sync-interval'),
    healthPort: int('health-port'),
    metricsListen: metricsListen(str('metrics-listen-address'), listen),
    cacheSnapshot: snapshotPath(str('cache-snapshot')),
    cacheSnapshotIntervalMs: duration('cache-snapshot-interval', true),
    mallocTrimIntervalMs: duration('malloc-trim-interval', true),
    logLevel: logLevel as LogLevel,
    queryLogEvery: sampleEvery(str('query-log-sample')!),
    metricsByNamespace,
    metricsNamespacesMax: int('metrics-namespaces-max'),
    nodeName,
  };
}

/**
 * Plain servers or DNS-over-TLS ones, never both: a list that mixed them would
 * send some external names in clear text while the operator believes them
 * encrypted (CoreDNS's forward takes one protocol per block for the same reason).
 */
function upstreamNameservers(items: readonly string[], plain: (s: string) => ServerAddress): { upstreamNameservers: ServerAddress[]; upstreamTls: TlsServer[] } {
  const tls = items.filter(isTlsAddress);
  if (tls.length === 0) return { upstreamNameservers: items.map(plain), upstreamTls: [] };
  if (tls.length < items.length) {
    const other = items.find((s) => !isTlsAddress(s))!;
    throw new ConfigError(`--upstream-nameservers: "${tls[0]}" and "${other.trim()}": all plain or all tls://, not both (a mixed list would send some names in clear text)`);
  }
  const servers = tls.map((s) => {
    const t = parseTlsServer(s);
    if (typeof t === 'string') throw new ConfigError(`--upstream-nameservers ${t}`);
    return t;
  });
  return { upstreamNameservers: [], upstreamTls: servers };
}

function snapshotPath(text: string | undefined): string {
  if (text === undefined || text === '') return '';
  if (!text.startsWith('/')) throw new ConfigError(`--cache-snapshot "${text}": must be an absolute path`);
  return text;
}

/** --metrics-listen-address: given, "off", or the first listen host at node-cache's 9253 (loopback for a wildcard). */
function metricsListen(text: string | undefined, listen: readonly ServerAddress[]): ServerAddress | null {
  if (text === 'off') return null;
  if (text !== undefined) {
    const a = parseHostPort(text, 9253);
    if (typeof a === 'string') throw new ConfigError(`--metrics-listen-address ${a}`);
    return a;
  }
  const first = listen[0]?.host ?? '127.0.0.1';
  const host = first === '0.0.0.0' ? '127.0.0.1' : first === '::' ? '::1' : first;
  return { host, port: 9253 };
}

/** A share (0..1) as "one query in N": a countdown is cheaper on the hot path than a random draw per query. */
function sampleEvery(text: string): number {
  const share = Number(text);
  if (text.trim() === '' || !Number.isFinite(share) || share < 0 || share > 1) throw new ConfigError(`--query-log-sample "${text}": expected a share between 0 and 1, such as 0.01`);
  return share === 0 ? 0 : Math.max(1, Math.round(1 / share));
}

function formatMs(ms: number): string {
  if (ms === Infinity) return 'unbounded';
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

export function helpText(): string {
  const lines = ['Usage: nodelocal-dns [flags]', '', 'Node-local DNS cache agent for Kubernetes.', '', 'Flags:'];
  for (const o of OPTIONS) {
    const arg = o.kind === 'bool' ? '' : o.kind === 'int' ? ' N' : o.kind === 'duration' ? ' DURATION' : o.kind === 'bytes' ? ' SIZE' : ' VALUE';
    lines.push(`  --${o.flag}${arg}`);
    lines.push(`      ${o.help}${o.def !== undefined ? ` (default ${o.def})` : ''}`);
  }
  lines.push('  --help', '      this text', '  --version', '      print the version');
  return lines.join('\n');
}

/**
 * Every setting at its default: what a constructor falls back to when a
 * caller (a test, the bench) leaves an option out, so defaults live here only.
 */
export const DEFAULTS: Config = validate(new Map(), [], {});
