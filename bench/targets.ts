/**
 * What gets measured, and its lifecycle: the agent (spawned against the
 * simulator), an address given with --target, the simulator itself ("direct",
 * what a pod gets without a node-local cache), and peers given as an address
 * or as a command the harness starts. Everything listens on loopback, every
 * started process is stopped at the end, and the agent only ever sees the
 * simulator's addresses and a resolv.conf written here.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { accessSync, closeSync, constants, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { deployedEnv } from './deployed-env.js';
import type { Endpoint } from './loadgen.js';
import type { SimProcess } from './sim/control.js';

export type TargetKind = 'agent' | 'target' | 'direct' | 'peer';

export interface Target {
  readonly name: string;
  readonly kind: TargetKind;
  /** Where queries go: [cluster names, external names]. */
  readonly routes: readonly [Endpoint, Endpoint];
  /** Process whose CPU and memory are charged to this target (null: not ours to see). */
  readonly pid: number | null;
  /** Exact command line for started targets. */
  readonly command: string | null;
  readonly logFile: string | null;
  alive(): boolean;
  stop(): Promise<void>;
  /** Synchronous last resort for the process 'exit' handler. */
  killNow(): void;
}

const PROBE_NAME = 'ready.bench.example';
const PROBE_INTERVAL_MS = 100;
const PROBE_WAIT_MS = 250;
const STOP_GRACE_MS = 5000;
const LOG_TAIL_BYTES = 2000;

export function formatEndpoint(ep: Endpoint): string {
  return net.isIPv6(ep.host) ? `[${ep.host}]:${ep.port}` : `${ep.host}:${ep.port}`;
}

export function isLoopback(host: string): boolean {
  if (net.isIPv4(host)) return host.startsWith('127.');
  if (net.isIPv6(host)) return host === '::1' || host === '0:0:0:0:0:0:0:1';
  return false;
}

/** Parses `ADDR:PORT` or `[V6]:PORT`; loopback only (the bench never sends off the machine). */
export function parseEndpoint(s: string): Endpoint {
  const m = /^\[([^\]]+)\]:([0-9]+)$/.exec(s) ?? /^([^:]+):([0-9]+)$/.exec(s);
  if (m === null) throw new Error(`expected ADDR:PORT, got ${JSON.stringify(s)}`);
  const host = m[1] as string;
  const port = Number(m[2]);
  if (!net.isIP(host)) throw new Error(`${JSON.stringify(host)} is not an IP address`);
  if (!isLoopback(host)) throw new Error(`${s}: only loopback addresses (127.0.0.0/8, ::1) may be measured`);
  if (port < 1 || port > 65535) throw new Error(`${s}: bad port`);
  return { host, port };
}

/** Ports freePort has handed out in this process: each is for one listener (an agent's DNS port, its /metrics...). */
const handedOut = new Set<number>();

/** The kernel's ephemeral port range (where port 0 binds land); Linux's default when it cannot be read. */
function ephemeralRange(): [number, number] {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (low !== undefined && high !== undefined && low > 0 && high >= low) return [low, high];
  } catch {
    /* not Linux */
  }
  return [32768, 60999];
}

/**
 * A port free for both UDP and TCP on `host` right now, never one handed out before by this process. Checked,
 * then closed until the agent or peer (a process still starting) binds it: in that window a port of the
 * ephemeral range may go to any socket bound with port 0 to the wildcard (every DNS client's UDP socket), so
 * the port is taken below that range when there is room (10000 up to its start).
 */
