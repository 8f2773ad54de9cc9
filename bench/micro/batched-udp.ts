/**
 * Cache hits on one core: the batched UDP backend (worker + recvmmsg/
 * sendmmsg) against the plain dgram listener on the same hit path and cache
 * settings, and unbound (if installed) as a cache in front of a local stub,
 * all in one run. Each server is pinned to one CPU, dnsperf to the other;
 * servers take turns round by round (the machine is shared: compare ratios
 * within a round, report medians and spread). CPU per hit is the server's
 * utime+stime (all threads) over the measured run divided by answers.
 *
 *   npx tsc -p tsconfig.json --outDir /tmp/x && node /tmp/x/bench/micro/batched-udp.js \
 *     [--rounds 3] [--seconds 10] [--names 10000] [--targets batched,dgram,unbound] [--workers 1]
 *     [--server-cpu 0] [--client-cpu 1] [--prof DIR]      # --prof: node --cpu-prof on our servers
 *   ... batched-udp.js misses [--seconds 10] [--miss-cost-us 200] [--flood-qps N] [--flood-cpu 0] [--backends batched,dgram]
 *                                        # hit latency while misses saturate the main thread (CPU 0 and 1)
 *
 * Never touches anything but 127.0.0.1; unbound gets a private config that
 * forwards to a stub in this process, never the machine's resolver.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as dnsPacket from 'dns-packet';
import { DnsCache, type CacheOptions } from '../../src/cache/cache.js';
import { CACHE_COUNTERS } from '../../src/cache/stats.js';
import { systemClock } from '../../src/clock.js';
import { parseQuery } from '../../src/dns/query.js';
import { createLogger } from '../../src/log.js';
import { HitPath, type MissOutcome, type MissSink } from '../../src/server/hit-path.js';
import { scrubCounted } from '../../src/server/scrub.js';
import { SERVER_COUNTERS } from '../../src/server/stats.js';
import { UdpListener } from '../../src/server/udp-listener.js';
import { BatchedUdpListener } from '../../src/server/batched/listener.js';
import { probeBatchedIo } from '../../src/server/batched/select.js';
import { Counters } from '../../src/stats/counters.js';
import { SimDnsServer, staticHandler, type StaticRecord } from '../../testkit/dns-server.js';
import { clockTicks, which } from '../proc-stats.js';

const SELF = fileURLToPath(import.meta.url);

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? def) : def;
}

const nameOf = (i: number): string => `svc-${i}.ns-${i % 50}.svc.cluster.local`;
const addrOf = (i: number): string => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;

/** Long TTLs: nothing expires (or prefetches) during a run, for any server. */
const TTL = 3600;
const CACHE: CacheOptions = {
  positiveCapacity: 100_000, negativeCapacity: 100_000, maxBytes: 1 << 30, successTtl: TTL, denialTtl: 5, minHits: 3, percent: 10, staleMs: 0,
};

// ---------------------------------------------------------------- server child

/**
 * Our server as a child process: answers misses from a table (the "upstream"
 * is instant and in-process), optionally burning `missCostUs` of main-thread
 * CPU per miss to saturate the main thread on purpose.
 */
