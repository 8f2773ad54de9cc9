// The built binary (node dist/src/main.js) against real DNS clients (dig,
// kdig) and fake upstreams in this process; then its flags and exit codes.
// Every client is aimed at an explicit 127.x server and port.
import t from 'tap';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { existsSync, mkdtempSync, readdirSync, statSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SimDnsServer, staticHandler } from '../testkit/dns-server.js';
import { writeResolvConf } from './helpers/agent.js';
import { buildQuery, udpExchange, type Target } from './helpers/dns-client.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const MAIN = join(ROOT, 'dist', 'src', 'main.js');
const HOST = '127.0.31.1';

const clusterRecords = {
  'web.default.svc.cluster.local': { A: ['10.96.1.10'], AAAA: ['fd00::a'], ttl: 30 },
};
// 40 A records, uncompressed (the simulator does not compress): ~1.3 KB, over 512 and over 1232.
const BIG = Array.from({ length: 40 }, (_, i) => `198.51.100.${i + 1}`);
const externalRecords = {
  'www.example.com': { A: ['192.0.2.80'], ttl: 300 },
  'big.example.com': { A: BIG, ttl: 60 },
};

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a client asynchronously (the fake upstreams live in this process and must keep answering). */
function run(cmd: string, args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 10_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : null;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

function installed(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { timeout: 5000 }).status === 0;
}

