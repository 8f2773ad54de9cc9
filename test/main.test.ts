// main.ts as a process: what it does with signals, and reloads as main drives
// them (SIGHUP, the watcher of the configuration files). The agent runs in
// local mode on loopback with --io dgram, no HTTP endpoints and no API watch;
// its only upstream is a resolv.conf nameserver of 127.0.0.x that nothing
// here queries. The tests of start-up run it in a network namespace of its own
// (unshare -n), where its firewall tools are fakes that hold start-up.
import t, { type Test } from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import dgram from 'node:dgram';
import { CHILD_ENV, Lines, describeRan, run, stopChild, waitExit } from './helpers/netns-proc.js';
import { buildQuery, udpExchange } from './helpers/dns-client.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** Bounds, not expectations: an agent process starts in a few seconds here. */
const START_TIMEOUT_MS = 60_000;
t.setTimeout(400_000);

/** An address of this file's own in 127/8, so its ports meet no other test's. */
const HOST = '127.0.32.1';
let nextPort = 24000 + (process.pid % 1000) * 8;

/** The built agent (dist/, which the test command builds first, as clients.test.ts uses it). */
const built = { main: join(ROOT, 'dist', 'src', 'main.js') };

interface AgentProcess {
  readonly child: ChildProcess;
  /** Its log, one JSON object a line on stderr. */
  readonly log: Lines;
}

function startMain(work: string, args: readonly string[]): AgentProcess {
  return spawnMain(work, [], CHILD_ENV.PATH ?? '', `${HOST}:${nextPort++}`, args);
}

function spawnMain(work: string, prefix: readonly string[], path: string, listen: string, args: readonly string[]): AgentProcess {
  const argv = [
    ...prefix,
    process.execPath,
    built.main,
    '--listen', listen,
    '--io', 'dgram',
    '--no-kube',
    '--metrics-listen-address', 'off',
    '--health-port', '0',
    '--kube-dns-config-dir', join(work, 'no-kube-dns'),
    ...args,
  ];
  const child = spawn(argv[0]!, argv.slice(1), { env: { ...CHILD_ENV, PATH: path }, cwd: work, stdio: ['ignore', 'ignore', 'pipe'] });
  child.on('error', () => {});
  return { child, log: new Lines(child.stderr!) };
}

const msgIs = (msg: string) => (line: string): boolean => {
  try {
    return (JSON.parse(line) as { msg?: unknown }).msg === msg;
  } catch {
    return false;
  }
};

