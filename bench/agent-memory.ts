/**
 * The whole agent's memory, as the DaemonSet's requests and limit must cover
 * it (docs/install.md, "Resources"): RSS of the real process (dist/src/main.js)
 *
 *   1. idle        started, nothing asked;
 *   2. synced      with the API view of SERVICES Services (3 endpoints each,
 *                  one EndpointSlice each, 100 namespaces) from a fake API server;
 *   3. filled      2 s after NAMES distinct external names, each answered with
 *                  ANSWER_BYTES of TXT (10,000: the cache's byte budget binds
 *                  before its entry count; 0: one A record, the entry count binds);
 *      settled     SETTLE_S seconds later, at rest (V8's memory reducer has run);
 *   4. relist      peak and final RSS while the watch history expires under the
 *                  agent (410 Gone) and it lists everything again.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/agent-memory.js
 *   SERVICES=10000 NAMES=20000 ANSWER_BYTES=10000 SETTLE_S=20 (the defaults); extra agent flags after --
 *
 * SERVICES=0 runs the agent with --no-kube (no API server, no view, no
 * relist): the cache alone, as the compact-store figures are stated
 * (issue 16: 100,000 names, one A record each):
 *
 *   SERVICES=0 NAMES=100000 ANSWER_BYTES=0 node dist/bench/agent-memory.js -- --cache-size 100000 --cache-memory 256Mi
 *
 * Everything on 127.0.0.1; the agent's resolv.conf names only the fake resolver.
 * Prints one JSON object (MiB). RssFile (mostly the node binary) is shown apart:
 * it is shared and reclaimable, anon memory is what an OOM kill is about.
 */
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import dnsPacket from 'dns-packet';
import { writeKubeconfig } from '../testkit/cluster.js';
import { SimDnsServer, staticHandler } from '../testkit/dns-server.js';
import { FakeApiServer, endpointSliceJson, namespaceJson, serviceJson } from '../testkit/fake-apiserver.js';
import { deployedEnv } from './deployed-env.js';
import { EXIT_INTERRUPTED, handleInterrupts } from './interrupt.js';

const SERVICES = Number(process.env['SERVICES'] ?? 10_000);
const NAMES = Number(process.env['NAMES'] ?? 20_000);
const ANSWER_BYTES = Number(process.env['ANSWER_BYTES'] ?? 10_000);
const PORT = Number(process.env['PORT'] ?? 5399);
/** Seconds at rest after the fill before the "settled" figure (0: none). */
const SETTLE_S = Number(process.env['SETTLE_S'] ?? 20);
const METRICS_PORT = PORT + 1000;
/** Bounded waits: the sync poll, one query, the relist watch. */
const SYNC_WAIT_MS = 60_000;
const QUERY_TIMEOUT_MS = 2000;
const RELIST_WATCH_MS = 15_000;
const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));

interface Mem {
  readonly rss: number;
  readonly anon: number;
  readonly file: number;
}

function memOf(pid: number): Mem {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? NaN);
  const mib = (k: string): number => Math.round(kib(k) / 1024);
  return { rss: mib('VmRSS'), anon: mib('RssAnon'), file: mib('RssFile') };
}

/**
 * The process's anonymous memory by kind, MiB, from /proc/PID/smaps: V8's
 * heap pages (mappings of 256 KiB and less), glibc's main heap ([heap]), and
 * the rest (thread stacks, malloc arenas of other threads, large mallocs and
 * ArrayBuffers, which glibc maps on their own).
 */
function anonByKind(pid: number): Record<string, number> {
  const sums: Record<string, number> = { v8Pages: 0, mallocHeap: 0, other: 0 };
  let kind = 'other';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (m !== null) {
      const kib = (parseInt(m[2]!, 16) - parseInt(m[1]!, 16)) / 1024;
      const name = m[3]!.trim();
      kind = name === '[heap]' ? 'mallocHeap' : name === '' && kib <= 256 ? 'v8Pages' : 'other';
    } else if (line.startsWith('Anonymous:')) {
      sums[kind]! += Number(line.split(/\s+/)[1]) / 1024;
    }
  }
  for (const k of Object.keys(sums)) sums[k] = Math.round(sums[k]! * 10) / 10;
  return sums;
}

/** The cache's own gauges from /metrics: entries and the bytes charged against --cache-memory. */
async function scrape(): Promise<string> {
  try {
    const res = await fetch(`http://127.0.0.1:${METRICS_PORT}/metrics`, { signal: AbortSignal.timeout(QUERY_TIMEOUT_MS) });
    return await res.text();
  } catch {
    return '';
  }
}

