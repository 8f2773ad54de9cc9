/**
 * The few libc socket calls Node does not expose (SO_SNDBUF on a TCP socket,
 * SIOCOUTQ), through koffi. Loaded once, lazily, so a platform without koffi
 * or without glibc still runs: callers get a reason string and fall back.
 *
 * A call costs about 0.3 us (setsockopt) to 4 us (the variadic ioctl, measured
 * here): fine once per listener or per connection, never per query.
 */
import type net from 'node:net';
import { SOL_SOCKET, SO_SNDBUF } from './linux.js';
import { koffi as loadKoffi } from './koffi.js';

/** Linux, every architecture Node runs on (asm-generic/socket.h, asm-generic/ioctls.h). */
const SIOCOUTQ = 0x5411;

export interface SocketOptions {
  /** setsockopt(SO_SNDBUF): 0, or the errno. The kernel stores twice the value (socket(7)). */
  setSendBuffer(fd: number, bytes: number): number;
  /** getsockopt(SO_SNDBUF): the kernel's value (already doubled), or -errno. */
  sendBuffer(fd: number): number;
  /** ioctl(SIOCOUTQ): bytes in the kernel send queue not yet acknowledged by the peer, or -errno. */
  unsentBytes(fd: number): number;
}

type SetSockOpt = (fd: number, level: number, name: number, value: Int32Array, len: number) => number;
type GetSockOpt = (fd: number, level: number, name: number, value: Int32Array, len: number[]) => number;
type Ioctl = (fd: number, request: number, argType: 'int *', arg: Int32Array) => number;

let loading: Promise<SocketOptions | string> | null = null;

/** The binding, or why it is unavailable (no koffi, no libc.so.6). Loaded on the first call only. */
export function loadSocketOptions(): Promise<SocketOptions | string> {
  loading ??= load();
  return loading;
}

async function load(): Promise<SocketOptions | string> {
  try {
    const koffi = loadKoffi();
    const libc = koffi.load('libc.so.6');
    const setsockopt = libc.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)') as SetSockOpt;
    const getsockopt = libc.func('int getsockopt(int fd, int level, int name, _Out_ void *value, _Inout_ uint32_t *len)') as GetSockOpt;
    const ioctl = libc.func('int ioctl(int fd, unsigned long request, ...)') as Ioctl;
    // One scratch word for every call: the binding is synchronous and single-threaded.
    const word = new Int32Array(1);
    return {
      setSendBuffer(fd, bytes) {
        word[0] = bytes;
        return setsockopt(fd, SOL_SOCKET, SO_SNDBUF, word, 4) === 0 ? 0 : koffi.errno();
      },
      sendBuffer(fd) {
        return getsockopt(fd, SOL_SOCKET, SO_SNDBUF, word, [4]) === 0 ? (word[0] ?? 0) : -koffi.errno();
      },
      unsentBytes(fd) {
        return ioctl(fd, SIOCOUTQ, 'int *', word) === 0 ? (word[0] ?? 0) : -koffi.errno();
      },
    };
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/** The OS file descriptor behind a socket or listening server, or -1 (not open yet, or not a plain fd: Windows, pipes). */
export function fdOf(s: net.Socket | net.Server): number {
  const fd = (s as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}
