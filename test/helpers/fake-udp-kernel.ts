// A stand-in for the kernel under the batched worker loop: it implements the
// libc binding (src/sys/udp-batch.ts) over plain memory, reading and writing
// the mmsghdr/iovec/sockaddr vectors exactly where the loop laid them out,
// so the loop runs on this thread, synchronously, without sockets or
// threads. The test drives it with a script: each time the loop would sleep
// in poll, the next step runs (queue datagrams, post messages as the main
// thread would, read the loop's reports); when the script ends the loop is
// told to close.
import { MessageChannel, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { Ctl, PENDING_PORT, PENDING_RING, type ToWorker, type WorkerReport } from '../../src/server/batched/protocol.js';
import { RING_WAKE, PackedRing, ringBuffer, wakeTaken, type RingWake } from '../../src/server/batched/packed-ring.js';
import { UpstreamLoad } from '../../src/server/upstream-load.js';
import { AF_INET, AF_INET6, EAGAIN, MSG_TRUNC, type NativeBlock, type SysError, type UdpBatchSys } from '../../src/sys/udp-batch.js';

export interface Datagram {
  readonly data: Buffer;
  /** sockaddr bytes of the sender (16 for IPv4, 28 for IPv6). */
  readonly from: Buffer;
  /** Kernel receive time (CLOCK_REALTIME ns) written as SCM_TIMESTAMPNS when the socket asked for timestamps; default: `nowNs` when queued. */
  readonly stampNs?: bigint;
}

export interface Sent {
  readonly fd: number;
  readonly data: Buffer;
  readonly to: Buffer;
  readonly via: 'sendmmsg' | 'sendto';
}

export function sockaddr4(ip: string, port: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt16LE(AF_INET, 0);
  b.writeUInt16BE(port, 2);
  ip.split('.').forEach((x, i) => (b[4 + i] = Number(x)));
  return b;
}

export function sockaddr6loopback(port: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(port, 2);
  b[23] = 1;
  return b;
}

/** Where alloc() says its block is. */
export const BASE = 0x7f0000000000;

export class FakeKernel implements UdpBatchSys {
  readonly inbox = new Map<number, Datagram[]>();
  readonly sent: Sent[] = [];
  /** Results the next sendmmsg calls return instead of sending everything (e.g. 1, -EAGAIN). */
  readonly sendmmsgScript: number[] = [];
  recvCalls = 0;
  polls = 0;
  closed: number[] = [];
  /** CLOCK_REALTIME as realtime() reports it, in ns; tests move it. */
  nowNs = 1_700_000_000_000_000_000n;
  /** rxTimestamps() answers this errno (0: accepted). */
  timestampErrno = 0;
  readonly stamping = new Set<number>();
  /** The loop's end of the channel, and ours (the main thread's). */
  readonly workerPort: MessagePort;
  readonly mainPort: MessagePort;
  readonly ctl: SharedArrayBuffer;
  /** The loop's ring of misses and waiters (WorkerInit.reports), read by reports(). */
  readonly reportRing: SharedArrayBuffer;
  readonly #ring: PackedRing;
  /** The main thread's completions ring (WorkerInit.completions), written by post(). */
  readonly doneRing: SharedArrayBuffer;
  readonly #doneRing: PackedRing;
  /** The main thread's upstream count and cap, as the loop's shed gate reads them: the script sets them. */
  readonly load = new UpstreamLoad({ workers: 1 });
  readonly #steps: (() => void)[];
  #view: DataView | null;
  #u8: Uint8Array | null;
  #closing: boolean;

  constructor(steps: (() => void)[], ringBytes?: number) {
    const { port1, port2 } = new MessageChannel();
    this.mainPort = port1;
    this.workerPort = port2;
    this.ctl = new SharedArrayBuffer(Ctl.WORDS * 4);
    this.reportRing = ringBuffer(ringBytes);
    this.#ring = new PackedRing(this.reportRing);
    this.doneRing = ringBuffer(ringBytes);
    this.#doneRing = new PackedRing(this.doneRing);
    this.#steps = steps;
    this.#view = null;
    this.#u8 = null;
    this.#closing = false;
  }

  /**
   * What the main thread does to send (worker-link.ts): completions into the
   * ring while they fit and none went by post still unread, else a post;
   * then the pending word.
   */
  post(m: ToWorker): void {
    const ctl = new Int32Array(this.ctl);
    if (m.t === 'done') {
      if (Atomics.load(ctl, Ctl.DONE_OVERFLOW) === 0 && this.#doneRing.write(m.items)) {
        Atomics.or(ctl, Ctl.PENDING, PENDING_RING);
        return;
      }
      Atomics.add(ctl, Ctl.DONE_OVERFLOW, 1);
      m = { ...m, overflow: true };
    }
    this.mainPort.postMessage(m);
    Atomics.or(ctl, Ctl.PENDING, PENDING_PORT);
  }

  /**
   * The loop's reports so far, as the main thread reads them: each message
   * after the ring's records (each record a report of its own), and the
   * ring once more at the end.
   */
  reports(): WorkerReport[] {
    const out: WorkerReport[] = [];
    const ctl = new Int32Array(this.ctl);
    const drain = (): void => {
      wakeTaken(ctl);
      this.#ring.drain((misses, waiters) => out.push({ misses, waiters, logs: null }));
    };
    for (let m = receiveMessageOnPort(this.mainPort); m !== undefined; m = receiveMessageOnPort(this.mainPort)) {
      drain();
      const r = m.message as WorkerReport | RingWake;
      if (r === RING_WAKE) continue;
      out.push(r);
      if (r.overflow === true) Atomics.sub(ctl, Ctl.OVERFLOW, 1);
    }
    drain();
    return out;
  }

  queue(fd: number, d: Datagram): void {
    const q = this.inbox.get(fd) ?? [];
    q.push(d.stampNs === undefined ? { ...d, stampNs: this.nowNs } : d);
    this.inbox.set(fd, q);
  }

  close(fd: number): void {
    this.closed.push(fd);
  }

  selfTest(): string | null {
    return null;
  }
  openUdp(): number | SysError {
    return { errno: 1, message: 'not in the fake' };
  }
  localPort(): number {
    return -1;
  }
  detach(): number {
    return 0;
  }
  eventfd(): number | SysError {
    return 99;
  }
  wake(): number {
    return 0;
  }
  nameThread(): void {}
  rxTimestamps(fd: number): number {
    if (this.timestampErrno === 0) this.stamping.add(fd);
    return this.timestampErrno;
  }
  realtime(into: number): number {
    const v = this.#view!;
    v.setBigInt64(this.#off(into), this.nowNs / 1_000_000_000n, true);
    v.setBigInt64(this.#off(into) + 8, this.nowNs % 1_000_000_000n, true);
    return 0;
  }

  /** Addresses freeAddress() was given (the main thread's free); blockFrees: the loop's own, through the block. */
  readonly freed: number[] = [];
  blockFrees = 0;
  freeAddress(address: number): void {
    this.freed.push(address);
  }

  alloc(bytes: number): NativeBlock {
    const ab = new ArrayBuffer(bytes);
    this.#view = new DataView(ab);
    this.#u8 = new Uint8Array(ab);
    return { address: BASE, bytes: ab, free: () => void this.blockFrees++ };
  }

  #off(address: number): number {
    return address - BASE;
  }

  #ptr(off: number): number {
    return this.#off(Number(this.#view!.getBigUint64(off, true)));
  }

  recvmmsg(fd: number, vec: number, count: number): number {
    this.recvCalls++;
    const q = this.inbox.get(fd) ?? [];
    if (q.length === 0) return -EAGAIN;
    const v = this.#view!;
    const n = Math.min(count, q.length);
    for (let i = 0; i < n; i++) {
      const d = q.shift()!;
      const h = this.#off(vec) + i * 64;
      const name = this.#ptr(h);
      const room = v.getUint32(h + 8, true);
      this.#u8!.set(d.from.subarray(0, Math.min(room, d.from.length)), name);
      v.setUint32(h + 8, d.from.length, true);
      const iov = this.#ptr(h + 16);
      const buf = this.#ptr(iov);
      const cap = Number(v.getBigUint64(iov + 8, true));
      const len = Math.min(cap, d.data.length);
      this.#u8!.set(d.data.subarray(0, len), buf);
      v.setInt32(h + 48, d.data.length > cap ? MSG_TRUNC : 0, true);
      // SCM_TIMESTAMPNS as the kernel lays it out (cmsg_len 32, SOL_SOCKET, type 35, timespec), when asked for and there is room.
      const ctlRoom = Number(v.getBigUint64(h + 40, true));
      if (this.stamping.has(fd) && ctlRoom >= 32 && d.stampNs !== undefined) {
        const c = this.#ptr(h + 32);
        v.setBigUint64(c, 32n, true);
        v.setInt32(c + 8, 1, true);
        v.setInt32(c + 12, 35, true);
        v.setBigInt64(c + 16, d.stampNs / 1_000_000_000n, true);
        v.setBigInt64(c + 24, d.stampNs % 1_000_000_000n, true);
        v.setBigUint64(h + 40, 32n, true);
      } else {
        v.setBigUint64(h + 40, 0n, true);
      }
      v.setUint32(h + 56, len, true);
    }
    return n;
  }

  sendmmsg(fd: number, vec: number, count: number): number {
    const scripted = this.sendmmsgScript.shift();
    if (scripted !== undefined && scripted < 0) return scripted;
    const n = scripted === undefined ? count : Math.min(count, scripted);
    const v = this.#view!;
    for (let i = 0; i < n; i++) {
      const h = this.#off(vec) + i * 64;
      const name = this.#ptr(h);
      const nameLen = v.getUint32(h + 8, true);
      const iov = this.#ptr(h + 16);
      const buf = this.#ptr(iov);
      const len = Number(v.getBigUint64(iov + 8, true));
      this.sent.push({ fd, data: Buffer.from(this.#u8!.subarray(buf, buf + len)), to: Buffer.from(this.#u8!.subarray(name, name + nameLen)), via: 'sendmmsg' });
    }
    return n;
  }

  sendto(fd: number, data: Uint8Array, sa: number, saLen: number): number {
    const off = this.#off(sa);
    this.sent.push({ fd, data: Buffer.from(data), to: Buffer.from(this.#u8!.subarray(off, off + saLen)), via: 'sendto' });
    return data.length;
  }

  /** Where the loop sleeps: the script's next step runs; after the last, the loop is told to close. */
  poll(): number {
    this.polls++;
    const step = this.#steps.shift();
    if (step !== undefined) step();
    else if (!this.#closing) {
      this.#closing = true;
      this.post({ t: 'close' });
    }
    return 1;
  }

  read8(): number {
    return 8;
  }
}
