/**
 * How fast a worker thread can wake the main thread's event loop, by each
 * means JavaScript has here: a posted message (`MessagePort`, what a batched
 * worker posts after its turn's misses: RING_WAKE), `Atomics.notify` to an
 * `Atomics.waitAsync` of the main thread, one byte into a pipe the main
 * thread reads as a `net.Socket`, and one UDP datagram to a `dgram` socket
 * (the last two written through koffi, as the worker makes its calls). The
 * worker sleeps ~0.2 ms (5,000 wakes/s, as at 5,000 misses/s), stamps the
 * time in shared memory and wakes the main thread, which records the delay
 * to its handler. Printed per means: the delay's p10 / p50 / p90 and the
 * process's CPU per wake (both threads: the sleeps, the switches, the loop).
 *
 *   taskset -c 1 node dist/bench/micro/thread-wake.js [--wakes 5000] [--rounds 2]
 *
 * Pinned to one CPU, as the bench pins an agent, the two threads take
 * turns on it: the delay is the worker going to sleep, the switch and the
 * main thread's loop reaching the handler.
 *
 * First it prints what one call through koffi costs on this thread: to
 * libc's abs() (the call alone), getppid() (a system call that does nothing)
 * and poll() of one descriptor with no timeout (the one a worker makes most):
 * the floor under every system call of the miss path, which a virtual
 * machine can raise well above bare metal's.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { Worker, isMainThread, workerData, MessageChannel, type MessagePort } from 'node:worker_threads';
import { koffi } from '../../src/sys/koffi.js';

const MEANS = ['port', 'waitAsync', 'pipe', 'udp'] as const;
type Means = (typeof MEANS)[number];
interface Job {
  readonly means: Means;
  readonly wakes: number;
  readonly shared: SharedArrayBuffer;
  readonly port: MessagePort;
  /** pipe: the write end; udp: the main thread's port. */
  readonly target: number;
}

const O_NONBLOCK = 0o4000;
/** Wakes not measured first: both threads' code compiled, the loop settled. */
const WARM = 500;

/** Node 20 has it; TypeScript's lib for our target does not name it yet. */
type WaitAsync = (a: Int32Array, index: number, value: number) => { async: boolean; value: Promise<unknown> | string };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

function nowUs(): number {
  return (performance.timeOrigin + performance.now()) * 1000;
}

interface Libc {
  abs(n: number): number;
  getppid(): number;
  poll(fds: Buffer, n: number, timeoutMs: number): number;
  pipe2(fds: Int32Array, flags: number): number;
  write(fd: number, buf: Buffer, n: number): number;
  socket(domain: number, type: number, proto: number): number;
  sendto(fd: number, buf: Buffer, n: number, flags: number, addr: Buffer, len: number): number;
  close(fd: number): number;
}

function libc(): Libc {
  const lib = koffi().load('libc.so.6');
  return {
    abs: lib.func('int abs(int n)') as Libc['abs'],
    getppid: lib.func('int getppid()') as Libc['getppid'],
    poll: lib.func('int poll(uint8_t *fds, uint64_t n, int timeout)') as Libc['poll'],
    pipe2: lib.func('int pipe2(_Out_ int *fds, int flags)') as Libc['pipe2'],
    write: lib.func('long write(int fd, const uint8_t *buf, size_t n)') as Libc['write'],
    socket: lib.func('int socket(int domain, int type, int proto)') as Libc['socket'],
    sendto: lib.func('long sendto(int fd, const uint8_t *buf, size_t n, int flags, const uint8_t *addr, uint32_t len)') as Libc['sendto'],
    close: lib.func('int close(int fd)') as Libc['close'],
  };
}

