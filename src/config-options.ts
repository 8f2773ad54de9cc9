/**
 * Every option the agent takes: its flag, kind, default and why (the one
 * place defaults live; config.ts turns them into DEFAULTS), the --help text
 * made from them, and the error a bad value raises. Kept apart so config.ts
 * reads as validation, and this file as the table an operator reads.
 */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export type Kind = 'string' | 'int' | 'duration' | 'bool' | 'list' | 'bytes';
export interface OptionSpec {
  readonly flag: string;
  readonly kind: Kind;
  readonly def: string | undefined;
  readonly help: string;
  /** Bounds: whole numbers for int and bytes, milliseconds for duration. */
  readonly min?: number;
  readonly max?: number;
}

/**
 * Entries of one cache list: the store's hash table is a power of two at
 * least twice the slots of both lists, with slot numbers in Int32 cells, so
 * 2^28 a list keeps it within 2^31 cells.
 */
export const MAX_CACHE_ENTRIES = 2 ** 28;

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
  // At most MAX_CACHE_ENTRIES, and no more than --cache-memory holds at 64 bytes of index an entry (config.ts).
  { flag: 'cache-size', kind: 'int', def: '9984', help: 'positive cache capacity in entries (node-cache default)', min: 1, max: MAX_CACHE_ENTRIES },
  { flag: 'negative-cache-size', kind: 'int', def: '9984', help: 'negative cache capacity in entries (node-cache default)', min: 1, max: MAX_CACHE_ENTRIES },
  {
    // At most 4Gi: the store's slab is one buffer of u32 offsets (store-slab.ts MAX_SLAB); more could not be used.
    flag: 'cache-memory', kind: 'bytes', def: '64Mi', min: 1 << 20, max: 4 * 2 ** 30,
    help: 'byte budget of the cache: each entry is charged its answer, key and TTL offsets plus 72 bytes (record header and index); 60% of it for positive answers, 20% for negative, the rest is slack for the slab; 64Mi holds the default 2 x 9984 entries of ordinary answers with room to spare, and bounds big ones',
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
    help: 'a client TCP message must be complete this long after its first byte (slow-loris; a pod sends one segment, 2 s allows a retransmission); a client whose queries wait for it to read its answers must read them within it too',
  },
  // Sized to the DaemonSet's memory limit: a connection whose client leaves its answers unread may hold ~240 KiB
  // (docs/install.md, Resources), so 256 of them plus the 16 MiB room is ~76 MiB, which fits beside every state
  // measured there; 1,024 (~256 MiB) did not. Idle ones are closed for newcomers, so only busy connections count:
  // 256 TCP queries in flight at once on one node (unbound's default is 10 a thread).
  { flag: 'max-tcp-connections', kind: 'int', def: '256', help: 'client TCP connections at once; at the cap a newcomer closes the connection idle longest, and is refused only when all are busy', min: 1 },
  // One pod must not hold every slot: 64 is a quarter of the 256 above, as a pod's share of --max-concurrent.
  // hostNetwork pods share the node's address, and glibc, musl and Go open one per TCP lookup, so an outage
  // (queries held for seconds) puts many on one address (README, --max-tcp-per-client).
  {
    flag: 'max-tcp-per-client', kind: 'int', def: '64', min: 0,
    help: 'client TCP connections one client address may hold; at it a newcomer from that address closes its idlest one, and is refused only when all of its are busy. 0 = no cap',
  },
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
    help: 'external-name (and stub-domain) queries in flight per upstream, each with at most 3 tries listening (an id on a shared UDP socket, or a TCP connection after TC=1); beyond it SERVFAIL at once (CoreDNS forward max_concurrent)',
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
    flag: 'exe-trim-interval', kind: 'duration', def: '10s', min: 0, max: 86_400_000,
    help: 'this often, when the node binary holds 4 MiB more resident than the agent uses, drop its pages touched once (start-up, a reload: madvise, off the main thread; they come back from the page cache if used); 0 = never',
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
    help: 'opt-in: count requests by the client pod\'s namespace (nodelocal_dns_requests_by_namespace_total) from a watch of this node\'s pods; needs --node-name and list/watch on pods (docs/install.md)',
  },
  // A node runs at most 110 pods by kubelet's default: 100 namespaces cover nearly every node, and bound the series a node can add.
  { flag: 'metrics-namespaces-max', kind: 'int', def: '100', min: 1, max: 10_000, help: 'namespaces with a series of their own under --metrics-by-namespace; the rest count as "_other"' },
  { flag: 'node-name', kind: 'string', def: undefined, help: 'this node\'s name, for the pod watch of --metrics-by-namespace (default $NODE_NAME, which the DaemonSet sets from spec.nodeName)' },
  { flag: 'log-level', kind: 'string', def: 'info', help: 'debug, info, warn or error' },
  { flag: 'query-log-sample', kind: 'string', def: '0', help: 'log this share of queries (0.01 = one in a hundred) with client, name, type, rcode, duration and where the answer came from (cache, upstream, view, stale, servfail); 0 = off' },
];

export const HELP_FLAGS = ['help', 'version'] as const;

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
