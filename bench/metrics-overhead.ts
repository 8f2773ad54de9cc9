/**
 * What publishing metrics costs the hit path: cache-hit throughput (dnsperf,
 * closed loop) with /metrics scraped every second by curl, against the same
 * agent process not scraped, alternating off/on in one run so machine load
 * drifts hit both sides alike; then the cost of one scrape (ms, curl's
 * time_total) with a small cache and with 100k cached names. Also agent CPU
 * per query from /proc, which a loaded machine disturbs less than q/s.
 *
 * DIST needs node_modules and package.json ("type": "module") beside it:
 *   npx tsc -p tsconfig.json --outDir DIST && ln -s "$PWD/node_modules" DIST/ && cp package.json DIST/
 *   node DIST/bench/metrics-overhead.js \
 *     [--agent DIST/src/main.js] [--rounds 4] [--seconds 10] [--pin-agent 1] [--pin-load 0] [--names 100000]
 *
 * Everything on 127.0.0.1: a fake upstream (testkit SimDnsServer) answering
 * every name, the agent started with --no-kube against it and a resolv.conf
 * of our own, dnsperf and curl as clients.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SimDnsServer } from '../testkit/dns-server.js';
import { parseDnsperfOutput } from './dnsperf.js';
import type { DnsperfStats } from './results.js';

interface Args {
  agent: string;
  rounds: number;
  seconds: number;
  pinAgent: string;
  pinLoad: string;
  names: number;
  hitNames: number;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = {
    agent: fileURLToPath(new URL('../src/main.js', import.meta.url)),
    rounds: 4,
    seconds: 10,
    pinAgent: '1',
    pinLoad: '0',
    names: 100_000,
    hitNames: 1000,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const v = argv[i + 1];
    if (v === undefined) throw new Error(`${argv[i]}: missing value`);
    switch (argv[i]) {
      case '--agent': a.agent = v; break;
      case '--rounds': a.rounds = Number(v); break;
      case '--seconds': a.seconds = Number(v); break;
      case '--pin-agent': a.pinAgent = v; break;
      case '--pin-load': a.pinLoad = v; break;
      case '--names': a.names = Number(v); break;
      case '--hit-names': a.hitNames = Number(v); break;
      default: throw new Error(`unknown option ${argv[i]}`);
    }
  }
  return a;
}

const HOST = '127.0.0.1';

function run(cmd: string, args: readonly string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err !== null && !String(stdout).includes('Queries per second') && !String(stdout).includes('time_total')) {
        reject(new Error(`${cmd} failed: ${err.message}\n${String(stderr).slice(-800)}`));
      } else resolve(String(stdout));
    });
  });
}

async function dnsperf(a: Args, port: number, file: string, seconds: number, extra: readonly string[] = []): Promise<DnsperfStats> {
  const args = ['-c', a.pinLoad, 'dnsperf', '-s', HOST, '-p', String(port), '-d', file, '-l', String(seconds), '-q', '64', '-c', '4', '-t', '2', ...extra];
  return parseDnsperfOutput(await run('taskset', args, (seconds + 60) * 1000), `taskset ${args.join(' ')}`);
}

/** CPU seconds (user + system) a process has used: throughput swings with what the shared CPU gives; CPU per query much less. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function scrapeMs(url: string): Promise<{ ms: number; bytes: number }> {
  const out = await run('curl', ['-s', '-o', '/dev/null', '-w', 'time_total=%{time_total} size=%{size_download}', url], 10_000);
  const m = /time_total=([0-9.]+) size=([0-9]+)/.exec(out);
  if (m === null) throw new Error(`curl: ${out}`);
  return { ms: Number(m[1]) * 1000, bytes: Number(m[2]) };
}

async function metricValue(url: string, re: RegExp): Promise<number> {
  const text = await (await fetch(url)).text();
  const m = re.exec(text);
  return m === null ? NaN : Number(m[1]);
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function pct(xs: readonly number[], p: number): number {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const dir = mkdtempSync(join(tmpdir(), 'nldns-metrics-bench-'));
  const upstream = await SimDnsServer.start({
    host: HOST,
    handler: (q) => {
      const question = q.questions?.[0];
      if (question === undefined) return null;
      const data = question.type === 'AAAA' ? 'fd00::1' : '10.0.0.1';
      const type = question.type === 'AAAA' ? 'AAAA' : 'A';
      return { type: 'response', answers: [{ name: question.name, type, class: 'IN', ttl: 3600, data }] };
    },
  });
  const resolv = join(dir, 'resolv.conf');
  writeFileSync(resolv, `nameserver ${HOST}\n`);
  const dnsPort = 25300 + (process.pid % 500);
  const metricsPort = dnsPort + 1000;
  const agentArgs = [
    '-c', a.pinAgent, process.execPath, a.agent,
    '--listen', `${HOST}:${dnsPort}`, '--upstream-addr', `${HOST}:${upstream.port}`, '--upstream-nameservers', `${HOST}:${upstream.port}`,
    '--resolv-conf', resolv, '--no-kube', '--metrics-listen-address', `${HOST}:${metricsPort}`, '--health-port', '0', '--log-level', 'warn',
    '--cache-size', String(Math.max(a.names * 2 + 10_000, 200_000)), '--cache-memory', '1Gi',
  ];
  const agent: ChildProcess = spawn('taskset', agentArgs, { stdio: ['ignore', 'inherit', 'inherit'] });
  process.once('SIGTERM', () => {
    agent.kill('SIGTERM');
    process.exit(1);
  });
  const stopAll = async (): Promise<void> => {
    if (agent.exitCode === null) agent.kill('SIGTERM');
    await upstream.close();
  };
  try {
    const metricsUrl = `http://${HOST}:${metricsPort}/metrics`;
    for (let i = 0; ; i++) {
      try {
        await fetch(metricsUrl);
        break;
      } catch {
        if (i > 100) throw new Error('agent did not start');
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    // Hit names: cluster-zone A and AAAA, warmed with one pass.
    const hitFile = join(dir, 'hit.txt');
    const lines: string[] = [];
    for (let i = 0; i < a.hitNames; i++) lines.push(`svc-${i}.ns-${i % 20}.svc.cluster.local A`, `svc-${i}.ns-${i % 20}.svc.cluster.local AAAA`);
    writeFileSync(hitFile, lines.join('\n') + '\n');
    await dnsperf(a, dnsPort, hitFile, 5, ['-n', '1']);
    const smallScrape: number[] = [];
    for (let i = 0; i < 30; i++) smallScrape.push((await scrapeMs(metricsUrl)).ms);

    const off: number[] = [];
    const on: number[] = [];
    const cpuOff: number[] = [];
    const cpuOn: number[] = [];
    let scrapes = 0;
    for (let r = 0; r < a.rounds; r++) {
      // Alternate which side goes first, so a trend over the run does not favour one.
      const order = r % 2 === 0 ? ['off', 'on'] : ['on', 'off'];
      for (const side of order) {
        let scraper: ChildProcess | null = null;
        if (side === 'on') {
          scraper = spawn('taskset', ['-c', a.pinLoad, 'sh', '-c', `while :; do curl -s -o /dev/null ${metricsUrl}; echo x; sleep 1; done`], { stdio: ['ignore', 'pipe', 'ignore'] });
          scraper.stdout?.on('data', (b: Buffer) => (scrapes += b.toString().split('x').length - 1));
        }
        const cpu0 = cpuSeconds(agent.pid!);
        const st = await dnsperf(a, dnsPort, hitFile, a.seconds);
        const usPerQuery = ((cpuSeconds(agent.pid!) - cpu0) / st.queriesCompleted) * 1e6;
        if (scraper !== null) scraper.kill('SIGTERM');
        (side === 'on' ? on : off).push(st.qps);
        (side === 'on' ? cpuOn : cpuOff).push(usPerQuery);
        console.log(`round ${r + 1} ${side.padEnd(3)} ${st.qps.toFixed(0)} q/s, agent CPU ${usPerQuery.toFixed(2)} us/query`);
      }
    }

    // 100k cached names (A), then the scrape again.
    const bigFile = join(dir, 'big.txt');
    const big: string[] = [];
    for (let i = 0; i < a.names; i++) big.push(`n-${i}.fill.svc.cluster.local A`);
    writeFileSync(bigFile, big.join('\n') + '\n');
    // Cluster names: the pipelined TCP pool fills faster than a UDP socket per host-resolver try. One pass (-n 1), however long it takes.
    await dnsperf(a, dnsPort, bigFile, 1800, ['-n', '1']);
    const entries = await metricValue(metricsUrl, /^coredns_cache_entries\{[^}]*type="success"[^}]*\} ([0-9.e+]+)$/m);
    const bigScrape: number[] = [];
    let bytes = 0;
    for (let i = 0; i < 30; i++) {
      const s = await scrapeMs(metricsUrl);
      bigScrape.push(s.ms);
      bytes = s.bytes;
    }

    const mOff = median(off);
    const mOn = median(on);
    console.log('');
    console.log(`hit throughput, median of ${a.rounds} x ${a.seconds} s each: not scraped ${mOff.toFixed(0)} q/s, scraped every 1 s ${mOn.toFixed(0)} q/s: ${(((mOn - mOff) / mOff) * 100).toFixed(1)}%`);
    console.log(`  off: ${off.map((x) => x.toFixed(0)).join(' ')}   on: ${on.map((x) => x.toFixed(0)).join(' ')}   (${scrapes} scrapes during the on runs)`);
    const cOff = median(cpuOff);
    const cOn = median(cpuOn);
    console.log(`agent CPU per query (scrapes included), median: not scraped ${cOff.toFixed(2)} us, scraped ${cOn.toFixed(2)} us: ${(((cOn - cOff) / cOff) * 100).toFixed(1)}%`);
    console.log(`  off: ${cpuOff.map((x) => x.toFixed(2)).join(' ')}   on: ${cpuOn.map((x) => x.toFixed(2)).join(' ')}`);
    console.log(`one scrape, ${a.hitNames * 2} cached names: min ${pct(smallScrape, 0).toFixed(1)} ms, median ${median(smallScrape).toFixed(1)} ms, p90 ${pct(smallScrape, 90).toFixed(1)} ms`);
    console.log(`one scrape, ${entries} cached names: min ${pct(bigScrape, 0).toFixed(1)} ms, median ${median(bigScrape).toFixed(1)} ms, p90 ${pct(bigScrape, 90).toFixed(1)} ms, ${bytes} bytes`);
  } finally {
    await stopAll();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