/** The binary, synchronously, for the flag tests (nothing in this process needs to answer meanwhile). */
function binary(args: string[], env: NodeJS.ProcessEnv = process.env): Run {
  const r = spawnSync(process.execPath, [MAIN, ...args], { env, encoding: 'utf8', timeout: 10_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

// dist/ is built by the test command; build it here if it is not (bounded).
const newestSource = readdirSync(join(ROOT, 'src'), { recursive: true, encoding: 'utf8' })
  .filter((f) => f.endsWith('.ts'))
  .reduce((m, f) => Math.max(m, statSync(join(ROOT, 'src', f)).mtimeMs), 0);
if (existsSync(MAIN) && statSync(MAIN).mtimeMs < newestSource) t.comment(`note: ${MAIN} is older than src/: testing the last build`);
if (!existsSync(MAIN)) {
  t.comment(`${MAIN} missing: building with tsc`);
  const b = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json')], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
  if (!existsSync(MAIN)) throw new Error(`could not build ${MAIN}: ${b.stdout}${b.stderr}`);
}

const cluster = await SimDnsServer.start({ handler: staticHandler(clusterRecords, { soaZone: 'cluster.local', negativeTtl: 30 }) });
const external = await SimDnsServer.start({ handler: staticHandler(externalRecords, { soaZone: 'example.com', negativeTtl: 60 }) });
t.teardown(() => Promise.all([cluster.close(), external.close()]));

interface Spawned {
  child: ChildProcess;
  target: Target;
  stderr: () => string;
  exit: Promise<number | null>;
}

/** Starts the binary on HOST and waits (bounded) until it answers; tries another port if this one is taken. */
async function startBinary(): Promise<Spawned> {
  const resolvConf = writeResolvConf('# written by test/clients.test.ts\nnameserver 127.0.0.254\n');
  let lastErr = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    // Below the ephemeral range (32768+), where any UDP client socket bound to 0.0.0.0 may hold the port.
    const port = 20_000 + ((process.pid * 7 + attempt * 1031) % 12_000);
    const target = { host: HOST, port };
    const child = spawn(process.execPath, [
      MAIN,
      '--listen', `${HOST}:${port}`,
      '--upstream-addr', `127.0.0.1:${cluster.port}`,
      '--upstream-nameservers', `127.0.0.1:${external.port}`,
      '--resolv-conf', resolvConf,
      // info, not warn: "stopped" is an info line and the SIGTERM test looks for it.
      '--log-level', 'info',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    child.stdout!.resume();
    const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let exited = false;
    void exit.then(() => (exited = true));
    for (let i = 0; i < 50 && !exited; i++) {
      const ans = await udpExchange(target, buildQuery('www.example.com'), 200);
      if (ans !== null) return { child, target, stderr: () => err, exit };
    }
    if (!exited) child.kill('SIGKILL');
    await exit;
    lastErr = err;
    if (!/cannot listen/.test(err)) break;
  }
  throw new Error(`the agent binary did not start: ${lastErr}`);
}

const agent = await startBinary();
t.teardown(() => {
  if (agent.child.exitCode === null) agent.child.kill('SIGKILL');
});
const at = [`@${agent.target.host}`, '-p', String(agent.target.port)];
const status = (out: string): string | undefined => /status: ([A-Z]+)/.exec(out)?.[1];
const flagsOf = (out: string): string[] => (/;; flags: ([a-z ]*);/i.exec(out)?.[1] ?? '').trim().split(/\s+/);
const lines = (out: string): string[] => out.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith(';'));
const sorted = (a: string[]): string[] => [...a].sort((x, y) => x.localeCompare(y, 'en', { numeric: true }));

const HAVE_DIG = installed('dig');
const HAVE_KDIG = installed('kdig');

t.test('dig', { skip: HAVE_DIG ? false : 'dig is not installed (apt-get install bind9-dnsutils; CI installs it)' }, async (t) => {
  const dig = (...args: string[]): Promise<Run> => run('dig', [...at, '+time=2', '+tries=1', ...args]);

  const web = await dig('web.default.svc.cluster.local', 'A', '+short');
  t.equal(web.code, 0);
  t.same(lines(web.stdout), ['10.96.1.10'], 'cluster service name over UDP');
  const www = await dig('www.example.com', 'A');
  t.equal(status(www.stdout), 'NOERROR');
  t.match(www.stdout, /^www\.example\.com\.\s+\d+\s+IN\s+A\s+192\.0\.2\.80$/m, 'external name: answer section');
  t.match(www.stdout, /;; SERVER: 127\.0\.31\.1#\d+\(127\.0\.31\.1\) \(UDP\)/, 'over UDP, from our agent');
  const aaaa = await dig('web.default.svc.cluster.local', 'AAAA', '+short');
  t.same(lines(aaaa.stdout), ['fd00::a'], 'AAAA');

  const tcp = await dig('www.example.com', 'A', '+tcp');
  t.equal(status(tcp.stdout), 'NOERROR');
  t.match(tcp.stdout, /IN\s+A\s+192\.0\.2\.80/);
  t.match(tcp.stdout, /\(TCP\)/, 'over TCP');
  const tcpCluster = await dig('web.default.svc.cluster.local', 'A', '+tcp', '+short');
  t.same(lines(tcpCluster.stdout), ['10.96.1.10'], 'cluster name over TCP');

  const tc = await dig('big.example.com', 'A', '+bufsize=512', '+ignore');
  t.equal(status(tc.stdout), 'NOERROR');
  t.ok(flagsOf(tc.stdout).includes('tc'), `+bufsize=512 +ignore: TC set (flags: ${flagsOf(tc.stdout).join(' ')})`);
  const kept = Number(/ANSWER: (\d+),/.exec(tc.stdout)?.[1] ?? -1);
  t.ok(kept > 0 && kept < BIG.length, `whole records that fit are kept (${kept} of ${BIG.length}), for clients that never retry over TCP`);
  const retried = await dig('big.example.com', 'A', '+bufsize=512');
  t.match(retried.stdout, /Truncated, retrying in TCP mode/, 'dig retried over TCP');
  t.notOk(flagsOf(retried.stdout).includes('tc'), 'the TCP answer is whole');
  t.same(sorted(lines(retried.stdout).map((l) => l.split(/\s+/).pop()!)), sorted(BIG), 'all 40 records over TCP');
  const capped = await dig('big.example.com', 'A', '+bufsize=4096', '+ignore');
  t.ok(flagsOf(capped.stdout).includes('tc'), '+bufsize=4096: ~1.3 KB is still over our 1232-byte UDP cap, so TC');
  t.match(capped.stdout, /; EDNS: version: 0, flags:; udp: 1232/, 'and we advertise 1232');

  for (const opt of ['+norec', '+cd', '+dnssec']) {
    const r = await dig('www.example.com', 'A', opt);
    t.equal(status(r.stdout), 'NOERROR', `${opt}: NOERROR`);
    t.match(r.stdout, /IN\s+A\s+192\.0\.2\.80/, `${opt}: right data`);
    const f = flagsOf(r.stdout);
    if (opt === '+norec') t.notOk(f.includes('rd'), '+norec: RD not echoed');
    if (opt === '+cd') t.ok(f.includes('cd'), '+cd: CD echoed');
    if (opt === '+dnssec') t.match(r.stdout, /; EDNS: version: 0, flags: do;/, '+dnssec: DO echoed in our OPT');
  }

  const nx = await dig('nope.default.svc.cluster.local', 'A');
  t.equal(nx.code, 0);
  t.equal(status(nx.stdout), 'NXDOMAIN', 'missing cluster name');
  t.match(nx.stdout, /cluster\.local\.\s+\d+\s+IN\s+SOA/, 'with the SOA');
  t.equal(status((await dig('missing.example.com', 'A')).stdout), 'NXDOMAIN', 'missing external name');

  await dig('web.default.svc.cluster.local', 'A'); // cached in lower case
  const mixed = await dig('WeB.DeFaUlT.sVc.ClUsTeR.LoCaL', 'A', '+noall', '+question', '+answer');
  t.match(mixed.stdout, /^;WeB\.DeFaUlT\.sVc\.ClUsTeR\.LoCaL\.\s+IN\s+A$/m, '0x20: the question comes back in the client\'s spelling');
  t.match(mixed.stdout, /IN\s+A\s+10\.96\.1\.10/);
});

t.test('kdig', { skip: HAVE_KDIG ? false : 'kdig is not installed (apt-get install knot-dnsutils; CI installs it)' }, async (t) => {
  const kdig = (...args: string[]): Promise<Run> => run('kdig', [...at, '+timeout=2', '+retry=0', ...args]);
  const udp = await kdig('web.default.svc.cluster.local', 'A');
  t.equal(udp.code, 0);
  t.match(udp.stdout, /status: NOERROR/);
  t.match(udp.stdout, /web\.default\.svc\.cluster\.local\.\s+\d+\s+IN\s+A\s+10\.96\.1\.10/, 'UDP');
  t.match(udp.stdout, /;; From 127\.0\.31\.1@\d+\(UDP\)/, 'over UDP');
  const tcp = await kdig('www.example.com', 'A', '+tcp');
  t.match(tcp.stdout, /status: NOERROR/);
  t.match(tcp.stdout, /IN\s+A\s+192\.0\.2\.80/);
  t.match(tcp.stdout, /\(TCP\)/, 'over TCP');
  const small = await kdig('big.example.com', 'A', '+bufsize=512', '+ignore');
  t.match(small.stdout, /;; Flags: [a-z ]*\btc\b/, '+bufsize=512 +ignore: TC set');
  const keptK = Number(/ANSWER: (\d+);/.exec(small.stdout)?.[1] ?? -1);
  t.ok(keptK > 0 && keptK < BIG.length, `kdig sees the records that fit (${keptK})`);
  const fallback = await kdig('big.example.com', 'A', '+bufsize=512', '+short');
  t.same(sorted(lines(fallback.stdout)), sorted(BIG), '+bufsize=512: kdig falls back to TCP and gets all 40');
  const big = await kdig('big.example.com', 'A', '+bufsize=1232', '+tcp', '+short');
  t.same(sorted(lines(big.stdout)), sorted(BIG), 'over TCP: all 40');
  const nx = await kdig('nope.default.svc.cluster.local', 'A');
  t.match(nx.stdout, /status: NXDOMAIN/);
});

t.test('flags and exit codes of the binary', async (t) => {
  const help = binary(['--help']);
  t.equal(help.code, 0, '--help exits 0');
  for (const flag of ['--listen', '--upstream-addr', '--cache-size']) t.match(help.stdout, new RegExp(`^  ${flag}\\b`, 'm'), `--help lists ${flag}`);
  t.match(help.stdout, /^ {2}--cache-size N\n.*\(default 9984\)$/m, '--cache-size default shown');
  t.match(help.stdout, /^ {2}--timeout DURATION\n.*\(default 2s\)$/m, '--timeout default shown');
  t.match(help.stdout, /^ {2}--port N\n.*\(default 53\)$/m, '--port default shown');

  const lots = binary(['--cache-size', 'lots']);
  t.equal(lots.code, 2, '--cache-size lots exits 2');
  t.match(lots.stderr, /--cache-size/);
  t.match(lots.stderr, /lots/);
  t.equal(lots.stdout, '');

  const unknown = binary(['--unknown-flag']);
  t.equal(unknown.code, 2, '--unknown-flag exits 2');
  t.match(unknown.stderr, /--unknown-flag/);

  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KUBE_DNS_UPSTREAM_')) env[k] = v;
  const noDns = binary(['--require-cluster-dns', '--listen', '127.0.31.2:15053', '--upstream-nameservers', '127.0.0.1:9'], env);
  t.equal(noDns.code, 2, '--require-cluster-dns without a cluster DNS exits 2');
  t.match(noDns.stderr, /KUBE_DNS_UPSTREAM_SERVICE_HOST/);
  const fromEnv = binary(['--require-cluster-dns', '--upstream-svc', 'x', '--resolv-conf', '/nonexistent-nldns/resolv.conf', '--listen', '127.0.31.2:15053'], { ...env, X_SERVICE_HOST: '127.0.0.1' });
  t.equal(fromEnv.code, 1, 'with the Service environment the flag check passes (and start-up fails on resolv.conf)');

  const missing = join(mkdtempSync(join(tmpdir(), 'nldns-')), 'no-such-resolv.conf');
  const noConf = binary(['--listen', '127.0.31.2:15053', '--upstream-addr', '127.0.0.1:9', '--resolv-conf', missing]);
  t.equal(noConf.code, 1, 'missing resolv.conf exits 1');
  t.match(noConf.stderr, missing, 'naming the path');

  // An address:port already taken (UDP and TCP, by this process).
  const udp = dgram.createSocket('udp4');
  await new Promise<void>((r) => udp.bind(0, '127.0.31.3', () => r()));
  const port = udp.address().port;
  const tcp = net.createServer();
  await new Promise<void>((r, j) => {
    tcp.once('error', j);
    tcp.listen(port, '127.0.31.3', () => r());
  }).catch(() => undefined); // TCP may find the port taken; UDP alone is enough for the test
  t.teardown(() => {
    udp.close();
    tcp.close();
  });
  const inUse = binary(['--listen', `127.0.31.3:${port}`, '--upstream-addr', '127.0.0.1:9', '--upstream-nameservers', '127.0.0.1:9']);
  t.equal(inUse.code, 1, 'address in use exits 1');
  t.match(inUse.stderr, new RegExp(`cannot listen on (udp|tcp)://127\\.0\\.31\\.3:${port}`));

  const loop = binary(['--listen', '127.0.31.4:15054', '--upstream-addr', '127.0.31.4:15054', '--upstream-nameservers', '127.0.0.1:9']);
  t.equal(loop.code, 1, 'upstream = own listen address exits 1');
  t.match(loop.stderr, /loop/);
  t.match(loop.stderr, /127\.0\.31\.4:15054/);
});

t.test('SIGTERM: the binary stops cleanly', async (t) => {
  t.equal(agent.child.exitCode, null, 'still running after all the clients');
  agent.child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([agent.exit, new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), 8000)))]);
  clearTimeout(timer);
  t.equal(code, 0, 'exits 0');
  const logs = agent.stderr().split('\n').filter((l) => l.trim() !== '');
  const msgs = logs.map((l) => {
    try {
      return JSON.parse(l) as { level?: string; msg?: string };
    } catch {
      return { level: 'unparsable', msg: l };
    }
  });
  t.ok(msgs.some((m) => m.msg === 'started'), 'logged "started"');
  t.ok(msgs.some((m) => m.msg === 'stopped'), 'logged "stopped"');
  t.same(msgs.filter((m) => m.level !== 'info'), [], 'no warnings, errors or stray output on stderr');
});
