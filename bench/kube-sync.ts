/**
 * Initial sync of a large cluster through the reflectors (src/kube/watch.ts):
 * how long the three lists take, and how much memory the synced view adds.
 * The fake kube-apiserver runs in a child process, so the figures are the
 * watcher's alone; the writer is a plain Map per kind (the real view adds
 * its indexes on top).
 *
 *   npx tsc -p tsconfig.json && node --expose-gc dist/bench/kube-sync.js
 *   SERVICES=10000 NAMESPACES=100 ENDPOINTS=3 GZIP=1 PAGE=500   (the defaults)
 *
 * Then it applies CHURN live updates (MODIFIED) and reports the API load.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { systemClock } from '../src/clock.js';
import { silentLogger } from '../src/log.js';
import { Counters } from '../src/stats/counters.js';
import { KubeApi, loadClusterConfig } from '../src/kube/client.js';
import { KubeWatch, watchCounterSchema } from '../src/kube/watch.js';
import type { ClusterViewWriter, KindName, KindObjects } from '../src/kube/types.js';
import { FakeApiServer, endpointSliceJson, namespaceJson, serviceJson } from '../testkit/fake-apiserver.js';

const SERVICES = Number(process.env['SERVICES'] ?? 10_000);
const NAMESPACES = Number(process.env['NAMESPACES'] ?? 100);
const ENDPOINTS = Number(process.env['ENDPOINTS'] ?? 3);
const GZIP = process.env['GZIP'] !== '0';
const PAGE = Number(process.env['PAGE'] ?? 500);
const CHURN = Number(process.env['CHURN'] ?? 1_000);

function ip(prefix: string, i: number): string {
  return `${prefix}.${(i >> 8) & 255}.${i & 255}`;
}

// ---------------------------------------------------------------- the fake API server (child process)

async function serve(): Promise<void> {
  const fake = new FakeApiServer({ gzip: GZIP });
  for (let n = 0; n < NAMESPACES; n++) fake.put('namespaces', namespaceJson(`ns-${n}`));
  for (let i = 0; i < SERVICES; i++) {
    const ns = `ns-${i % NAMESPACES}`;
    const name = `svc-${i}`;
    fake.put('services', serviceJson(ns, name, { clusterIP: ip('10.96', i), ports: [{ name: 'http', port: 80 }, { name: 'grpc', port: 9090 }] }));
    const eps = Array.from({ length: ENDPOINTS }, (_, e) => ({ addresses: [ip(`10.${100 + e}`, i)], hostname: `${name}-${e}` }));
    fake.put('endpointslices', endpointSliceJson(ns, `${name}-x7k2p`, name, eps));
  }
  fake.compact(); // the seeding is history nobody will ask for
  await fake.start();
  process.stdout.write(JSON.stringify({ url: fake.url }) + '\n');
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line === 'stats') {
      const list = fake.requests.filter((r) => !r.watch).length;
      const watch = fake.requests.filter((r) => r.watch).length;
      process.stdout.write(JSON.stringify({ list, watch, bytes: fake.bytesSent }) + '\n');
    } else if (line.startsWith('churn ')) {
      const n = Number(line.slice(6));
      for (let i = 0; i < n; i++) {
        const ns = `ns-${i % NAMESPACES}`;
        const name = `svc-${i}`;
        const eps = Array.from({ length: ENDPOINTS }, (_, e) => ({ addresses: [ip(`10.${110 + e}`, i)], hostname: `${name}-${e}` }));
        fake.put('endpointslices', endpointSliceJson(ns, `${name}-x7k2p`, name, eps));
      }
      process.stdout.write(JSON.stringify({ churned: n }) + '\n');
    }
  }
  await fake.close();
}

// ---------------------------------------------------------------- the watcher (this process)

class MapWriter implements ClusterViewWriter {
  readonly maps: Record<KindName, Map<string, KindObjects[KindName]>> = { services: new Map(), endpointslices: new Map(), namespaces: new Map() };
  readonly synced = new Set<KindName>();
  updates = 0;
  upsert<K extends KindName>(kind: K, obj: KindObjects[K]): void {
    this.maps[kind].set('namespace' in obj ? `${obj.namespace}/${obj.name}` : obj.name, obj);
    this.updates++;
  }
  remove<K extends KindName>(kind: K, namespace: string, name: string): void {
    this.maps[kind].delete(kind === 'namespaces' ? name : `${namespace}/${name}`);
  }
  replace<K extends KindName>(kind: K, objs: Iterable<KindObjects[K]>): void {
    const m = new Map<string, KindObjects[KindName]>();
    for (const o of objs) m.set('namespace' in o ? `${o.namespace}/${o.name}` : o.name, o);
    this.maps[kind] = m;
  }
  markSynced(kind: KindName): void {
    this.synced.add(kind);
  }
  touch(): void {}
}

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g === undefined) throw new Error('run with node --expose-gc');
  g();
  g();
}

const MiB = 1024 * 1024;
const mib = (n: number): string => (n / MiB).toFixed(1);

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 60_000 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
  if (!cond()) throw new Error('timed out');
}

async function main(): Promise<void> {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'serve'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const out = readline.createInterface({ input: child.stdout });
  const replies = out[Symbol.asyncIterator]();
  const next = async (): Promise<Record<string, unknown>> => JSON.parse(String((await replies.next()).value)) as Record<string, unknown>;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kube-sync-'));
  try {
    const { url } = (await next()) as { url: string };
    const file = path.join(dir, 'kubeconfig');
    fs.writeFileSync(
      file,
      `apiVersion: v1\nclusters:\n- {name: c, cluster: {server: "${url}", insecure-skip-tls-verify: true}}\n` +
        `users:\n- {name: u, user: {token: t}}\ncontexts:\n- {name: x, context: {cluster: c, user: u}}\ncurrent-context: x\n`,
    );
    const cfg = loadClusterConfig({ kubeconfig: file });
    if (cfg.kind !== 'ok') throw new Error(cfg.reason);
    const writer = new MapWriter();
    const counters = new Counters(watchCounterSchema);
    gc();
    const before = process.memoryUsage();
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    const watch = new KubeWatch(new KubeApi(cfg), writer, { clock: systemClock, log: silentLogger, counters, tuning: { pageSize: PAGE } });
    watch.start();
    let peakRss = before.rss;
    const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 5);
    await until(() => watch.synced);
    const syncMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    clearInterval(sampler);
    gc();
    const after = process.memoryUsage();
    // The watches open right after each list: wait for all three before reading the server's counts.
    let load: Record<string, unknown> = {};
    for (let i = 0; i < 200; i++) {
      child.stdin.write('stats\n');
      load = await next();
      if (load['watch'] === 3) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    child.stdin.write(`churn ${CHURN}\n`);
    await next();
    const c1 = process.cpuUsage();
    const u0 = writer.updates;
    const t1 = performance.now();
    await until(() => writer.updates - u0 >= CHURN);
    const churnMs = performance.now() - t1;
    const churnCpu = process.cpuUsage(c1);
    await watch.stop();
    const objects = writer.maps.services.size + writer.maps.endpointslices.size + writer.maps.namespaces.size;
    const result = {
      services: writer.maps.services.size,
      endpointslices: writer.maps.endpointslices.size,
      namespaces: writer.maps.namespaces.size,
      endpointsPerSlice: ENDPOINTS,
      gzip: GZIP,
      pageSize: PAGE,
      syncMs: Math.round(syncMs),
      syncCpuMs: Math.round((cpu.user + cpu.system) / 1000),
      rssAddedMiB: mib(after.rss - before.rss),
      heapAddedMiB: mib(after.heapUsed - before.heapUsed),
      heapBytesPerObject: Math.round((after.heapUsed - before.heapUsed) / objects),
      peakRssAddedMiB: mib(peakRss - before.rss),
      listRequests: load['list'],
      watchRequests: load['watch'],
      bytesFromApi: load['bytes'],
      churnEvents: CHURN,
      churnMs: Math.round(churnMs),
      churnCpuUsPerEvent: Math.round((churnCpu.user + churnCpu.system) / CHURN),
    };
    console.log(JSON.stringify(result, null, 2));
  } finally {
    child.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === 'serve') await serve();
else await main();
