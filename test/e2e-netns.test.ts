// End to end through real network namespaces (design.md section 5, e2e): a
// pod's own resolver (glibc, via `getent`) with kubelet's resolv.conf resolves
// Kubernetes-style names through the built agent across a veth link.
//
//   netns "pod"  (10.244.0.2/24 on eth0, default via 10.244.0.1)
//     /etc/netns/<pod>/resolv.conf: kubelet's (search list, ndots:5, nameserver 169.254.20.10)
//     /etc/netns/<pod>/nsswitch.conf: "hosts: dns" (no /etc/hosts, no other NSS module)
//     musl-getaddrinfo (test/helpers/musl-getaddrinfo.c, built static at test time): Alpine's resolver
//        | veth
//   netns "node" (10.244.0.1/24 and 169.254.20.10/32 on veth0)
//     agent: node dist/src/main.js --listen 169.254.20.10:53
//       cluster.local -> fake kube-dns  (127.0.0.1:<port>, TCP)   test/helpers/netns-upstream.ts cluster
//       other names   -> fake host DNS  (127.0.0.1:<port>, UDP)   test/helpers/netns-upstream.ts external
//
// Needs root and iproute2; skipped otherwise. All traffic stays inside the two
// namespaces the test creates (127.0.0.1 above is the node namespace's own
// loopback); the agent never sees the machine's resolver (explicit upstreams
// and a resolv.conf the test wrote). Children get a clean environment, so no
// LOCALDOMAIN / RES_OPTIONS / HOSTALIASES from the caller can change what
// glibc does.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NetnsUpstreamLine, NetnsUpstreamStats, NetnsZone } from './helpers/netns-upstream.js';
import { writeKubeconfig } from '../testkit/cluster.js';
import { Lines } from './helpers/netns-proc.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const AGENT_MAIN = join(ROOT, 'dist/src/main.js');
const UPSTREAM_SCRIPT = fileURLToPath(new URL('./helpers/netns-upstream.ts', import.meta.url));
const MUSL_GAI_SRC = fileURLToPath(new URL('./helpers/musl-getaddrinfo.c', import.meta.url));
/** What the fake kube-dns answers for many.default.svc.cluster.local (test/helpers/netns-upstream.ts). */
const MANY_A = Array.from({ length: 60 }, (_, i) => `10.96.100.${i + 1}`);
const PREFIX = 'nldns-';
const NODE_NS = `${PREFIX}node-${process.pid}`;
const POD_NS = `${PREFIX}pod-${process.pid}`;
const POD_ETC = `/etc/netns/${POD_NS}`;
const LOCAL_IP = '169.254.20.10';
const NODE_IP = '10.244.0.1';
const POD_IP = '10.244.0.2';
/** Exactly what kubelet writes for a pod in namespace "default" with ClusterFirst and NodeLocal DNSCache. */
const KUBELET_RESOLV_CONF = `search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver ${LOCAL_IP}\noptions ndots:5\n`;
/** Agent deadline for a cluster DNS query; after it, SERVFAIL. */
const AGENT_TIMEOUT = '500ms';
/** Upper bound for one getent/dig run; a healthy one takes milliseconds, the kube-dns-dead ones a few seconds. */
const CLIENT_TIMEOUT_MS = 20_000;
// Processes started through the TypeScript loader take seconds each on a loaded 2-core machine.
const START_TIMEOUT_MS = 60_000;

/** The only environment children get: nothing from the caller that glibc, ts-node or tap would read. */
const CHILD_ENV: NodeJS.ProcessEnv = {
  PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  LANG: 'C',
  TS_NODE_TRANSPILE_ONLY: '1',
};

interface Ran {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  error: string | null;
}

function runSync(cmd: string, args: readonly string[], timeoutMs = 10_000): Ran {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, killSignal: 'SIGKILL', env: CHILD_ENV, cwd: ROOT });
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '', error: r.error ? r.error.message : null };
}