async function serve(): Promise<void> {
  const io = arg('io', 'batched');
  const port = Number(arg('port', '0'));
  const names = Number(arg('names', '10000'));
  const workers = Number(arg('workers', '1'));
  const missCostUs = Number(arg('miss-cost-us', '0'));
  const logger = createLogger('warn');
  const table = new Map<string, Buffer>();
  for (let i = 0; i < names; i++) {
    const name = nameOf(i);
    const q = parseQuery(dnsPacket.encode({ type: 'query', id: 0, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] }));
    table.set(q.key, dnsPacket.encode({
      type: 'response', id: 0, flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE,
      questions: [{ name, type: 'A', class: 'IN' }], answers: [{ type: 'A', name, ttl: TTL, data: addrOf(i) }],
    }));
  }
  const sinkFor = (complete: (token: number, answer: Buffer | null, outcome: MissOutcome) => void): MissSink => ({
    forward(token, key, query) {
      if (missCostUs > 0) {
        const end = process.hrtime.bigint() + BigInt(missCostUs * 1000);
        while (process.hrtime.bigint() < end);
      }
      // Unknown names: NOERROR with nothing (uncacheable without an SOA), built from our own upstream query.
      let answer = table.get(key);
      if (answer === undefined) {
        answer = Buffer.from(query);
        answer[2] = 0x81;
        answer[3] = 0x80;
      }
      complete(token, answer, 'upstream');
    },
  });
  let close: () => Promise<void>;
  let bound: number;
  if (io === 'batched') {
    const sys = await probeBatchedIo();
    if (typeof sys === 'string') throw new Error(sys);
    const l = new BatchedUdpListener({ listen: [{ host: '127.0.0.1', port }], workers, cache: CACHE, maxUdpSize: 1232, queryLogEvery: 0, logger, sys });
    l.connect(sinkFor((t, a, o) => l.complete(t, a, o)));
    await l.start();
    bound = l.ports[0]!;
    close = () => {
      const io = l.totals().io;
      const d = io.get('datagrams');
      process.stderr.write(
        `  [batched] ${d} datagrams in ${io.get('batches')} recvmmsg batches (mean ${(d / Math.max(1, io.get('batches'))).toFixed(1)}), ` +
          `${io.get('sends')} sendmmsg, ${io.get('wakeups')} polls, ${io.get('sendErrors')} send errors\n`,
      );
      return l.close();
    };
  } else {
    const cache = new DnsCache(CACHE, new Counters(CACHE_COUNTERS));
    const hits = new HitPath({ cache, clock: systemClock, logger, counters: new Counters(SERVER_COUNTERS), maxUdpSize: 1232 });
    hits.connect(sinkFor((t, a, o) => hits.complete(t, a, o)), scrubCounted);
    const l = new UdpListener({ host: '127.0.0.1', port }, hits, logger);
    await l.start();
    bound = l.port;
    close = () => l.close();
  }
  process.stdout.write(`READY ${bound}\n`);
  const stop = (): void => {
    void close().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

// ---------------------------------------------------------------- driver

interface Server {
  readonly proc: ChildProcess;
  readonly port: number;
  readonly stop: () => Promise<void>;
}

function waitReady(proc: ChildProcess, what: string): Promise<number> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${what}: not ready after 60 s\n${out}`)), 60_000);
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /READY (\d+)/.exec(out);
      if (m !== null) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}) before it was ready\n${out}`));
    });
  });
}

function stopper(proc: ChildProcess): () => Promise<void> {
  return () =>
    new Promise((resolve) => {
      if (proc.exitCode !== null) return resolve();
      const kill = setTimeout(() => proc.kill('SIGKILL'), 5000);
      proc.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      proc.kill('SIGTERM');
    });
}

async function startOurs(io: 'batched' | 'dgram', cpu: string | null, names: number, workers: number, extra: string[], profDir: string | null): Promise<Server> {
  const nodeArgs = profDir === null ? [] : ['--cpu-prof', '--cpu-prof-dir', profDir];
  const argv = [process.execPath, ...nodeArgs, SELF, 'serve', '--io', io, '--port', '0', '--names', String(names), '--workers', String(workers), ...extra];
  const full = cpu === null ? argv : ['taskset', '-c', cpu, ...argv];
  const proc = spawn(full[0]!, full.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await waitReady(proc, io);
  return { proc, port, stop: stopper(proc) };
}

async function startUnbound(cpu: string, stubPort: number, dir: string): Promise<Server> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const conf = path.join(dir, 'unbound.conf');
  writeFileSync(conf, [
    'server:',
    `  interface: 127.0.0.1@${port}`,
    `  port: ${port}`,
    '  do-daemonize: no', '  username: ""', '  chroot: ""', `  directory: "${dir}"`, '  pidfile: ""', '  use-syslog: no', '  logfile: ""', '  verbosity: 0',
    '  num-threads: 1', '  access-control: 127.0.0.0/8 allow', '  do-not-query-localhost: no', '  module-config: "iterator"', '  qname-minimisation: no',
    '  msg-cache-size: 64m', '  rrset-cache-size: 128m', '  local-zone: "local." nodefault',
    // The same socket buffers our listeners ask for, and room for dnsperf's outstanding queries: without them unbound drops bursts.
    '  so-rcvbuf: 4m', '  so-sndbuf: 4m', '  num-queries-per-thread: 4096',
    'remote-control:', '  control-enable: no',
    'forward-zone:', '  name: "."', `  forward-addr: 127.0.0.1@${stubPort}`, '',
  ].join('\n'));
  const proc = spawn('taskset', ['-c', cpu, 'unbound', '-d', '-c', conf], { stdio: ['ignore', 'inherit', 'inherit'] });
  // Ready when it answers.
  for (let i = 0; i < 200; i++) {
    if (proc.exitCode !== null) throw new Error(`unbound exited (${proc.exitCode})`);
    const ok = await exchangeOnce(port, nameOf(0), 200);
    if (ok) return { proc, port, stop: stopper(proc) };
  }
  throw new Error('unbound did not answer');
}

