/**
 * An AF_NETLINK / NETLINK_ROUTE socket through koffi (libc), and the
 * request/reply loop of rtnetlink on top of it.
 *
 * Blocking, on purpose, and bounded: rtnetlink handles a request inside the
 * sender's sendmsg() and queues the ack (or builds each dump part inside
 * recvmsg()), so a recv() right after send() returns at once; SO_RCVTIMEO
 * (RECV_TIMEOUT_MS) caps the one case where it would not (a kernel that lost
 * the reply), so the event loop is never held longer than that. These calls
 * run at startup, every check interval and at teardown: a few syscalls each,
 * microseconds, never on the query path. A thread-pool (koffi .async) version
 * would add a promise per call for nothing.
 */
import { koffi as loadKoffi, type Koffi } from '../sys/koffi.js';

let koffiLoaded: Koffi | null = null;
/** koffi loads on first use (startup of the interface part), never on a local run that sets up no link. */
function koffiLib(): Koffi {
  koffiLoaded ??= loadKoffi();
  return koffiLoaded;
}
import { closeSync, openSync } from 'node:fs';
import { type NlAck, type NlMessage, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP_INTR, NLM_F_MULTI, parseAck, parseDone, splitMessages } from './rtnl-wire.js';
import { EAGAIN, EINTR, SOCK_CLOEXEC, SOCK_RAW, SOL_SOCKET } from '../sys/linux.js';

const AF_NETLINK = 16;
const NETLINK_ROUTE = 0;
const SO_RCVTIMEO = 20; // SO_RCVTIMEO_OLD: struct timeval of two longs (x86_64, arm64)
const SOL_NETLINK = 270;
const NETLINK_CAP_ACK = 10;
const NETLINK_EXT_ACK = 11;
const CLONE_NEWNET = 0x40000000;

/** Upper bound on one blocking recv(); replies are immediate, so this only bounds a lost one. */
export const RECV_TIMEOUT_MS = 1000;
/** Large enough for the biggest dump datagram the kernel builds (it sizes them to about 32 KiB). */
const RECV_BUFFER_BYTES = 64 * 1024;
/** A dump of a few thousand links or addresses is a few hundred datagrams; past this something loops. */
const MAX_DATAGRAMS_PER_REQUEST = 10_000;
/** Dumps interrupted by a change in a row before giving up: links and addresses churn in bursts (pods starting), not for long. */
export const MAX_DUMP_TRIES = 5;

/** The raw datagram I/O, so the protocol loop below is tested against captured replies. */
export interface NetlinkIo {
  /** 0 or a positive errno. */
  send(msg: Buffer): number;
  /** Bytes received into buf, or a negative errno (-EAGAIN on timeout). */
  recv(buf: Buffer): number;
  close(): void;
}

export type RtnlResult = { readonly ok: true; readonly messages: readonly NlMessage[] } | { readonly ok: false; readonly errno: number; readonly message: string | null };

interface Libc {
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, addr: Buffer, len: number): number;
  setsockopt(fd: number, level: number, name: number, val: Buffer, len: number): number;
  send(fd: number, buf: Buffer, len: number, flags: number): number;
  recv(fd: number, buf: Buffer, len: number, flags: number): number;
  close(fd: number): number;
  setns(fd: number, nstype: number): number;
}

let libc: Libc | null = null;

/** Declared once per process: koffi parses each prototype on declaration. */
function loadLibc(): Libc {
  if (libc !== null) return libc;
  const lib = koffiLib().load('libc.so.6');
  const fn = <T>(proto: string): T => lib.func(proto) as unknown as T;
  libc = {
    socket: fn('int socket(int domain, int type, int protocol)'),
    bind: fn('int bind(int fd, const void *addr, uint32_t len)'),
    setsockopt: fn('int setsockopt(int fd, int level, int name, const void *val, uint32_t len)'),
    send: fn('intptr_t send(int fd, const void *buf, size_t len, int flags)'),
    recv: fn('intptr_t recv(int fd, _Out_ void *buf, size_t len, int flags)'),
    close: fn('int close(int fd)'),
    setns: fn('int setns(int fd, int nstype)'),
  };
  return libc;
}

function int32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v, 0);
  return b;
}

export class NetlinkError extends Error {
  constructor(message: string, readonly errno: number) {
    super(message);
    this.name = 'NetlinkError';
  }
}

export interface OpenOptions {
  /**
   * Open the socket inside this network namespace (a bind-mounted ns file such
   * as /var/run/netns/NAME). A socket keeps the namespace it was created in,
   * so only the socket() call runs there: the calling thread joins the
   * namespace, creates the socket and goes back at once.
   */
  readonly netnsPath?: string;
}

