/**
 * The upstream transports alone: CPU, latency and (under `perf stat`) syscalls
 * per exchange of the TCP pool and the host resolvers against the simulator
 * in a process of its own, open loop in 1 ms ticks.
 *
 *   taskset -c 1 node dist/bench/micro/miss-path.js tcp|udp|direct RATE SECONDS [--root DIST] [--sim-cpus 0]
 *
 * `--sim-cpus` pins the simulator (with taskset) away from the CPU the
 * transports run on; without it the simulator inherits this process's CPUs.
 * `--root` takes the transports from another build's dist/ (e.g. the one
 * before a change), so before and after can alternate in one window against
 * the same kind of simulator. `direct` is a bare connected UDP socket: the
 * floor. Prints one JSON line.
 */
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';
import dnsPacket from 'dns-packet';
import { SimDnsServer, staticHandler } from '../../testkit/dns-server.js';
import type { Upstream, UpstreamExchange } from '../../src/upstream/types.js';
import type { Clock } from '../../src/clock.js';

const here = path.dirname(fileURLToPath(import.meta.url));

async function serve(): Promise<void> {
  const sim = await SimDnsServer.start({ handler: staticHandler({ 'www.example.com': { A: ['192.0.2.1'] } }) });
  process.send?.(sim.port);
  process.on('disconnect', () => void sim.close().then(() => process.exit(0)));
}

interface Transports {
  TcpPool: new (o: { server: { host: string; port: number } }) => Upstream;
  HostResolvers: new (o: { servers: Array<{ host: string; port: number }> }) => Upstream;
  clock: Clock;
}

async function load(root: string): Promise<Transports> {
  const mod = async (rel: string): Promise<Record<string, unknown>> => (await import(pathToFileURL(path.join(root, rel)).href)) as Record<string, unknown>;
  return {
    TcpPool: (await mod('src/upstream/tcp-pool.js')).TcpPool as Transports['TcpPool'],
    HostResolvers: (await mod('src/upstream/host-resolvers.js')).HostResolvers as Transports['HostResolvers'],
    clock: (await mod('src/clock.js')).systemClock as Clock,
  };
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === '--serve') return serve();
  const [kind = 'tcp', rateArg = '5000', secsArg = '2'] = argv;
  const ri = argv.indexOf('--root');
  const root = ri >= 0 ? path.resolve(argv[ri + 1] ?? '.') : path.resolve(here, '../..');
  const rate = Number(rateArg);
  const total = Math.round(rate * Number(secsArg));
  const si = argv.indexOf('--sim-cpus');
  const self = [process.execPath, fileURLToPath(import.meta.url), '--serve'];
  const cmd = si >= 0 ? ['taskset', '-c', argv[si + 1] ?? '0', ...self] : self;
  const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['inherit', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve) => child.once('message', (m) => resolve(Number(m))));
  const server = { host: '127.0.0.1', port };
  const query = dnsPacket.encode({ type: 'query', id: 0, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: 'www.example.com', type: 'A', class: 'IN' }] });
  const lat: number[] = [];
  let done = 0;
  let failed = 0;
  let send: () => void;
  if (kind === 'direct') {
    const sock = dgram.createSocket('udp4');
    await new Promise<void>((r) => sock.connect(port, server.host, r));
    const started = new Map<number, number>();
    let id = 0;
    sock.on('message', (m: Buffer) => {
      const s = started.get(m.readUInt16BE(0));
      if (s === undefined) return;
      started.delete(m.readUInt16BE(0));
      lat.push(performance.now() - s);
      done++;
    });
    send = () => {
      id = (id + 1) & 0xffff;
      const b = Buffer.from(query);
      b.writeUInt16BE(id, 0);
      started.set(id, performance.now());
      sock.send(b);
    };
  } else {
    const t = await load(root);
    const up = kind === 'tcp' ? new t.TcpPool({ server }) : new t.HostResolvers({ servers: [server] });
    send = () => {
      const s = performance.now();
      const ex: UpstreamExchange = {
        query,
        deadline: t.clock.now() + 2000,
        resolve: () => {
          lat.push(performance.now() - s);
          done++;
        },
        reject: () => {
          failed++;
          done++;
        },
      };
      up.send(ex);
    };
  }
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  for (let i = 0; i < 200; i++) {
    send();
    await sleep(1);
  }
  for (let i = 0; i < 100 && done < 200; i++) await sleep(10);
  lat.length = 0;
  done = 0;
  failed = 0;
  let sent = 0;
  const c0 = process.cpuUsage();
  const w0 = performance.now();
  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      const due = Math.min(total, Math.floor(((performance.now() - w0) / 1000) * rate));
      while (sent < due) {
        send();
        sent++;
      }
      if (sent >= total) {
        clearInterval(tick);
        resolve();
      }
    }, 1);
  });
  for (let i = 0; i < 300 && done < sent; i++) await sleep(10);
  const c = process.cpuUsage(c0);
  lat.sort((a, b) => a - b);
  const pct = (q: number): number => Math.round((lat[Math.min(lat.length - 1, Math.floor(q * lat.length))] ?? NaN) * 1000);
  console.log(JSON.stringify({ kind, root, rate, sent, done, failed, cpuUsPerExchange: (c.user + c.system) / sent, p50Us: pct(0.5), p99Us: pct(0.99) }));
  child.disconnect();
  process.exit(0);
}

await main(process.argv.slice(2));
