// main.ts as a process: what it does with signals, and reloads as main drives
// them (SIGHUP, the watcher of the configuration files). The agent runs in
// local mode on loopback with --io dgram, no HTTP endpoints and no API watch;
// its only upstream is a resolv.conf nameserver of 127.0.0.x that nothing
// here queries.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CHILD_ENV, Lines, stopChild, waitExit } from './helpers/netns-proc.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** Bounds, not expectations: an agent process starts in a few seconds here. */
const START_TIMEOUT_MS = 60_000;
const BUILD_TIMEOUT_MS = 180_000;
t.setTimeout(400_000);

/** An address of this file's own in 127/8, so its ports meet no other test's. */
const HOST = '127.0.31.1';
let nextPort = 24000 + (process.pid % 1000) * 8;

/**
 * src/main.ts and what it imports, emitted as JavaScript (no type check) into
 * a private temp dir, as handover.test.ts does: through the TypeScript loader
 * an agent process takes many seconds just to load.
 */
function buildMain(): { dir: string; main: string } {
  const dir = mkdtempSync(join(tmpdir(), 'nldns-main-'));
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(
    process.execPath,
    [tsc, '--noCheck', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--skipLibCheck', '--esModuleInterop', '--types', 'node', '--rootDir', ROOT, '--outDir', dir, join(ROOT, 'src/main.ts')],
    { cwd: ROOT, encoding: 'utf8', timeout: BUILD_TIMEOUT_MS },
  );
  if (r.status !== 0) throw new Error(`building src/main.ts: status ${r.status} ${r.error?.message ?? ''} ${r.stdout} ${r.stderr}`);
  writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n');
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
  return { dir, main: join(dir, 'src', 'main.js') };
}

const built = buildMain();
t.teardown(() => rmSync(built.dir, { recursive: true, force: true }));

interface AgentProcess {
  readonly child: ChildProcess;
  /** Its log, one JSON object a line on stderr. */
  readonly log: Lines;
}

function startMain(work: string, args: readonly string[]): AgentProcess {
  const argv = [
    built.main,
    '--listen', `${HOST}:${nextPort++}`,
    '--io', 'dgram',
    '--no-kube',
    '--metrics-listen-address', 'off',
    '--health-port', '0',
    '--kube-dns-config-dir', join(work, 'no-kube-dns'),
    ...args,
  ];
  const child = spawn(process.execPath, argv, { env: CHILD_ENV, cwd: work, stdio: ['ignore', 'ignore', 'pipe'] });
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

/** Bounded: resolves once one of the process's threads waits in open(2) on a FIFO for its writer. */
async function blockedOnFifo(pid: number, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    try {
      for (const task of readdirSync(`/proc/${pid}/task`)) {
        if (readFileSync(`/proc/${pid}/task/${task}/wchan`, 'utf8').trim() === 'wait_for_partner') return true;
      }
    } catch {
      return false;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

/** Lets the reader blocked in open(2) go on (it then finds no regular file and starts cold). */
function releaseFifo(path: string): void {
  try {
    closeSync(openSync(path, constants.O_WRONLY | constants.O_NONBLOCK));
  } catch {
    // ENXIO: no reader any more (the process is gone).
  }
}

t.test('a signal during start-up is handled: SIGHUP does not kill the agent, SIGTERM stops it cleanly (exit 0)', async (t) => {
  // main.ts installs its SIGHUP, SIGTERM and SIGINT handlers only after agent.start() resolves. Until then the
  // default actions apply: SIGHUP and SIGTERM kill the process at once, with no teardown (the link and its
  // addresses, when already made, stay on the node; no snapshot is written). In the container the agent is PID 1
  // (Dockerfile ENTRYPOINT node ...), for which the kernel drops signals with no handler: the kubelet's SIGTERM
  // during start-up is lost, the agent starts and serves, and the pod's deletion waits out
  // terminationGracePeriodSeconds for the SIGKILL. Start-up is held here at a known point: the cache snapshot is
  // a FIFO, so the snapshot part's open() waits (off the main thread, the event loop running) until we open it.
  const work = workDir(t);
  // One FIFO each: an agent that stops cleanly writes its snapshot over the path.
  const fifos = [join(work, 'snapshot-1'), join(work, 'snapshot-2')];
  t.equal(spawnSync('mkfifo', fifos).status, 0, 'mkfifo');
  const args = (fifo: string): string[] => ['--resolv-conf', join(work, 'resolv.conf'), '--cache-snapshot', fifo, '--cache-snapshot-interval', '0'];

  let fifo = fifos[0]!;
  const hup = startMain(work, args(fifo));
  t.teardown(() => stopChild(hup.child, 'SIGKILL', 1000));
  t.ok(await blockedOnFifo(hup.child.pid!, START_TIMEOUT_MS), 'start-up holds in the snapshot load');
  hup.child.kill('SIGHUP');
  // Give a default action time to take effect before start-up may go on.
  await waitExit(hup.child, 1000);
  releaseFifo(fifo);
  const started = await hup.log.next(msgIs('started'), START_TIMEOUT_MS);
  t.equal(hup.child.signalCode, null, 'not killed by the SIGHUP that arrived during start-up');
  t.ok(started !== null, 'and went on to serve');
  await stopChild(hup.child, 'SIGTERM', 20_000);

  fifo = fifos[1]!;
  const term = startMain(work, args(fifo));
  t.teardown(() => stopChild(term.child, 'SIGKILL', 1000));
  t.ok(await blockedOnFifo(term.child.pid!, START_TIMEOUT_MS), 'start-up holds in the snapshot load');
  term.child.kill('SIGTERM');
  await waitExit(term.child, 1000);
  releaseFifo(fifo);
  t.ok(await waitExit(term.child, 30_000), 'exits');
  t.equal(term.child.signalCode, null, 'by itself, having handled the SIGTERM (not killed by it)');
  t.equal(term.child.exitCode, 0, 'with status 0, as a stop after start-up does');
});

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

t.test('a configuration file changed while the agent starts is reloaded once it serves', async (t) => {
  // main.ts reads the configuration, starts the agent (seconds: workers, the snapshot load, the link and the
  // rules behind the xtables lock), and only then builds its ConfigWatcher, whose first read becomes the
  // baseline. A ConfigMap update (or a resolv.conf rewrite) that lands during start-up is that baseline: the
  // agent serves the old configuration until some later change, with nothing logged. Start-up is held at a
  // known point as above (a FIFO as the cache snapshot).
  const work = workDir(t);
  const fifo = join(work, 'snapshot');
  t.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
  const file = join(work, 'agent.yaml');
  writeFileSync(file, 'successTtl: 30s\n');
  const a = startMain(work, ['--resolv-conf', join(work, 'resolv.conf'), '--config', file, '--cache-snapshot', fifo, '--cache-snapshot-interval', '0']);
  t.teardown(() => stopChild(a.child, 'SIGKILL', 1000));
  t.ok(await blockedOnFifo(a.child.pid!, START_TIMEOUT_MS), 'start-up holds in the snapshot load');
  replaceFile(file, 'successTtl: 10s\n');
  releaseFifo(fifo);
  t.ok(await nextLog(a, 'started', START_TIMEOUT_MS), 'started');
  // The watcher polls every second: ten polls is a generous bound.
  t.ok(await nextLog(a, 'configuration reloaded', 10_000), 'the change made during start-up is applied');
  await stopChild(a.child, 'SIGTERM', 20_000);
});