function workDir(t: { teardown(fn: () => unknown): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'nldns-main-run-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'resolv.conf'), 'nameserver 127.0.0.254\n');
  return dir;
}

/**
 * Start-up held at a known point, with the event loop running: the agent runs
 * in a network namespace of its own (nothing it does reaches the host's
 * links or rules), serving an address on that namespace's lo, so it sets up
 * interception, the last part it starts; every firewall tool it may run is a
 * fake whose first call waits until the test releases it, and whose every
 * call then succeeds with no output.
 */
interface StartupHold {
  /** Resolves true once the agent waits in its first firewall command (bounded). */
  held(timeoutMs: number): Promise<boolean>;
  release(): void;
}

/** The address the held agent serves, on its own namespace's lo (not loopback to the agent, so it sets up interception). */
const HELD_ADDRESS = '169.254.31.1';

const FIREWALL_TOOLS = ['nft', ...['iptables', 'ip6tables'].flatMap((base) => ['', '-legacy', '-nft'].flatMap((mode) => ['', '-save', '-restore'].map((tool) => `${base}${mode}${tool}`)))];

const canUnshare = process.getuid?.() === 0 && spawnSync('unshare', ['-n', 'true'], { stdio: 'ignore', timeout: 10_000 }).status === 0;
const holdSkip = canUnshare ? false : 'needs root and unshare -n (a network namespace of its own for the agent)';

/**
 * `once`: only the first firewall command waits; every later one (a rollback's, say) succeeds at once.
 * `freshNode`: the address is not there yet (a new or rebooted node): the agent makes it, on a link of its own
 * (kind bridge: these kernels lack dummy), as its interface part does on a node. Else it is on lo already.
 */
function startHeld(work: string, name: string, args: readonly string[], opts: { once?: boolean; freshNode?: boolean } = {}): { agent: AgentProcess; hold: StartupHold } {
  const once = opts.once ?? false;
  const freshNode = opts.freshNode ?? false;
  const dir = join(work, `hold-${name}`);
  const bin = join(dir, 'bin');
  mkdirSync(bin, { recursive: true });
  const heldFile = join(dir, 'held');
  const releaseFile = join(dir, 'release');
  const script = join(dir, 'firewall-tool');
  writeFileSync(
    script,
    // Bounded (about a minute), so a wait the test never released ends by itself once the agent is gone.
    `#!/bin/sh\n[ -e '${releaseFile}' ] && exit 0\n${once ? `[ -e '${heldFile}' ] && exit 0\n` : ''}: > '${heldFile}'\ni=0\nwhile [ ! -e '${releaseFile}' ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i+1)); done\nexit 0\n`,
  );
  chmodSync(script, 0o755);
  for (const tool of FIREWALL_TOOLS) symlinkSync(script, join(bin, tool));
  // lo up with our address on it, then exec: the agent keeps the pid the test signals.
  const setup = freshNode ? 'ip link set lo up && exec "$@"' : `ip link set lo up && ip addr add ${HELD_ADDRESS}/32 dev lo && exec "$@"`;
  const agent = spawnMain(work, ['unshare', '-n', 'sh', '-c', setup, 'sh'], `${bin}:${CHILD_ENV.PATH ?? ''}`, `${HELD_ADDRESS}:53`, [
    ...(freshNode ? ['--interface-kind', 'bridge'] : ['--no-setup-interface']),
    '--firewall', 'nftables',
    ...args,
  ]);
  const hold: StartupHold = {
    async held(timeoutMs) {
      const until = Date.now() + timeoutMs;
      while (Date.now() < until && agent.child.exitCode === null && agent.child.signalCode === null) {
        if (existsSync(heldFile)) return true;
        await new Promise((r) => setTimeout(r, 20));
      }
      return false;
    },
    release() {
      writeFileSync(releaseFile, '');
    },
  };
  return { agent, hold };
}

t.test('a signal during start-up is handled: SIGHUP does not kill the agent, SIGTERM stops it cleanly (exit 0)', { skip: holdSkip }, async (t) => {
  // main.ts installs its SIGHUP, SIGTERM and SIGINT handlers only after agent.start() resolves. Until then the
  // default actions apply: SIGHUP and SIGTERM kill the process at once, with no teardown (the link and its
  // addresses, when already made, stay on the node; no snapshot is written). In the container the agent is PID 1
  // (Dockerfile ENTRYPOINT node ...), for which the kernel drops signals with no handler: the kubelet's SIGTERM
  // during start-up is lost, the agent starts and serves, and the pod's deletion waits out
  // terminationGracePeriodSeconds for the SIGKILL. Start-up is held here at a known point (startHeld): its first
  // firewall command waits, the event loop running, until the test releases it.
  const work = workDir(t);
  const args = ['--resolv-conf', join(work, 'resolv.conf')];

  const hup = await signalledWhileStarting(t, work, 'hup', args, 'SIGHUP');
  const started = await hup.log.next(msgIs('started'), START_TIMEOUT_MS);
  t.equal(hup.child.signalCode, null, 'not killed by the SIGHUP that arrived during start-up');
  t.ok(started !== null, 'and went on to serve');
  t.ok(await hup.log.next(msgIs('configuration reloaded'), START_TIMEOUT_MS), 'and then reloaded, as the SIGHUP asked');
  await stopChild(hup.child, 'SIGTERM', 20_000);

  const term = await signalledWhileStarting(t, work, 'term', args, 'SIGTERM');
  t.ok(await waitExit(term.child, 30_000), 'exits');
  t.equal(term.child.signalCode, null, 'by itself, having handled the SIGTERM (not killed by it)');
  t.equal(term.child.exitCode, 0, 'with status 0, as a stop after start-up does');
});

t.test('a SIGTERM while a firewall command of the start hangs cuts the start short: the command is killed, what the start wrote is removed, exit 0', { skip: holdSkip }, async (t) => {
  // Each firewall command is bounded (15 s), but a start runs several, and their sum can pass the DaemonSet's
  // terminationGracePeriodSeconds. A SIGTERM held until the start was over waited for all of them; here the first
  // one hangs and is never let go: the start then failed on its timeout and the agent exited 1, "cannot start".
  const work = workDir(t);
  const { agent, hold } = startHeld(work, 'cut', ['--resolv-conf', join(work, 'resolv.conf')], { once: true });
  t.teardown(() => stopChild(agent.child, 'SIGKILL', 1000));
  t.ok(await hold.held(START_TIMEOUT_MS), 'start-up holds in its first firewall command (the rules\' write)');
  agent.child.kill('SIGTERM');
  t.ok(await waitExit(agent.child, START_TIMEOUT_MS), 'exits');
  // Its log, and a failed start's plain last words.
  const lines = agent.log.all.map((l) => (l.startsWith('{') ? (JSON.parse(l) as { msg?: string }) : { msg: l }));
  t.equal(agent.child.exitCode, 0, `with status 0, a stop and not a failed start: ${agent.log.all.filter((l) => l.includes('cannot start')).join(' | ')}`);
  t.ok(lines.some((l) => l.msg === 'interception rules removed'), 'what the start may have written is removed');
  t.notOk(lines.some((l) => l.msg === 'started'), 'the start is not finished first');
});

t.test('on a fresh node (the address comes with the agent\'s link) /health answers while a later step holds the start-up', { skip: holdSkip }, async (t) => {
  // The probes' port was bound early only when its address already existed (an upgrade); on a new or rebooted
  // node it was bound last, after the listeners and the interception, so while a firewall command waited on the
  // xtables lock (kube-proxy's, at boot) the kubelet's liveness probe met a closed port and, past its 45 s
  // (15 s delay, 3 x 10 s), restarted the agent mid-start. It binds once the interface has made the address.
  const work = workDir(t);
  const held = startHeld(work, 'fresh', ['--resolv-conf', join(work, 'resolv.conf'), '--health-port', '8080'], { freshNode: true });
  t.teardown(() => stopChild(held.agent.child, 'SIGKILL', 1000));
  t.ok(await held.hold.held(START_TIMEOUT_MS), 'start-up holds in the interception set-up, after the interface');
  const probe = (path: string): Promise<string> =>
    run('nsenter', ['-t', String(held.agent.child.pid), '-n', 'curl', '-s', '-m', '3', '-o', '/dev/null', '-w', '%{http_code}', `http://${HELD_ADDRESS}:8080${path}`], 10_000).then(
      (r) => (r.status === 0 ? r.stdout : `no answer (${describeRan(r)})`),
    );
  t.equal(await probe('/health'), '200', 'liveness: alive while starting');
  t.equal(await probe('/ready'), '503', 'readiness: not yet serving');
  held.hold.release();
  t.ok(await held.agent.log.next(msgIs('started'), START_TIMEOUT_MS), 'then it starts');
  t.equal(await probe('/ready'), '200', 'and is ready');
  await stopChild(held.agent.child, 'SIGTERM', 20_000);
});

/** An agent held in start-up, sent `signal` there, given time for a default action to act, then let go on. */
async function signalledWhileStarting(t: Test, work: string, name: string, args: readonly string[], signal: NodeJS.Signals): Promise<AgentProcess> {
  const held = startHeld(work, name, args);
  t.teardown(() => stopChild(held.agent.child, 'SIGKILL', 1000));
  t.ok(await held.hold.held(START_TIMEOUT_MS), 'start-up holds in the interception set-up');
  held.agent.child.kill(signal);
  await waitExit(held.agent.child, 1000);
  held.hold.release();
  return held.agent;
}

/** As editors and the kubelet replace a file: never seen half written (an empty config file is a valid one). */
function replaceFile(path: string, text: string): void {
  writeFileSync(`${path}.new`, text);
  renameSync(`${path}.new`, path);
}

/** The fields of the next log line with this message, or null (bounded wait). */
async function nextLog(a: AgentProcess, msg: string, timeoutMs: number): Promise<Record<string, unknown> | null> {
  const line = await a.log.next(msgIs(msg), timeoutMs);
  return line === null ? null : (JSON.parse(line) as Record<string, unknown>);
}

t.test('a reload that changes --shutdown-grace is applied at the next SIGTERM, or reported as needing a restart', async (t) => {
  // main.ts gives agent.stop() and its hard-stop timer `config.shutdownGraceMs` of the configuration it started
  // with; agent-config.ts does not list shutdownGraceMs among the restart-only settings. So a reload from 1s to
  // 7s logs "configuration reloaded" with no restartNeeded, agent.config says 7 s, and the next SIGTERM still
  // cuts queries in flight at 1 s (and hard-exits at 1 s + 10 s, even when the new grace is longer than that).
  const work = workDir(t);
  const file = join(work, 'agent.yaml');
  writeFileSync(file, 'shutdownGrace: 1s\n');
  const a = startMain(work, ['--resolv-conf', join(work, 'resolv.conf'), '--config', file]);
  t.teardown(() => stopChild(a.child, 'SIGKILL', 1000));
  t.ok(await nextLog(a, 'started', START_TIMEOUT_MS), 'started');
  replaceFile(file, 'shutdownGrace: 7s\n');
  a.child.kill('SIGHUP');
  const reloaded = await nextLog(a, 'configuration reloaded', START_TIMEOUT_MS);
  t.ok(reloaded, 'reloaded');
  const restartNeeded = (reloaded?.['restartNeeded'] as string[] | undefined) ?? [];
  a.child.kill('SIGTERM');
  const stopping = await nextLog(a, 'stopping: finishing queries in flight', START_TIMEOUT_MS);
  t.ok(stopping, 'stopping');
  t.ok(
    stopping?.['graceMs'] === 7000 || restartNeeded.includes('shutdownGraceMs'),
    `the stop uses the reloaded grace (graceMs ${String(stopping?.['graceMs'])}), or the reload said it needs a restart (restartNeeded ${JSON.stringify(restartNeeded)})`,
  );
  t.ok(await waitExit(a.child, 30_000), 'exits');
});

t.test('a reload that moves --resolv-conf (or another watched file) watches the new file from then on', async (t) => {
  // main.ts builds its ConfigWatcher once, from agent.configSources at start, and never again. A config file
  // that points resolvConf (or kubeDnsConfigDir, or tlsCaFile) somewhere else is reloaded and read from there,
  // but later edits of the new file are never noticed (until a SIGHUP), while edits of the old one, no longer
  // used, still trigger reloads.
  const work = workDir(t);
  const first = join(work, 'resolv.conf');
  const second = join(work, 'resolv-2.conf');
  writeFileSync(second, 'nameserver 127.0.0.253\n');
  const file = join(work, 'agent.yaml');
  writeFileSync(file, `resolvConf: ${first}\n`);
  const a = startMain(work, ['--config', file]);
  t.teardown(() => stopChild(a.child, 'SIGKILL', 1000));
  t.ok(await nextLog(a, 'started', START_TIMEOUT_MS), 'started');
  replaceFile(file, `resolvConf: ${second}\n`);
  t.ok(await nextLog(a, 'configuration reloaded', START_TIMEOUT_MS), 'the config file change is picked up (polled every second)');
  replaceFile(second, 'nameserver 127.0.0.252\n');
  // The watcher polls every second: ten polls is a generous bound.
  const again = await nextLog(a, 'configuration reloaded', 10_000);
  t.ok(again, 'a change in the resolv.conf now in use is reloaded too');
  await stopChild(a.child, 'SIGTERM', 20_000);
});

t.test('a configuration file changed while the agent starts is reloaded once it serves', { skip: holdSkip }, async (t) => {
  // main.ts reads the configuration, starts the agent (seconds: workers, the snapshot load, the link and the
  // rules behind the xtables lock), and only then builds its ConfigWatcher, whose first read becomes the
  // baseline. A ConfigMap update (or a resolv.conf rewrite) that lands during start-up is that baseline: the
  // agent serves the old configuration until some later change, with nothing logged. Start-up is held at a
  // known point as above (startHeld).
  const work = workDir(t);
  const file = join(work, 'agent.yaml');
  writeFileSync(file, 'successTtl: 30s\n');
  const { agent: a, hold } = startHeld(work, 'change', ['--resolv-conf', join(work, 'resolv.conf'), '--config', file]);
  t.teardown(() => stopChild(a.child, 'SIGKILL', 1000));
  t.ok(await hold.held(START_TIMEOUT_MS), 'start-up holds in the interception set-up');
  replaceFile(file, 'successTtl: 10s\n');
  hold.release();
  t.ok(await nextLog(a, 'started', START_TIMEOUT_MS), 'started');
  // The watcher polls every second: ten polls is a generous bound.
  t.ok(await nextLog(a, 'configuration reloaded', 10_000), 'the change made during start-up is applied');
  await stopChild(a.child, 'SIGTERM', 20_000);
});

t.test('stop signals: SIGHUPs while starting reload once, when started; a stop held with them wins', async (t) => {
  const { EventEmitter } = await import('node:events');
  const { StopSignals } = await import('../src/stop-signals.js');
  type Source = import('../src/stop-signals.js').SignalSource;
  const source = new EventEmitter();
  const early: string[] = [];
  const signals = new StopSignals(source as unknown as Source, (s, repeated) => early.push(`${s}${repeated ? ' again' : ''}`));
  source.emit('SIGHUP', 'SIGHUP');
  source.emit('SIGHUP', 'SIGHUP');
  t.same(early, ['SIGHUP', 'SIGHUP again'], 'heard while starting, nothing reloaded yet');
  const handled: string[] = [];
  signals.handle((s) => handled.push(s), () => handled.push('reload'));
  t.same(handled, ['reload'], 'one reload once started: it reads every file afresh');
  source.emit('SIGHUP', 'SIGHUP');
  t.same(handled, ['reload', 'reload'], 'later ones reload at once');

  const other = new EventEmitter();
  const both = new StopSignals(other as unknown as Source, () => {});
  other.emit('SIGHUP', 'SIGHUP');
  other.emit('SIGTERM', 'SIGTERM');
  const after: string[] = [];
  both.handle((s) => after.push(s), () => after.push('reload'));
  t.same(after, ['SIGTERM'], 'a held stop is served, not a reload of an agent about to stop');
});

t.test('a metrics address that is one of the DNS listen addresses is refused at start, not shared with the DNS TCP listener', async (t) => {
  // With --reuse-port (the default) the ops HTTP server and the DNS TCP listener are both bound with
  // SO_REUSEPORT, by the same process: binding /metrics on a DNS listen address succeeds, and the kernel then
  // spreads new TCP connections to that port over both sockets. Pods' DNS-over-TCP queries (every truncated
  // answer's retry) reach the HTTP server about half the time, and Prometheus's scrapes the DNS server; nothing
  // is logged. A start-up failure ("address in use", exit 1) or a flag error (exit 2) is what the README promises.
  const work = workDir(t);
  const listen = `${HOST}:${nextPort++}`;
  const a = spawnMain(work, [], CHILD_ENV.PATH ?? '', listen, ['--resolv-conf', join(work, 'resolv.conf'), '--metrics-listen-address', listen]);
  t.teardown(() => stopChild(a.child, 'SIGKILL', 1000));
  const started = await a.log.next(msgIs('started'), START_TIMEOUT_MS);
  t.equal(started, null, 'the agent does not start serving with /metrics on its own DNS address');
  // Serving already: no exit to wait for.
  t.ok(started === null && (await waitExit(a.child, START_TIMEOUT_MS)), 'it exits');
  t.ok(a.child.exitCode === 1 || a.child.exitCode === 2, `with status 1 or 2 (got ${String(a.child.exitCode)})`);
});

t.test('a kube-dns ConfigMap that gains a stub zone twice (two spellings) is refused on reload: the agent keeps serving with the old one and says so', async (t) => {
  const work = workDir(t);
  const dir = join(work, 'kube-dns');
  mkdirSync(dir);
  writeFileSync(join(dir, 'stubDomains'), '{"consul.local": ["127.0.0.1:5353"]}');
  const a = startMain(work, ['--resolv-conf', join(work, 'resolv.conf'), '--kube-dns-config-dir', dir]);
  t.teardown(() => stopChild(a.child, 'SIGKILL', 1000));
  const started = await nextLog(a, 'started', START_TIMEOUT_MS);
  t.ok(started, 'started with one stub zone');
  replaceFile(join(dir, 'stubDomains'), '{"consul.local": ["127.0.0.1:5353"], "Consul.Local.": ["127.0.0.1:5354"]}');
  a.child.kill('SIGHUP');
  const refused = await nextLog(a, 'configuration reload refused: the running configuration keeps serving', START_TIMEOUT_MS);
  t.match(String(refused?.['error']), /kube-dns ConfigMap.*given twice/, 'the reload is refused, naming the zone given twice');
  t.equal(a.child.exitCode, null, 'the agent keeps running');
  a.child.kill('SIGTERM');
  t.ok(await waitExit(a.child, 30_000), 'and stops cleanly');
  t.equal(a.child.exitCode, 0, 'exit 0: the refused reload left nothing broken');
});

t.test('a refused reload is a state /metrics keeps showing until a reload is applied (nodelocal_config_reload_refused 1, then 0)', async (t) => {
  // A refused reload leaves the agent serving its old configuration while the files hold one the next start of
  // the pod refuses. nodelocal_config_reloads_total{result="refused"} ticks once: an alert on its increase() over
  // a window resolves when the window has passed, with nothing fixed. The state is what an alert needs.
  const work = workDir(t);
  const config = join(work, 'config.yaml');
  writeFileSync(config, 'logLevel: info\n');
  const metrics = `${HOST}:${nextPort++}`;
  const a = startMain(work, ['--resolv-conf', join(work, 'resolv.conf'), '--config', config, '--metrics-listen-address', metrics]);
  t.teardown(() => stopChild(a.child, 'SIGKILL', 1000));
  t.ok(await nextLog(a, 'started', START_TIMEOUT_MS), 'started');
  const refusedState = async (): Promise<string | null> => {
    const text = await (await fetch(`http://${metrics}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
    return /^nodelocal_config_reload_refused (\S+)$/m.exec(text)?.[1] ?? null;
  };
  t.equal(await refusedState(), '0', 'nothing refused at start');
  replaceFile(config, 'logLevel: info\nnoSuchSetting: 1\n');
  a.child.kill('SIGHUP');
  t.ok(await nextLog(a, 'configuration reload refused: the running configuration keeps serving', START_TIMEOUT_MS), 'the reload is refused');
  t.equal(await refusedState(), '1', 'refused: 1, for as long as no reload is applied');
  replaceFile(config, 'logLevel: info\n');
  a.child.kill('SIGHUP');
  t.ok(await nextLog(a, 'configuration reloaded', START_TIMEOUT_MS), 'the fixed file is applied');
  t.equal(await refusedState(), '0', 'applied: 0 again');
  a.child.kill('SIGTERM');
  t.ok(await waitExit(a.child, 30_000), 'it stops');
});

t.test('non-loopback listen addresses on several ports are a flag error (exit 2, naming --listen), refused before anything starts', { skip: holdSkip }, async (t) => {
  // Interception needs one port; the README promises status 2 and the flag for a bad flag value, and a start-up
  // failure (exit 1) only for what the node itself refuses. A namespace of its own: nothing it does reaches the host.
  const work = workDir(t);
  const a = spawnMain(work, ['unshare', '-n'], CHILD_ENV.PATH ?? '', '169.254.31.1:53', [
    '--listen', '169.254.31.2:5353', '--resolv-conf', join(work, 'resolv.conf'), '--no-setup-interface', '--firewall', 'none',
  ]);
  t.teardown(() => stopChild(a.child, 'SIGKILL', 1000));
  t.ok(await waitExit(a.child, START_TIMEOUT_MS), 'it exits');
  t.equal(a.child.exitCode, 2, 'with status 2');
  t.ok(a.log.all.some((l) => l.includes('--listen') && l.includes('several ports')), `saying --listen: ${a.log.all.slice(-2).join(' | ')}`);
});

for (const io of ['dgram', 'batched'] as const) {
t.test(`a second stop signal exits at once, but first answers the clients still waiting (SERVFAIL), not leaving them to their own timeouts (--io ${io})`, async (t) => {
  // A host resolver that takes queries and never answers: the client's query stays in flight through the grace.
  // With --io batched the query waits on a worker's miss: the main thread holds that client (direct.ts) and answers it.
  const upstreamHost = io === 'dgram' ? '127.0.32.2' : '127.0.32.3';
  const silent = dgram.createSocket('udp4');
  let asked = 0;
  silent.on('message', () => asked++);
  await new Promise<void>((resolve, reject) => { silent.once('error', reject); silent.bind(53, upstreamHost, resolve); });
  t.teardown(() => silent.close());
  const work = workDir(t);
  writeFileSync(join(work, 'resolv.conf'), `nameserver ${upstreamHost}\n`);
  const listen = `${HOST}:${nextPort++}`;
  const a = spawnMain(work, [], CHILD_ENV.PATH ?? '', listen, ['--resolv-conf', join(work, 'resolv.conf'), '--shutdown-grace', '30s', '--io', io]);
  t.teardown(() => stopChild(a.child, 'SIGKILL', 1000));
  t.ok(await nextLog(a, 'started', START_TIMEOUT_MS), 'started');
  const [host, port] = [HOST, Number(listen.split(':')[1])];
  const answer = udpExchange({ host, port }, buildQuery('waits.example', { id: 4242 }), 20_000);
  for (let i = 0; i < 1000 && asked === 0; i++) await new Promise((r) => setTimeout(r, 10));
  t.ok(asked > 0, 'the query is in flight upstream');
  a.child.kill('SIGTERM');
  t.ok(await nextLog(a, 'stopping: finishing queries in flight', START_TIMEOUT_MS), 'stopping, the grace (30 s) ahead');
  const sentAt = Date.now();
  a.child.kill('SIGTERM');
  t.ok(await waitExit(a.child, 10_000), 'exits on the second signal');
  t.equal(a.child.exitCode, 1, 'exit 1');
  const reply = await answer;
  t.ok(reply !== null && Date.now() - sentAt < 10_000, 'the waiting client got an answer, not its own timeout');
  t.equal(reply === null ? -1 : reply[3]! & 0x0f, 2, 'SERVFAIL');
});
}

t.test('a SIGTERM while the agent\'s modules still load (before any part) is handled: exit 0, nothing started', async (t) => {
  // main.ts imported the agent's whole module graph (about 250 ms on this machine, more on a busy node at boot)
  // before its body made the signal handlers: a SIGTERM then met the default action, and as PID 1 in its container
  // (Dockerfile ENTRYPOINT node ...) the kernel drops it, so the agent started and served, and the pod's deletion
  // waited out terminationGracePeriodSeconds for a SIGKILL that left the link and the rules on the node. A loader hook
  // holds the load of agent.js here until the test has sent its SIGTERM.
  const work = workDir(t);
  const marker = join(work, 'loading-agent');
  const release = join(work, 'release');
  const hooks = join(work, 'hooks.mjs');
  writeFileSync(hooks, `
import { existsSync, writeFileSync } from 'node:fs';
export async function load(url, context, next) {
  if (url.endsWith('/dist/src/agent.js')) {
    writeFileSync(${JSON.stringify(marker)}, '');
    for (let i = 0; i < 400 && !existsSync(${JSON.stringify(release)}); i++) await new Promise((r) => setTimeout(r, 50));
  }
  return next(url, context);
}
`);
  const register = join(work, 'register.mjs');
  writeFileSync(register, `import { register } from 'node:module';\nimport { pathToFileURL } from 'node:url';\nregister(pathToFileURL(${JSON.stringify(hooks)}));\n`);
  const argv = [
    '--import', register, built.main, '--listen', `${HOST}:${nextPort++}`, '--io', 'dgram', '--no-kube', '--metrics-listen-address', 'off',
    '--health-port', '0', '--kube-dns-config-dir', join(work, 'no-kube-dns'), '--resolv-conf', join(work, 'resolv.conf'),
  ];
  const child = spawn(process.execPath, argv, { env: CHILD_ENV, cwd: work, stdio: ['ignore', 'ignore', 'pipe'] });
  child.on('error', () => {});
  const log = new Lines(child.stderr!);
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let seen = false;
  for (let i = 0; i < 400 && !seen; i++) {
    seen = existsSync(marker);
    if (!seen) await new Promise((r) => setTimeout(r, 50));
  }
  t.ok(seen, 'the load of agent.js is held');
  child.kill('SIGTERM');
  writeFileSync(release, '');
  t.ok(await waitExit(child, 30_000), 'exits');
  t.equal(child.signalCode, null, 'by itself, having handled the SIGTERM (not killed by it)');
  t.equal(child.exitCode, 0, 'with status 0');
  t.notOk(log.all.some(msgIs('started')), 'without serving');
});

t.test('a second stop signal during a start cut short answers the clients still waiting (SERVFAIL) before it exits', { skip: holdSkip }, async (t) => {
  // The listeners start before the interception, and pods send to the listen address itself: while a firewall
  // command held the start, a query could be in flight. A first SIGTERM cuts the start short and the listeners'
  // stop lets it finish until the grace (30 s); a second one exited at once with process.exit(1), the client left to
  // its own timeout, though a second signal is meant to answer the clients still waiting first, as after start-up.
  const work = workDir(t);
  writeFileSync(join(work, 'resolv.conf'), 'nameserver 127.0.0.53\n');
  const { agent, hold } = startHeld(work, 'second', ['--resolv-conf', join(work, 'resolv.conf'), '--shutdown-grace', '30s'], { once: true });
  t.teardown(() => stopChild(agent.child, 'SIGKILL', 1000));
  t.ok(await hold.held(START_TIMEOUT_MS), 'start-up holds in its first firewall command, the listeners up');
  const ns = ['-t', String(agent.child.pid), '-n', process.execPath, '-e'];
  // In the agent's namespace: a host resolver that takes queries and never answers, and a client of the listen address.
  const silent = spawn('nsenter', [...ns, `const s=require('dgram').createSocket('udp4');s.on('message',()=>console.log('asked'));s.bind(53,'127.0.0.53',()=>console.log('up'));setTimeout(()=>process.exit(0),60000);`], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => silent.kill('SIGKILL'));
  const upstream = new Lines(silent.stdout!);
  t.ok(await upstream.next((l) => l === 'up', 10_000), 'the silent resolver is up');
  const q = buildQuery('waits.example', { id: 4242 }).toString('hex');
  const client = run('nsenter', [...ns, `const s=require('dgram').createSocket('udp4');s.on('message',(m)=>{console.log('rcode '+(m[3]&15));process.exit(0)});s.send(Buffer.from('${q}','hex'),53,'${HELD_ADDRESS}');setTimeout(()=>{console.log('timeout');process.exit(0)},40000);`], 50_000);
  t.ok(await upstream.next((l) => l === 'asked', 10_000), 'the query is in flight upstream');
  agent.child.kill('SIGTERM');
  t.ok(await agent.log.next(msgIs('interception rules removed'), START_TIMEOUT_MS), 'the start is cut short, the listeners draining');
  agent.child.kill('SIGTERM');
  t.ok(await waitExit(agent.child, 10_000), 'exits on the second signal');
  t.equal(agent.child.exitCode, 1, 'exit 1');
  const got = await client;
  t.equal(got.stdout.trim(), 'rcode 2', 'the waiting client got SERVFAIL, not its own timeout');
});

t.test('an unbracketed IPv6 server whose last group could be a port is warned of at start and on each reload; a server given twice is a refused reload', async (t) => {
  // Nothing here queries the stub zone: its server (fd00::10:53) is configured, never sent to.
  const work = workDir(t);
  const config = join(work, 'config.yaml');
  writeFileSync(config, 'stubDomains: {x.example: ["fd00::10:53"]}\n');
  const a = startMain(work, ['--resolv-conf', join(work, 'resolv.conf'), '--config', config]);
  t.teardown(() => stopChild(a.child, 'SIGKILL', 1000));
  const warned = await nextLog(a, 'configuration', START_TIMEOUT_MS);
  t.match(String(warned?.['warning']), /stubDomains\.x\.example: "fd00::10:53": read as \[fd00::10:53\]:53; .*\[fd00::10\]:53/, 'warned at start');
  t.equal(warned?.['level'], 'warn');
  t.ok(await nextLog(a, 'started', START_TIMEOUT_MS), 'and started');
  a.child.kill('SIGHUP');
  t.match(String((await nextLog(a, 'configuration', START_TIMEOUT_MS))?.['warning']), /"fd00::10:53"/, 'warned again on reload');
  t.ok(await nextLog(a, 'configuration reloaded', START_TIMEOUT_MS), 'and reloaded');
  replaceFile(config, 'stubDomains: {x.example: ["[fd00::10]:53", "fd00::10"]}\n');
  a.child.kill('SIGHUP');
  const refused = await nextLog(a, 'configuration reload refused: the running configuration keeps serving', START_TIMEOUT_MS);
  t.match(String(refused?.['error']), /stubDomains\.x\.example: \[fd00::10\]:53 given twice/, 'a server twice is refused on reload');
  a.child.kill('SIGTERM');
  t.ok(await waitExit(a.child, 30_000), 'it stops');
  t.equal(a.child.exitCode, 0);
});

t.test('the V8 settings main.ts applies first (v8-tuning.ts) turn allocation-site pretenuring off: a literal whose objects all stay alive is not moved to the old generation', async (t) => {
  // V8 says each pretenuring decision under --trace-pretenuring-statistics; the same allocations with and without the settings.
  const script = `
    if (process.argv[1] === 'tuned') (await import(${JSON.stringify(join(ROOT, 'dist', 'src', 'v8-tuning.js'))})).tuneV8();
    const keep = [];
    const make = (i) => ({ i, pair: [i, i + 1] });
    for (let i = 0; i < 1000000; i++) keep.push(make(i));
    process.stdout.write(String(keep.length) + '\\n');`;
  const tenured = (mode: string): number => {
    const r = spawnSync(process.execPath, ['--trace-pretenuring-statistics', '--input-type=module', '-e', script, mode], { encoding: 'utf8', timeout: 30_000 });
    t.equal(r.status, 0, `${mode}: ran`);
    return r.stdout.split('\n').filter((l) => l.includes('=> tenure')).length;
  };
  // V8 decides at scavenges, and on a loaded machine a run may see none: the control gets a few tries to show one.
  let control = 0;
  for (let i = 0; i < 5 && control === 0; i++) control = tenured('control');
  t.ok(control > 0, 'without them V8 tenures the literal sites (the test can see a decision)');
  t.equal(tenured('tuned'), 0, 'with them, no site is tenured');
});