/** The main thread: sets up the means' receiving end, runs one worker, returns the delays (us) and the process's CPU per wake. */
async function measure(means: Means, wakes: number): Promise<{ delays: Float64Array; cpuUs: number }> {
  // A wake can be lost to the next one (waitAsync's word is a flag): what arrived is measured, and the worker's exit ends it.
  const shared = new SharedArrayBuffer(16);
  const stamp = new Float64Array(shared, 0, 1);
  const word = new Int32Array(shared, 8, 1);
  const delays = new Float64Array(wakes);
  let seen = 0;
  let cpuAt = process.cpuUsage();
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const record = (): void => {
    const i = seen++ - WARM;
    if (i === 0) cpuAt = process.cpuUsage();
    if (i >= 0 && i < wakes) delays[i] = nowUs() - stamp[0]!;
    if (i === wakes - 1) finish();
  };
  const { port1, port2 } = new MessageChannel();
  let target = 0;
  const closers: (() => void)[] = [() => port1.close()];
  if (means === 'port') port1.on('message', record);
  if (means === 'waitAsync') {
    const wait = (): void => {
      const r = waitAsync(word, 0, 0);
      const woke = (): void => {
        Atomics.store(word, 0, 0);
        record();
        if (seen < wakes + WARM) wait();
      };
      if (r.async) void (r.value as Promise<unknown>).then(woke);
      else woke();
    };
    wait();
  }
  if (means === 'pipe') {
    const fds = new Int32Array(2);
    if (libc().pipe2(fds, O_NONBLOCK) !== 0) throw new Error('pipe2 failed');
    const reader = new net.Socket({ fd: fds[0]!, readable: true, writable: false });
    reader.on('data', record);
    target = fds[1]!;
    closers.push(() => reader.destroy(), () => libc().close(fds[1]!));
  }
  if (means === 'udp') {
    const s = dgram.createSocket('udp4');
    s.on('message', record);
    await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
    target = s.address().port;
    closers.push(() => s.close());
  }
  const job: Job = { means, wakes: wakes + WARM, shared, port: port2, target };
  const worker = new Worker(new URL(import.meta.url), { workerData: job, transferList: [port2] });
  worker.on('exit', () => setTimeout(finish, 50));
  await finished;
  const cpu = process.cpuUsage(cpuAt);
  const measured = Math.max(0, Math.min(wakes, seen - WARM));
  await worker.terminate();
  for (const close of closers) close();
  return { delays: delays.subarray(0, measured), cpuUs: (cpu.user + cpu.system) / Math.max(1, measured) };
}

/** The worker: sleep ~0.2 ms, stamp, wake the main thread; `wakes` times. */
function wakeLoop(job: Job): void {
  const stamp = new Float64Array(job.shared, 0, 1);
  const word = new Int32Array(job.shared, 8, 1);
  const nap = new Int32Array(new SharedArrayBuffer(4));
  const c = job.means === 'pipe' || job.means === 'udp' ? libc() : null;
  const one = Buffer.alloc(1, 1);
  const fd = job.means === 'udp' ? c!.socket(2 /* AF_INET */, 2 /* SOCK_DGRAM */, 0) : job.target;
  const to = Buffer.alloc(16);
  to.writeUInt16LE(2, 0);
  to.writeUInt16BE(job.target, 2);
  to.writeUInt32BE(0x7f000001, 4);
  for (let k = 0; k < job.wakes; k++) {
    Atomics.wait(nap, 0, 0, 0.2);
    stamp[0] = nowUs();
    if (job.means === 'port') job.port.postMessage(0);
    else if (job.means === 'waitAsync') {
      Atomics.store(word, 0, 1);
      Atomics.notify(word, 0);
    } else if (job.means === 'pipe') c!.write(fd, one, 1);
    else c!.sendto(fd, one, 1, 0, to, 16);
  }
  if (job.means === 'udp') c!.close(fd);
}

function pct(sorted: Float64Array, p: number): string {
  if (sorted.length === 0) return '-';
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!.toFixed(1);
}

/** Nanoseconds per call of `call`, over `n` calls after as many unmeasured. */
function perCallNs(call: () => void, n = 200_000): number {
  for (let i = 0; i < n; i++) call();
  const t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) call();
  return Number(process.hrtime.bigint() - t) / n;
}

function printCallFloor(): void {
  const c = libc();
  const pollfd = Buffer.alloc(8);
  pollfd.writeInt16LE(1 /* POLLIN */, 4); // fd 0 (stdin): whatever it is, poll() only looks
  const abs = perCallNs(() => c.abs(-1));
  const getppid = perCallNs(() => c.getppid());
  const poll = perCallNs(() => c.poll(pollfd, 1, 0));
  console.log(`one call through koffi (ns): abs() ${abs.toFixed(0)}, getppid() ${getppid.toFixed(0)}, poll(1 fd, no timeout) ${poll.toFixed(0)}`);
}

async function main(): Promise<void> {
  const wakes = arg('wakes', 5000);
  const rounds = arg('rounds', 2);
  printCallFloor();
  console.log('means       delay p10 / p50 / p90 (us)   CPU per wake, both threads (us)  wakes measured');
  for (let r = 0; r < rounds; r++) {
    for (const means of MEANS) {
      const { delays, cpuUs } = await measure(means, wakes);
      delays.sort();
      console.log(`${means.padEnd(10)}  ${pct(delays, 0.1)} / ${pct(delays, 0.5)} / ${pct(delays, 0.9)}`.padEnd(42) + cpuUs.toFixed(1).padEnd(34) + `${delays.length} of ${wakes}`);
    }
  }
}

if (isMainThread) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
} else {
  wakeLoop(workerData as Job);
}