export async function freePort(host: string): Promise<number> {
  const [ephemeralLow] = ephemeralRange();
  for (let attempt = 0; attempt < 50; attempt++) {
    const wanted = ephemeralLow > 20_000 ? 10_000 + Math.floor(Math.random() * (ephemeralLow - 10_000)) : 0;
    if (handedOut.has(wanted)) continue;
    const udp = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    const port = await new Promise<number | null>((resolve, reject) => {
      udp.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' || err.code === 'EACCES' ? resolve(null) : reject(err)));
      udp.bind({ port: wanted, address: host, exclusive: true }, () => resolve(udp.address().port));
    });
    if (port === null) {
      udp.close();
      continue;
    }
    const tcpFree = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen({ host, port, exclusive: true }, () => srv.close(() => resolve(true)));
    });
    await new Promise<void>((resolve) => udp.close(() => resolve()));
    if (tcpFree && !handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no free port on ${host}`);
}

function probeQuery(id: number): Buffer {
  const labels = PROBE_NAME.split('.');
  const parts: Buffer[] = [Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])];
  for (const l of labels) parts.push(Buffer.from([l.length]), Buffer.from(l, 'ascii'));
  parts.push(Buffer.from([0, 0, 1, 0, 1]));
  return Buffer.concat(parts);
}

/** One UDP query; true if anything with our id comes back within `waitMs`. */
export function probe(ep: Endpoint, waitMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = dgram.createSocket(net.isIPv6(ep.host) ? 'udp6' : 'udp4');
    const id = Math.floor(Math.random() * 65536);
    let settled = false;
    const finish = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        sock.close();
      } catch {
        /* closed */
      }
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), waitMs);
    sock.on('error', () => finish(false));
    sock.on('message', (msg) => {
      if (msg.length >= 12 && msg.readUInt16BE(0) === id) finish(true);
    });
    sock.send(probeQuery(id), ep.port, ep.host, (err) => {
      if (err) finish(false);
    });
  });
}

/** Polls until `ep` answers, `alive()` turns false, or `timeoutMs` passes. */
export async function waitUntilAnswering(ep: Endpoint, timeoutMs: number, alive: () => boolean, what: string, logFile: string | null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!alive()) throw new Error(`${what} exited before answering on ${formatEndpoint(ep)}${logTail(logFile)}`);
    if (await probe(ep, PROBE_WAIT_MS)) return;
    await new Promise((r) => setTimeout(r, PROBE_INTERVAL_MS));
  }
  throw new Error(`${what} did not answer on ${formatEndpoint(ep)} within ${timeoutMs} ms${logTail(logFile)}`);
}

function logTail(file: string | null): string {
  if (file === null) return '';
  try {
    const text = readFileSync(file, 'utf8');
    const tail = text.slice(-LOG_TAIL_BYTES).trim();
    return tail === '' ? '' : `\n--- last output (${file}) ---\n${tail}`;
  } catch {
    return '';
  }
}

export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A spawned process with its logs in files, stopped with SIGTERM then SIGKILL (its whole group if `group`). */
class ProcessTarget implements Target {
  #exited = false;
  readonly #exit: Promise<void>;
  constructor(
    readonly name: string,
    readonly kind: TargetKind,
    readonly routes: readonly [Endpoint, Endpoint],
    readonly command: string,
    readonly logFile: string,
    readonly child: ChildProcess,
    readonly group: boolean,
  ) {
    this.#exit = new Promise((resolve) => {
      child.once('exit', () => {
        this.#exited = true;
        resolve();
      });
    });
    child.on('error', () => {
      this.#exited = true;
    });
  }
  get pid(): number | null {
    return this.child.pid ?? null;
  }
  alive(): boolean {
    return !this.#exited && this.child.exitCode === null && this.child.signalCode === null;
  }
  #signal(sig: NodeJS.Signals): void {
    const pid = this.child.pid;
    if (pid === undefined) return;
    try {
      if (this.group) process.kill(-pid, sig);
      else this.child.kill(sig);
    } catch {
      /* already gone */
    }
  }
  async stop(): Promise<void> {
    if (!this.alive()) {
      // The leader is gone; make sure nothing it started lingers in its group.
      if (this.group) this.#signal('SIGKILL');
      return;
    }
    this.#signal('SIGTERM');
    const timer = setTimeout(() => this.#signal('SIGKILL'), STOP_GRACE_MS);
    await this.#exit;
    clearTimeout(timer);
    if (this.group) this.#signal('SIGKILL');
  }
  killNow(): void {
    if (this.alive() || this.group) this.#signal('SIGKILL');
  }
}

function openLog(file: string): number {
  mkdirSync(path.dirname(file), { recursive: true });
  return openSync(file, 'a');
}

export interface AgentSpec {
  /** Target name (agent, agent+localneg); its log is <name>.log. */
  readonly name: string;
  readonly agentPath: string;
  readonly extraArgs: readonly string[];
  /** Flags for node itself, before the agent's path (V8's, which neither NODE_OPTIONS nor the agent can set). */
  readonly nodeArgs?: readonly string[];
  /** Kubeconfig of the simulator's fake API server (null: the agent runs without the cluster view). */
  readonly kubeconfig: string | null;
  readonly clusterDomain: string;
  readonly host: string;
  readonly sim: SimProcess;
  readonly workDir: string;
  readonly pin: string | null;
  readonly readyTimeoutMs: number;
}

/**
 * The environment an agent runs with: the bench's, without a test runner's
 * loader flags, and the DaemonSet's own (its NODE_OPTIONS: a 1 MiB young
 * generation on the main thread, whose collections are part of a miss's
 * latency; AS_DEPLOYED=0 leaves them out).
 */
function agentEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  return { ...env, ...deployedEnv() };
}

const knownFlags = new Map<string, ReadonlySet<string>>();

/** The flags the agent at `agentPath` knows, from its --help (cached; empty if it cannot say). */
export function agentFlags(agentPath: string): ReadonlySet<string> {
  let flags = knownFlags.get(agentPath);
  if (flags === undefined) {
    const r = spawnSync(process.execPath, [agentPath, '--help'], { encoding: 'utf8', timeout: 30_000, env: agentEnv() });
    flags = new Set([...`${r.stdout ?? ''}\n${r.stderr ?? ''}`.matchAll(/^\s+--([a-z0-9][a-z0-9-]*)/gm)].map((m) => m[1] as string));
    knownFlags.set(agentPath, flags);
  }
  return flags;
}

/**
 * Listeners besides DNS that an agent opens on fixed ports by default (the
 * /health port, /metrics): each agent gets free ones of its own, so two agent
 * variants (or anything else on the machine) do not collide. Only flags the
 * agent knows, and not when given with --agent-arg.
 */
async function opsArgs(spec: AgentSpec): Promise<string[]> {
  const known = agentFlags(spec.agentPath);
  const given = (f: string): boolean => spec.extraArgs.some((a) => a === `--${f}` || a.startsWith(`--${f}=`));
  const out: string[] = [];
  if (known.has('health-port') && !given('health-port')) out.push('--health-port', String(await freePort(spec.host)));
  if (known.has('metrics-listen-address') && !given('metrics-listen-address')) out.push('--metrics-listen-address', formatEndpoint({ host: spec.host, port: await freePort(spec.host) }));
  return out;
}

/**
 * Starts the agent against the simulator, per the agent's CLI contract, and
 * waits until it answers (its cluster view may still be syncing: the suite
 * waits for that on the fake API server's side).
 */
export async function startAgent(spec: AgentSpec): Promise<Target> {
  const port = await freePort(spec.host);
  const listen: Endpoint = { host: spec.host, port };
  mkdirSync(spec.workDir, { recursive: true });
  // The agent reads nameservers from resolv.conf; --upstream-nameservers overrides them with the
  // simulator, and this file only names loopback so nothing can leak to the machine's resolver.
  const resolvConf = path.join(spec.workDir, 'resolv.conf');
  writeFileSync(resolvConf, `# written by the bench: the agent must only talk to the simulator\nnameserver ${spec.sim.external.host}\noptions ndots:5\n`);
  const args = [
    spec.agentPath,
    '--listen', formatEndpoint(listen),
    '--upstream-addr', formatEndpoint(spec.sim.cluster),
    '--upstream-nameservers', formatEndpoint(spec.sim.external),
    '--resolv-conf', resolvConf,
    '--cluster-domain', spec.clusterDomain,
    '--log-level', 'warn',
    ...(spec.kubeconfig === null ? [] : ['--kubeconfig', spec.kubeconfig]),
    ...(await opsArgs(spec)),
    ...spec.extraArgs,
  ];
  const node = [process.execPath, ...(spec.nodeArgs ?? []), ...args];
  const argv = spec.pin === null ? node : ['taskset', '-c', spec.pin, ...node];
  const logFile = path.join(spec.workDir, `${spec.name.replace(/[^A-Za-z0-9_.+-]/g, '_')}.log`);
  const fd = openLog(logFile);
  // Loader flags of a test runner have no business in the agent.
  const child = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', fd, fd], env: agentEnv() });
  closeSync(fd);
  const t = new ProcessTarget(spec.name, 'agent', [listen, listen], argv.map(shellQuote).join(' '), logFile, child, false);
  try {
    await waitUntilAnswering(listen, spec.readyTimeoutMs, () => t.alive(), 'the agent', logFile);
  } catch (err) {
    await t.stop();
    throw err;
  }
  return t;
}

