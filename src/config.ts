/**
 * Configuration: flags and an optional config file (YAML or JSON) turned into
 * one validated, typed Config. Every default lives in OPTIONS
 * (config-options.ts), with its reason; the raw settings come from
 * config-sources.ts (flags, the file, the kube-dns ConfigMap). Flags win over
 * the file. A bad value is a ConfigError naming the flag and the value
 * (main.ts exits 2 with it).
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { canonicalIp, formatHostPort, isWildcard, parseHostPort, portLikeLastGroup } from './addr.js';
import { SLOT_OVERHEAD_BYTES } from './cache/store.js';
import type { LogLevel } from './log.js';
import type { ServerAddress } from './upstream/types.js';
import type { FirewallChoice } from './iface/node-setup.js';
import { ConfigError, OPTIONS } from './config-options.js';
import {
  camel, parseBytes, parseConfigFile, parseDuration, parseFlags, plainZoneName, readKubeDnsConfig, stubDomain, type Raw, type Warn,
} from './config-sources.js';
import { refuseOpsOnDnsPorts, refuseSeveralNodePorts } from './config-ports.js';
import { dns1123Subdomain, formatMs, metricsListen, sampleEvery, snapshotPath, upstreamNameservers } from './config-values.js';
import { REVERSE_ZONES, type Config, type StubDomain } from './config-types.js';

// The table and the sources have modules of their own; callers keep importing them from here.
export { ConfigError, HELP_FLAGS, OPTIONS, helpText } from './config-options.js';
export { parseBytes, parseConfigFile, parseDuration, parseFlags } from './config-sources.js';
export type { Config, StubDomain } from './config-types.js';

const FIREWALL_CHOICES: readonly FirewallChoice[] = ['auto', 'iptables', 'iptables-legacy', 'iptables-nft', 'nftables', 'none'];

export interface LoadOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly readFile?: (path: string) => string;
}

/**
 * argv (without node and script) -> Config, or help/version requests. Throws
 * ConfigError. `warnings`: values taken as read but worth a word, each naming
 * the value (logged at start and on each reload).
 */
export function loadConfig(argv: readonly string[], opts: LoadOptions = {}): { config: Config; help: boolean; version: boolean; warnings: readonly string[] } {
  const env = opts.env ?? process.env;
  const readFile = opts.readFile ?? ((p: string) => readFileSync(p, 'utf8'));
  const flags = parseFlags(argv);
  // Nothing else is read for these: the help or the version whatever the rest of the command line and the environment hold.
  if (flags.help || flags.version) return { config: DEFAULTS, help: flags.help, version: flags.version, warnings: [] };
  let merged: Raw = new Map();
  let stubs: StubDomain[] = [];
  // Where a setting not given as a flag was written, so an error about it names that place and key too.
  const origin = new Map<string, string>();
  const warnings: string[] = [];
  const warn: Warn = (w) => warnings.push(placed(w, origin));
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
    warnings.push(...file.warnings);
    // The listen addresses are one setting in two spellings (--port belongs to --localip's): named on the command line, they replace the file's.
    if (['listen', 'localip', 'port'].some((k) => flags.raw.has(k))) for (const k of ['listen', 'localip', 'port']) merged.delete(k);
    for (const k of merged.keys()) origin.set(k, `config file ${configPath}: ${camel(k)}`);
  }
  for (const [k, v] of flags.raw) {
    merged.set(k, v);
    origin.delete(k);
  }
  const fileStubs = stubs;
  // The kube-dns ConfigMap (node-cache reads the same two keys): the lowest precedence, under our own file and flags.
  const kubeDns = readKubeDnsConfig(merged, readFile);
  let kubeDnsUpstreamWarnings: readonly string[] = [];
  if (kubeDns !== null) {
    stubs = [...kubeDns.stubDomains.map((k) => k.stub).filter((k) => !stubs.some((d) => d.zone === k.zone)), ...stubs];
    if (!merged.has('upstream-nameservers') && kubeDns.upstreamNameservers.length > 0) {
      merged.set('upstream-nameservers', kubeDns.upstreamNameservers);
      origin.set('upstream-nameservers', `kube-dns ConfigMap ${kubeDns.upstreamNameserversFile}`);
      kubeDnsUpstreamWarnings = kubeDns.upstreamWarnings;
    }
  }
  try {
    // One zone twice is refused as in stubDomains (CoreDNS refuses a zone defined twice), not settled by the order of the flags;
    // a file's stubDomain list meets its own stubDomains (flags replace the file's zones).
    const given = new Map<string, string>(origin.has('stub-domain') ? fileStubs.map((d) => [d.zone, `stubDomains.${d.zone}`]) : []);
    for (const s of listOf(merged, 'stub-domain')) {
      const eq = s.indexOf('=');
      if (eq <= 0) throw new ConfigError(`--stub-domain "${s}": expected ZONE=IP[:PORT][,IP[:PORT]]`);
      const stub = stubDomain(`--stub-domain`, s.slice(0, eq), [s.slice(eq + 1)], warn);
      const before = given.get(stub.zone);
      if (before !== undefined) throw new ConfigError(`--stub-domain: zone "${stub.zone}" given twice, as "${before}" and "${s.slice(0, eq)}"`);
      given.set(stub.zone, s.slice(0, eq));
      stubs = stubs.filter((d) => d.zone !== stub.zone);
      stubs.push(stub);
    }
    // What our file or flags replace is not used: a warning about its servers would be about none the agent asks.
    for (const k of kubeDns?.stubDomains ?? []) if (stubs.includes(k.stub)) k.warnings.forEach(warn);
    kubeDnsUpstreamWarnings.forEach(warn);
    return { config: validate(merged, stubs, env, warn), help: flags.help, version: flags.version, warnings };
  } catch (err) {
    throw whereWritten(err, origin);
  }
}

