/**
 * `npm run fuzz -- --packets 1000000 [--tcp] [--seed N]`
 *
 * The million-packet fuzz of the built agent, run as its own process in
 * front of two fake upstreams. The packets come from testkit/fuzz-gen.ts
 * (random bytes and structure-aware mutations of valid queries) and every
 * answer is held to testkit/fuzz-check.ts, exactly as in test/fuzz.test.ts,
 * only more of them:
 *   UDP (default): bursts of 500 over 8 reused sockets, each burst answered
 *     before the next (correctness, not overload);
 *   --tcp: the packets as frames, 2,000 per connection with honest framing
 *     in random-sized writes (zero-length frames among them), 8 connections
 *     at a time, and after every round of connections one round of lying
 *     connections (overstated and understated prefixes, random streams, cuts
 *     mid-prefix and mid-frame, length 0 and 65535).
 * Prints the counts and the agent's RSS after warm-up and at the end. Exit
 * code 1 on a crash, any malformed or oversized answer, an answer to a
 * packet that must be dropped, or (UDP) more unanswered queries than the
 * kernel says it dropped.
 */
import { performance } from 'node:perf_hooks';
import { Fuzz } from '../testkit/fuzz-gen.js';
import {
  closeUdpChannels, fuzzUpstreams, liarScripts, openUdpChannels, tcpHonest, tcpLiar, tcpPayloads, udpFuzz, udpRcvbufErrors, until,
  type FuzzTarget,
} from '../testkit/fuzz-drive.js';
import { mib, rssOf, scrapeLines, spawnAgent } from './agent-proc.js';
import { tcpQuery, udpQuery } from './fuzz-probe.js';

interface Args {
  packets: number;
  tcp: boolean;
  seed: number;
  host: string;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { packets: 1_000_000, tcp: false, seed: Date.now() >>> 0, host: '127.0.0.1' };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--packets': a.packets = Number(v); i++; break;
      case '--tcp': a.tcp = true; break;
      case '--seed': a.seed = Number(v) >>> 0; i++; break;
      case '--host': a.host = String(v); i++; break;
      default: throw new Error(`unknown argument ${argv[i]} (--packets N --tcp --seed N --host 127.x.y.z)`);
    }
  }
  if (!(a.packets > 0)) throw new Error('--packets must be positive');
  return a;
}

const args = parseArgs(process.argv.slice(2));
const ups = await fuzzUpstreams();
const agent = await spawnAgent({ host: args.host, clusterPort: ups.cluster.port, externalPort: ups.external.port, extraArgs: ['--timeout', '1s'] });
const target: FuzzTarget = { host: agent.host, port: agent.port };
const fuzz = new Fuzz(args.seed);
console.log(`fuzz seed ${args.seed} (replay with --seed ${args.seed}); agent pid ${agent.pid} on ${agent.host}:${agent.port}; ${args.packets} packets over ${args.tcp ? 'TCP' : 'UDP'}`);
const rssStart = rssOf(agent.pid);
const t0 = performance.now();
let progressAt = 0;
const progress = (done: number, extra: string): void => {
  if (done < progressAt) return;
  progressAt += Math.max(1, Math.floor(args.packets / 10));
  console.log(`  ${done} sent, ${((performance.now() - t0) / 1000).toFixed(0)} s, agent RSS ${mib(rssOf(agent.pid))} MiB ${extra}`);
};

let failures: string[] = [];
let failureCount = 0;
let summary = '';
let ok = true;
let rssWarm: number | null = null;
const WARMUP = Math.min(20_000, Math.floor(args.packets / 10));