export interface PeerCmdSpec {
  readonly name: string;
  readonly template: string;
  readonly host: string;
  readonly sim: SimProcess;
  readonly workDir: string;
  readonly pin: string | null;
  readonly readyTimeoutMs: number;
}

export const PEER_PLACEHOLDERS = ['{host}', '{port}', '{clusterHost}', '{clusterPort}', '{externalHost}', '{externalPort}', '{dir}'] as const;

export function substitute(template: string, values: Record<string, string>): string {
  return template.replace(/\{(host|port|clusterHost|clusterPort|externalHost|externalPort|dir)\}/g, (_, k: string) => values[k] ?? '');
}

/** Starts a peer command (in its own process group, so all it forks is stopped with it) and waits until it answers. */
export async function startPeerCmd(spec: PeerCmdSpec): Promise<Target> {
  const port = await freePort(spec.host);
  const listen: Endpoint = { host: spec.host, port };
  const dir = path.join(spec.workDir, `peer-${spec.name}`);
  mkdirSync(dir, { recursive: true });
  const cmd = substitute(spec.template, {
    host: spec.host,
    port: String(port),
    clusterHost: spec.sim.cluster.host,
    clusterPort: String(spec.sim.cluster.port),
    externalHost: spec.sim.external.host,
    externalPort: String(spec.sim.external.port),
    dir,
  });
  const argv = spec.pin === null ? ['sh', '-c', cmd] : ['taskset', '-c', spec.pin, 'sh', '-c', cmd];
  const logFile = path.join(dir, 'output.log');
  const fd = openLog(logFile);
  const child = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  const t = new ProcessTarget(spec.name, 'peer', [listen, listen], argv.map(shellQuote).join(' '), logFile, child, true);
  try {
    await waitUntilAnswering(listen, spec.readyTimeoutMs, () => t.alive(), `peer ${spec.name}`, logFile);
  } catch (err) {
    await t.stop();
    throw err;
  }
  return t;
}