/** Opens the real socket; throws (startup only) when netlink itself is unusable. */
export function openRtnetlink(opts: OpenOptions = {}): NetlinkIo {
  const c = loadLibc();
  const fd = opts.netnsPath === undefined ? c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE) : socketInNetns(c, opts.netnsPath);
  if (fd < 0) throw new NetlinkError(`netlink socket: errno ${koffiLib().errno()}`, koffiLib().errno());
  const fail = (what: string): never => {
    const e = koffiLib().errno();
    c.close(fd);
    throw new NetlinkError(`netlink ${what}: errno ${e}`, e);
  };
  const sa = Buffer.alloc(12); // sockaddr_nl: family, pad, pid 0 (kernel picks), groups 0
  sa.writeUInt16LE(AF_NETLINK, 0);
  if (c.bind(fd, sa, sa.length) !== 0) fail('bind');
  const tv = Buffer.alloc(16);
  tv.writeBigInt64LE(BigInt(Math.floor(RECV_TIMEOUT_MS / 1000)), 0);
  tv.writeBigInt64LE(BigInt((RECV_TIMEOUT_MS % 1000) * 1000), 8);
  if (c.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, tv, tv.length) !== 0) fail('SO_RCVTIMEO');
  // Best effort: acks without the echoed request, and with the kernel's error text.
  c.setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, int32(1), 4);
  c.setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, int32(1), 4);
  let open = true;
  return {
    send(msg) {
      for (;;) {
        const n = c.send(fd, msg, msg.length, 0);
        if (n === msg.length) return 0;
        const e = n < 0 ? koffiLib().errno() : EAGAIN;
        if (e !== EINTR) return e;
      }
    },
    recv(buf) {
      for (;;) {
        const n = c.recv(fd, buf, buf.length, 0);
        if (n >= 0) return n;
        const e = koffiLib().errno();
        if (e !== EINTR) return -e;
      }
    },
    close() {
      if (open) c.close(fd);
      open = false;
    },
  };
}

function socketInNetns(c: Libc, path: string): number {
  const home = openSync('/proc/thread-self/ns/net', 'r');
  let target = -1;
  try {
    target = openSync(path, 'r');
    if (c.setns(target, CLONE_NEWNET) !== 0) throw new NetlinkError(`setns ${path}: errno ${koffiLib().errno()}`, koffiLib().errno());
    const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    const e = koffiLib().errno();
    // Going back must not fail silently: this thread runs all of our JavaScript.
    if (c.setns(home, CLONE_NEWNET) !== 0) throw new NetlinkError(`setns back: errno ${koffiLib().errno()}`, koffiLib().errno());
    koffiLib().errno(e);
    return fd;
  } finally {
    if (target >= 0) closeSync(target);
    closeSync(home);
  }
}

const INTERRUPTED = Symbol('dump interrupted');

/**
 * One request, every reply part read: acks until the NLMSG_ERROR for our seq,
 * dumps until NLMSG_DONE. Replies to an older seq (one that timed out) are
 * skipped. Errors come back as values.
 */
export class Rtnl {
  readonly #io: NetlinkIo;
  readonly #buf = Buffer.alloc(RECV_BUFFER_BYTES);
  #seq: number;

  constructor(io: NetlinkIo, firstSeq = 1) {
    this.#io = io;
    this.#seq = firstSeq;
  }

  nextSeq(): number {
    this.#seq = (this.#seq + 1) >>> 0 || 1;
    return this.#seq;
  }

  /**
   * Sends msg (built with seq = the last nextSeq()) and collects the reply.
   * A dump the kernel flags as interrupted (NLM_F_DUMP_INTR) is asked again:
   * taken whole, it could miss our link, and a teardown would leave it.
   */
  request(msg: Buffer): RtnlResult {
    for (let tries = 1; ; tries++) {
      const r = this.#once(msg);
      if (r !== INTERRUPTED) return r;
      // Every part of the interrupted dump has been read: its seq can serve again.
      if (tries === MAX_DUMP_TRIES) return { ok: false, errno: EINTR, message: `dump interrupted by changes ${MAX_DUMP_TRIES} times in a row` };
    }
  }

  #once(msg: Buffer): RtnlResult | typeof INTERRUPTED {
    const seq = this.#seq;
    const sent = this.#io.send(msg);
    if (sent !== 0) return { ok: false, errno: sent, message: 'send' };
    const messages: NlMessage[] = [];
    let interrupted = false;
    const done = (): RtnlResult | typeof INTERRUPTED => (interrupted ? INTERRUPTED : { ok: true, messages });
    for (let i = 0; i < MAX_DATAGRAMS_PER_REQUEST; i++) {
      const n = this.#io.recv(this.#buf);
      if (n < 0) return { ok: false, errno: -n, message: -n === EAGAIN ? `no reply within ${RECV_TIMEOUT_MS} ms` : 'recv' };
      // Copy: the receive buffer is reused for the next datagram.
      for (const m of splitMessages(Buffer.from(this.#buf.subarray(0, n)))) {
        if (m.seq !== seq) continue;
        if ((m.flags & NLM_F_DUMP_INTR) !== 0) interrupted = true;
        if (m.type === NLMSG_ERROR) {
          const ack: NlAck = parseAck(m);
          return ack.errno === 0 ? done() : { ok: false, errno: ack.errno, message: ack.message };
        }
        if (m.type === NLMSG_DONE) {
          // A dump the kernel cut short is an error, not the whole table: a missing link would pass for "not there".
          const end = parseDone(m);
          return end.errno === 0 ? done() : { ok: false, errno: end.errno, message: `dump terminated${end.message === null ? '' : `: ${end.message}`}` };
        }
        messages.push(m);
        if ((m.flags & NLM_F_MULTI) === 0) return done();
      }
    }
    return { ok: false, errno: 0, message: `more than ${MAX_DATAGRAMS_PER_REQUEST} reply datagrams` };
  }

  close(): void {
    this.#io.close();
  }
}