/** A ConfigError about a flag the operator set in a file, not on the command line: says that file and key too. */
function whereWritten(err: unknown, origin: ReadonlyMap<string, string>): unknown {
  if (!(err instanceof ConfigError)) return err;
  const message = placed(err.message, origin);
  return message === err.message ? err : new ConfigError(message);
}

/** A message about a flag ("--flag ...") with the file and key that set it, when a file did. */
function placed(message: string, origin: ReadonlyMap<string, string>): string {
  const place = origin.get(/^--([a-z-]+)/.exec(message)?.[1] ?? '');
  return place === undefined ? message : `${message} (set in ${place})`;
}

function listOf(raw: Raw, flag: string): string[] {
  const v = raw.get(flag);
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

function validate(raw: Raw, stubDomains: StubDomain[], env: NodeJS.ProcessEnv, warn: Warn): Config {
  const str = (flag: string): string | undefined => {
    const v = raw.get(flag) ?? OPTIONS.find((o) => o.flag === flag)?.def;
    return Array.isArray(v) ? v[v.length - 1] : v;
  };
  const int = (flag: string): number => {
    const spec = OPTIONS.find((o) => o.flag === flag)!;
    const v = str(flag)!;
    const n = Number(v);
    // Past 2^53 a double holds another number than the one written (...993 reads as ...992).
    const max = spec.max ?? Number.MAX_SAFE_INTEGER;
    if (!/^\d+$/.test(v.trim()) || (spec.min !== undefined && n < spec.min) || n > max) {
      throw new ConfigError(`--${flag} "${v}": expected a whole number ${spec.min ?? 0}-${max}`);
    }
    return n;
  };
  // `least`: the floor the option's own min does not say (0 refused unless allowed; whole seconds for TTLs), so the range named is the one enforced.
  const duration = (flag: string, allowZero = false, least = allowZero ? 0 : 1, why = ''): number => {
    const spec = OPTIONS.find((o) => o.flag === flag)!;
    const v = str(flag)!;
    const ms = parseDuration(v);
    if (ms === undefined) throw new ConfigError(`--${flag} "${v}": expected a duration such as 500ms, 2s or 1m`);
    const lo = Math.max(spec.min ?? 0, least);
    if (ms < lo || (spec.max !== undefined && ms > spec.max)) {
      throw new ConfigError(`--${flag} "${v}": must be between ${formatMs(lo)} and ${formatMs(spec.max ?? Infinity)}${why}`);
    }
    return ms;
  };
  const bytes = (flag: string): number => {
    const spec = OPTIONS.find((o) => o.flag === flag)!;
    const v = str(flag)!;
    const n = parseBytes(v);
    if (n === undefined) throw new ConfigError(`--${flag} "${v}": expected a size such as 64Mi, 256Mi or 1Gi`);
    if ((spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) {
      throw new ConfigError(`--${flag} "${v}": must be between ${spec.min ?? 0} and ${spec.max ?? Infinity} bytes`);
    }
    return n;
  };
  // DNS TTLs are whole seconds: "500ms" would silently mean "never cache".
  const seconds = (flag: string): number => {
    const ms = duration(flag, false, 1000, ' (DNS TTLs are whole seconds)');
    if (ms % 1000 !== 0) throw new ConfigError(`--${flag} "${str(flag)}": DNS TTLs are whole seconds, such as 2s or 1m30s`);
    return ms / 1000;
  };
  const bool = (flag: string): boolean => {
    const v = str(flag)!;
    if (v === 'true') return true;
    if (v === 'false') return false;
    throw new ConfigError(`--${flag} "${v}": expected true or false`);
  };
  // Every entry costs at least its index slot against the budget, and the slots are allocated up front by count:
  // more than the budget holds is never used, only allocated (at 1e9 the allocation fails at start).
  const cacheEntries = (flag: string): number => {
    const n = int(flag);
    const most = Math.floor(bytes('cache-memory') / SLOT_OVERHEAD_BYTES);
    if (n > most) throw new ConfigError(`--${flag} "${str(flag)}": more entries than --cache-memory ${str('cache-memory')} holds at ${SLOT_OVERHEAD_BYTES} bytes each at least; at most ${most}`);
    return n;
  };
  const addr = (flag: string, text: string, defPort: number | undefined): ServerAddress => {
    const a = parseHostPort(text, defPort);
    if (typeof a === 'string') throw new ConfigError(`--${flag} ${a}`);
    const w = portLikeLastGroup(text, a);
    if (w !== null) warn(`--${flag} ${w}`);
    return a;
  };

  // The listeners are IPv6-only: an IPv4-mapped address is refused by bind() (EINVAL), after the start began.
  const listenAddr = (flag: string, a: ServerAddress): ServerAddress => {
    const v4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(a.host)?.[1];
    if (v4 !== undefined) throw new ConfigError(`--${flag} ${formatHostPort(a)}: an IPv4-mapped IPv6 address, which an IPv6-only listener cannot bind; write ${flag === 'localip' ? v4 : `${v4}:${a.port}`}`);
    return a;
  };
  const port = int('port');
  const listen: ServerAddress[] = listOf(raw, 'listen').flatMap((l) => l.split(',')).map((l) => listenAddr('listen', addr('listen', l, undefined)));
  // Bare IPs, as node-cache's: "fd00::10:53" is that address, never [fd00::10]:53 (the port is --port's), so no warning either.
  const localAddr = (text: string): ServerAddress => {
    const host = canonicalIp(text.trim());
    if (host === null) throw new ConfigError(`--localip "${text.trim()}": not an IP address (IP[,IP], the port is --port's)`);
    return listenAddr('localip', { host, port });
  };
  const localip = str('localip');
  // Given alone it would be ignored, and the agent would serve on 127.0.0.1:5353 (or --listen's ports) instead.
  if (localip === undefined && raw.has('port')) throw new ConfigError(`--port ${port}: the port of the --localip addresses, and there are none; with --listen write ADDR:PORT`);
  if (localip !== undefined) for (const ip of localip.split(',')) listen.push(localAddr(ip));
  if (listen.length === 0) listen.push({ host: '127.0.0.1', port: 5353 });
  const seen = new Set<string>();
  for (const l of listen) {
    const k = formatHostPort(l);
    if (seen.has(k)) throw new ConfigError(`--listen ${k}: given twice`);
    seen.add(k);
  }
  // Without SO_REUSEPORT a wildcard holds its port on every address of its family: the other bind would fail at start.
  const pairs = listen.flatMap((a, i) => listen.slice(i + 1).map((b) => [a, b] as const));
  const shadowed = bool('reuse-port') ? undefined : pairs.find(([a, b]) => a.port === b.port && isIP(a.host) === isIP(b.host) && (isWildcard(a.host) || isWildcard(b.host)));
  if (shadowed !== undefined) {
    throw new ConfigError(`--listen ${shadowed.map(formatHostPort).join(' and ')}: the wildcard takes that port on every address, so with --no-reuse-port the other cannot bind; give one of them`);
  }

  // Checked as given, before the trailing dot goes: ".." (a templated "$(DOMAIN)." holding ".") is no name, not the root.
  if (!plainZoneName(str('cluster-domain')!)) {
    throw new ConfigError(`--cluster-domain "${str('cluster-domain')}": not a valid domain name (labels of letters, digits, "-" and "_")`);
  }
  const clusterDomain = str('cluster-domain')!.toLowerCase().replace(/\.$/, '');
  // The root zone holds every name: all of them would go to the cluster DNS (a templated flag with an empty variable).
  if (clusterDomain === '') throw new ConfigError(`--cluster-domain "${str('cluster-domain')}": the root zone would take every name; give the cluster's zone, such as cluster.local`);

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
  // The router would let the stub replace the cluster route (and the view answering it); CoreDNS refuses a zone defined twice.
  const taken = clusterUpstream === null ? undefined : stubDomains.find((d) => d.zone === clusterDomain || REVERSE_ZONES.includes(d.zone));
  if (taken !== undefined) {
    throw new ConfigError(
      `stub domain "${taken.zone}" (--stub-domain, or stubDomains in the config file or the kube-dns ConfigMap): the cluster DNS (${clusterUpstreamSource}) answers that zone; give a zone under it`,
    );
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
  const interfaceKind = str('interface-kind')!;
  // The kinds that carry addresses without a lower device; anything else fails at start in netlink, after the ops ports are up.
  if (interfaceKind !== 'dummy' && interfaceKind !== 'bridge') throw new ConfigError(`--interface-kind "${interfaceKind}": expected dummy or bridge`);
  const interfaceName = str('interface-name')!;
  // The kernel (dev_valid_name) also refuses "." and "..": they would clash with /sys/class/net's own entries.
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(interfaceName) || interfaceName === '.' || interfaceName === '..') {
    throw new ConfigError(`--interface-name "${interfaceName}": 1-15 letters, digits, "_", "." or "-", and not "." or ".."`);
  }

  const metricsByNamespace = bool('metrics-by-namespace');
  const nodeName = str('node-name') ?? env['NODE_NAME'] ?? '';
  if (metricsByNamespace && nodeName === '') {
    throw new ConfigError('--metrics-by-namespace: no node name: give --node-name or set NODE_NAME (the DaemonSet sets it from spec.nodeName)');
  }
  // It goes into the pod watch's fieldSelector spec.nodeName=NAME: no node has another name, and a "," would add a selector.
  if (metricsByNamespace && !dns1123Subdomain(nodeName)) {
    throw new ConfigError(
      `${str('node-name') !== undefined ? '--node-name' : '$NODE_NAME'} "${nodeName}": not a DNS-1123 subdomain, as a node's name is (lowercase letters, digits, "-" and ".", at most 253 characters, each label starting and ending with a letter or digit)`,
    );
  }
  const io = str('io')!;
  if (io !== 'batched' && io !== 'dgram') throw new ConfigError(`--io "${io}": expected batched or dgram`);

  const logLevel = str('log-level')!;
  if (!['debug', 'info', 'warn', 'error'].includes(logLevel)) throw new ConfigError(`--log-level "${logLevel}": expected debug, info, warn or error`);

  const external = upstreamNameservers(listOf(raw, 'upstream-nameservers').flatMap((s) => s.split(',')), (s) => addr('upstream-nameservers', s, 53), warn);
  const tlsCaFile = str('tls-ca-file') ?? '';
  // Only --upstream-nameservers takes tls:// (stub domains and the cluster DNS are plain): a CA file set for nothing hides a mistake.
  if (tlsCaFile !== '' && external.upstreamTls.length === 0) {
    throw new ConfigError(`--tls-ca-file ${tlsCaFile}: no tls:// upstream uses it (only --upstream-nameservers tls://... does); drop it or give tls:// upstream nameservers`);
  }

  const config: Config = {
    configFile: str('config') ?? '',
    kubeDnsConfigDir: str('kube-dns-config-dir') ?? '',
    listen,
    clusterDomain,
    clusterUpstream,
    clusterUpstreamSource,
    resolvConf: str('resolv-conf')!,
    ...external,
    tlsCaFile,
    stubDomains,
    timeoutMs: duration('timeout'),
    upstreamConnections: int('upstream-connections'),
    upstreamMaxInFlight: int('upstream-max-inflight'),
    upstreamRotateQueries: int('upstream-rotate-queries'),
    upstreamRotateAfterMs: duration('upstream-rotate-after'),
    cacheSize: cacheEntries('cache-size'),
    negativeCacheSize: cacheEntries('negative-cache-size'),
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
    maxTcpPerClient: int('max-tcp-per-client'),
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
    interfaceKind,
    firewall: firewall as FirewallChoice,
    failOpenTo: str('fail-open-to') === undefined ? null : addr('fail-open-to', str('fail-open-to')!, 53),
    skipTeardown: bool('skip-teardown'),
    syncIntervalMs: duration('sync-interval'),
    healthPort: int('health-port'),
    metricsListen: metricsListen(str('metrics-listen-address'), listen, warn),
    cacheSnapshot: snapshotPath(str('cache-snapshot')),
    cacheSnapshotIntervalMs: duration('cache-snapshot-interval', true),
    mallocTrimIntervalMs: duration('malloc-trim-interval', true),
    exeTrimIntervalMs: duration('exe-trim-interval', true),
    logLevel: logLevel as LogLevel,
    queryLogEvery: sampleEvery(str('query-log-sample')!),
    metricsByNamespace,
    metricsNamespacesMax: int('metrics-namespaces-max'),
    nodeName,
  };
  refuseOpsOnDnsPorts(listen, config.metricsListen, config.healthPort);
  refuseSeveralNodePorts(listen);
  return config;
}

/**
 * Every setting at its default: what a constructor falls back to when a
 * caller (a test, the bench) leaves an option out, so defaults live here only.
 */
export const DEFAULTS: Config = validate(new Map(), [], {}, () => {});
