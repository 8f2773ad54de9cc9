/**
 * SO_REUSEPORT sockets through koffi, for upgrades with no gap: a new agent
 * binds the same address beside the running one, and the old one drains and
 * exits. Node 20's dgram has no reusePort option, but dgram's bind({ fd })
 * and net's listen({ fd }) take a socket we made and bound ourselves.
 *
 * Closing a socket of a reuseport group drops what sits in its queue (UDP
 * datagrams, TCP connections not yet accepted), and the kernel keeps hashing
 * new traffic to every member until it closes. So the old agent first takes
 * itself out of the way, then empties its queue, then closes (measured on
 * Linux 6.18, see test/handover.test.ts):
 * - UDP: connect() to our own address. The group lookup skips a connected
 *   member (reuseport_select_sock_by_hash skips TCP_ESTABLISHED) and the
 *   connected socket only matches datagrams from that peer, which only the
 *   group itself could send; what is already queued stays readable. Not a
 *   wildcard socket: connect() also fixes its source address (to loopback,
 *   the only "own address" it has), and every answer to another host is
 *   refused (EINVAL). It stays in the group, read and answered until it
 *   closes; what is queued on it then is lost.
 * - TCP: a one-instruction classic BPF program on the group ("return index
 *   N"), sending every new connection to the newest listener. No listener
 *   state makes the lookup skip a member, and shutdown() resets the accept
 *   queue (unless net.ipv4.tcp_migrate_req=1, off by default).
 *
 * Loaded once, lazily, like socket-options.ts: without koffi or glibc the
 * listeners bind the plain way and say why. Errors are values carrying the
 * errno and a sentence naming the call.
 */
import { readFileSync } from 'node:fs';
import { endianness } from 'node:os';
import { isIP } from 'node:net';
import { getSystemErrorName } from 'node:util';
import { formatHostPort } from '../addr.js';
import { ipToBytes } from '../iface/ip-bytes.js';
import type { Logger } from '../log.js';
import type { ServerAddress } from '../upstream/types.js';
import {
  AF_INET, AF_INET6, IPPROTO_IPV6, IPPROTO_TCP, IPV6_V6ONLY, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, SOCK_STREAM, SOL_SOCKET, SO_REUSEADDR, SO_REUSEPORT,
} from './linux.js';
import { koffi as loadKoffi } from './koffi.js';

/** Linux, every architecture Node runs on (asm-generic/socket.h, linux/in.h, linux/in6.h, linux/tcp.h). */
const SO_ATTACH_REUSEPORT_CBPF = 51;
const SO_MEMINFO = 55;
const TCP_INFO = 11;
/** struct tcp_info: tcpi_unacked, which a listener fills with its accept queue length (tcp_get_info). */
const TCPI_UNACKED_OFFSET = 24;
const TCP_INFO_BYTES = 104;
/** SK_MEMINFO_RMEM_ALLOC, the first word of SO_MEMINFO: bytes held by the receive queue. */
const SK_MEMINFO_WORDS = 9;
/** BPF_RET | BPF_K: the program's verdict is the constant, an index into the group's sockets. */
const BPF_RET_K = 0x06;
const SOCK_FILTER_BYTES = 8;
const SOCK_FPROG_BYTES = 16;
/** What the kernel caps listen() at by default (net.core.somaxconn); Node asks for 511. */
export const DEFAULT_BACKLOG = 511;

export type SocketKind = 'udp' | 'tcp';

/** A failed call: its errno and "bind(): EADDRINUSE (errno 98)"; the caller names the address. */
export interface SysError {
  readonly errno: number;
  readonly message: string;
}

export function isSysError(v: unknown): v is SysError {
  return typeof v === 'object' && v !== null && 'errno' in v && 'message' in v;
}

