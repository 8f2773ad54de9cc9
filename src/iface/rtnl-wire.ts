/**
 * rtnetlink messages as bytes: builders for the few requests the node
 * interface needs and parsers for the kernel's replies. Pure functions, no
 * socket, so the exact request bytes and real captured replies are unit-tested
 * (test/iface.test.ts, test/fixtures/rtnl-*.hex).
 *
 * Layout (include/uapi/linux/netlink.h, rtnetlink.h, if_link.h, if_addr.h),
 * every field in host byte order, every part padded to 4 bytes:
 *
 *   nlmsghdr   len u32 | type u16 | flags u16 | seq u32 | pid u32        16 bytes
 *   ifinfomsg  family u8 | pad u8 | type u16 | index i32 | flags u32 | change u32   16
 *   ifaddrmsg  family u8 | prefixlen u8 | flags u8 | scope u8 | index u32           8
 *   rtattr     len u16 | type u16 | payload, padded                      4 + n
 *   nlmsgerr   error i32 | the request's nlmsghdr (payload cut: NETLINK_CAP_ACK) | ext-ack rtattrs
 */
import { endianness } from 'node:os';
import { bytesToIp } from './ip-bytes.js';

// netlink.h
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP = 0x300; // ROOT | MATCH
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
/** On a dump part: the table changed while it was being dumped, so the list may miss entries or show one twice. */
export const NLM_F_DUMP_INTR = 0x10;
/** In an ack: the request payload was left out (we set NETLINK_CAP_ACK). */
const NLM_F_CAPPED = 0x100;
/** In an ack: extended-ack attributes follow (we set NETLINK_EXT_ACK). */
const NLM_F_ACK_TLVS = 0x200;
const NLMSGERR_ATTR_MSG = 1;

// rtnetlink.h
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;

// if_link.h / if_addr.h / if.h / socket.h
const IFLA_IFNAME = 3;
const IFLA_LINKINFO = 18;
const IFLA_INFO_KIND = 1;
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_FLAGS = 8;
export const IFF_UP = 0x1;
/** Skip duplicate address detection so an IPv6 address is usable at once, not "tentative" for a second or more. */
export const IFA_F_NODAD = 0x02;
export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_INET6 = 10;
/** IFNAMSIZ - 1: the kernel refuses longer names. */
export const IFNAME_MAX = 15;

const NLMSG_HDRLEN = 16;
const IFINFOMSG_LEN = 16;
const IFADDRMSG_LEN = 8;
const RTA_HDRLEN = 4;

const LE = endianness() === 'LE';
const align4 = (n: number): number => (n + 3) & ~3;

/** A small writer over one Buffer; netlink integers are in host order. */
class Writer {
  readonly buf: Buffer;
  off = 0;
  constructor(size: number) {
    this.buf = Buffer.alloc(size);
  }
  u8(v: number): void {
    this.buf.writeUInt8(v, this.off);
    this.off += 1;
  }
  u16(v: number): void {
    if (LE) this.buf.writeUInt16LE(v, this.off);
    else this.buf.writeUInt16BE(v, this.off);
    this.off += 2;
  }
  u32(v: number): void {
    if (LE) this.buf.writeUInt32LE(v >>> 0, this.off);
    else this.buf.writeUInt32BE(v >>> 0, this.off);
    this.off += 4;
  }
  i32(v: number): void {
    if (LE) this.buf.writeInt32LE(v, this.off);
    else this.buf.writeInt32BE(v, this.off);
    this.off += 4;
  }
  bytes(b: Uint8Array): void {
    this.buf.set(b, this.off);
    this.off += b.length;
  }
  pad(): void {
    this.off = align4(this.off);
  }
  /** Starts an attribute; returns its offset for end(). */
  attr(type: number): number {
    const at = this.off;
    this.u16(0);
    this.u16(type);
    return at;
  }
  endAttr(at: number): void {
    const len = this.off - at;
    if (LE) this.buf.writeUInt16LE(len, at);
    else this.buf.writeUInt16BE(len, at);
    this.pad();
  }
  /** Fixes nlmsghdr.len and returns the message. */
  finish(): Buffer {
    const msg = this.buf.subarray(0, this.off);
    if (LE) msg.writeUInt32LE(this.off, 0);
    else msg.writeUInt32BE(this.off, 0);
    return msg;
  }
}

function header(w: Writer, type: number, flags: number, seq: number): void {
  w.u32(0); // length, fixed by finish()
  w.u16(type);
  w.u16(flags);
  w.u32(seq);
  w.u32(0); // pid 0: addressed to the kernel
}

