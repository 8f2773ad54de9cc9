/**
 * What a batched worker's misses cost to reach the main thread, two ways,
 * in one process (no sockets): a report posted with its packed buffers
 * transferred (how a turn crossed before, and still does when it does not
 * fit the ring), against a record in the shared ring (packed-ring.ts) with
 * a post of RING_WAKE only when the last one was read. A worker thread
 * sends a turn of `--misses` misses at `--rate` turns/s; the main thread
 * takes each and reads its items. Printed per mode: the arrival delay
 * (worker stamp to main handler, p50 / p99) and the CPU of both threads
 * per turn. Then the ring alone: write and read of a typical record.
 *
 *   taskset -c 1 node dist/bench/micro/thread-crossing.js [--rate 5000] [--turns 20000] [--misses 2] [--rounds 2]
 *
 * Pin it to one CPU to see what the agent pinned to one CPU sees (the two
 * threads then take turns on it).
 */
import { Worker, isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { PackedRing, RING_WAKE, ringBuffer, wakeDue, wakeTaken } from '../../src/server/batched/packed-ring.js';
import { Ctl, Packer, WAITER_STRIDE, itemToken, transferOf, type Packed } from '../../src/server/batched/protocol.js';

type Mode = 'post' | 'ring';
interface Job {
  readonly mode: Mode;
  readonly turns: number;
  readonly rate: number;
  readonly misses: number;
  readonly ctl: SharedArrayBuffer;
  readonly ring: SharedArrayBuffer;
  readonly stamps: SharedArrayBuffer;
}

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

const KEY = '\x05u-abc\x05ns-12\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01\x00';

/** A turn's items as the worker packs them: `n` misses, each with one waiting client. */
function turn(n: number, first: number): [Packer, Packer] {
  const m = new Packer(true);
  const w = new Packer(false, WAITER_STRIDE);
  for (let i = 0; i < n; i++) {
    m.push(first + i, 0, Buffer.alloc(45, i), KEY);
    w.push(first + i, 0, Buffer.alloc(40, i), null);
    for (let k = 0; k < WAITER_STRIDE - 4; k++) w.extra(k, k);
  }
  return [m, w];
}

function workerSide(port: MessagePort, job: Job): void {
  const ctl = new Int32Array(job.ctl);
  const ring = new PackedRing(job.ring);
  const stamps = new Float64Array(job.stamps);
  const pause = new Int32Array(new SharedArrayBuffer(4));
  const start = performance.now();
  for (let i = 0; i < job.turns; i++) {
    const due = start + (i * 1000) / job.rate;
    const now = performance.now();
    if (now < due) Atomics.wait(pause, 0, 0, due - now);
    const [m, w] = turn(job.misses, i * job.misses);
    stamps[i] = performance.timeOrigin + performance.now();
    if (job.mode === 'post') {
      const misses = m.take();
      const waiters = w.take();
      port.postMessage({ misses, waiters, logs: null }, [...transferOf(misses), ...transferOf(waiters)]);
    } else if (ring.write(m.view(), w.view())) {
      if (wakeDue(ctl)) port.postMessage(RING_WAKE);
    } else {
      throw new Error('ring full: the main thread fell behind');
    }
  }
}

async function mainSide(mode: Mode, o: { turns: number; rate: number; misses: number }): Promise<string> {
  const job: Job = { mode, ...o, ctl: new SharedArrayBuffer(Ctl.WORDS * 4), ring: ringBuffer(), stamps: new SharedArrayBuffer(o.turns * 8) };
  const ctl = new Int32Array(job.ctl);
  const ring = new PackedRing(job.ring);
  const stamps = new Float64Array(job.stamps);
  const delays: number[] = [];
  let seen = 0;
  let sink = 0;
  const took = (misses: Packed | null): void => {
    const at = performance.timeOrigin + performance.now();
    const i = Math.floor(itemToken(misses!, 0) / o.misses);
    delays.push(at - stamps[i]!);
    sink += misses!.keys!.length;
    seen++;
  };
  const cpu0 = process.cpuUsage();
  const worker = new Worker(new URL(import.meta.url), { workerData: job });
  await new Promise<void>((resolve, reject) => {
    worker.on('error', reject);
    worker.on('message', (msg: { misses: Packed } | typeof RING_WAKE) => {
      if (msg === RING_WAKE) {
        wakeTaken(ctl);
        ring.drain(took);
      } else {
        took(msg.misses);
      }
      if (seen >= o.turns) resolve();
    });
  });
  const cpu = process.cpuUsage(cpu0);
  await worker.terminate();
  delays.sort((a, b) => a - b);
  const us = (ms: number): string => (ms * 1000).toFixed(1);
  void sink;
  return `${mode.padEnd(5)} arrival p50 ${us(delays[delays.length >> 1]!)} us, p99 ${us(delays[Math.floor(delays.length * 0.99)]!)} us; CPU (both threads) ${((cpu.user + cpu.system) / o.turns).toFixed(1)} us a turn`;
}

function ringAlone(misses: number): string {
  const ring = new PackedRing(ringBuffer());
  const [m, w] = turn(misses, 0);
  const rounds = 20_000;
  let write = 0n;
  let read = 0n;
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 16; i++) ring.write(m.view(), w.view());
    const t1 = process.hrtime.bigint();
    ring.drain(() => {});
    read += process.hrtime.bigint() - t1;
    write += t1 - t0;
  }
  const per = (ns: bigint): string => (Number(ns) / rounds / 16 / 1000).toFixed(2);
  return `ring alone, a record of ${misses} misses and ${misses} waiters: write ${per(write)} us, read ${per(read)} us`;
}

if (isMainThread) {
  const o = { turns: arg('turns', 20_000), rate: arg('rate', 5000), misses: arg('misses', 2) };
  const rounds = arg('rounds', 2);
  console.log(`${o.turns} turns of ${o.misses} misses at ${o.rate} turns/s, ${rounds} rounds, alternating`);
  for (let r = 0; r < rounds; r++) for (const mode of ['post', 'ring'] as const) console.log(await mainSide(mode, o));
  console.log(ringAlone(o.misses));
} else {
  workerSide(parentPort as MessagePort, workerData as Job);
}