if (!args.tcp) {
  const chs = await openUdpChannels(target, 8);
  const rcvbuf0 = udpRcvbufErrors();
  const warm = await udpFuzz(target, fuzz, chs, WARMUP, {});
  rssWarm = rssOf(agent.pid);
  const res = await udpFuzz(target, fuzz, chs, args.packets - WARMUP, {
    onBurst: (n) => progress(n + WARMUP, `(${chs.reduce((s, c) => s + c.ledger.answers, 0)} answers)`),
  });
  closeUdpChannels(chs);
  const kernelDrops = udpRcvbufErrors() - rcvbuf0;
  const sum = (f: (l: (typeof chs)[number]['ledger']) => number): number => chs.reduce((s, c) => s + f(c.ledger), 0);
  failureCount = sum((l) => l.failureCount);
  failures = chs.flatMap((c) => c.ledger.failures).slice(0, 10);
  const rcodes = new Map<number, number>();
  for (const c of chs) for (const [k, v] of c.ledger.rcodes) rcodes.set(k, (rcodes.get(k) ?? 0) + v);
  const unanswered = warm.unanswered + res.unanswered;
  summary = [
    `UDP: ${sum((l) => l.sent)} packets, ${sum((l) => l.answers)} answers (rcodes ${JSON.stringify(Object.fromEntries([...rcodes].sort((a, b) => a[0] - b[0])))}), ${sum((l) => l.drops)} that must be dropped (short or QR=1)`,
    `  malformed or wrong answers ${failureCount}, oversized ${sum((l) => l.oversized)}, answers to dropped packets ${sum((l) => l.answeredDrops)}, unanswered ${unanswered} (kernel receive-buffer drops ${kernelDrops})`,
    ...[...warm.unansweredSamples, ...res.unansweredSamples].slice(0, 5).map((s) => `  unanswered: ${s}`),
  ].join('\n');
  if (unanswered > kernelDrops) ok = false;
} else {
  const PER_CONN = 2000;
  const PARALLEL = 8;
  let frames = 0;
  let answers = 0;
  let drops = 0;
  let owed = 0;
  let conns = 0;
  let liarConns = 0;
  let liarFrames = 0;
  let liarAnswers = 0;
  let liarOpen = 0;
  let liarShort = 0;
  while (frames < args.packets) {
    const round = await Promise.all(Array.from({ length: PARALLEL }, () => {
      const n = Math.min(PER_CONN, Math.max(1, Math.ceil((args.packets - frames) / PARALLEL)));
      return tcpHonest(target, fuzz, tcpPayloads(fuzz, n), 30_000);
    }));
    for (const l of round) {
      conns++;
      frames += l.sent;
      answers += l.answers;
      drops += l.drops;
      owed += l.owed.size;
      failureCount += l.failureCount;
      for (const f of l.failures) if (failures.length < 10) failures.push(f);
    }
    const scripts = liarScripts(fuzz);
    const liars = await Promise.all(scripts.map((sc) => tcpLiar(target, sc.run)));
    scripts.forEach((sc, i) => {
      const r = liars[i]!;
      liarConns++;
      liarFrames += sc.frames;
      liarAnswers += r.answers;
      if (!r.closed) liarOpen++;
      if (r.answers < sc.minAnswers) liarShort++;
      for (const f of r.failures) {
        failureCount++;
        if (failures.length < 10) failures.push(`${sc.what}: ${f}`);
      }
    });
    if (rssWarm === null && frames >= WARMUP) rssWarm = rssOf(agent.pid);
    progress(frames, `(${conns} honest + ${liarConns} lying connections)`);
  }
  summary = [
    `TCP honest framing: ${frames} frames on ${conns} connections, ${answers} answers, ${drops} that must be dropped (short, zero-length or QR=1), unanswered ${owed}`,
    `TCP lying framing: ${liarConns} connections (${liarFrames} frames), ${liarAnswers} answers, left open by the agent ${liarOpen}, fewer answers than due ${liarShort}`,
    `  malformed or wrong answers ${failureCount}`,
  ].join('\n');
  if (owed > 0 || liarOpen > 0 || liarShort > 0) ok = false;
}

// The agent still answers correctly over both transports.
const after = [
  await udpQuery(target, 'web.default.svc.cluster.local'),
  await udpQuery(target, 'www.example.com'),
  await tcpQuery(target, 'big.example.com'),
];
const afterOk = after[0] === '10.96.1.10' && after[1] === '192.0.2.80' && after[2] === '30 records';
await until(() => false, 200);
// Why the agent closed client connections (a reset is how it protects itself from clients that do not read).
const closes = (await scrapeLines(agent.metricsUrl, 'nodelocal_tcp_closed_total')).filter((l) => !l.endsWith(' 0'));
const rssEnd = rssOf(agent.pid);
const crashed = agent.alive() ? null : agent.exit();
const secs = (performance.now() - t0) / 1000;
await agent.stop();
await ups.close();

console.log(summary);
for (const f of failures) console.log(`  failure: ${f}`);
if (args.tcp) console.log(`agent's client TCP closes by reason: ${closes.join('; ') || 'none'}`);
console.log(`valid queries afterwards: ${JSON.stringify(after)} ${afterOk ? 'right' : 'WRONG'}`);
console.log(`agent RSS: at start ${mib(rssStart)} MiB, after warm-up (${WARMUP}) ${mib(rssWarm)} MiB, at the end ${mib(rssEnd)} MiB; ${secs.toFixed(0)} s`);
if (crashed !== null) console.log(`the agent exited: ${crashed} (log ${agent.logFile})`);
process.exit(crashed === null && failureCount === 0 && ok && afterOk ? 0 : 1);