function cacheGauges(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^(coredns_cache_entries|nodelocal_cache_bytes|nodejs_heap_size_used_bytes|nodejs_heap_size_total_bytes|nodejs_external_memory_bytes|nodejs_heap_space_size_used_bytes)\{([^}]*)\} (\S+)$/.exec(line);
    if (m === null) continue;
    const type = /(?:type|space)="(\w+)"/.exec(m[2]!)?.[1];
    out[type !== undefined ? `${m[1]}_${type}` : m[1]!] = Number(m[3]);
  }
  return out;
}

/** Full collections each thread's idle collector ran: the main thread's, and the batched workers' summed. */
function idleGcs(text: string): { main: number; workers: number } {
  const sum = (name: string): number => text.split('\n').filter((l) => l.startsWith(name)).reduce((n, l) => n + Number(l.split(' ').pop()), 0);
  return { main: sum('nodelocal_idle_gcs_total'), workers: sum('nodelocal_udp_worker_idle_gcs_total') };
}

/** The agent while it runs: killed at once by a second signal, or if this process exits before stopping it. */
const running = new Set<{ killNow(): void }>();
// SIGTERM/SIGINT (`kill PID`, `timeout`, Ctrl-C): every wait below ends, and the agent is stopped.
const interrupts = handleInterrupts('agent-memory', running);
const sleep = (ms: number): Promise<void> => delay(ms, undefined, { signal: interrupts.signal });
/** How long the agent may take to stop on SIGTERM before it is killed. */
const STOP_GRACE_MS = 10_000;

function ip(i: number, base: number): string {
  return `10.${base + ((i >> 16) & 255)}.${(i >> 8) & 255}.${i & 255}`;
}