function exchangeOnce(port: number, name: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const t = setTimeout(() => done(false), timeoutMs);
    const done = (v: boolean): void => {
      clearTimeout(t);
      s.close();
      resolve(v);
    };
    s.on('message', () => done(true));
    s.send(dnsPacket.encode({ type: 'query', id: 1, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] }), port, '127.0.0.1');
  });
}

/** Every name asked once (256 outstanding), each answer checked: the cache is full before measuring. */
function warm(port: number, names: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    let next = 0;
    let done = 0;
    const pending = new Set<number>();
    const timer = setInterval(() => {
      // Lost datagrams: ask again.
      for (const i of pending) send(i);
    }, 500);
    const send = (i: number): void => {
      s.send(dnsPacket.encode({ type: 'query', id: i & 0xffff, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: nameOf(i), type: 'A', class: 'IN' }] }), port, '127.0.0.1');
    };
    s.on('message', (m) => {
      const p = dnsPacket.decode(m);
      const name = p.questions?.[0]?.name ?? '';
      const i = Number(/^svc-(\d+)\./.exec(name)?.[1] ?? -1);
      if (!pending.delete(i)) return;
      const data = (p.answers?.[0] as { data?: string } | undefined)?.data;
      if (data !== addrOf(i)) {
        clearInterval(timer);
        s.close();
        reject(new Error(`warm-up: wrong answer for ${name}: ${String(data)}`));
        return;
      }
      done++;
      if (next < names) {
        pending.add(next);
        send(next++);
      } else if (done === names) {
        clearInterval(timer);
        s.close();
        resolve();
      }
    });
    s.bind(0, () => {
      for (; next < Math.min(names, 256); next++) {
        pending.add(next);
        send(next);
      }
    });
  });
}

/** CPU seconds of one process, every thread; and of its main thread alone. */
function cpuOf(pid: number): { total: number; main: number } {
  const ticks = (file: string): number => {
    const text = readFileSync(file, 'utf8');
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return Number(rest[11]) + Number(rest[12]);
  };
  return { total: ticks(`/proc/${pid}/stat`) / clockTicks(), main: ticks(`/proc/${pid}/task/${pid}/stat`) / clockTicks() };
}

interface DnsperfResult {
  readonly qps: number;
  readonly completed: number;
  readonly lost: number;
  readonly avgLatencyUs: number;
}

function dnsperf(cpu: string | null, port: number, data: string, seconds: number, extra: string[] = []): Promise<DnsperfResult> {
  const args = ['-s', '127.0.0.1', '-p', String(port), '-d', data, '-l', String(seconds), '-c', '8', '-q', '500', '-t', '2', ...extra];
  const argv = cpu === null ? ['dnsperf', ...args] : ['taskset', '-c', cpu, 'dnsperf', ...args];
  return new Promise((resolve, reject) => {
    execFile(argv[0]!, argv.slice(1), { timeout: (seconds + 30) * 1000, maxBuffer: 1 << 22 }, (err, stdout) => {
      const text = String(stdout);
      const num = (re: RegExp): number => Number(re.exec(text)?.[1] ?? NaN);
      const qps = num(/Queries per second:\s+([0-9.]+)/);
      if (err !== null && Number.isNaN(qps)) return reject(new Error(`dnsperf: ${err.message}`));
      resolve({
        qps,
        completed: num(/Queries completed:\s+(\d+)/),
        lost: num(/Queries lost:\s+(\d+)/),
        avgLatencyUs: num(/Average Latency \(s\):\s+([0-9.]+)/) * 1e6,
      });
    });
  });
}

