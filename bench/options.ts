/**
 * Command-line options of `npm run bench`: one table drives parsing, defaults
 * (normal and --quick) and the --help text, so they cannot drift apart.
 */
import type { Endpoint } from './loadgen.js';
import { parsePhases } from './phases.js';
import { BUILTIN_PEERS, builtinPeerCommands, ceilingCommand, isLoopback, parseEndpoint, type BuiltinPeer } from './targets.js';
import { WORKLOADS, WORKLOAD_NAMES, type WorkloadName } from './workloads.js';

export class UsageError extends Error {
  override name = 'UsageError';
}

export interface UpstreamOptions {
  readonly latencyMs: number;
  readonly jitterMs: number;
  readonly loss: number;
  readonly port: number;
}

/** Built-in targets: the agent, the agent with --local-negative, and the simulator itself. (`ceiling` is accepted too: it runs as a started peer.) */
export const BUILTIN_TARGETS = ['agent', 'agent+localneg', 'direct'] as const;
/** The bare dgram responder (bench/sim/ceiling.ts), named in --targets, started as a peer command. */
export const CEILING_TARGET = 'ceiling';
export type BuiltinTarget = (typeof BUILTIN_TARGETS)[number];
/** Extra agent arguments of each agent variant (on top of --agent-arg). */
export const AGENT_VARIANTS: Readonly<Record<Exclude<BuiltinTarget, 'direct'>, readonly string[]>> = {
  agent: [],
  'agent+localneg': ['--local-negative'],
};

export interface BenchOptions {
  readonly quick: boolean;
  readonly workloads: readonly WorkloadName[];
  readonly builtinTargets: readonly BuiltinTarget[];
  readonly target: Endpoint | null;
  readonly targetPid: number | null;
  readonly peers: ReadonlyArray<{ readonly name: string; readonly endpoint: Endpoint }>;
  /** --peer-cmd, then the built-in ones (--targets ceiling, --peers) as commands. */
  readonly peerCmds: ReadonlyArray<{ readonly name: string; readonly command: string }>;
  /** Said when the run starts and kept with its warnings (a --peers binary not installed). */
  readonly notes: readonly string[];
  readonly agentPath: string | null;
  readonly agentArgs: readonly string[];
  /** Node's own flags for the agent targets, before the agent's path (V8's: --trace-gc, --cpu-prof...). */
  readonly agentNodeArgs: readonly string[];
  readonly readyTimeoutMs: number;
  readonly host: string;
  readonly rates: readonly number[] | null;
  readonly ramp: { readonly start: number; readonly max: number; readonly factor: number } | null;
  readonly durationMs: number;
  readonly max: boolean;
  readonly concurrency: number;
  readonly maxDurationMs: number;
  readonly driver: 'node' | 'dnsperf';
  /** Lines of each dnsperf data file; null: sized by the workload (dnsperf.ts). */
  readonly dnsperfLines: number | null;
  readonly timeoutMs: number;
  readonly sockets: number;
  readonly seed: number;
  readonly zipf: number;
  readonly hitNames: number;
  readonly externalNames: number;
  readonly negativeNames: number;
  readonly negativeUniqueShare: number;
  readonly missExternalShare: number;
  readonly podmixExternalShare: number;
  readonly podmixSameNs: number;
  readonly podmixWarmup: number;
  readonly missWarmup: number;
  readonly ndots: number;
  /** Seconds of alternating kube-dns states, starting up. */
  readonly fallbackPhases: readonly number[];
  readonly fallbackOutage: 'stop' | 'blackhole';
  readonly fallbackRate: number;
  readonly fallbackColdShare: number;
  readonly fallbackTimeoutMs: number;
  readonly fallbackServices: number;
  readonly namespaces: number;
  readonly services: number;
  readonly clusterDomain: string;
  readonly cluster: UpstreamOptions;
  readonly external: UpstreamOptions;
  readonly clusterTtl: number;
  readonly externalTtl: number;
  readonly negativeTtl: number;
  readonly pinAgent: string | null;
  readonly pinGenerator: string | null;
  readonly pinSim: string | null;
  readonly pinAuto: boolean;
  readonly outDir: string | null;
  readonly summary: boolean;
  readonly quiet: boolean;
  readonly help: boolean;
}