function stringAttr(w: Writer, type: number, s: string): void {
  const at = w.attr(type);
  w.bytes(Buffer.from(`${s}\0`, 'latin1'));
  w.endAttr(at);
}

function ifinfomsg(w: Writer, index: number, flags: number, change: number): void {
  w.u8(AF_UNSPEC);
  w.u8(0);
  w.u16(0); // ARPHRD type: set by the driver
  w.i32(index);
  w.u32(flags);
  w.u32(change);
}

/** `ip link add NAME type KIND`: create only (EXCL), so an existing link is reported as EEXIST, never altered. */
export function newLinkRequest(seq: number, name: string, kind: string): Buffer {
  const w = new Writer(NLMSG_HDRLEN + IFINFOMSG_LEN + 64 + kind.length + name.length);
  header(w, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq);
  ifinfomsg(w, 0, 0, 0);
  stringAttr(w, IFLA_IFNAME, name);
  const info = w.attr(IFLA_LINKINFO);
  stringAttr(w, IFLA_INFO_KIND, kind);
  w.endAttr(info);
  return w.finish();
}

/** `ip link set dev INDEX up`: change mask IFF_UP touches no other flag. */
export function setLinkUpRequest(seq: number, index: number): Buffer {
  const w = new Writer(NLMSG_HDRLEN + IFINFOMSG_LEN);
  header(w, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
  ifinfomsg(w, index, IFF_UP, IFF_UP);
  return w.finish();
}

export function delLinkRequest(seq: number, index: number): Buffer {
  const w = new Writer(NLMSG_HDRLEN + IFINFOMSG_LEN);
  header(w, RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
  ifinfomsg(w, index, 0, 0);
  return w.finish();
}

export function dumpRequest(seq: number, type: typeof RTM_GETLINK | typeof RTM_GETADDR): Buffer {
  const w = new Writer(NLMSG_HDRLEN + IFINFOMSG_LEN);
  header(w, type, NLM_F_REQUEST | NLM_F_DUMP, seq);
  if (type === RTM_GETLINK) ifinfomsg(w, 0, 0, 0);
  else {
    // rtgenmsg-sized ifaddrmsg, family AF_UNSPEC: every family.
    w.u8(AF_UNSPEC);
    w.off = NLMSG_HDRLEN + IFADDRMSG_LEN;
  }
  return w.finish();
}

/**
 * `ip addr add ADDR/32 dev INDEX` (or /128, nodad). IFA_LOCAL and IFA_ADDRESS
 * both carry the address, as iproute2 sends it for a non-peer address.
 */
export function addrRequest(seq: number, op: 'add' | 'del', index: number, addr: Uint8Array): Buffer {
  const v6 = addr.length === 16;
  const w = new Writer(NLMSG_HDRLEN + IFADDRMSG_LEN + 2 * (RTA_HDRLEN + 16) + 8);
  const flags = op === 'add' ? NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL : NLM_F_REQUEST | NLM_F_ACK;
  header(w, op === 'add' ? RTM_NEWADDR : RTM_DELADDR, flags, seq);
  w.u8(v6 ? AF_INET6 : AF_INET);
  w.u8(v6 ? 128 : 32);
  w.u8(v6 && op === 'add' ? IFA_F_NODAD : 0);
  w.u8(0); // RT_SCOPE_UNIVERSE: pods reach it through the node's routing
  w.u32(index);
  for (const t of [IFA_LOCAL, IFA_ADDRESS]) {
    const at = w.attr(t);
    w.bytes(addr);
    w.endAttr(at);
  }
  return w.finish();
}

// ---- parsing ---------------------------------------------------------------

function rd16(b: Buffer, o: number): number {
  return LE ? b.readUInt16LE(o) : b.readUInt16BE(o);
}
function rd32(b: Buffer, o: number): number {
  return LE ? b.readUInt32LE(o) : b.readUInt32BE(o);
}
function rdI32(b: Buffer, o: number): number {
  return LE ? b.readInt32LE(o) : b.readInt32BE(o);
}

export interface NlMessage {
  readonly type: number;
  readonly flags: number;
  readonly seq: number;
  /** The payload after nlmsghdr (a view into the datagram). */
  readonly body: Buffer;
}

/** Splits one datagram into messages; a truncated tail is dropped (the kernel never sends one). */
export function splitMessages(dgram: Buffer): NlMessage[] {
  const out: NlMessage[] = [];
  let o = 0;
  while (o + NLMSG_HDRLEN <= dgram.length) {
    const len = rd32(dgram, o);
    if (len < NLMSG_HDRLEN || o + len > dgram.length) break;
    out.push({ type: rd16(dgram, o + 4), flags: rd16(dgram, o + 6), seq: rd32(dgram, o + 8), body: dgram.subarray(o + NLMSG_HDRLEN, o + len) });
    o += align4(len);
  }
  return out;
}

/** type -> payload of each attribute in a run of rtattrs (the last one of a type wins). */
export function parseAttrs(b: Buffer): Map<number, Buffer> {
  const m = new Map<number, Buffer>();
  let o = 0;
  while (o + RTA_HDRLEN <= b.length) {
    const len = rd16(b, o);
    if (len < RTA_HDRLEN || o + len > b.length) break;
    m.set(rd16(b, o + 2) & 0x3fff, b.subarray(o + RTA_HDRLEN, o + len)); // strip NLA_F_NESTED / NET_BYTEORDER
    o += align4(len);
  }
  return m;
}

function cString(b: Buffer | undefined): string | null {
  if (b === undefined) return null;
  const nul = b.indexOf(0);
  return b.toString('latin1', 0, nul < 0 ? b.length : nul);
}

export interface NlAck {
  /** 0 for success, else a positive errno. */
  readonly errno: number;
  /** The kernel's extended-ack text, e.g. "Unknown device type". */
  readonly message: string | null;
}

/** Reads an NLMSG_ERROR body: error 0 is the ack, negative is -errno. */
export function parseAck(msg: NlMessage): NlAck {
  const err = msg.body.length >= 4 ? rdI32(msg.body, 0) : -22;
  let message: string | null = null;
  if ((msg.flags & NLM_F_ACK_TLVS) !== 0 && msg.body.length >= 4 + NLMSG_HDRLEN) {
    // The echoed request: its header only when capped, else the whole message.
    const echoed = (msg.flags & NLM_F_CAPPED) !== 0 ? NLMSG_HDRLEN : rd32(msg.body, 4);
    message = cString(parseAttrs(msg.body.subarray(4 + align4(echoed))).get(NLMSGERR_ATTR_MSG));
  }
  return { errno: -err, message };
}

/**
 * A dump's end: 0, or the -errno a dump callback failed with (netlink_dump_done;
 * iproute2's "Dump terminated"), then with extended acks the kernel's text as
 * attributes right after the int (NLM_F_ACK_TLVS).
 */
export function parseDone(msg: NlMessage): NlAck {
  const err = msg.body.length >= 4 ? rdI32(msg.body, 0) : 0;
  const message = err < 0 && (msg.flags & NLM_F_ACK_TLVS) !== 0 ? cString(parseAttrs(msg.body.subarray(4)).get(NLMSGERR_ATTR_MSG)) : null;
  return { errno: -err, message };
}

export interface LinkInfo {
  readonly index: number;
  readonly name: string;
  readonly flags: number;
  /** IFLA_INFO_KIND ("dummy", "bridge"…); null for links without one (lo, physical NICs). */
  readonly kind: string | null;
}

export function parseLink(msg: NlMessage): LinkInfo | null {
  if (msg.type !== RTM_NEWLINK || msg.body.length < IFINFOMSG_LEN) return null;
  const attrs = parseAttrs(msg.body.subarray(IFINFOMSG_LEN));
  const name = cString(attrs.get(IFLA_IFNAME));
  if (name === null) return null;
  const linkinfo = attrs.get(IFLA_LINKINFO);
  const kind = linkinfo === undefined ? null : cString(parseAttrs(linkinfo).get(IFLA_INFO_KIND));
  return { index: rdI32(msg.body, 4), name, flags: rd32(msg.body, 8), kind };
}

export interface AddrInfo {
  readonly family: number;
  readonly prefixLen: number;
  readonly flags: number;
  readonly index: number;
  /** The local address, canonical text. */
  readonly address: string;
}

export function parseAddr(msg: NlMessage): AddrInfo | null {
  if (msg.type !== RTM_NEWADDR || msg.body.length < IFADDRMSG_LEN) return null;
  const attrs = parseAttrs(msg.body.subarray(IFADDRMSG_LEN));
  // IFA_LOCAL is the interface's own address; IFA_ADDRESS differs only on point-to-point links.
  const raw = attrs.get(IFA_LOCAL) ?? attrs.get(IFA_ADDRESS);
  if (raw === undefined) return null;
  const wide = attrs.get(IFA_FLAGS);
  return {
    family: msg.body.readUInt8(0),
    prefixLen: msg.body.readUInt8(1),
    flags: wide !== undefined && wide.length >= 4 ? rd32(wide, 0) : msg.body.readUInt8(2),
    index: rd32(msg.body, 4),
    address: bytesToIp(raw),
  };
}