export interface ReusePort {
  /**
   * A socket bound to `addr` with SO_REUSEADDR and SO_REUSEPORT (IPV6_V6ONLY
   * for IPv6), listening for TCP, non-blocking and close-on-exec: its fd, for
   * dgram's bind({ fd }) or net's listen({ fd }). Closed again on any error.
   */
  open(kind: SocketKind, addr: ServerAddress, backlog?: number): number | SysError;
  /**
   * UDP: connects the socket to its own address so the group stops choosing
   * it; datagrams already queued stay readable. 'wildcard': bound to
   * 0.0.0.0 or ::, left as it is (keep reading and answering it until close).
   */
  detachUdp(fd: number, addr: ServerAddress): SysError | null | 'wildcard';
  /** Attaches "return index" to the fd's reuseport group: new traffic goes to the index-th member (join order), or is hashed when there is no such member. */
  steer(fd: number, index: number): SysError | null;
  /** Bytes in the socket's receive queue (UDP: datagrams not yet read), or -errno. */
  queuedBytes(fd: number): number;
  /** Connections in a TCP listener's accept queue, or -errno. */
  acceptQueue(fd: number): number;
  /** For a socket never handed to Node; Node closes its own. */
  close(fd: number): void;
}

type IntCall1 = (a: number) => number;
type IntCall2 = (a: number, b: number) => number;
type IntCall3 = (a: number, b: number, c: number) => number;
type AddrCall = (fd: number, addr: Buffer, len: number) => number;
type SetSockOpt = (fd: number, level: number, name: number, value: Buffer, len: number) => number;
type GetSockOpt = (fd: number, level: number, name: number, value: Buffer, len: number[]) => number;
type NameToIndex = (name: string) => number;

let loading: Promise<ReusePort | string> | null = null;

/** The binding, or why it is unavailable (no koffi, no libc.so.6). Loaded on the first call only. */
export function loadReusePort(): Promise<ReusePort | string> {
  loading ??= load();
  return loading;
}