interface Spec {
  readonly name: string;
  /** Argument placeholder; absent for flags. */
  readonly arg?: string;
  readonly def?: string;
  /** Default under --quick, if different. */
  readonly quick?: string;
  readonly repeat?: boolean;
  readonly help: string;
  readonly group: string;
}

const SPECS: readonly Spec[] = [
  { group: 'General', name: 'help', help: 'print this help and exit' },
  { group: 'General', name: 'quick', help: 'smoke run of a few seconds (small name sets, one low rate, short runs); what the test suite runs' },
  { group: 'General', name: 'workloads', arg: 'LIST', def: 'hit,miss,negative,podmix', help: `comma-separated, from: ${WORKLOAD_NAMES.join(', ')}` },
  { group: 'General', name: 'out', arg: 'DIR', def: 'bench/results', help: 'results go to DIR/<timestamp>/; the summary of a full run to DIR/summary/' },
  { group: 'General', name: 'no-summary', help: 'do not write DIR/summary/latest.md after a full run (one that ran at least the default workloads, not --quick)' },
  { group: 'General', name: 'quiet', help: 'only print the final table' },

  { group: 'Targets', name: 'targets', arg: 'LIST', def: 'agent,direct', help: 'built-in targets: agent (started against the simulator, watching its fake API server), agent+localneg (the same with --local-negative), direct (straight to the simulator) and ceiling (a bare Node dgram responder that patches the id of a stored answer: what any Node dgram server pays per query)' },
  { group: 'Targets', name: 'peers', arg: 'LIST', help: `also start these as caches in front of the simulator, each with a generated config, when installed (skipped with a warning when not): ${BUILTIN_PEERS.join(', ')}` },
  { group: 'Targets', name: 'target', arg: 'ADDR:PORT', help: 'measure this address instead of starting the agent (label "target"); it must use the simulator as upstream (see --cluster-port/--external-port)' },
  { group: 'Targets', name: 'target-pid', arg: 'PID', help: 'process of --target to charge CPU and memory to' },
  { group: 'Targets', name: 'peer', arg: 'NAME=ADDR:PORT', repeat: true, help: 'also measure a server already running at ADDR:PORT (repeatable)' },
  { group: 'Targets', name: 'peer-cmd', arg: "NAME='COMMAND'", repeat: true, help: 'start COMMAND with sh -c, in the foreground, after substituting {host} {port} {clusterHost} {clusterPort} {externalHost} {externalPort} {dir}; measured once it answers on {host}:{port} (repeatable)' },
  { group: 'Targets', name: 'agent', arg: 'PATH', def: 'dist/src/main.js', help: 'the agent entry point' },
  { group: 'Targets', name: 'agent-arg', arg: 'ARG', repeat: true, help: 'extra argument for the agent (repeatable)' },
  { group: 'Targets', name: 'agent-node-arg', arg: 'ARG', repeat: true, help: 'node\'s own flag for the agent targets, before its path (--trace-gc, --cpu-prof: V8\'s, which NODE_OPTIONS refuses; repeatable)' },
  { group: 'Targets', name: 'ready-timeout', arg: 'SEC', def: '15', help: 'how long a started target may take to answer its first query' },
  { group: 'Targets', name: 'host', arg: 'ADDR', def: '127.0.0.1', help: 'loopback address for the simulator, the agent and peers (127.0.0.0/8 or ::1)' },

  { group: 'Load', name: 'rates', arg: 'LIST', def: '1000,5000,20000', quick: '300', help: 'open-loop offered rates in queries/s (podmix: queries/s of the whole expansion)' },
  { group: 'Load', name: 'ramp', arg: 'START:MAX[:FACTOR]', help: 'instead of --rates: multiply the rate by FACTOR (default 2) from START up to MAX; a target that saturates (>1% timeouts or wrong answers) is not run at higher rates, and the ramp ends when all have, or when the generator falls behind' },
  { group: 'Load', name: 'duration', arg: 'SEC', def: '5', quick: '0.4', help: 'length of each open-loop run' },
  { group: 'Load', name: 'no-max', help: 'skip the closed-loop max-throughput runs' },
  { group: 'Load', name: 'concurrency', arg: 'N', def: '64', quick: '8', help: 'outstanding lookups in the max-throughput runs' },
  { group: 'Load', name: 'max-duration', arg: 'SEC', def: '5', quick: '0.3', help: 'length of each max-throughput run' },
  { group: 'Load', name: 'driver', arg: 'node|dnsperf', def: 'node', help: 'generator of the max-throughput runs; dnsperf must be on PATH (its answers are then checked by rcode only)' },
  { group: 'Load', name: 'dnsperf-lines', arg: 'N', help: 'lines of each dnsperf data file (default: 200000 of repeated names, which dnsperf loops over; of unique names (miss, negative), 200000 per second of --max-duration, at most 3000000: dnsperf asks each once and stops at the end of the file)' },
  { group: 'Load', name: 'timeout-ms', arg: 'MS', def: '1000', help: 'a query unanswered after this counts as a timeout' },
  { group: 'Load', name: 'sockets', arg: 'N', def: '4', quick: '2', help: 'generator UDP sockets per destination' },
  { group: 'Load', name: 'seed', arg: 'N', def: '1', help: 'seed of every random choice (names, types, popularity)' },

  { group: 'Workloads', name: 'zipf', arg: 'S', def: '1.0', help: 'Zipf exponent of name popularity' },
  { group: 'Workloads', name: 'hit-names', arg: 'N', def: '1000', quick: '50', help: 'distinct names of the hit workload' },
  { group: 'Workloads', name: 'external-names', arg: 'N', def: '500', quick: '20', help: 'distinct external names (hit and podmix)' },
  { group: 'Workloads', name: 'negative-names', arg: 'N', def: '200', quick: '20', help: 'distinct repeated NXDOMAIN names' },
  { group: 'Workloads', name: 'negative-unique-share', arg: 'F', def: '0.5', help: 'share of unique (never repeated) NXDOMAIN names in negative' },
  { group: 'Workloads', name: 'miss-external-share', arg: 'F', def: '0.5', help: 'share of external names in miss' },
  { group: 'Workloads', name: 'miss-warmup', arg: 'N', def: '5000', quick: '50', help: 'unique miss lookups (other names, same mix) sent before each miss run, so a target is measured past its start-up (JIT, first connections); 0 measures the cold start' },
  { group: 'Workloads', name: 'podmix-external-share', arg: 'F', def: '0.3', help: 'share of lookups of external names in podmix' },
  { group: 'Workloads', name: 'podmix-same-ns', arg: 'F', def: '0.7', help: "share of podmix service lookups aimed at the pod's own namespace" },
  { group: 'Workloads', name: 'podmix-warmup', arg: 'N', def: '5000', quick: '100', help: 'podmix lookups sent before each run (steady state)' },
  { group: 'Workloads', name: 'ndots', arg: 'N', def: '5', help: 'ndots of the pods in podmix' },

  { group: 'Fallback', name: 'fallback-phases', arg: 'LIST', def: '3,4,3', quick: '0.8,1.2,1', help: 'seconds of alternating kube-dns states, starting up: 3,4,3 = up 3 s, down 4 s, up 3 s (one run of their sum per target)' },
  { group: 'Fallback', name: 'fallback-outage', arg: 'stop|blackhole', def: 'stop', help: 'how kube-dns is down: stop (not listening: connections refused, a dead pod) or blackhole (listening, answering nothing: the agent waits --fallback-after)' },
  { group: 'Fallback', name: 'fallback-rate', arg: 'Q/S', def: '1000', quick: '200', help: 'offered query rate of the fallback runs (A+AAAA lookups, so lookups/s is half)' },
  { group: 'Fallback', name: 'fallback-cold-share', arg: 'F', def: '0.1', quick: '0.2', help: 'share of fallback lookups of never-asked names (the fb-* services: cache misses); the rest are warmed Zipf-popular services' },
  { group: 'Fallback', name: 'fallback-timeout-ms', arg: 'MS', def: '5000', help: 'client timeout of the fallback runs (glibc resolv.conf default timeout:5); later answers count as timed out, and as late when they come' },

  { group: 'Simulator', name: 'namespaces', arg: 'N', def: '20', quick: '3', help: 'namespaces ns-0..ns-(N-1)' },
  { group: 'Simulator', name: 'services', arg: 'N', def: '50', quick: '5', help: 'services per namespace' },
  { group: 'Simulator', name: 'fallback-services', arg: 'N', def: '50', quick: '20', help: 'services fb-0..fb-(N-1) per namespace, asked by the fallback workload only (its never-asked names)' },
  { group: 'Simulator', name: 'cluster-domain', arg: 'DOMAIN', def: 'cluster.local', help: 'cluster domain of the simulated zone (also passed to the agent with --cluster-domain; peers must be configured to match)' },
  { group: 'Simulator', name: 'cluster-latency-ms', arg: 'MS', def: '1', quick: '0', help: 'added latency of the cluster upstream' },
  { group: 'Simulator', name: 'cluster-jitter-ms', arg: 'MS', def: '0.5', quick: '0', help: 'uniform extra 0..MS' },
  { group: 'Simulator', name: 'cluster-loss', arg: 'F', def: '0', help: 'fraction of queries the cluster upstream drops' },
  { group: 'Simulator', name: 'external-latency-ms', arg: 'MS', def: '10', quick: '1', help: 'added latency of the external upstream' },
  { group: 'Simulator', name: 'external-jitter-ms', arg: 'MS', def: '5', quick: '0', help: 'uniform extra 0..MS' },
  { group: 'Simulator', name: 'external-loss', arg: 'F', def: '0', help: 'fraction of queries the external upstream drops' },
  { group: 'Simulator', name: 'cluster-ttl', arg: 'SEC', def: '30', help: 'TTL of cluster answers' },
  { group: 'Simulator', name: 'external-ttl', arg: 'SEC', def: '300', help: 'TTL of external answers' },
  { group: 'Simulator', name: 'negative-ttl', arg: 'SEC', def: '30', help: 'SOA TTL/MINIMUM of negative answers' },
  { group: 'Simulator', name: 'cluster-port', arg: 'PORT', def: '0', help: 'fixed port of the cluster upstream (0: any free port)' },
  { group: 'Simulator', name: 'external-port', arg: 'PORT', def: '0', help: 'fixed port of the external upstream (0: any free port)' },

  { group: 'Placement', name: 'pin', help: 'with taskset: agent and peers on the last CPU, generator and simulator on the others' },
  { group: 'Placement', name: 'pin-agent', arg: 'CPUS', help: 'taskset CPU list for the agent and peers (e.g. 1)' },
  { group: 'Placement', name: 'pin-generator', arg: 'CPUS', help: 'taskset CPU list for the generator (this process)' },
  { group: 'Placement', name: 'pin-sim', arg: 'CPUS', help: 'taskset CPU list for the simulator' },
];

