/**
 * The recvmmsg/sendmmsg vectors, laid out once in one native block and
 * read and written through typed-array views: no allocation and no koffi
 * marshalling per packet (design section 7).
 *
 * Linux LP64 layouts (x86-64 and arm64; udp-batch.ts refuses anything else):
 *
 *   struct mmsghdr (64 bytes)             struct iovec (16 bytes)
 *    0  void    *msg_name   ─► sockaddr    0  void  *iov_base ─► slot bytes
 *    8  uint32   msg_namelen               8  size_t iov_len
 *   16  iovec   *msg_iov    ─► iovec
 *   24  size_t   msg_iovlen = 1           sockaddr slot: 48 bytes, room for a
 *   32  void    *msg_control              sockaddr_in (16) or sockaddr_in6 (28),
 *   40  size_t   msg_controllen            then at 28 the address the datagram
 *   48  int      msg_flags   (out: MSG_TRUNC)   was sent to, from its pktinfo
 *   56  uint32   msg_len     (out: bytes)       (wildcard sockets only):
 *                                              28 uint32 ifindex (0: none)
 *                                              32 the address (4 or 16 bytes)
 *
 * A vector of N messages is [N mmsghdr][N iovec][N sockaddr][N slots]: the
 * pointers are written once at construction; per packet only msg_len,
 * msg_flags, msg_namelen, msg_controllen and iov_len change. A send vector
 * adds [N control slots of 48 bytes] for the IP_PKTINFO / IPV6_PKTINFO that
 * makes an answer leave from the address its query was sent to (a socket on
 * a wildcard; otherwise msg_controllen stays 0). A receive vector adds
 * [N control slots] after them, for the kernel's receive timestamp and the
 * pktinfo (which follows the timestamp):
 *
 *   control slot (80 bytes): struct cmsghdr then its data, for each message
 *    0  size_t   cmsg_len   = 32 for SCM_TIMESTAMPNS (CMSG_LEN(16))
 *    8  int      cmsg_level = SOL_SOCKET
 *   12  int      cmsg_type  = SCM_TIMESTAMPNS
 *   16  int64    tv_sec     (CLOCK_REALTIME)
 *   24  int64    tv_nsec
 *   32  then IP_PKTINFO (CMSG_LEN(12) = 28) or IPV6_PKTINFO (CMSG_LEN(20) = 36)
 *
 * msg_controllen is value-result like msg_namelen: the kernel writes what
 * it used (0: no timestamp), reset() gives the slot size back.
 */
import { IPPROTO_IPV6, SOL_SOCKET } from '../../sys/linux.js';
import { AF_INET6, IPPROTO_IP, IPV6_PKTINFO, IP_PKTINFO, MSG_TRUNC, SCM_TIMESTAMPNS } from '../../sys/udp-batch.js';

export const MMSGHDR_BYTES = 64;
const IOVEC_BYTES = 16;
export const SOCKADDR_SLOT_BYTES = 48;
/** In a sockaddr slot, past any sockaddr: the arrival interface of the pktinfo kept there (0: none), then its address. */
const SA_IFINDEX_WORD = 7;
const SA_DEST_WORD = 8;
/** The largest UDP payload (--max-udp-size's bound): the slot of the vector of one an answer too big for the send slots goes out on. */
export const MAX_DATAGRAM_BYTES = 65535;
/** One IPV6_PKTINFO: CMSG_SPACE(20) = 40, IP_PKTINFO's CMSG_SPACE(12) = 32. */
const SEND_CONTROL_BYTES = 48;
const H_NAME = 0;
const H_NAMELEN = 8;
const H_IOV = 16;
const H_IOVLEN = 24;
const H_CONTROL = 32;
const H_CONTROLLEN = 40;
const H_FLAGS = 48;
const H_LEN = 56;
const IOV_LEN = 8;

/** Bytes of the parts both directions have, each part 64-aligned as Arena.take() cuts it. */
function baseBytes(count: number, slotBytes: number): number {
  return align(count * MMSGHDR_BYTES) + align(count * IOVEC_BYTES) + align(count * SOCKADDR_SLOT_BYTES) + align(count * align(slotBytes));
}

/** Bytes a send vector of `count` messages of `slotBytes` each takes, alignment included. */
export function vecBytes(count: number, slotBytes: number): number {
  return baseBytes(count, slotBytes) + align(count * SEND_CONTROL_BYTES);
}

