/**
 * The libc calls of the batched UDP backend, through koffi: a SO_REUSEPORT
 * UDP socket made and bound by us, recvmmsg/sendmmsg over vectors that live
 * in native memory we allocated once, poll, and an eventfd by which the main
 * thread wakes a worker that sleeps in poll.
 *
 * Every hot call takes plain integers (fd, address, count): the vectors are
 * addressed as numbers (an x86-64/arm64 user address fits in 2^53), so koffi
 * marshals nothing but integers, about 5 ns a call (design section 7).
 *
 * Linux, little-endian, 64-bit only (x64 and arm64): the struct layouts
 * below and the constants are those of that ABI. Anything else gets a reason
 * string, and the caller falls back to dgram.
 */
import { isIP } from 'node:net';
import { getSystemErrorName } from 'node:util';
import { ipToBytes } from '../iface/ip-bytes.js';
import type { ServerAddress } from '../upstream/types.js';
import {
  AF_INET, AF_INET6, EAGAIN, EINTR, IPPROTO_IPV6, IPV6_V6ONLY, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, SOL_SOCKET, SO_RCVBUF, SO_REUSEPORT, SO_SNDBUF,
} from './linux.js';
import { koffi as loadKoffi } from './koffi.js';

export { AF_INET, AF_INET6, EAGAIN, EINTR };

/** Linux, asm-generic (x86-64 and arm64 agree): poll(2), eventfd(2), recv(2), prctl(2); the socket numbers are in linux.ts. */
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
export const MSG_DONTWAIT = 0x40;
export const MSG_TRUNC = 0x20;
export const POLLIN = 0x1;
const PR_SET_NAME = 15;
/** errno.h: what detach() answers for a wildcard-bound socket, which it never connects. */
const EINVAL = 22;
/**
 * socket(7), asm-generic (x86-64 and arm64): SO_TIMESTAMPNS (the "old" one,
 * whose struct timespec is already 64-bit on LP64) asks for the kernel's
 * receive time of each datagram as an SCM_TIMESTAMPNS control message.
 */
export const SO_TIMESTAMPNS = 35;
export const SCM_TIMESTAMPNS = SO_TIMESTAMPNS;
const CLOCK_REALTIME = 0;
/**
 * ip(7), ipv6(7): on a socket bound to a wildcard each datagram carries the
 * address it was sent to (IP_PKTINFO / IPV6_PKTINFO control message), and an
 * answer sent with that address in the same message leaves from it. Without,
 * the kernel picks the source the route to the client has, and resolvers drop
 * an answer from an address they did not ask ("reply from unexpected source").
 */
export const IPPROTO_IP = 0;
export const IP_PKTINFO = 8;
const IPV6_RECVPKTINFO = 49;
export const IPV6_PKTINFO = 50;

/** Absorbs bursts while a batch is being answered; the kernel caps it at net.core.rmem_max (as for the dgram listener). */
export const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

export interface SysError {
  readonly errno: number;
  readonly message: string;
}

export function isSysError(v: unknown): v is SysError {
  return typeof v === 'object' && v !== null && 'errno' in v && 'message' in v;
}

/** Native memory allocated once: its address, and an ArrayBuffer over the same bytes. */
export interface NativeBlock {
  readonly address: number;
  readonly bytes: ArrayBuffer;
  /** Returns the memory; the ArrayBuffer must not be touched after. */
  free(): void;
}