function mustSync(cmd: string, args: readonly string[], timeoutMs = 10_000): string {
  const r = runSync(cmd, args, timeoutMs);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: status ${r.status} ${r.signal ?? ''} ${r.error ?? ''} ${r.stderr.trim()}`);
  return r.stdout;
}

/** Asynchronous, so this process keeps reading the agent's and the fakes' pipes meanwhile; killed at the timeout. */
function run(cmd: string, args: readonly string[], timeoutMs = CLIENT_TIMEOUT_MS): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: CHILD_ENV, cwd: ROOT, timeout: timeoutMs, killSignal: 'SIGKILL', stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let error: string | null = null;
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.on('error', (err) => { error = err.message; });
    child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr, error }));
  });
}

const inPod = (args: readonly string[], timeoutMs?: number): Promise<Ran> => run('ip', ['netns', 'exec', POD_NS, ...args], timeoutMs);
const getent = (db: 'ahosts' | 'hosts', name: string): Promise<Ran> => inPod(['getent', db, name]);

/** Distinct addresses (first column) of getent output, in order. */
function addresses(out: string): string[] {
  return [...new Set(out.split('\n').map((l) => l.trim().split(/\s+/)[0] ?? '').filter((a) => a !== ''))];
}
/** `getent ahosts` prints the canonical name (AI_CANONNAME) after the first address: the search-list candidate that answered. */
function canonicalName(out: string): string {
  return out.split('\n')[0]?.trim().split(/\s+/)[2] ?? '';
}
const describe = (r: Ran): string => `status=${r.status} signal=${r.signal ?? '-'} stdout=${JSON.stringify(r.stdout.trim())} stderr=${JSON.stringify(r.stderr.trim())}${r.error ? ` error=${r.error}` : ''}`;

function hasCommand(cmd: string, args: readonly string[]): boolean {
  const r = spawnSync(cmd, args, { stdio: 'ignore', timeout: 5000, env: CHILD_ENV });
  return r.error === undefined && r.status !== null;
}

/** A child's output, line by line, with a bounded wait for the next line that matches. */
/** Runs `argv` inside the node namespace; with setpriv, the child is SIGKILLed if this process dies. */
function spawnInNode(argv: readonly string[], pdeathsig: boolean): ChildProcess {
  const prefix = pdeathsig ? ['setpriv', '--pdeathsig', 'KILL', '--'] : [];
  // `ip netns exec` execs the command itself (no fork), so child.pid is the node process.
  return spawn('ip', ['netns', 'exec', NODE_NS, ...prefix, ...argv], { env: CHILD_ENV, cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function stopChild(child: ChildProcess, signal: NodeJS.Signals, graceMs: number): Promise<void> {
  if (exited(child)) return;
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timer = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), graceMs));
  if (await Promise.race([gone.then(() => true), timer])) return;
  child.kill('SIGKILL');
  await Promise.race([gone, new Promise<void>((resolve) => setTimeout(resolve, 2000))]);
}

class FakeUpstream {
  readonly #out: Lines;
  readonly stderr: Lines;

  private constructor(readonly zone: NetnsZone, readonly proc: ChildProcess, readonly port: number, out: Lines, stderr: Lines) {
    this.#out = out;
    this.stderr = stderr;
  }

  /** The fake in its own process inside the node namespace, loaded by the same TypeScript loader tap uses for this file. */
  static async start(zone: NetnsZone, pdeathsig: boolean, register: (p: ChildProcess) => void): Promise<FakeUpstream> {
    const loader = import.meta.resolve('@tapjs/typescript/import');
    const proc = spawnInNode([process.execPath, `--import=${loader}`, UPSTREAM_SCRIPT, zone], pdeathsig);
    register(proc);
    proc.on('error', () => {});
    proc.stdin?.on('error', () => {});
    const out = new Lines(proc.stdout!);
    const err = new Lines(proc.stderr!);
    const line = await out.next((l) => l.startsWith('{'), START_TIMEOUT_MS);
    const msg = line === null ? null : (JSON.parse(line) as NetnsUpstreamLine);
    if (msg === null || !('ready' in msg)) {
      throw new Error(`fake ${zone} upstream did not start: ${line ?? 'no output'} ${err.all.join('\n')}`);
    }
    return new FakeUpstream(zone, proc, msg.port, out, err);
  }

  async stats(): Promise<NetnsUpstreamStats> {
    this.proc.stdin?.write('stats\n');
    const line = await this.#out.next((l) => l.startsWith('{"stats"'), 5000);
    if (line === null) throw new Error(`fake ${this.zone} upstream: no stats`);
    const msg = JSON.parse(line) as NetnsUpstreamLine;
    if (!('stats' in msg)) throw new Error(`fake ${this.zone} upstream: ${line}`);
    return msg.stats;
  }

  async count(name: string): Promise<number> {
    return (await this.stats()).byName[name] ?? 0;
  }
}

/** Namespaces of an earlier run of this file that died before its teardown (its pid is gone). */
function cleanLeftovers(): string[] {
  const cleaned: string[] = [];
  const re = /^nldns-(?:node|pod)-(\d+)$/;
  const stale = (name: string): boolean => {
    const m = re.exec(name);
    if (m === null || Number(m[1]) === process.pid) return false;
    try {
      process.kill(Number(m[1]), 0);
      return false; // that run is still going (another engineer's, in parallel): not ours to touch
    } catch {
      return true;
    }
  };
  const listed = runSync('ip', ['netns', 'list']).stdout.split('\n').map((l) => l.trim().split(/\s+/)[0] ?? '');
  for (const ns of listed.filter(stale)) {
    // Only processes inside a namespace this test created: its agent and fakes.
    for (const pid of runSync('ip', ['netns', 'pids', ns]).stdout.split('\n').map(Number).filter((p) => p > 0)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    runSync('ip', ['netns', 'del', ns]);
    cleaned.push(ns);
  }
  if (existsSync('/etc/netns')) {
    for (const dir of readdirSync('/etc/netns').filter(stale)) {
      rmSync(join('/etc/netns', dir), { recursive: true, force: true });
      cleaned.push(`/etc/netns/${dir}`);
    }
  }
  return cleaned;
}

function skipReason(): string | null {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0) return 'needs root (ip netns add, veth, port 53)';
  if (!hasCommand('ip', ['-V'])) return 'iproute2 (ip) not installed';
  if (!hasCommand('getent', ['--version'])) return 'getent (glibc) not installed';
  // glibc asks nscd first when its socket exists; nscd lives in the host's namespace and would resolve there.
  if (existsSync('/var/run/nscd/socket') || existsSync('/run/nscd/socket')) return 'nscd is running: glibc would ask it (host namespace) instead of the pod resolv.conf';
  return null;
}

async function main(): Promise<void> {
  const why = skipReason();
  if (why !== null) {
    t.plan(0, why);
    return;
  }
  const leftovers = cleanLeftovers();
  if (leftovers.length > 0) t.comment(`removed leftovers of an earlier run: ${leftovers.join(' ')}`);

  const added = runSync('ip', ['netns', 'add', NODE_NS]);
  if (added.status !== 0) {
    t.plan(0, `ip netns add failed: ${added.stderr.trim() || added.error || `status ${added.status}`}`);
    return;
  }

  const children: ChildProcess[] = [];
  const tmp = mkdtempSync(join(tmpdir(), 'nldns-e2e-'));
  t.teardown(async () => {
    // Agent first (SIGTERM: it drains and exits 0), then the fakes (stdin closes: they exit).
    for (const c of children) c.stdin?.end();
    await Promise.all(children.map((c) => stopChild(c, 'SIGTERM', 3000)));
    for (const ns of [NODE_NS, POD_NS]) {
      for (const pid of runSync('ip', ['netns', 'pids', ns]).stdout.split('\n').map(Number).filter((p) => p > 0)) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      }
      runSync('ip', ['netns', 'del', ns]);
    }
    rmSync(POD_ETC, { recursive: true, force: true });
    rmSync(tmp, { recursive: true, force: true });
  });

  // ---- the two namespaces and the veth between them ----
  mustSync('ip', ['netns', 'add', POD_NS]);
  mustSync('ip', ['-n', NODE_NS, 'link', 'set', 'lo', 'up']);
  mustSync('ip', ['-n', POD_NS, 'link', 'set', 'lo', 'up']);
  // Created inside the node namespace with its peer straight in the pod one: nothing appears in the host's namespace.
  mustSync('ip', ['-n', NODE_NS, 'link', 'add', 'veth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', POD_NS]);
  mustSync('ip', ['-n', NODE_NS, 'addr', 'add', `${NODE_IP}/24`, 'dev', 'veth0']);
  // node-cache puts this on a dummy interface; this kernel has no dummy driver, and a /32 on the veth end is the same to the pod.
  mustSync('ip', ['-n', NODE_NS, 'addr', 'add', `${LOCAL_IP}/32`, 'dev', 'veth0']);
  mustSync('ip', ['-n', NODE_NS, 'link', 'set', 'veth0', 'up']);
  mustSync('ip', ['-n', POD_NS, 'addr', 'add', `${POD_IP}/24`, 'dev', 'eth0']);
  mustSync('ip', ['-n', POD_NS, 'link', 'set', 'eth0', 'up']);
  mustSync('ip', ['-n', POD_NS, 'route', 'add', 'default', 'via', NODE_IP]);

  // `ip netns exec` bind-mounts every file of /etc/netns/<ns>/ over /etc/<file> (only where /etc/<file> exists).
  mkdirSync(POD_ETC, { recursive: true });
  writeFileSync(join(POD_ETC, 'resolv.conf'), KUBELET_RESOLV_CONF);
  writeFileSync(join(POD_ETC, 'nsswitch.conf'), 'hosts: dns\n');
  const agentResolvConf = join(tmp, 'resolv.conf');
  // Never used for nameservers (--upstream-nameservers wins); anything it named would be inside the node namespace anyway.
  writeFileSync(agentResolvConf, 'nameserver 127.0.0.254\noptions timeout:1 attempts:1\n');

  // ---- the built agent and its fake upstreams, inside the node namespace ----
  if (!existsSync(AGENT_MAIN)) mustSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], 180_000);
  const pdeathsig = hasCommand('setpriv', ['--version']);
  const register = (c: ChildProcess): void => { children.unshift(c); };
  const [cluster, external, api] = await Promise.all([
    FakeUpstream.start('cluster', pdeathsig, register),
    FakeUpstream.start('external', pdeathsig, register),
    FakeUpstream.start('api', pdeathsig, register),
  ]);
  const kubeconfig = writeKubeconfig(`http://127.0.0.1:${api.port}`, 'netns-token');
  const agent = spawnInNode([
    process.execPath, AGENT_MAIN,
    '--listen', `${LOCAL_IP}:53`,
    '--upstream-addr', `127.0.0.1:${cluster.port}`,
    '--require-cluster-dns',
    '--upstream-nameservers', `127.0.0.1:${external.port}`,
    '--resolv-conf', agentResolvConf,
    '--timeout', AGENT_TIMEOUT,
    '--kubeconfig', kubeconfig,
    // The address is already on the veth end (this kernel has no dummy driver); rules are e2e-node's subject.
    '--setup-interface=false', '--firewall', 'none',
    '--log-level', 'info',
  ], pdeathsig);
  register(agent);
  agent.on('error', () => {});
  const agentLog = new Lines(agent.stderr!);
  new Lines(agent.stdout!);
  const started = await agentLog.next((l) => l.includes('"msg":"started"'), START_TIMEOUT_MS);
  if (started === null) throw new Error(`agent did not start (exit ${agent.exitCode ?? agent.signalCode ?? 'none'}):\n${agentLog.all.join('\n')}`);
  // The agent's view of the cluster, from its own watch of the fake API server: one line per kind at its first list.
  // They may come before or after "started" (the watch starts before the listeners): count them in the whole log.
  const synced = (): boolean => agentLog.all.filter((l) => l.includes('kube initial list applied')).length >= 3;
  for (let waited = 0; !synced() && waited < START_TIMEOUT_MS; waited += 50) await new Promise((r) => setTimeout(r, 50));
  if (!synced()) throw new Error(`the agent's view did not sync:\n${agentLog.all.join('\n')}`);
  t.teardown(() => {
    if (t.passing()) return;
    t.comment(`agent log:\n${agentLog.all.join('\n')}`);
  });

  t.test('the pod namespace sees kubelet\'s resolv.conf and "hosts: dns"', async (t) => {
    t.equal((await inPod(['cat', '/etc/resolv.conf'])).stdout, KUBELET_RESOLV_CONF, '/etc/netns/<pod>/resolv.conf bind-mounted');
    t.equal((await inPod(['cat', '/etc/nsswitch.conf'])).stdout, 'hosts: dns\n', '/etc/netns/<pod>/nsswitch.conf bind-mounted');
    // glibc honours it: "localhost" (in the host's /etc/hosts) is not answered from files but asked of DNS.
    const r = await getent('ahosts', 'localhost');
    t.equal(r.status, 2, `localhost not found: /etc/hosts not consulted: ${describe(r)}`);
    t.ok(await cluster.count('localhost.default.svc.cluster.local') >= 1, 'it went through the search list to the agent');
  });

  t.test('short service name through the search list', async (t) => {
    const r = await getent('ahosts', 'web');
    t.equal(r.status, 0, describe(r));
    t.ok(addresses(r.stdout).includes('10.96.1.10'), `A record: ${addresses(r.stdout).join(' ')}`);
    t.ok(addresses(r.stdout).includes('fd00:10:96::110'), 'AAAA record (getent ahosts asks both)');
    t.equal(canonicalName(r.stdout), 'web.default.svc.cluster.local', 'first candidate of the search list answered');
    const s = await cluster.stats();
    t.ok((s.byName['web.default.svc.cluster.local'] ?? 0) >= 1, 'fake kube-dns saw web.default.svc.cluster.local');
    t.equal(s.udp, 0, 'the agent speaks TCP to the cluster DNS');
    t.ok(s.tcp >= 1);

    // (5) Same lookup again: answered from the agent's cache, nothing new upstream.
    const before = await cluster.stats();
    const again = await getent('ahosts', 'web');
    t.equal(again.status, 0, describe(again));
    t.ok(addresses(again.stdout).includes('10.96.1.10'));
    const after = await cluster.stats();
    t.equal(after.byName['web.default.svc.cluster.local'], before.byName['web.default.svc.cluster.local'], 'repeat answered from the cache: no new upstream query for the name');
    t.equal(after.tcp, before.tcp, 'no upstream query at all');
  });

  t.test('<svc>.<namespace>: second search candidate', async (t) => {
    const r = await getent('ahosts', 'web.default');
    t.equal(r.status, 0, describe(r));
    t.ok(addresses(r.stdout).includes('10.96.1.10'), `A record: ${addresses(r.stdout).join(' ')}`);
    t.equal(canonicalName(r.stdout), 'web.default.svc.cluster.local');
    t.ok(await cluster.count('web.default.default.svc.cluster.local') >= 1, 'first candidate web.default.default.svc.cluster.local was asked (NXDOMAIN)');

    const h = await getent('hosts', 'api.prod');
    t.equal(h.status, 0, describe(h));
    // getent hosts is gethostbyname2(AF_INET6) first: the AAAA record, with the canonical name.
    t.match(h.stdout, /^fd00:10:96::220\s+api\.prod\.svc\.cluster\.local\b/, 'getent hosts (gethostbyname path)');
  });

  t.test('external name: ndots:5 tries the search list first, then the absolute name', async (t) => {
    const r = await getent('ahosts', 'www.example.com');
    t.equal(r.status, 0, describe(r));
    t.ok(addresses(r.stdout).includes('192.0.2.80'), `A record: ${addresses(r.stdout).join(' ')}`);
    const c = await cluster.stats();
    const e = await external.stats();
    for (const suffix of ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local']) {
      t.ok((c.byName[`www.example.com.${suffix}`] ?? 0) >= 1, `candidate www.example.com.${suffix} went to the fake kube-dns`);
    }
    t.ok((e.byName['www.example.com'] ?? 0) >= 1, 'the fake host resolver saw the absolute name');
    t.equal(c.byName['www.example.com'] ?? 0, 0, 'the absolute external name did not go to kube-dns');
    t.same(Object.keys(e.byName).filter((n) => n.endsWith('cluster.local')), [], 'no cluster.local name went to the host resolver');
  });

  t.test('a missing name: getent exits 2', async (t) => {
    const r = await getent('ahosts', 'nosuchsvc');
    t.equal(r.status, 2, `not found: ${describe(r)}`);
    t.equal(r.stdout, '');
    t.ok(await cluster.count('nosuchsvc.default.svc.cluster.local') >= 1, 'search candidate asked (NXDOMAIN)');
    t.ok(await external.count('nosuchsvc') >= 1, 'absolute name asked last (NXDOMAIN)');
  });

  // getent cannot be made to use TCP (glibc only falls back to it on TC=1), so dig does that part.
  const hasDig = hasCommand('dig', ['-v']);
  t.test('dig over TCP from the pod', { skip: hasDig ? false : 'dig not installed (apt-get install bind9-dnsutils)' }, async (t) => {
    const before = await cluster.stats();
    const r = await inPod(['dig', `@${LOCAL_IP}`, '+tcp', '+time=2', '+tries=1', '+short', 'web.default.svc.cluster.local', 'A']);
    t.equal(r.status, 0, describe(r));
    t.equal(r.stdout.trim(), '10.96.1.10', 'answer over TCP');
    const after = await cluster.stats();
    t.equal(after.tcp, before.tcp, 'answered from the cache the UDP lookups filled');
  });

  // Alpine pods: musl before 1.2.4 never retries a TC=1 answer over TCP, it uses the records the
  // truncated answer carries. An answer cut to nothing fails the lookup; one cut at record boundaries works.
  const hasMusl = hasCommand('musl-gcc', ['--version']);
  t.test('musl getaddrinfo: a name with 60 A records over 512-byte UDP', { skip: hasMusl ? false : 'musl-gcc not installed (apt-get install musl-tools)' }, async (t) => {
    const bin = join(tmp, 'musl-getaddrinfo');
    const built = runSync('musl-gcc', ['-static', '-O1', '-o', bin, MUSL_GAI_SRC], 120_000);
    t.equal(built.status, 0, `musl-gcc -static: ${describe(built)}`);
    if (built.status !== 0) return;
    // "many" goes through the search list: many.default.svc.cluster.local answers first.
    const r = await inPod([bin, 'many']);
    t.equal(r.status, 0, `musl resolved it: ${describe(r)}`);
    const got = addresses(r.stdout);
    t.ok(got.length > 0, `some addresses (${got.length})`);
    t.same(got.filter((a) => !MANY_A.includes(a)), [], 'only addresses the upstream gave');
    t.ok(got.length < MANY_A.length, 'fewer than 60: the answer was cut to fit 512 bytes');
  });

  t.test('dig +noedns +ignore: TC=1 and the records that fit', { skip: hasDig ? false : 'dig not installed (apt-get install bind9-dnsutils)' }, async (t) => {
    const r = await inPod(['dig', `@${LOCAL_IP}`, '+noedns', '+ignore', '+time=2', '+tries=1', 'many.default.svc.cluster.local', 'A']);
    t.equal(r.status, 0, describe(r));
    const flags = /;; flags:([^;]*);/.exec(r.stdout)?.[1]?.trim().split(/\s+/) ?? [];
    t.ok(flags.includes('tc'), `TC=1 (flags: ${flags.join(' ')})`);
    const count = Number(/ANSWER: (\d+)/.exec(r.stdout)?.[1] ?? -1);
    const records = [...r.stdout.matchAll(/^many\.default\.svc\.cluster\.local\.\s+\d+\s+IN\s+A\s+(\S+)$/gm)].map((m) => m[1] ?? '');
    t.ok(count > 0 && count < MANY_A.length, `ANSWER: ${count}`);
    t.equal(records.length, count, 'every counted record is in the answer section');
    t.same(records.filter((a) => !MANY_A.includes(a)), [], 'records from the upstream answer');
    const size = Number(/MSG SIZE\s+rcvd: (\d+)/.exec(r.stdout)?.[1] ?? 0);
    t.ok(size > 0 && size <= 512, `${size} bytes: within 512`);
  });

  t.test('fake kube-dns killed', async (t) => {
    await stopChild(cluster.proc, 'SIGKILL', 0);
    t.ok(exited(cluster.proc), 'fake kube-dns is gone');

    const cached = await getent('ahosts', 'web');
    t.equal(cached.status, 0, `cached name still resolves within its TTL: ${describe(cached)}`);
    t.ok(addresses(cached.stdout).includes('10.96.1.10'));

    // kube-dns is dead, but the agent watches the API itself: a cluster name never asked
    // before resolves from its view (db.default.svc.cluster.local, the first search candidate).
    const fresh = await getent('ahosts', 'db');
    t.equal(fresh.status, 0, `a cluster name never asked before still resolves: ${describe(fresh)}`);
    t.ok(addresses(fresh.stdout).includes('10.96.3.30'), 'from the agent\'s own view of the API');
    t.equal(agent.exitCode, null, 'agent still running');
  });

  t.test('fake kube-dns dead: an external name never asked before still resolves', async (t) => {
    // ndots:5 sends www2.example.org.<each search domain> first; with kube-dns dead the agent's
    // view answers each of them NXDOMAIN (it is synced and knows they cannot exist), glibc goes on
    // down the search list, and the absolute name is answered by the host resolver.
    const r = await getent('ahosts', 'www2.example.org');
    t.equal(r.status, 0, describe(r));
    t.ok(addresses(r.stdout).includes('192.0.2.81'), `A record: ${addresses(r.stdout).join(' ')}`);
    t.ok(await external.count('www2.example.org') >= 1, 'answered by the fake host resolver');
    t.equal(agent.exitCode, null, 'agent still running');
  });

  t.test('SIGTERM: the agent drains and exits 0', async (t) => {
    await stopChild(agent, 'SIGTERM', 5000);
    t.equal(agent.exitCode, 0, `exit ${agent.exitCode ?? agent.signalCode ?? 'none'}`);
  });
}

await main();