/** Bytes of one receive slot's control buffer: a timestamp, CMSG_SPACE(16) = 32, then an IPV6_PKTINFO, CMSG_SPACE(20) = 40. */
export const CONTROL_SLOT_BYTES = 80;
const CMSG_HDR_BYTES = 16;

/** Bytes a receive vector of `count` messages takes, the control slots included. */
export function recvVecBytes(count: number, slotBytes: number): number {
  return baseBytes(count, slotBytes) + align(count * CONTROL_SLOT_BYTES);
}

/** A struct timespec in the arena, read as two numbers (whole seconds fit a double exactly). */
export interface Timespec {
  sec: number;
  nsec: number;
}

function align(n: number): number {
  return (n + 63) & ~63;
}

/** A bump allocator over one native block: every vector of a worker comes from it. */
export class Arena {
  readonly address: number;
  readonly u8: Uint8Array;
  readonly u32: Uint32Array;
  readonly view: DataView;
  #next: number;

  constructor(address: number, bytes: ArrayBuffer) {
    this.address = address;
    this.u8 = new Uint8Array(bytes);
    this.u32 = new Uint32Array(bytes);
    this.view = new DataView(bytes);
    this.#next = 0;
  }

  /** Byte offset of `bytes` fresh bytes, 64-aligned. */
  take(bytes: number): number {
    const off = this.#next;
    const end = off + align(bytes);
    if (end > this.u8.length) throw new Error(`arena exhausted: ${end} > ${this.u8.length}`);
    this.#next = end;
    return off;
  }

  pointer(off: number, address: number): void {
    this.view.setBigUint64(off, BigInt(address), true);
  }
}

/** Shared layout of both directions. */
abstract class MsgVec {
  readonly count: number;
  readonly slotBytes: number;
  /** Native address of mmsghdr[0]. */
  readonly address: number;
  protected readonly a: Arena;
  protected readonly hdr: number;
  protected readonly iov: number;
  protected readonly sa: number;
  protected readonly buf: number;

  constructor(arena: Arena, count: number, slotBytes: number) {
    this.a = arena;
    this.count = count;
    this.slotBytes = align(slotBytes);
    this.hdr = arena.take(count * MMSGHDR_BYTES);
    this.iov = arena.take(count * IOVEC_BYTES);
    this.sa = arena.take(count * SOCKADDR_SLOT_BYTES);
    this.buf = arena.take(count * this.slotBytes);
    this.address = arena.address + this.hdr;
    arena.u8.fill(0, this.hdr, this.hdr + count * MMSGHDR_BYTES);
    for (let i = 0; i < count; i++) {
      const h = this.hdr + i * MMSGHDR_BYTES;
      const v = this.iov + i * IOVEC_BYTES;
      arena.pointer(h + H_NAME, arena.address + this.sa + i * SOCKADDR_SLOT_BYTES);
      arena.u32[(h + H_NAMELEN) >> 2] = SOCKADDR_SLOT_BYTES;
      arena.pointer(h + H_IOV, arena.address + v);
      arena.pointer(h + H_IOVLEN, 1);
      arena.pointer(v, arena.address + this.buf + i * this.slotBytes);
      arena.pointer(v + IOV_LEN, this.slotBytes);
    }
  }

  /** Native address of mmsghdr[i]. */
  at(i: number): number {
    return this.address + i * MMSGHDR_BYTES;
  }

  /** Byte offset (in the arena) of message i's sockaddr. */
  sockaddrOffset(i: number): number {
    return this.sa + i * SOCKADDR_SLOT_BYTES;
  }

  /** Byte offset (in the arena) of message i's data. */
  dataOffset(i: number): number {
    return this.buf + i * this.slotBytes;
  }

  nameLength(i: number): number {
    return this.a.u32[(this.hdr + i * MMSGHDR_BYTES + H_NAMELEN) >> 2]!;
  }
}

/**
 * What recvmmsg fills. Each slot's iov_len stays the slot size; after a
 * receive, msg_len, msg_flags, msg_namelen and msg_controllen say what
 * arrived.
 */
export class RecvVec extends MsgVec {
  readonly #ctl: number;