async function main(): Promise<void> {
  const api = new FakeApiServer({ token: 'bench', gzip: true });
  for (let n = 0; n < 100; n++) api.put('namespaces', namespaceJson(`ns-${n}`));
  for (let i = 0; i < SERVICES; i++) {
    const ns = `ns-${i % 100}`;
    api.put('services', serviceJson(ns, `svc-${i}`, { clusterIP: ip(i, 96) }));
    const eps = [0, 1, 2].map((e) => ({ addresses: [ip(i * 3 + e, 0)], ready: true }));
    api.put('endpointslices', endpointSliceJson(ns, `svc-${i}-abcde`, `svc-${i}`, eps));
  }
  await api.start();
  const kubeDns = await SimDnsServer.start({ handler: staticHandler({ 'kubernetes.default.svc.cluster.local': { A: ['10.96.0.1'], ttl: 30 } }, { soaZone: 'cluster.local' }) });
  const strings = Math.ceil(ANSWER_BYTES / 250);
  const external = await SimDnsServer.start({
    handler: (q) => {
      const name = q.questions?.[0]?.name ?? '';
      if (ANSWER_BYTES === 0) return { answers: [{ type: 'A', name, ttl: 3600, data: '192.0.2.1' }] };
      return { answers: [{ type: 'TXT', name, ttl: 3600, data: Array.from({ length: strings }, () => Buffer.alloc(250, 97)) }] };
    },
  });
  const dir = mkdtempSync(join(tmpdir(), 'nldns-mem-'));
  const resolv = join(dir, 'resolv.conf');
  writeFileSync(resolv, 'nameserver 127.0.0.1\n');
  const extra = process.argv.includes('--') ? process.argv.slice(process.argv.indexOf('--') + 1) : [];
  const kube = SERVICES > 0 ? ['--kubeconfig', writeKubeconfig(api.url, 'bench')] : ['--no-kube'];
  const env = deployedEnv();
  const agent = spawn(process.execPath, [
    MAIN, '--listen', `127.0.0.1:${PORT}`, ...kube, '--health-port', '0', '--metrics-listen-address', `127.0.0.1:${METRICS_PORT}`,
    '--upstream-addr', `127.0.0.1:${kubeDns.port}`, '--upstream-nameservers', `127.0.0.1:${external.port}`, '--resolv-conf', resolv,
    '--success-ttl', '1h', '--prefetch-min-hits', '0', '--log-level', 'info', ...extra,
  ], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  const exited = new Promise<void>((resolve) => agent.once('exit', () => resolve()));
  const alive = { killNow: (): void => void agent.kill('SIGKILL') };
  running.add(alive);
  let log = '';
  agent.stderr.setEncoding('utf8').on('data', (d: string) => { log += d; });
  const pid = agent.pid!;
  const out: Record<string, unknown> = { services: SERVICES, names: NAMES, answerBytes: ANSWER_BYTES, extraFlags: extra, env };
  try {
    for (let waited = 0; !log.includes('"started"'); waited += 100) {
      if (waited > SYNC_WAIT_MS || agent.exitCode !== null) throw new Error(`agent did not start: ${log}`);
      await sleep(100);
    }
    await sleep(2000);
    out['idle'] = { ...memOf(pid), anonByKind: anonByKind(pid) };
    const synced = (): number => (log.match(/kube initial list applied/g) ?? []).length;
    for (let waited = 0; SERVICES > 0 && synced() < 3; waited += 100) {
      if (waited > SYNC_WAIT_MS) throw new Error(`view not synced after ${SYNC_WAIT_MS} ms`);
      await sleep(100);
    }
    await sleep(2000);
    out['synced'] = memOf(pid);

    const sock = dgram.createSocket('udp4');
    const pending = new Map<number, () => void>();
    // Names the cache now holds an answer for: a SERVFAIL or an empty answer fills nothing.
    let answered = 0;
    let failed = 0;
    sock.on('message', (m) => {
      if (m.length < 12) return;
      const done = pending.get(m.readUInt16BE(0));
      if (done !== undefined) {
        pending.delete(m.readUInt16BE(0));
        if ((m[3]! & 0x0f) === 0 && m.readUInt16BE(6) > 0) answered++;
        else failed++;
        done();
      }
    });
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < NAMES && !interrupts.signal.aborted) {
        const i = next++;
        const id = i & 0xffff;
        const q = dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: ANSWER_BYTES === 0 ? 'A' : 'TXT', name: `n${i}.example.org` }] });
        await new Promise<void>((res) => {
          const timer = setTimeout(() => { pending.delete(id); res(); }, QUERY_TIMEOUT_MS);
          pending.set(id, () => { clearTimeout(timer); res(); });
          sock.send(q, PORT, '127.0.0.1');
        });
      }
    };
    await Promise.all(Array.from({ length: 32 }, worker));
    sock.close();
    await sleep(2000);
    out['filled'] = { ...memOf(pid), answered, failed, anonByKind: anonByKind(pid) };
    out['cache'] = cacheGauges(await scrape());
    // At rest, each thread's idle collector (src/ops/idle-gc.ts) collects what the fill left in its heap once it goes
    // quiet and the pages go back: the RSS a cache at rest holds, as a dashboard shows it between bursts.
    if (SETTLE_S > 0) {
      await sleep(SETTLE_S * 1000);
      out['settled'] = { ...memOf(pid), afterSeconds: SETTLE_S, anonByKind: anonByKind(pid), idleGcs: idleGcs(await scrape()) };
    }

    const filled = memOf(pid);
    out['perNameBytes'] = Math.round(((filled.rss - (out['synced'] as Mem).rss) * 1048576) / Math.max(1, answered));
    if (SERVICES > 0) {
      // The watch history expires under every reflector (as after an etcd compaction): 410, relist.
      api.bumpRv();
      api.compact();
      api.closeWatches();
      let peak = 0;
      for (let t = 0; t < RELIST_WATCH_MS; t += 50) {
        await sleep(50);
        peak = Math.max(peak, memOf(pid).rss);
      }
      out['relist'] = { peakRss: peak, after: memOf(pid), relisted: (log.match(/relisting/g) ?? []).length };
    }
    const hwm = Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);
    out['peakRss'] = Math.round(hwm / 1024);
  } finally {
    if (agent.exitCode === null && agent.signalCode === null) {
      agent.kill('SIGTERM');
      const grace = setTimeout(() => agent.kill('SIGKILL'), STOP_GRACE_MS);
      await exited;
      clearTimeout(grace);
    }
    running.delete(alive);
    await Promise.all([kubeDns.stop(), external.stop(), api.close()]);
  }
  process.stdout.write(JSON.stringify(out, null, 2) + '\n');
}

try {
  await main();
} catch (err) {
  if (!interrupts.signal.aborted) throw err;
  process.stderr.write('agent-memory: interrupted; the agent is stopped\n');
  process.exitCode = EXIT_INTERRUPTED;
}