export interface UdpBatchSys {
  /**
   * Asks the kernel for everything the backend uses (SO_REUSEPORT, recvmmsg,
   * sendmmsg, eventfd) on a throwaway unbound socket: null, or what failed
   * (a seccomp profile may refuse a call libc has).
   */
  selfTest(): string | null;
  /**
   * A non-blocking UDP socket with SO_REUSEPORT bound to addr (port 0: any;
   * read it back with localPort). On a wildcard, with IP_PKTINFO or
   * IPV6_RECVPKTINFO: each datagram says the address it was sent to.
   */
  openUdp(addr: ServerAddress): number | SysError;
  /** The port a socket is bound to, or -errno. */
  localPort(fd: number): number;
  /**
   * Connects a bound UDP socket to its own address: the kernel stops
   * choosing it in its SO_REUSEPORT group (reuseport_select_sock_by_hash
   * skips connected members) and it only matches datagrams from itself,
   * while what is already queued stays readable. 0 or errno; EINVAL for a
   * socket bound to a wildcard, which is never connected: connect() would
   * fix its source address to loopback, and answers to other hosts would
   * be refused.
   */
  detach(fd: number): number;
  /** A non-blocking eventfd: the main thread writes to it to wake a worker out of poll. */
  eventfd(): number | SysError;
  /** Adds 1 to an eventfd (wakes its poller); 0 or errno. */
  wake(fd: number): number;
  /** recvmmsg(2): datagrams received, or -errno. */
  recvmmsg(fd: number, vec: number, count: number, flags: number): number;
  /** sendmmsg(2): datagrams sent, or -errno. */
  sendmmsg(fd: number, vec: number, count: number): number;
  /** sendto(2) of one buffer to a sockaddr in native memory (a test's client); bytes sent or -errno. Answers go by sendmmsg, with their source. */
  sendto(fd: number, data: Uint8Array, sockaddr: number, sockaddrLen: number): number;
  /** poll(2) on `count` pollfd at `fds`: ready descriptors, 0 on timeout, or -errno. */
  poll(fds: number, count: number, timeoutMs: number): number;
  /** read(2) of 8 bytes into native memory (drains an eventfd); bytes or -errno. */
  read8(fd: number, into: number): number;
  close(fd: number): void;
  /** Names the calling thread (prctl PR_SET_NAME, 15 bytes at most): `top -H` and /proc/<pid>/task/<tid>/comm show it. */
  nameThread(name: string): void;
  /** Native memory for the vectors and buffers, allocated once per worker. */
  alloc(bytes: number): NativeBlock;
  /**
   * free(3) of a block alloc() made, by its address: a worker's, from the main
   * thread once that thread is gone without freeing it (worker-link.ts).
   * koffi.alloc() is calloc(3) of the same libc.
   */
  freeAddress(address: number): void;
  /**
   * Turns on SO_TIMESTAMPNS: each datagram received from then on carries the
   * kernel's receive time (CLOCK_REALTIME) as a control message. 0 or errno
   * (a kernel or seccomp profile that refuses it: the caller goes without).
   */
  rxTimestamps(fd: number): number;
  /** clock_gettime(CLOCK_REALTIME) into a struct timespec (16 bytes) in native memory: the clock the kernel stamps datagrams with. 0 or -errno. */
  realtime(into: number): number;
}

/** What we use of koffi; injectable so a test can take it away. */
export type KoffiLoader = () => Promise<unknown>;

// async: a koffi that cannot load rejects, as the import did, rather than throwing at the call.
const defaultLoader: KoffiLoader = async () => loadKoffi();

interface Koffi {
  load(path: string): { func(decl: string): (...args: unknown[]) => unknown };
  alloc(type: string, len: number): unknown;
  free(ptr: unknown): void;
  view(ptr: unknown, len: number): ArrayBuffer;
  address(ptr: unknown): bigint;
  errno(): number;
}

type IntFn = (...args: unknown[]) => number;

/**
 * The binding, or why the batched backend cannot run here (not Linux, not
 * a 64-bit little-endian ABI we know, no koffi, a libc without recvmmsg).
 */