async function load(): Promise<ReusePort | string> {
  try {
    const koffi = loadKoffi();
    const libc = koffi.load('libc.so.6');
    const socket = libc.func('int socket(int domain, int type, int protocol)') as IntCall3;
    const setsockopt = libc.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)') as SetSockOpt;
    const getsockopt = libc.func('int getsockopt(int fd, int level, int name, _Out_ void *value, _Inout_ uint32_t *len)') as GetSockOpt;
    const bind = libc.func('int bind(int fd, const void *addr, uint32_t len)') as AddrCall;
    const connect = libc.func('int connect(int fd, const void *addr, uint32_t len)') as AddrCall;
    const listen = libc.func('int listen(int fd, int backlog)') as IntCall2;
    const close = libc.func('int close(int fd)') as IntCall1;
    const ifNameToIndex = libc.func('unsigned int if_nametoindex(const char *name)') as NameToIndex;
    const one = Buffer.alloc(4);
    put32(one, 1, 0);

    const fail = (call: string): SysError => {
      const errno = koffi.errno();
      return { errno, message: `${call}: ${errnoName(errno)}` };
    };

    const setOpt = (fd: number, level: number, name: number, label: string): SysError | null =>
      setsockopt(fd, level, name, one, 4) === 0 ? null : fail(`setsockopt(${label})`);

    return {
      open(kind, addr, backlog = DEFAULT_BACKLOG) {
        const sa = sockaddr(addr, ifNameToIndex);
        if (typeof sa === 'string') return { errno: 22, message: sa };
        const fd = socket(sa.family, (kind === 'udp' ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) return fail('socket()');
        const err =
          setOpt(fd, SOL_SOCKET, SO_REUSEADDR, 'SO_REUSEADDR') ??
          setOpt(fd, SOL_SOCKET, SO_REUSEPORT, 'SO_REUSEPORT') ??
          (sa.family === AF_INET6 ? setOpt(fd, IPPROTO_IPV6, IPV6_V6ONLY, 'IPV6_V6ONLY') : null) ??
          (bind(fd, sa.bytes, sa.bytes.length) === 0 ? null : fail('bind()')) ??
          (kind === 'udp' || listen(fd, backlog) === 0 ? null : fail('listen()'));
        if (err === null) return fd;
        close(fd);
        return err;
      },
      detachUdp(fd, addr) {
        if (isWildcardHost(addr.host)) return 'wildcard';
        // Our own address: the only senders that could match it are the members of the group.
        const sa = sockaddr(addr, ifNameToIndex);
        if (typeof sa === 'string') return { errno: 22, message: sa };
        return connect(fd, sa.bytes, sa.bytes.length) === 0 ? null : fail(`connect() to ${formatHostPort(addr)}`);
      },
      steer(fd, index) {
        // struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }, one instruction; struct sock_fprog { u16 len; sock_filter *filter; }.
        const filter = koffi.alloc('uint8_t', SOCK_FILTER_BYTES) as unknown;
        try {
          const insn = Buffer.alloc(SOCK_FILTER_BYTES);
          put16(insn, BPF_RET_K, 0);
          put32(insn, index, 4);
          koffi.encode(filter, 'uint8_t', [...insn], SOCK_FILTER_BYTES);
          const prog = Buffer.alloc(SOCK_FPROG_BYTES);
          put16(prog, 1, 0);
          if (LE) prog.writeBigUInt64LE(koffi.address(filter), 8);
          else prog.writeBigUInt64BE(koffi.address(filter), 8);
          // The kernel copies the program: the memory can go right after.
          return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, prog, SOCK_FPROG_BYTES) === 0 ? null : fail('setsockopt(SO_ATTACH_REUSEPORT_CBPF)');
        } finally {
          koffi.free(filter);
        }
      },
      queuedBytes(fd) {
        const info = Buffer.alloc(SK_MEMINFO_WORDS * 4);
        if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, info, [info.length]) !== 0) return -koffi.errno();
        return get32(info, 0);
      },
      acceptQueue(fd) {
        const info = Buffer.alloc(TCP_INFO_BYTES);
        if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, [info.length]) !== 0) return -koffi.errno();
        return get32(info, TCPI_UNACKED_OFFSET);
      },
      close(fd) {
        close(fd);
      },
    };
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/** Kernel structs hold host-order integers (ports and addresses excepted). */
const LE = endianness() === 'LE';
function put16(b: Buffer, v: number, off: number): void {
  if (LE) b.writeUInt16LE(v, off);
  else b.writeUInt16BE(v, off);
}
function put32(b: Buffer, v: number, off: number): void {
  if (LE) b.writeUInt32LE(v, off);
  else b.writeUInt32BE(v, off);
}
function get32(b: Buffer, off: number): number {
  return LE ? b.readUInt32LE(off) : b.readUInt32BE(off);
}

function errnoName(errno: number): string {
  let name = `errno ${errno}`;
  try {
    name = `${getSystemErrorName(-errno)} (errno ${errno})`;
  } catch {
    // Not an errno Node knows: the number alone.
  }
  return name;
}

/**
 * An unspecified address (0.0.0.0, ::, any spelling, any zone): a socket
 * bound there must never be connect()ed to take it out of its group, since
 * connect() would also fix its source address.
 */
export function isWildcardHost(host: string): boolean {
  const ip = ipToBytes(host.split('%')[0] ?? '');
  return ip !== null && ip.every((b) => b === 0);
}

interface SockAddr {
  readonly family: number;
  readonly bytes: Buffer;
}

/**
 * struct sockaddr_in (16 bytes) or sockaddr_in6 (28 bytes): the family in
 * host order, the port in network order. A scope (fe80::1%eth0) becomes
 * sin6_scope_id. A string says why the address cannot be built.
 */
