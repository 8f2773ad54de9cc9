/**
 * What one hop through a Node process costs on this machine when its CPUs go
 * idle between queries: the floor under the agent's cluster-miss latency.
 * A client sends small UDP datagrams at a steady rate (open loop, 1 ms tick)
 * to an echo server that answers after a delay (default 1 ms, as the bench's
 * simulated kube-dns), either directly or through a relay process:
 *
 *   direct:  client ─ UDP ─► echo
 *   udp:     client ─ UDP ─► relay ─ UDP ─► echo             (relay: one dgram socket each way)
 *   tcp:     client ─ UDP ─► relay ─ TCP ─► echo             (one pipelined connection, as the agent's pool)
 *   thread:  client ─ UDP ─► relay worker thread ─ postMessage ─► relay main ─ TCP ─► echo,
 *            the answer sent by the main thread (the batched backend's shape: one more thread hop)
 *
 * Placed as a bench run places the agent: the relay pinned to CPU 1, the
 * client and the echo server on CPU 0. Prints each variant's round trip
 * p50 / p99, the added p50 over direct, and the relay's CPU per query.
 *
 *   node dist/bench/micro/hop-floor.js [--rates 1000,5000] [--seconds 5] [--rounds 2] [--delay-ms 1]
 *     [--variants direct,udp,tcp,thread] [--relay-cpu 1] [--other-cpu 0]
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const SELF = fileURLToPath(import.meta.url);
const HOST = '127.0.0.1';

type Variant = 'direct' | 'udp' | 'tcp' | 'thread';

/** Frames a datagram for TCP (2-byte length prefix). */
function frame(msg: Buffer): Buffer {
  const out = Buffer.allocUnsafe(msg.length + 2);
  out.writeUInt16BE(msg.length, 0);
  msg.copy(out, 2);
  return out;
}

/** Splits a TCP stream into its 2-byte-length frames. */
class Frames {
  #buf: Buffer = Buffer.alloc(0);
  constructor(readonly onFrame: (msg: Buffer) => void) {}
  push(chunk: Buffer): void {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    let off = 0;
    while (this.#buf.length - off >= 2) {
      const len = this.#buf.readUInt16BE(off);
      if (this.#buf.length - off - 2 < len) break;
      this.onFrame(this.#buf.subarray(off + 2, off + 2 + len));
      off += 2 + len;
    }
    this.#buf = off === this.#buf.length ? Buffer.alloc(0) : this.#buf.subarray(off);
  }
}

/** Echo server: UDP and TCP on one port number, each answer after delayMs. */
function echo(delayMs: number): void {
  const u = dgram.createSocket('udp4');
  const t = net.createServer((c) => {
    c.setNoDelay(true);
    const f = new Frames((msg) => {
      const copy = frame(msg);
      if (delayMs > 0) setTimeout(() => c.write(copy), delayMs);
      else c.write(copy);
    });
    c.on('data', (d) => f.push(d));
    c.on('error', () => undefined);
  });
  u.on('message', (msg, r) => {
    if (delayMs > 0) setTimeout(() => u.send(msg, r.port, r.address), delayMs);
    else u.send(msg, r.port, r.address);
  });
  u.bind(0, HOST, () => {
    const port = u.address().port;
    t.listen(port, HOST, () => process.send?.({ port }));
  });
}

/** One pipelined TCP connection: frames of a turn in one write (setImmediate), as TcpPool does. */
function tcpUpstream(port: number, onAnswer: (msg: Buffer) => void): Promise<(msg: Buffer) => void> {
  return new Promise((resolve) => {
    const c = net.connect({ host: HOST, port, noDelay: true });
    const f = new Frames(onAnswer);
    c.on('data', (d) => f.push(d));
    let staged: Buffer[] = [];
    const flush = (): void => {
      c.write(staged.length === 1 ? staged[0]! : Buffer.concat(staged));
      staged = [];
    };
    c.on('connect', () =>
      resolve((msg) => {
        if (staged.length === 0) setImmediate(flush);
        staged.push(frame(msg));
      }),
    );
  });
}

/** The relay: the answer goes back to whoever asked under that id (the first two bytes: ids are unique in flight). */
async function relay(variant: Variant, echoPort: number): Promise<void> {
  const waiting = new Map<number, { port: number; address: string }>();
  const client = dgram.createSocket('udp4');
  const answer = (msg: Buffer): void => {
    const w = waiting.get(msg.readUInt16BE(0));
    if (w === undefined) return;
    waiting.delete(msg.readUInt16BE(0));
    client.send(msg, w.port, w.address);
  };
  let up: (msg: Buffer) => void;
  if (variant === 'udp') {
    const u = dgram.createSocket('udp4');
    u.on('message', answer);
    await new Promise<void>((r) => u.bind(0, HOST, () => r()));
    up = (msg) => u.send(msg, echoPort, HOST);
  } else {
    up = await tcpUpstream(echoPort, answer);
  }
  if (variant === 'thread') {
    // The worker receives and posts each query to this thread (at once, as a batched worker posts its turn's report).
    const w = new Worker(SELF, { workerData: { role: 'relay-worker' } });
    w.on('message', (m: { q?: Uint8Array; port: number; address: string }) => {
      if (m.q === undefined) return;
      const q = Buffer.from(m.q.buffer, m.q.byteOffset, m.q.length);
      waiting.set(q.readUInt16BE(0), { port: m.port, address: m.address });
      up(q);
    });
    await new Promise<void>((r) => client.bind(0, HOST, () => r()));
    const port = await new Promise<number>((r) => w.once('message', (m: { listening: number }) => r(m.listening)));
    process.send?.({ port });
    return;
  }
  client.on('message', (msg, r) => {
    waiting.set(msg.readUInt16BE(0), { port: r.port, address: r.address });
    up(msg);
  });
  client.bind(0, HOST, () => process.send?.({ port: client.address().port }));
}

function relayWorker(): void {
  const s = dgram.createSocket('udp4');
  s.on('message', (msg, r) => {
    const q = new Uint8Array(msg.length);
    q.set(msg);
    parentPort!.postMessage({ q, port: r.port, address: r.address }, [q.buffer]);
  });
  s.bind(0, HOST, () => parentPort!.postMessage({ listening: s.address().port }));
}

function startChild(args: string[], cpu: string): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn('taskset', ['-c', cpu, process.execPath, SELF, ...args], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    child.once('message', (m: { port: number }) => resolve({ child, port: m.port }));
    child.once('exit', (code) => reject(new Error(`${args.join(' ')} exited with ${code}`)));
  });
}