const BY_NAME = new Map(SPECS.map((s) => [s.name, s]));

export function helpText(): string {
  const lines = [
    'Usage: npm run bench -- [options]',
    '',
    'Starts an upstream simulator (cluster zone + external zone), the agent pointed at it, and measures',
    'latency (open loop, from the intended send time) and throughput (closed loop) for each workload,',
    'through the agent and straight to the simulator, plus any peers. Writes bench/results/<timestamp>/.',
    'Exit codes: 0 ok; 1 failure (a target or the simulator did not start, an error); 2 usage error',
    '(including --driver dnsperf without dnsperf); 3 finished, but some answers were wrong; 130 interrupted.',
  ];
  let group = '';
  for (const s of SPECS) {
    if (s.group !== group) {
      group = s.group;
      lines.push('', `${group}:`);
    }
    const flag = `  --${s.name}${s.arg === undefined ? '' : ' ' + s.arg}`;
    const def = s.def === undefined ? '' : ` [${s.def}${s.quick === undefined ? '' : `; --quick: ${s.quick}`}]`;
    lines.push(flag.length < 34 ? `${flag.padEnd(34)}${s.help}${def}` : `${flag}\n${' '.repeat(34)}${s.help}${def}`);
  }
  return lines.join('\n') + '\n';
}