/** A target we only send to (an address given on the command line). */
export function addressTarget(name: string, kind: TargetKind, ep: Endpoint, pid: number | null): Target {
  return {
    name,
    kind,
    routes: [ep, ep],
    pid,
    command: null,
    logFile: null,
    alive: () => true,
    stop: () => Promise.resolve(),
    killNow: () => {},
  };
}

/** The simulator itself: cluster names to the fake kube-dns, the rest to the fake host resolver. */
export function directTarget(sim: SimProcess): Target {
  return {
    name: 'direct',
    kind: 'direct',
    routes: [sim.cluster, sim.external],
    pid: sim.pid,
    command: null,
    logFile: null,
    alive: () => sim.alive,
    // The simulator is stopped on its own, after every other target.
    stop: () => Promise.resolve(),
    killNow: () => {},
  };
}

// ---------------------------------------------------------------- built-in peers: ceiling, unbound, dnsmasq

/** Peers the harness knows how to start and configure (--peers). */
export const BUILTIN_PEERS = ['unbound', 'dnsmasq'] as const;
export type BuiltinPeer = (typeof BUILTIN_PEERS)[number];

/** Where daemons live on Debian and most distributions; often not on a non-root PATH. */
const SBIN_DIRS = ['/usr/sbin', '/usr/local/sbin', '/sbin'];

/** The executable `name` on PATH or in the sbin directories, or null. */
export function findBinary(name: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter).filter((d) => d !== ''), ...SBIN_DIRS];
  for (const dir of dirs) {
    const p = path.join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* keep looking */
    }
  }
  return null;
}

/**
 * The `ceiling` target as a peer command: bench/sim/ceiling.ts (a bare
 * `dgram` responder that patches the id of a stored answer), run by this
 * Node the way this module runs (TypeScript under the test runner,
 * JavaScript from dist/).
 */
export function ceilingCommand(clusterDomain: string): string {
  const self = fileURLToPath(import.meta.url);
  const script = path.join(path.dirname(self), 'sim', `ceiling${path.extname(self)}`);
  const node = [process.execPath, ...process.execArgv, script].map(shellQuote).join(' ');
  return `exec ${node} --host {host} --port {port} --cluster-host {clusterHost} --cluster-port {clusterPort} --external-host {externalHost} --external-port {externalPort} --cluster-domain ${shellQuote(clusterDomain)}`;
}