interface Sample {
  readonly target: string;
  readonly round: number;
  readonly qps: number;
  readonly cpuUsPerQuery: number;
  readonly mainUsPerQuery: number;
  readonly lost: number;
  readonly latencyUs: number;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

async function throughput(): Promise<void> {
  const rounds = Number(arg('rounds', '3'));
  const seconds = Number(arg('seconds', '10'));
  const names = Number(arg('names', '10000'));
  const workers = Number(arg('workers', '1'));
  const serverCpu = arg('server-cpu', '0');
  const clientCpu = arg('client-cpu', '1');
  const profDir = arg('prof', '') === '' ? null : arg('prof', '');
  const hasUnbound = which('unbound') !== null;
  const targets = arg('targets', hasUnbound ? 'batched,dgram,unbound' : 'batched,dgram').split(',');
  const dir = mkdtempSync(path.join(tmpdir(), 'batched-bench-'));
  const data = path.join(dir, 'hits.txt');
  const lines: string[] = [];
  for (let i = 0; i < names; i++) lines.push(`${nameOf(i)} A`);
  writeFileSync(data, lines.join('\n') + '\n');
  const records: Record<string, StaticRecord> = {};
  for (let i = 0; i < names; i++) records[nameOf(i)] = { A: [addrOf(i)], ttl: TTL };
  const stub = targets.includes('unbound') ? await SimDnsServer.start({ handler: staticHandler(records, { soaZone: 'cluster.local' }) }) : null;

  console.log(`node ${process.version}; ${names} cached names; server on CPU ${serverCpu}, dnsperf on CPU ${clientCpu}; ${rounds} rounds x ${seconds} s; batched workers: ${workers}`);
  const samples: Sample[] = [];
  for (let round = 1; round <= rounds; round++) {
    // Rotate the order each round so no target always runs first (or right after the noisiest neighbour).
    const order = targets.map((_, k) => targets[(k + round - 1) % targets.length]!);
    for (const target of order) {
      const server =
        target === 'unbound'
          ? await startUnbound(serverCpu, stub!.port, dir)
          : await startOurs(target as 'batched' | 'dgram', serverCpu, names, workers, [], profDir);
      try {
        await warm(server.port, names);
        await dnsperf(clientCpu, server.port, data, 2); // JIT and caches warm
        const before = cpuOf(server.proc.pid!);
        const r = await dnsperf(clientCpu, server.port, data, seconds);
        const after = cpuOf(server.proc.pid!);
        const s: Sample = {
          target, round, qps: r.qps, lost: r.lost, latencyUs: r.avgLatencyUs,
          cpuUsPerQuery: ((after.total - before.total) * 1e6) / r.completed,
          mainUsPerQuery: ((after.main - before.main) * 1e6) / r.completed,
        };
        samples.push(s);
        console.log(
          `round ${round} ${target.padEnd(8)} ${Math.round(s.qps).toString().padStart(7)} q/s  ${s.cpuUsPerQuery.toFixed(2)} us CPU/q` +
            ` (main thread ${s.mainUsPerQuery.toFixed(2)})  lost ${s.lost}  avg latency ${s.latencyUs.toFixed(0)} us`,
        );
      } finally {
        await server.stop();
      }
    }
  }
  await stub?.close();
  console.log('\n| target | q/s median (min-max) | us CPU per hit median (min-max) |\n|---|---|---|');
  for (const target of targets) {
    const ss = samples.filter((s) => s.target === target);
    const q = ss.map((s) => s.qps);
    const c = ss.map((s) => s.cpuUsPerQuery);
    console.log(`| ${target} | ${Math.round(median(q))} (${Math.round(Math.min(...q))}-${Math.round(Math.max(...q))}) | ${median(c).toFixed(2)} (${Math.min(...c).toFixed(2)}-${Math.max(...c).toFixed(2)}) |`);
  }
  if (targets.includes('unbound')) {
    console.log('\nratios to unbound within each round (median, min-max):');
    for (const target of targets.filter((x) => x !== 'unbound')) {
      const qr: number[] = [];
      const cr: number[] = [];
      for (let round = 1; round <= rounds; round++) {
        const a = samples.find((s) => s.target === target && s.round === round);
        const u = samples.find((s) => s.target === 'unbound' && s.round === round);
        if (a === undefined || u === undefined) continue;
        qr.push(a.qps / u.qps);
        cr.push(a.cpuUsPerQuery / u.cpuUsPerQuery);
      }
      console.log(
        `  ${target}: throughput ${median(qr).toFixed(2)}x (${Math.min(...qr).toFixed(2)}-${Math.max(...qr).toFixed(2)}), ` +
          `CPU per hit ${median(cr).toFixed(2)}x (${Math.min(...cr).toFixed(2)}-${Math.max(...cr).toFixed(2)})`,
      );
    }
  }
  if (profDir !== null) summarizeProfiles(profDir);
}

/** Self time by function over every .cpuprofile in dir (each thread writes its own), top 20. */
function summarizeProfiles(dir: string): void {
  interface Node {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    hitCount?: number;
    children?: number[];
  }
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.cpuprofile'))) {
    const prof = JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as { nodes: Node[]; samples: number[] };
    const byId = new Map(prof.nodes.map((n) => [n.id, n]));
    const self = new Map<string, number>();
    for (const id of prof.samples) {
      const n = byId.get(id);
      if (n === undefined) continue;
      const key = `${n.callFrame.functionName || '(anonymous)'} ${path.basename(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
      self.set(key, (self.get(key) ?? 0) + 1);
    }
    const total = prof.samples.length;
    console.log(`\n${f}: ${total} samples`);
    for (const [k, v] of [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 20)) console.log(`  ${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`);
  }
}

// ---------------------------------------------------------------- misses vs hits

/**
 * Hit latency, with and without a miss flood that saturates the main
 * thread (each miss burns --miss-cost-us of main-thread CPU, and the flood
 * offers more than it can take): a probe sends 2,000 hits/s from this
 * process and times each answer. The server's main thread and the flood's
 * dnsperf run on CPU 0; the batched worker thread and this process on CPU
 * 1. Both backends get the same two CPUs: dgram serves hits on its
 * saturated main thread, batched on its worker. The last column counts how
 * often the thread serving hits was preempted: on a shared 2-core machine
 * that, not the agent, sets the tail.
 */
async function missesVsHits(): Promise<void> {
  const seconds = Number(arg('seconds', '10'));
  const names = 10_000;
  const missCostUs = Number(arg('miss-cost-us', '200'));
  // Offered misses: twice what a whole core can take at that cost.
  const floodQps = Number(arg('flood-qps', String(Math.round((2 * 1e6) / Math.max(1, missCostUs)))));
  const backends = arg('backends', 'batched,dgram').split(',') as ('batched' | 'dgram')[];
  // The flood's client shares the core of the thread it saturates, so the CPU that serves hits is left to them.
  const floodCpu = arg('flood-cpu', '0');
  execFileSync('taskset', ['-a', '-p', '-c', '1', String(process.pid)], { stdio: 'ignore' });
  const dir = mkdtempSync(path.join(tmpdir(), 'batched-miss-'));
  const missData = path.join(dir, 'misses.txt');
  const lines: string[] = [];
  for (let i = 0; i < 200_000; i++) lines.push(`miss-${i}.ns-${i % 50}.svc.cluster.local A`);
  writeFileSync(missData, lines.join('\n') + '\n');
  console.log(
    `hit latency (probe at 2000/s, ${seconds} s) idle and under a miss flood (${floodQps}/s offered) costing ${missCostUs} us of main-thread CPU per miss; ` +
      `server main thread on CPU 0, batched worker and probe on CPU 1, flood client on CPU ${floodCpu}`,
  );
  console.log(
    '| backend | load | hit p50 us | hit p99 us | hit max us | probe lost | main thread CPU | other threads CPU | misses answered/s | serving thread preempted |\n' +
      '|---|---|---|---|---|---|---|---|---|---|',
  );
  for (const io of backends) {
    for (const flood of [false, true]) {
      const server = await startOurs(io, '0', names, 1, ['--miss-cost-us', String(missCostUs)], null);
      try {
        await warm(server.port, names);
        if (io === 'batched') {
          const worker = threadNamed(server.proc.pid!, 'udp-worker-0');
          execFileSync('taskset', ['-p', '-c', '1', String(worker)], { stdio: 'ignore' });
        }
        const before = cpuOf(server.proc.pid!);
        const t0 = process.hrtime.bigint();
        // Open loop: a rate, and more outstanding than the agent ever holds (it refuses misses past its limit at once).
        const floodRun = flood ? dnsperf(floodCpu, server.port, missData, seconds + 1, ['-q', '20000', '-Q', String(floodQps)]) : null;
        const serving = io === 'batched' ? threadNamed(server.proc.pid!, 'udp-worker-0') : server.proc.pid!;
        const switches0 = involuntarySwitches(server.proc.pid!, serving);
        const probe = await probeHits(server.port, names, seconds);
        const preempted = involuntarySwitches(server.proc.pid!, serving) - switches0;
        const fr = floodRun === null ? null : await floodRun;
        const after = cpuOf(server.proc.pid!);
        const wall = Number(process.hrtime.bigint() - t0) / 1e9;
        console.log(
          `| ${io} | ${flood ? 'miss flood' : 'idle'} | ${probe.p50.toFixed(0)} | ${probe.p99.toFixed(0)} | ${probe.max.toFixed(0)} | ${probe.lost} | ` +
            `${(((after.main - before.main) / wall) * 100).toFixed(0)}% | ${(((after.total - after.main - (before.total - before.main)) / wall) * 100).toFixed(0)}% | ` +
            `${fr === null ? '-' : Math.round(fr.qps)} | ${preempted} |`,
        );
      } finally {
        await server.stop();
      }
    }
  }
}

/** Times the kernel took the CPU away from a thread that wanted it (another task's turn). */
function involuntarySwitches(pid: number, tid: number): number {
  return Number(/nonvoluntary_ctxt_switches:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'))?.[1] ?? NaN);
}

/** A thread of `pid` by its name (the workers name themselves udp-worker-N). */
function threadNamed(pid: number, name: string): number {
  for (const tid of readdirSync(`/proc/${pid}/task`).map(Number)) {
    if (readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim() === name) return tid;
  }
  throw new Error(`no thread named ${name} in ${pid}`);
}

function probeHits(port: number, names: number, seconds: number): Promise<{ p50: number; p99: number; max: number; lost: number }> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const sentAt = new Map<number, bigint>();
    const lat: number[] = [];
    let id = 0;
    let sent = 0;
    s.on('message', (m) => {
      const t = sentAt.get(m.readUInt16BE(0));
      if (t === undefined) return;
      sentAt.delete(m.readUInt16BE(0));
      lat.push(Number(process.hrtime.bigint() - t) / 1000);
    });
    const start = process.hrtime.bigint();
    const tick = setInterval(() => {
      // Catch up to the schedule (2 per ms) so a late timer does not lower the rate.
      const due = Math.floor((Number(process.hrtime.bigint() - start) / 1e6) * 2);
      for (; sent < due; sent++) {
        id = (id + 1) & 0xffff;
        sentAt.set(id, process.hrtime.bigint());
        s.send(dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: nameOf(sent % names), type: 'A', class: 'IN' }] }), port, '127.0.0.1');
      }
    }, 1);
    setTimeout(() => {
      clearInterval(tick);
      setTimeout(() => {
        s.close();
        lat.sort((a, b) => a - b);
        const q = (p: number): number => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? NaN;
        resolve({ p50: q(0.5), p99: q(0.99), max: lat.at(-1) ?? NaN, lost: sent - lat.length });
      }, 1000);
    }, seconds * 1000);
    s.bind(0);
  });
}

const mode = process.argv[2];
const run = mode === 'serve' ? serve : mode === 'misses' ? missesVsHits : throughput;
run().catch((err: unknown) => {
  process.stderr.write(`batched-udp: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