/** Markdown table of every option, for the README (kept here so it matches --help). */
export function optionsMarkdown(): string {
  const rows = ['| option | default (--quick) | meaning |', '|---|---|---|'];
  for (const s of SPECS) {
    const def = s.def === undefined ? '' : `${s.def}${s.quick === undefined ? '' : ` (${s.quick})`}`;
    rows.push(`| \`--${s.name}${s.arg === undefined ? '' : ' ' + s.arg.replace(/\|/g, '\\|')}\` | ${def} | ${s.help.replace(/\|/g, '\\|')} |`);
  }
  return rows.join('\n');
}

function collect(argv: readonly string[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '-h') {
      out.set('help', ['']);
      continue;
    }
    if (!a.startsWith('--')) throw new UsageError(`unexpected argument ${JSON.stringify(a)} (options start with --; see --help)`);
    const eq = a.indexOf('=');
    const name = eq < 0 ? a.slice(2) : a.slice(2, eq);
    const spec = BY_NAME.get(name);
    if (spec === undefined) throw new UsageError(`unknown option --${name} (see --help)`);
    let value = '';
    if (spec.arg !== undefined) {
      if (eq >= 0) value = a.slice(eq + 1);
      else {
        const next = argv[++i];
        if (next === undefined) throw new UsageError(`--${name} needs a value (${spec.arg})`);
        value = next;
      }
    } else if (eq >= 0) {
      throw new UsageError(`--${name} takes no value`);
    }
    const prev = out.get(name);
    if (prev !== undefined && spec.repeat !== true) throw new UsageError(`--${name} given twice`);
    out.set(name, [...(prev ?? []), value]);
  }
  return out;
}