export async function loadUdpBatch(loader: KoffiLoader = defaultLoader): Promise<UdpBatchSys | string> {
  if (process.platform !== 'linux') return `batched UDP needs Linux (this is ${process.platform})`;
  if (process.arch !== 'x64' && process.arch !== 'arm64') return `batched UDP knows the struct layouts of x64 and arm64 only (this is ${process.arch})`;
  let koffi: Koffi;
  try {
    koffi = (await loader()) as Koffi;
  } catch (err) {
    return `koffi unavailable: ${err instanceof Error ? err.message : String(err)}`;
  }
  try {
    return bind(koffi);
  } catch (err) {
    return `libc binding failed: ${err instanceof Error ? err.message : String(err)}`;
  }
}

function bind(koffi: Koffi): UdpBatchSys {
  const libc = koffi.load('libc.so.6');
  const f = (decl: string): IntFn => libc.func(decl) as IntFn;
  const socket = f('int socket(int domain, int type, int protocol)');
  const setsockopt = f('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)');
  const bindFn = f('int bind(int fd, const void *addr, uint32_t len)');
  const getsockname = f('int getsockname(int fd, _Out_ void *addr, _Inout_ uint32_t *len)');
  const connect = f('int connect(int fd, const void *addr, uint32_t len)');
  const eventfd = f('int eventfd(unsigned int initval, int flags)');
  const write = f('intptr_t write(int fd, const void *buf, size_t count)');
  // The hot calls take addresses as integers: no pointer marshalling.
  const recvmmsg = f('int recvmmsg(int fd, uintptr_t vec, unsigned int vlen, int flags, uintptr_t timeout)');
  const sendmmsg = f('int sendmmsg(int fd, uintptr_t vec, unsigned int vlen, int flags)');
  const sendto = f('intptr_t sendto(int fd, const void *buf, size_t len, int flags, uintptr_t addr, uint32_t addrlen)');
  const poll = f('int poll(uintptr_t fds, unsigned long nfds, int timeout)');
  const read = f('intptr_t read(int fd, uintptr_t buf, size_t count)');
  const close = f('int close(int fd)');
  const prctl = f('int prctl(int option, const char *arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)');
  const clockGettime = f('int clock_gettime(int clock, uintptr_t ts)');
  const free = libc.func('void free(uintptr_t ptr)');
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(1n);
  const int = (v: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    return b;
  };
  const fail = (call: string, what: string): SysError => {
    const errno = koffi.errno();
    return { errno, message: `${call} ${what}: ${errnoName(errno)}` };
  };
  const ret = (n: number): number => (n >= 0 ? n : -koffi.errno());

  return {
    selfTest() {
      const fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) return fail('socket()', 'udp').message;
      try {
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, int(1), 4) !== 0) return fail('setsockopt(SO_REUSEPORT)', 'udp').message;
        // An empty vector returns 0 at once where the call exists.
        if (recvmmsg(fd, 0, 0, MSG_DONTWAIT, 0) < 0) return fail('recvmmsg()', 'udp').message;
        if (sendmmsg(fd, 0, 0, 0) < 0) return fail('sendmmsg()', 'udp').message;
        const ev = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (ev < 0) return fail('eventfd()', '').message;
        close(ev);
        return null;
      } finally {
        close(fd);
      }
    },
    openUdp(addr) {
      const what = `udp://${addr.host}:${addr.port}`;
      const sa = sockaddrOf(addr);
      if (typeof sa === 'string') return { errno: 22, message: `${what}: ${sa}` };
      const fd = socket(sa.family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) return fail('socket()', what);
      const opt = (level: number, name: number, value: number, label: string): SysError | null =>
        setsockopt(fd, level, name, int(value), 4) === 0 ? null : fail(`setsockopt(${label})`, what);
      // Buffer sizes are best effort, like dgram's recvBufferSize: capped by rmem_max/wmem_max without privileges.
      opt(SOL_SOCKET, SO_RCVBUF, SOCKET_BUFFER_BYTES, 'SO_RCVBUF');
      opt(SOL_SOCKET, SO_SNDBUF, SOCKET_BUFFER_BYTES, 'SO_SNDBUF');
      const err =
        opt(SOL_SOCKET, SO_REUSEPORT, 1, 'SO_REUSEPORT') ??
        (sa.family === AF_INET6 ? opt(IPPROTO_IPV6, IPV6_V6ONLY, 1, 'IPV6_V6ONLY') : null) ??
        (!wildcard(sa) ? null : sa.family === AF_INET6 ? opt(IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, 'IPV6_RECVPKTINFO') : opt(IPPROTO_IP, IP_PKTINFO, 1, 'IP_PKTINFO')) ??
        (bindFn(fd, sa.bytes, sa.bytes.length) === 0 ? null : fail('bind()', what));
      if (err === null) return fd;
      close(fd);
      return err;
    },
    localPort(fd) {
      const b = Buffer.alloc(28);
      if (getsockname(fd, b, [b.length]) !== 0) return -koffi.errno();
      return b.readUInt16BE(2);
    },
    detach(fd) {
      const b = Buffer.alloc(28);
      const len = [b.length];
      if (getsockname(fd, b, len) !== 0) return koffi.errno();
      const family = b.readUInt16LE(0);
      if (wildcard({ family, bytes: b })) return EINVAL;
      return connect(fd, b, family === AF_INET6 ? 28 : 16) === 0 ? 0 : koffi.errno();
    },
    eventfd() {
      const fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      return fd >= 0 ? fd : fail('eventfd()', '');
    },
    wake(fd) {
      return write(fd, one, 8) === 8 ? 0 : koffi.errno();
    },
    recvmmsg: (fd, vec, count, flags) => ret(recvmmsg(fd, vec, count, flags, 0)),
    sendmmsg: (fd, vec, count) => ret(sendmmsg(fd, vec, count, 0)),
    sendto: (fd, data, sa, saLen) => ret(sendto(fd, data, data.length, 0, sa, saLen)),
    poll: (fds, count, timeoutMs) => ret(poll(fds, count, timeoutMs)),
    read8: (fd, into) => ret(read(fd, into, 8)),
    close(fd) {
      close(fd);
    },
    nameThread(name) {
      // Best effort: a thread name is for people reading top, nothing depends on it.
      prctl(PR_SET_NAME, name.slice(0, 15), 0, 0, 0);
    },
    rxTimestamps(fd) {
      return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, int(1), 4) === 0 ? 0 : koffi.errno();
    },
    realtime: (into) => ret(clockGettime(CLOCK_REALTIME, into)),
    alloc(bytes) {
      const ptr = koffi.alloc('uint8_t', bytes);
      const address = Number(koffi.address(ptr));
      return { address, bytes: koffi.view(ptr, bytes), free: () => koffi.free(ptr) };
    },
    freeAddress(address) {
      free(address);
    },
  };
}

function errnoName(errno: number): string {
  try {
    return `${getSystemErrorName(-errno)} (errno ${errno})`;
  } catch {
    return `errno ${errno}`;
  }
}

export interface SockAddr {
  readonly family: number;
  readonly bytes: Buffer;
}

/** A sockaddr of 0.0.0.0 or ::. */
function wildcard(sa: SockAddr): boolean {
  return sa.family === AF_INET6 ? sa.bytes.subarray(8, 24).every((x) => x === 0) : sa.bytes.readUInt32BE(4) === 0;
}

/**
 * struct sockaddr_in (16 bytes) or sockaddr_in6 (28 bytes), little-endian
 * host: the family in host order, the port and address in network order.
 */
export function sockaddrOf(addr: ServerAddress): SockAddr | string {
  const ip = ipToBytes(addr.host);
  if (ip === null) return `not an IP address: ${addr.host}`;
  if (isIP(addr.host) === 4) {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(addr.port, 2);
    ip.copy(b, 4);
    return { family: AF_INET, bytes: b };
  }
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(addr.port, 2);
  ip.copy(b, 8);
  return { family: AF_INET6, bytes: b };
}