export function sockaddr(addr: ServerAddress, ifNameToIndex: (name: string) => number = () => 0): SockAddr | string {
  const pct = addr.host.indexOf('%');
  const host = pct < 0 ? addr.host : addr.host.slice(0, pct);
  const ip = ipToBytes(host);
  if (ip === null) return `not an IP address: ${addr.host}`;
  if (isIP(host) === 4) {
    const b = Buffer.alloc(16);
    put16(b, AF_INET, 0);
    b.writeUInt16BE(addr.port, 2);
    ip.copy(b, 4);
    return { family: AF_INET, bytes: b };
  }
  let scope = 0;
  if (pct >= 0) {
    const zone = addr.host.slice(pct + 1);
    scope = /^\d+$/.test(zone) ? Number(zone) : ifNameToIndex(zone);
    if (scope === 0) return `unknown interface in ${addr.host}`;
  }
  const b = Buffer.alloc(28);
  put16(b, AF_INET6, 0);
  b.writeUInt16BE(addr.port, 2);
  ip.copy(b, 8);
  put32(b, scope, 24);
  return { family: AF_INET6, bytes: b };
}

/**
 * How many TCP listeners (the members of its reuseport group) this network
 * namespace has on `addr`, from /proc/net/tcp or tcp6: the newest member's
 * index is this minus one. 0 when the table cannot be read.
 */
export function listenersOn(addr: ServerAddress, readFile: (path: string) => string = (p) => readFileSync(p, 'utf8')): number {
  const six = isIP(addr.host.split('%')[0] ?? '') === 6;
  let table: string;
  try {
    table = readFile(six ? '/proc/net/tcp6' : '/proc/net/tcp');
  } catch {
    return 0;
  }
  return countListeners(table, procAddress(addr));
}

/** TCP_LISTEN in include/net/tcp_states.h, as /proc/net/tcp prints it. */
const PROC_LISTEN = '0A';

/** Rows of a /proc/net/tcp{,6} table in LISTEN state with this local address ("0100007F:0035"). */
export function countListeners(table: string, local: string): number {
  let n = 0;
  for (const line of table.split('\n')) {
    // "  0: 0100007F:0035 00000000:0000 0A ..." : slot, local, remote, state.
    const cols = line.trim().split(/\s+/);
    if (cols[1] === local && cols[3] === PROC_LISTEN) n++;
  }
  return n;
}

/** The local-address column of /proc/net/tcp{,6}: each 32-bit word of the address printed in host order, then the port. */
export function procAddress(addr: ServerAddress): string {
  const ip = ipToBytes(addr.host.split('%')[0] ?? '') ?? Buffer.alloc(4);
  let hex = '';
  for (let i = 0; i < ip.length; i += 4) {
    hex += get32(ip, i).toString(16).toUpperCase().padStart(8, '0');
  }
  return `${hex}:${addr.port.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** Per socket kind, once per process: the listeners of an agent all meet the same missing koffi. */
const warnedUnavailable = new Set<SocketKind>();

/**
 * A socket of `kind` bound to `addr` with SO_REUSEPORT, with the binding
 * that made it (for steering and draining later); null when SO_REUSEPORT is
 * unavailable (said once, with the reason), so the caller binds the plain
 * way. Throws when the bind or listen itself fails.
 */
export async function openShared(
  kind: SocketKind, addr: ServerAddress, name: string, logger: Logger, load: () => Promise<ReusePort | string> = loadReusePort,
): Promise<{ sys: ReusePort; fd: number } | null> {
  const sys = await load();
  if (typeof sys === 'string') {
    if (!warnedUnavailable.has(kind)) {
      warnedUnavailable.add(kind);
      const how = kind === 'udp' ? 'binding' : 'listening';
      logger.warn(`SO_REUSEPORT unavailable: ${how} exclusively, so a new agent cannot start beside this one`, { listener: name, reason: sys });
    }
    return null;
  }
  const fd = sys.open(kind, addr);
  if (isSysError(fd)) throw new Error(`cannot listen on ${name}: ${fd.message}`);
  return { sys, fd };
}