function cpuSeconds(pid: number): number {
  let total = 0;
  // Every thread: the relay's worker included.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  total += Number(f[11]) + Number(f[12]);
  return total / 100;
}

function pct(sorted: Float64Array, p: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

/** Open loop: what is due on each 1 ms tick leaves at once; the round trip is from the send call to the answer. */
async function measure(port: number, rate: number, seconds: number): Promise<{ p50: number; p99: number; lost: number }> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, HOST, () => r()));
  const total = Math.round(rate * seconds);
  const sentAt = new Float64Array(65536);
  const rtt: number[] = [];
  s.on('message', (msg) => {
    const t = sentAt[msg.readUInt16BE(0)]!;
    if (t > 0) {
      rtt.push(performance.now() - t);
      sentAt[msg.readUInt16BE(0)] = 0;
    }
  });
  let sent = 0;
  const start = performance.now();
  await new Promise<void>((done) => {
    const tick = setInterval(() => {
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate));
      while (sent < due) {
        const id = sent & 0xffff;
        // A fresh buffer per send: dgram may still hold the last one when this tick's next is written.
        const q = Buffer.alloc(48);
        q.writeUInt16BE(id, 0);
        sentAt[id] = performance.now();
        s.send(q, port, HOST);
        sent++;
      }
      if (sent >= total) {
        clearInterval(tick);
        setTimeout(done, 200);
      }
    }, 1);
  });
  s.close();
  const sorted = Float64Array.from(rtt).sort();
  return { p50: pct(sorted, 0.5) * 1000, p99: pct(sorted, 0.99) * 1000, lost: total - rtt.length };
}

async function orchestrate(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rates: { type: 'string', default: '1000,5000' },
      seconds: { type: 'string', default: '5' },
      rounds: { type: 'string', default: '2' },
      'delay-ms': { type: 'string', default: '1' },
      variants: { type: 'string', default: 'direct,udp,tcp,thread' },
      'relay-cpu': { type: 'string', default: '1' },
      'other-cpu': { type: 'string', default: '0' },
    },
  });
  const variants = values.variants.split(',') as Variant[];
  execFileSync('taskset', ['-a', '-p', '-c', values['other-cpu'], String(process.pid)], { stdio: 'ignore' });
  const echoProc = await startChild(['--role', 'echo', '--delay-ms', values['delay-ms']], values['other-cpu']);
  const relays = new Map<Variant, { child: ChildProcess; port: number }>();
  for (const v of variants) {
    if (v !== 'direct') relays.set(v, await startChild(['--role', 'relay', '--variant', v, '--echo-port', String(echoProc.port)], values['relay-cpu']));
  }
  console.log(`hop floor: echo delay ${values['delay-ms']} ms, relay on CPU ${values['relay-cpu']}, client and echo on CPU ${values['other-cpu']}; us`);
  console.log('round  rate   variant  p50     p99      added p50  relay CPU/q  lost');
  for (let round = 1; round <= Number(values.rounds); round++) {
    for (const rate of values.rates.split(',').map(Number)) {
      let directP50 = NaN;
      for (const v of variants) {
        const r = relays.get(v);
        const pid = r?.child.pid;
        const cpu0 = pid === undefined ? 0 : cpuSeconds(pid);
        const m = await measure(r?.port ?? echoProc.port, rate, Number(values.seconds));
        const cpu = pid === undefined ? NaN : ((cpuSeconds(pid) - cpu0) / (rate * Number(values.seconds))) * 1e6;
        if (v === 'direct') directP50 = m.p50;
        console.log(
          `${String(round).padEnd(6)} ${String(rate).padEnd(6)} ${v.padEnd(8)} ${m.p50.toFixed(0).padEnd(7)} ${m.p99.toFixed(0).padEnd(8)} ` +
            `${(m.p50 - directP50).toFixed(0).padEnd(10)} ${Number.isNaN(cpu) ? '-'.padEnd(11) : cpu.toFixed(1).padEnd(11)} ${m.lost}`,
        );
      }
    }
  }
  echoProc.child.kill();
  for (const r of relays.values()) r.child.kill();
}

if (!isMainThread && (workerData as { role?: string } | null)?.role === 'relay-worker') {
  relayWorker();
} else {
  const { values } = parseArgs({
    strict: false,
    options: { role: { type: 'string' }, variant: { type: 'string' }, 'echo-port': { type: 'string' }, 'delay-ms': { type: 'string' } },
  });
  if (values.role === 'echo') echo(Number(values['delay-ms'] ?? 1));
  else if (values.role === 'relay') void relay(values.variant as Variant, Number(values['echo-port']));
  else await orchestrate();
}
