/**
 * The shape of a validated configuration (config.ts builds it): apart from
 * the validation so the many modules that read a Config, and the sources
 * module, depend on the shape alone.
 */
import type { LogLevel } from './log.js';
import type { ServerAddress } from './upstream/types.js';
import type { TlsServer } from './upstream/tls-address.js';
import type { FirewallChoice } from './iface/node-setup.js';

/** Reverse zones always belong to the cluster DNS: it owns the PTR records of Service and Pod IPs. */
export const REVERSE_ZONES: readonly string[] = ['in-addr.arpa', 'ip6.arpa'];

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
  /** Client TCP connections one address may hold; 0 = no cap. */
  readonly maxTcpPerClient: number;
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
  /** --exe-trim-interval: how often the node binary's pages touched once are dropped (ops/exe-trim.ts); 0 = never. */
  readonly exeTrimIntervalMs: number;
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