/** What parseOptions looks up outside the arguments (tests replace it). */
export interface OptionsEnv {
  /** Where a --peers binary is; null: not installed. */
  readonly findBinary?: (name: string) => string | null;
}

export function parseOptions(argv: readonly string[], env: OptionsEnv = {}): BenchOptions {
  const given = collect(argv);
  const quick = given.has('quick');
  const raw = (name: string): string | undefined => {
    const v = given.get(name);
    if (v !== undefined) return v[v.length - 1];
    const s = BY_NAME.get(name);
    return quick && s?.quick !== undefined ? s.quick : s?.def;
  };
  const str = (name: string): string => raw(name) ?? '';
  const num = (name: string, min: number, max = Number.POSITIVE_INFINITY): number => {
    const s = str(name);
    const v = Number(s);
    if (s.trim() === '' || !Number.isFinite(v) || v < min || v > max) throw new UsageError(`--${name}: expected a number in [${min}, ${max}], got ${JSON.stringify(s)}`);
    return v;
  };
  const int = (name: string, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const v = num(name, min, max);
    if (!Number.isInteger(v)) throw new UsageError(`--${name}: expected an integer, got ${v}`);
    return v;
  };
  const list = (name: string): string[] => str(name).split(',').map((s) => s.trim()).filter((s) => s !== '');

  const workloads = list('workloads').map((w) => {
    if (!(WORKLOAD_NAMES as readonly string[]).includes(w)) throw new UsageError(`--workloads: unknown workload ${JSON.stringify(w)} (known: ${WORKLOAD_NAMES.join(', ')})`);
    const spec = WORKLOADS[w as WorkloadName];
    if (spec.build === null) throw new UsageError(`--workloads: ${spec.unavailable ?? `${w} is not available`}`);
    return w as WorkloadName;
  });
  if (workloads.length === 0) throw new UsageError('--workloads: empty');

  const targetNames = list('targets');
  const ceiling = targetNames.includes(CEILING_TARGET);
  const builtinTargets = targetNames.filter((t) => t !== CEILING_TARGET).map((t) => {
    if (!(BUILTIN_TARGETS as readonly string[]).includes(t)) throw new UsageError(`--targets: expected some of ${[...BUILTIN_TARGETS, CEILING_TARGET].join(', ')}, got ${JSON.stringify(t)}`);
    return t as BuiltinTarget;
  });
  const builtinPeers = list('peers').map((p) => {
    if (!(BUILTIN_PEERS as readonly string[]).includes(p)) throw new UsageError(`--peers: expected some of ${BUILTIN_PEERS.join(', ')}, got ${JSON.stringify(p)}`);
    return p as BuiltinPeer;
  });

  const named = (name: string): Array<{ name: string; value: string }> =>
    (given.get(name) ?? []).map((v) => {
      const eq = v.indexOf('=');
      const n = eq < 0 ? '' : v.slice(0, eq).trim();
      if (!/^[A-Za-z0-9_.-]+$/.test(n)) throw new UsageError(`--${name}: expected NAME=..., with NAME of letters, digits, _ . -; got ${JSON.stringify(v)}`);
      return { name: n, value: v.slice(eq + 1) };
    });
  const endpoint = (flag: string, v: string): Endpoint => {
    try {
      return parseEndpoint(v);
    } catch (err) {
      throw new UsageError(`--${flag}: ${(err as Error).message}`);
    }
  };
  const peers = named('peer').map((p) => ({ name: p.name, endpoint: endpoint('peer', p.value) }));
  const peerCmds = named('peer-cmd').map((p) => {
    if (p.value.trim() === '') throw new UsageError(`--peer-cmd ${p.name}: empty command`);
    if (!p.value.includes('{port}')) throw new UsageError(`--peer-cmd ${p.name}: the command must listen on {port} (and {host})`);
    return { name: p.name, command: p.value };
  });
  const target = given.has('target') ? endpoint('target', str('target')) : null;
  const domain = str('cluster-domain').toLowerCase().replace(/\.$/, '');
  if (!/^[a-z0-9-]+(\.[a-z0-9-]+)*$/.test(domain)) throw new UsageError('--cluster-domain: not a domain name');
  const started = builtinPeerCommands(builtinPeers, domain, env.findBinary);
  if (ceiling) peerCmds.push({ name: CEILING_TARGET, command: ceilingCommand(domain) });
  peerCmds.push(...started.commands);
  const names = [...(target !== null ? ['target'] : builtinTargets), ...peers.map((p) => p.name), ...peerCmds.map((p) => p.name)];
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup !== undefined) throw new UsageError(`two targets are named ${JSON.stringify(dup)}`);
  if (names.length === 0) throw new UsageError('nothing to measure (no --targets, --target or peers)');

  const host = str('host');
  if (!isLoopback(host)) throw new UsageError('--host: must be a loopback address (127.0.0.0/8 or ::1)');

  let rates: number[] | null = null;
  let ramp: BenchOptions['ramp'] = null;
  if (given.has('ramp')) {
    if (given.has('rates')) throw new UsageError('--rates and --ramp exclude each other');
    const parts = str('ramp').split(':').map(Number);
    const [start = NaN, max = NaN, factor = 2] = parts;
    if (parts.length < 2 || parts.length > 3 || !(start > 0) || !(max >= start) || !(factor > 1)) throw new UsageError('--ramp: expected START:MAX[:FACTOR] with 0 < START <= MAX and FACTOR > 1');
    ramp = { start, max, factor };
  } else {
    rates = list('rates').map((r) => {
      const v = Number(r);
      if (!(v > 0) || !Number.isFinite(v)) throw new UsageError(`--rates: bad rate ${JSON.stringify(r)}`);
      return v;
    });
    if (rates.length === 0) throw new UsageError('--rates: empty');
  }

  const driver = str('driver');
  if (driver !== 'node' && driver !== 'dnsperf') throw new UsageError('--driver: expected node or dnsperf');
  const pin = (name: string): string | null => {
    const v = given.get(name)?.[0];
    if (v === undefined) return null;
    if (!/^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$/.test(v)) throw new UsageError(`--${name}: expected a CPU list such as 1 or 0-1 or 0,2`);
    return v;
  };
  const targetPid = given.has('target-pid') ? int('target-pid', 1) : null;
  if (targetPid !== null && target === null) throw new UsageError('--target-pid needs --target');
  const upstream = (p: 'cluster' | 'external'): UpstreamOptions => ({
    latencyMs: num(`${p}-latency-ms`, 0, 10000),
    jitterMs: num(`${p}-jitter-ms`, 0, 10000),
    loss: num(`${p}-loss`, 0, 1),
    port: int(`${p}-port`, 0, 65535),
  });
  let fallbackPhases: number[];
  try {
    fallbackPhases = parsePhases(str('fallback-phases')).map((p) => p.durationMs / 1000);
  } catch (err) {
    throw new UsageError(`--fallback-phases: ${(err as Error).message}`);
  }
  const outage = str('fallback-outage');
  if (outage !== 'stop' && outage !== 'blackhole') throw new UsageError('--fallback-outage: expected stop or blackhole');

  return {
    quick,
    workloads,
    builtinTargets: target !== null ? builtinTargets.filter((t) => t === 'direct') : builtinTargets,
    target,
    targetPid,
    peers,
    peerCmds,
    notes: started.notes,
    agentPath: given.has('agent') ? str('agent') : null,
    agentArgs: given.get('agent-arg') ?? [],
    agentNodeArgs: given.get('agent-node-arg') ?? [],
    readyTimeoutMs: num('ready-timeout', 0.1, 600) * 1000,
    host,
    rates,
    ramp,
    durationMs: num('duration', 0.05, 3600) * 1000,
    max: !given.has('no-max'),
    concurrency: int('concurrency', 1, 100000),
    maxDurationMs: num('max-duration', 0.05, 3600) * 1000,
    driver,
    dnsperfLines: given.has('dnsperf-lines') ? int('dnsperf-lines', 1, 100_000_000) : null,
    timeoutMs: num('timeout-ms', 1, 60000),
    sockets: int('sockets', 1, 64),
    seed: int('seed', 0, 2 ** 32 - 1),
    zipf: num('zipf', 0, 10),
    hitNames: int('hit-names', 1, 10_000_000),
    externalNames: int('external-names', 1, 10_000_000),
    negativeNames: int('negative-names', 1, 10_000_000),
    negativeUniqueShare: num('negative-unique-share', 0, 1),
    missExternalShare: num('miss-external-share', 0, 1),
    podmixExternalShare: num('podmix-external-share', 0, 1),
    podmixSameNs: num('podmix-same-ns', 0, 1),
    podmixWarmup: int('podmix-warmup', 0, 10_000_000),
    missWarmup: int('miss-warmup', 0, 10_000_000),
    ndots: int('ndots', 0, 15),
    fallbackPhases,
    fallbackOutage: outage,
    fallbackRate: num('fallback-rate', 1, 10_000_000),
    fallbackColdShare: num('fallback-cold-share', 0, 1),
    fallbackTimeoutMs: num('fallback-timeout-ms', 1, 60000),
    fallbackServices: int('fallback-services', 0, 100000),
    namespaces: int('namespaces', 1, 100000),
    services: int('services', 1, 100000),
    clusterDomain: domain,
    cluster: upstream('cluster'),
    external: upstream('external'),
    clusterTtl: int('cluster-ttl', 0, 86400),
    externalTtl: int('external-ttl', 0, 86400),
    negativeTtl: int('negative-ttl', 0, 86400),
    pinAgent: pin('pin-agent'),
    pinGenerator: pin('pin-generator'),
    pinSim: pin('pin-sim'),
    pinAuto: given.has('pin'),
    outDir: given.has('out') ? str('out') : null,
    // Only a run of every default workload replaces the published summary (a partial run would quote less).
    summary: !given.has('no-summary') && !quick && (BY_NAME.get('workloads')?.def ?? '').split(',').every((w) => workloads.includes(w as WorkloadName)),
    quiet: given.has('quiet'),
    help: given.has('help'),
  };
}