/**
 * Peer commands for unbound and dnsmasq as caches in front of the simulator,
 * in the --peer-cmd template language: the cluster zone and the reverse
 * zones to the simulated kube-dns, everything else to the simulated host
 * resolver, on {host}:{port}. Caches sized like the agent's defaults
 * (9,984 + 9,984 entries, 64 MiB): dnsmasq 10,000 names, unbound 32 MiB of
 * messages + 32 MiB of RRsets. One thread each (the agent's dgram backend
 * is one thread). Neither reads the machine's configuration or resolv.conf.
 */
export function peerCommand(peer: BuiltinPeer, binary: string, clusterDomain: string): string {
  const domain = clusterDomain.replace(/\.$/, '');
  if (peer === 'dnsmasq') {
    return [
      'exec', shellQuote(binary), '--keep-in-foreground', '--conf-file=/dev/null', '--no-resolv', '--no-hosts', '--bind-interfaces',
      '--listen-address={host}', '--port={port}', '--pid-file={dir}/dnsmasq.pid', '--log-facility=-',
      `--server=/${domain}/{clusterHost}#{clusterPort}`, '--server=/in-addr.arpa/{clusterHost}#{clusterPort}', '--server=/ip6.arpa/{clusterHost}#{clusterPort}',
      '--server={externalHost}#{externalPort}', '--cache-size=10000', '--dns-forward-max=4096',
    ].join(' ');
  }
  const conf = [
    'server:',
    '  interface: {host}', '  port: {port}', '  do-daemonize: no', '  username: ""', '  chroot: ""', '  directory: "{dir}"', '  pidfile: ""',
    '  use-syslog: no', '  logfile: ""', '  verbosity: 0', '  num-threads: 1',
    '  access-control: 127.0.0.0/8 allow', '  access-control: ::1 allow',
    // The simulator is on loopback, which unbound refuses to query by default.
    '  do-not-query-localhost: no', '  module-config: "iterator"', '  qname-minimisation: no',
    '  msg-cache-size: 32m', '  rrset-cache-size: 32m',
    // Socket buffers like the agent's, and room for dnsperf's outstanding queries: without them unbound drops bursts.
    '  so-rcvbuf: 4m', '  so-sndbuf: 4m', '  num-queries-per-thread: 4096',
    // unbound answers these itself by default (RFC 6762 .local, RFC 6303 private reverse zones).
    ...(domain === 'local' || domain.endsWith('.local') ? ['  local-zone: "local." nodefault'] : []),
    '  local-zone: "10.in-addr.arpa." nodefault',
    'remote-control:', '  control-enable: no',
    'forward-zone:', `  name: "${domain}."`, '  forward-addr: {clusterHost}@{clusterPort}',
    'forward-zone:', '  name: "in-addr.arpa."', '  forward-addr: {clusterHost}@{clusterPort}',
    'forward-zone:', '  name: "ip6.arpa."', '  forward-addr: {clusterHost}@{clusterPort}',
    'forward-zone:', '  name: "."', '  forward-addr: {externalHost}@{externalPort}',
  ];
  return `printf '%s\\n' ${conf.map(shellQuote).join(' ')} > {dir}/unbound.conf && exec ${shellQuote(binary)} -d -c {dir}/unbound.conf`;
}

/**
 * The peer commands for --peers: each peer whose binary is found, and a
 * note for each one skipped. `find` is for tests.
 */
export function builtinPeerCommands(
  peers: readonly BuiltinPeer[],
  clusterDomain: string,
  find: (name: string) => string | null = findBinary,
): { commands: Array<{ name: string; command: string }>; notes: string[] } {
  const commands: Array<{ name: string; command: string }> = [];
  const notes: string[] = [];
  for (const p of peers) {
    const bin = find(p);
    if (bin === null) notes.push(`--peers ${p}: not installed (${p} not found on PATH or in ${SBIN_DIRS.join(', ')}); skipped`);
    else commands.push({ name: p, command: peerCommand(p, bin, clusterDomain) });
  }
  return { commands, notes };
}