  constructor(arena: Arena, count: number, slotBytes: number) {
    super(arena, count, slotBytes);
    this.#ctl = arena.take(count * CONTROL_SLOT_BYTES);
    for (let i = 0; i < count; i++) {
      const h = this.hdr + i * MMSGHDR_BYTES;
      arena.pointer(h + H_CONTROL, arena.address + this.#ctl + i * CONTROL_SLOT_BYTES);
      arena.pointer(h + H_CONTROLLEN, CONTROL_SLOT_BYTES);
    }
  }

  /** Before the next receive: the kernel shrank msg_namelen and msg_controllen of the first n slots to what it wrote. */
  reset(n: number): void {
    const u32 = this.a.u32;
    for (let i = 0; i < n; i++) {
      const h = this.hdr + i * MMSGHDR_BYTES;
      u32[(h + H_NAMELEN) >> 2] = SOCKADDR_SLOT_BYTES;
      // The low word of a little-endian size_t; the kernel never writes more than we gave, so the high word stays 0.
      u32[(h + H_CONTROLLEN) >> 2] = CONTROL_SLOT_BYTES;
    }
  }

  /**
   * Nanoseconds from the kernel's receive timestamp of message i to `now`
   * (a CLOCK_REALTIME reading), or -1 when the message carries none (the
   * socket has no SO_TIMESTAMPNS, or the kernel left it out). Reads words,
   * allocates nothing. Never negative: a clock stepped back reads as 0.
   */
  ageNs(i: number, now: Timespec): number {
    const u32 = this.a.u32;
    const used = u32[(this.hdr + i * MMSGHDR_BYTES + H_CONTROLLEN) >> 2]!;
    const base = this.#ctl + i * CONTROL_SLOT_BYTES;
    let off = 0;
    // Bounded by the slot: each message advances by at least its header.
    while (off + CMSG_HDR_BYTES + 16 <= used) {
      const w = (base + off) >> 2;
      const len = u32[w]!;
      if (len < CMSG_HDR_BYTES) return -1;
      if (u32[w + 2] === SOL_SOCKET && u32[w + 3] === SCM_TIMESTAMPNS) {
        const sec = u32[w + 4]! + u32[w + 5]! * 0x100000000;
        const ns = (now.sec - sec) * 1e9 + (now.nsec - u32[w + 6]!);
        return ns > 0 ? ns : 0;
      }
      off += (len + 7) & ~7;
    }
    return -1;
  }

  /**
   * Keeps beside message i's sockaddr the address it was sent to, from its
   * IP_PKTINFO / IPV6_PKTINFO (a socket on a wildcard), where SendVec.push()
   * finds it for the answer; marks it as having none otherwise. The kernel
   * never writes there: a sockaddr is at most 28 bytes. `pktinfo` false (a
   * socket on one address, which gets none): only marked, its control
   * messages not read (every datagram's cost, ~15 ns).
   */
  keepDestination(i: number, pktinfo = true): void {
    const u32 = this.a.u32;
    const sa = (this.sa + i * SOCKADDR_SLOT_BYTES) >> 2;
    u32[sa + SA_IFINDEX_WORD] = 0;
    if (!pktinfo) return;
    const used = u32[(this.hdr + i * MMSGHDR_BYTES + H_CONTROLLEN) >> 2]!;
    const base = this.#ctl + i * CONTROL_SLOT_BYTES;
    // Bounded by the slot: each message advances by at least its header.
    for (let off = 0; off + CMSG_HDR_BYTES <= used; ) {
      const w = (base + off) >> 2;
      const len = u32[w]!;
      if (len < CMSG_HDR_BYTES || off + len > used) return;
      const level = u32[w + 2];
      const type = u32[w + 3];
      if (level === IPPROTO_IP && type === IP_PKTINFO && len >= CMSG_HDR_BYTES + 12) {
        // struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr }: spec_dst is the local address.
        u32[sa + SA_DEST_WORD] = u32[w + 5]!;
        u32[sa + SA_IFINDEX_WORD] = u32[w + 4]!;
        return;
      }
      if (level === IPPROTO_IPV6 && type === IPV6_PKTINFO && len >= CMSG_HDR_BYTES + 20) {
        // struct in6_pktinfo { in6_addr ipi6_addr; int ipi6_ifindex }.
        for (let k = 0; k < 4; k++) u32[sa + SA_DEST_WORD + k] = u32[w + 4 + k]!;
        u32[sa + SA_IFINDEX_WORD] = u32[w + 8]!;
        return;
      }
      off += (len + 7) & ~7;
    }
  }

  /** Message i's kernel receive time in microseconds since the epoch (for a trace), or NaN. */
  kernelTimeUs(i: number): number {
    const u32 = this.a.u32;
    const used = u32[(this.hdr + i * MMSGHDR_BYTES + H_CONTROLLEN) >> 2]!;
    const w = (this.#ctl + i * CONTROL_SLOT_BYTES) >> 2;
    if (used < CMSG_HDR_BYTES + 16 || u32[w + 2] !== SOL_SOCKET || u32[w + 3] !== SCM_TIMESTAMPNS) return NaN;
    return (u32[w + 4]! + u32[w + 5]! * 0x100000000) * 1e6 + u32[w + 6]! / 1000;
  }

  length(i: number): number {
    return this.a.u32[(this.hdr + i * MMSGHDR_BYTES + H_LEN) >> 2]!;
  }

  /** The datagram was bigger than the slot and arrived cut. */
  truncated(i: number): boolean {
    return (this.a.u32[(this.hdr + i * MMSGHDR_BYTES + H_FLAGS) >> 2]! & MSG_TRUNC) !== 0;
  }
}

/**
 * What sendmmsg sends: answers are copied into the next free slot with the
 * peer's sockaddr, then the filled prefix goes in one call.
 */
export class SendVec extends MsgVec {
  #filled: number;
  readonly #ctl: number;

  constructor(arena: Arena, count: number, slotBytes: number) {
    super(arena, count, slotBytes);
    this.#filled = 0;
    this.#ctl = arena.take(count * SEND_CONTROL_BYTES);
    // msg_controllen stays 0 (the constructor zeroed the headers) unless an answer carries a source address.
    for (let i = 0; i < count; i++) arena.pointer(this.hdr + i * MMSGHDR_BYTES + H_CONTROL, arena.address + this.#ctl + i * SEND_CONTROL_BYTES);
  }

  get filled(): number {
    return this.#filled;
  }

  get full(): boolean {
    return this.#filled === this.count;
  }

  /**
   * Queues `answer` to the sockaddr held in `words` (nameLen bytes from
   * word `wordOff`). The caller checks `full` and the answer's size first.
   */
  push(answer: Uint8Array, words: Uint32Array, wordOff: number, nameLen: number): void {
    const i = this.#filled++;
    const a = this.a;
    a.u8.set(answer, this.buf + i * this.slotBytes);
    const h = this.hdr + i * MMSGHDR_BYTES;
    a.u32[(h + H_NAMELEN) >> 2] = nameLen;
    // iov_len: the low word of a little-endian size_t; the high word stays 0.
    a.u32[(this.iov + i * IOVEC_BYTES + IOV_LEN) >> 2] = answer.length;
    const dst = (this.sa + i * SOCKADDR_SLOT_BYTES) >> 2;
    for (let w = 0; w < nameLen >> 2; w++) a.u32[dst + w] = words[wordOff + w]!;
    // The low word of a little-endian size_t, as iov_len.
    a.u32[(h + H_CONTROLLEN) >> 2] = this.#source(i, words, wordOff);
  }

  /**
   * Message i's IP_PKTINFO / IPV6_PKTINFO from the destination RecvVec kept
   * in the sockaddr slot at `wordOff`: the answer leaves from the address
   * its query was sent to. Its length for msg_controllen; 0 when none kept.
   */
  #source(i: number, words: Uint32Array, wordOff: number): number {
    const ifindex = words[wordOff + SA_IFINDEX_WORD]!;
    if (ifindex === 0) return 0;
    const u32 = this.a.u32;
    const c = (this.#ctl + i * SEND_CONTROL_BYTES) >> 2;
    const dest = wordOff + SA_DEST_WORD;
    u32[c + 1] = 0; // cmsg_len's high word
    if ((words[wordOff]! & 0xffff) === AF_INET6) {
      u32[c] = CMSG_HDR_BYTES + 20;
      u32[c + 2] = IPPROTO_IPV6;
      u32[c + 3] = IPV6_PKTINFO;
      for (let k = 0; k < 4; k++) u32[c + 4 + k] = words[dest + k]!;
      // The interface only for a link-local address (fe80::/10), which names none without it; others leave by the route.
      u32[c + 8] = (words[dest]! & 0xc0ff) === 0x80fe ? ifindex : 0;
      return 40;
    }
    u32[c] = CMSG_HDR_BYTES + 12;
    u32[c + 2] = IPPROTO_IP;
    u32[c + 3] = IP_PKTINFO;
    u32[c + 4] = 0; // ipi_ifindex: leave by the route
    u32[c + 5] = words[dest]!; // ipi_spec_dst: the source address
    u32[c + 6] = 0;
    return 32;
  }

  /** Everything queued was sent (or given up on). */
  clear(): void {
    this.#filled = 0;
  }
}
