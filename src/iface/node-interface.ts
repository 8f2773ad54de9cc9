/**
 * The node's listen interface: a link of kind `dummy` (node-cache's
 * `nodelocaldns`) holding each listen address as a /32 or /128, so the kernel
 * delivers packets for them locally. Created at startup, re-checked every
 * interval (someone may delete it, or a CNI restart may flush it), removed at
 * teardown.
 */
import { type IpFamily, canonicalIp, ipFamily, ipToBytes } from './ip-bytes.js';
import { NetlinkError, type NetlinkIo, Rtnl, type RtnlResult, openRtnetlink } from './netlink.js';
import {
  type AddrInfo,
  IFF_UP,
  IFNAME_MAX,
  type LinkInfo,
  RTM_GETADDR,
  RTM_GETLINK,
  addrRequest,
  delLinkRequest,
  dumpRequest,
  newLinkRequest,
  parseAddr,
  parseLink,
  setLinkUpRequest,
} from './rtnl-wire.js';
import { type SetupCounters, bump } from './setup-counters.js';

const EPERM = 1;
const ENOENT = 2;
const EINTR = 4;
const EACCES = 13;
const EEXIST = 17;
const ENODEV = 19;
const EOPNOTSUPP = 95;
const EADDRNOTAVAIL = 99;

export interface NodeInterfaceOptions {
  /** Link name; node-cache's `-interfacename`, default `nodelocaldns`. At most 15 bytes. */
  readonly name: string;
  /** Listen addresses to hold (IPv4 and IPv6 mixed). */
  readonly addresses: readonly string[];
  /**
   * Link kind to create. `dummy` in production; tests pass `bridge` because
   * the build machines' kernels have no dummy driver.
   */
  readonly kind?: string;
  /** Opens the netlink socket; injected so tests can open it inside a namespace or replay captures. */
  readonly open?: () => NetlinkIo;
  readonly counters: SetupCounters;
}

export interface EnsureReport {
  readonly linkIndex: number;
  /** The link was created now (false: an existing one of that name is reused). */
  readonly created: boolean;
  /** The kind of the link in use (an existing link may be of another kind). */
  readonly kind: string | null;
  readonly setUp: boolean;
  readonly addressesAdded: readonly string[];
  readonly addressesPresent: readonly string[];
}

export interface CheckReport {
  /** What was missing and put back, e.g. "link nodelocaldns", "up", "address 169.254.20.10". Empty when all was in place. */
  readonly repaired: readonly string[];
  /** Why the check or a repair failed, or null. */
  readonly error: string | null;
}

export interface TeardownReport {
  readonly removed: readonly string[];
  readonly errors: readonly string[];
}

/** A failure with a message an operator can act on; thrown only from ensure() (startup). */
export class InterfaceError extends Error {
  constructor(message: string, readonly errno: number) {
    super(message);
    this.name = 'InterfaceError';
  }
}

/** Turns a kernel errno into what to do about it. */
export function describeNetlinkError(op: string, errno: number, kernelText: string | null, kind: string): string {
  const detail = kernelText === null || kernelText === '' ? '' : ` (kernel: ${kernelText})`;
  switch (errno) {
    case EPERM: // rtnetlink's capability check (netlink_net_capable) fails with EPERM only
      return `${op}: permission denied: the agent needs CAP_NET_ADMIN${detail}`;
    case EACCES:
      // addrconf refuses an IPv6 address on a link with disable_ipv6 this way; otherwise a security module said no.
      if (op.startsWith('add address')) return `${op}: IPv6 is disabled on this link or node (net.ipv6.conf.*.disable_ipv6)${detail}`;
      return `${op}: access denied (EACCES), by a security module (SELinux, AppArmor) or the kernel${detail}`;
    case ENODEV: // the index from our last dump names no link any more; the next check (or start) creates it again
      return `${op}: the link is gone (deleted meanwhile)${detail}`;
    case EINTR: // not the kernel's word: Rtnl gave up on a dump that kept changing
      return `${op}: ${kernelText ?? 'interrupted'}`;
    case EOPNOTSUPP:
      if (op.startsWith('create link')) {
        return kind === 'dummy'
          ? `${op}: the kernel has no dummy driver (modprobe dummy, or build with CONFIG_DUMMY)${detail}`
          : `${op}: the kernel does not support links of kind ${kind}${detail}`;
      }
      return `${op}: operation not supported${detail}`;
    default:
      return `${op}: errno ${errno}${detail}`;
  }
}

interface Wanted {
  readonly text: string;
  readonly family: IpFamily;
  readonly bytes: Buffer;
}

export class NodeInterface {
  readonly name: string;
  readonly kind: string;
  readonly #wanted: readonly Wanted[];
  readonly #open: () => NetlinkIo;
  readonly #counters: SetupCounters;
  #rtnl: Rtnl | null = null;
  /** The index of the link this process created last (ensure, or a check that put it back); null when it made none. */
  #made: number | null = null;

  constructor(opts: NodeInterfaceOptions) {
    if (opts.name === '' || opts.name === '.' || opts.name === '..' || Buffer.byteLength(opts.name) > IFNAME_MAX || /[\s/:]/.test(opts.name)) {
      throw new InterfaceError(`interface name "${opts.name}": 1-${IFNAME_MAX} bytes, no space, "/" or ":", not "." or ".."`, 0);
    }
    this.name = opts.name;
    this.kind = opts.kind ?? 'dummy';
    this.#wanted = opts.addresses.map((a) => {
      const text = canonicalIp(a);
      const bytes = ipToBytes(a);
      const family = ipFamily(a);
      if (text === null || bytes === null || family === null) throw new InterfaceError(`"${a}" is not an IP address`, 0);
      return { text, family, bytes };
    });
    this.#open = opts.open ?? (() => openRtnetlink());
    this.#counters = opts.counters;
  }

  /**
   * Startup: create or reuse the link, set it up, add the addresses. Throws
   * InterfaceError with an actionable message, having removed what it made.
   */
  ensure(): EnsureReport {
    let link = this.#findLink();
    let created = false;
    if (link === null) {
      const r = this.#call(newLinkRequest(this.#seq(), this.name, this.kind));
      if (!r.ok && r.errno !== EEXIST) {
        bump(this.#counters, 'interfaceAdd');
        throw new InterfaceError(describeNetlinkError(`create link ${this.name} of kind ${this.kind}`, r.errno, r.message, this.kind), r.errno);
      }
      created = r.ok; // EEXIST: made by someone else between our dump and our request; reuse it
      link = this.#findLink();
      if (link === null) throw new InterfaceError(`link ${this.name} was created but is not listed`, ENODEV);
    }
    const setUp = (link.flags & IFF_UP) === 0;
    const added: Wanted[] = [];
    const already: string[] = [];
    try {
      if (setUp) this.#must(setLinkUpRequest(this.#seq(), link.index), `set link ${this.name} up`);
      const present = new Set(this.#addrsOn(link.index));
      for (const w of this.#wanted) {
        if (present.has(w.text)) {
          already.push(w.text);
          continue;
        }
        const r = this.#call(addrRequest(this.#seq(), 'add', link.index, w.bytes));
        if (!r.ok && r.errno !== EEXIST) throw new InterfaceError(describeNetlinkError(`add address ${w.text} to ${this.name}`, r.errno, r.message, this.kind), r.errno);
        if (r.ok) added.push(w);
        else already.push(w.text);
      }
    } catch (e) {
      // The lifecycle stops only parts that started: a half-done start must not outlive the agent.
      const undone = this.#undo(link.index, created, added);
      if (undone === null || !(e instanceof InterfaceError)) throw e;
      throw new InterfaceError(`${e.message}; undoing the start failed too: ${undone}`, e.errno);
    }
    if (created) this.#made = link.index;
    return { linkIndex: link.index, created, kind: link.kind, setUp, addressesAdded: added.map((w) => w.text), addressesPresent: already };
  }

  /**
   * Undo what ensure() made, and only that (its start failed further on): the
   * link if it created it, else the addresses it added. What it found in
   * place (another agent's link and addresses) stays. Closes the socket.
   */
  undoEnsure(r: EnsureReport): TeardownReport {
    // A check since may have created the link again (deleted meanwhile): that one is ours, under a new index.
    const created = this.#made !== null;
    const added = this.#wanted.filter((w) => r.addressesAdded.includes(w.text));
    const error = created || added.length > 0 ? this.#undo(this.#made ?? r.linkIndex, created, added) : null;
    this.close();
    const removed = error !== null ? [] : created ? [`link ${this.name}`] : added.map((w) => `address ${w.text}`);
    return { removed, errors: error === null ? [] : [error] };
  }

  /** What a failed ensure() did: the link if it made it (its addresses go with it), else the addresses it added. An error text, or null. */
  #undo(index: number, created: boolean, added: readonly Wanted[]): string | null {
    const errors: string[] = [];
    try {
      if (created) {
        const r = this.#call(delLinkRequest(this.#seq(), index));
        if (!r.ok && r.errno !== ENODEV) errors.push(describeNetlinkError(`delete link ${this.name}`, r.errno, r.message, this.kind));
      } else {
        for (const w of added) {
          const r = this.#call(addrRequest(this.#seq(), 'del', index, w.bytes));
          if (!r.ok && r.errno !== EADDRNOTAVAIL && r.errno !== ENOENT) errors.push(describeNetlinkError(`delete address ${w.text}`, r.errno, r.message, this.kind));
        }
      }
    } catch (e) {
      errors.push(e instanceof Error ? e.message : String(e)); // the socket could not be reopened
    }
    return errors.length === 0 ? null : errors.join('; ');
  }

  /** Periodic: put back whatever is missing. Never throws; a failure is counted and reported. */
  check(): CheckReport {
    const repaired: string[] = [];
    try {
      let link = this.#findLink();
      if (link === null) {
        this.#must(newLinkRequest(this.#seq(), this.name, this.kind), `create link ${this.name} of kind ${this.kind}`, EEXIST);
        repaired.push(`link ${this.name}`);
        link = this.#findLink();
        if (link === null) throw new InterfaceError(`link ${this.name} was created but is not listed`, ENODEV);
        this.#made = link.index;
      }
      if ((link.flags & IFF_UP) === 0) {
        this.#must(setLinkUpRequest(this.#seq(), link.index), `set link ${this.name} up`);
        repaired.push(`link ${this.name} up`);
      }
      const present = new Set(this.#addrsOn(link.index));
      for (const w of this.#wanted) {
        if (present.has(w.text)) continue;
        this.#must(addrRequest(this.#seq(), 'add', link.index, w.bytes), `add address ${w.text} to ${this.name}`, EEXIST);
        repaired.push(`address ${w.text}`);
      }
    } catch (e) {
      bump(this.#counters, 'interfaceCheck');
      bump(this.#counters, 'interfaceRepairs', repaired.length);
      return { repaired, error: e instanceof Error ? e.message : String(e) };
    }
    bump(this.#counters, 'interfaceRepairs', repaired.length);
    return { repaired, error: null };
  }

  /**
   * Shutdown: remove our addresses, then the link if it is of our kind (a link
   * of that name but another kind was not made by us). Closes the socket.
   */
  teardown(): TeardownReport {
    const removed: string[] = [];
    const errors: string[] = [];
    try {
      const link = this.#findLink();
      if (link !== null) {
        // Only as we add them (/32, /128): the kernel deletes an address by its prefix too, and would refuse ours
        // with EADDRNOTAVAIL for one held with another, which reads as already gone.
        const present = new Set(this.#addrsOn(link.index, true));
        for (const w of this.#wanted) {
          if (!present.has(w.text)) continue;
          const r = this.#call(addrRequest(this.#seq(), 'del', link.index, w.bytes));
          if (r.ok || r.errno === EADDRNOTAVAIL || r.errno === ENOENT) removed.push(`address ${w.text}`);
          else errors.push(describeNetlinkError(`delete address ${w.text}`, r.errno, r.message, this.kind));
        }
        if (link.kind === this.kind) {
          const r = this.#call(delLinkRequest(this.#seq(), link.index));
          if (r.ok || r.errno === ENODEV) removed.push(`link ${this.name}`);
          else errors.push(describeNetlinkError(`delete link ${this.name}`, r.errno, r.message, this.kind));
        }
      }
    } catch (e) {
      errors.push(e instanceof Error ? e.message : String(e));
    }
    this.close();
    return { removed, errors };
  }

  close(): void {
    this.#rtnl?.close();
    this.#rtnl = null;
  }

  /** Links and addresses as the kernel reports them; for checks and tests. */
  listLinks(): LinkInfo[] {
    return this.#dump(RTM_GETLINK, 'list links').map(parseLink).filter((l): l is LinkInfo => l !== null);
  }

  listAddresses(): AddrInfo[] {
    return this.#dump(RTM_GETADDR, 'list addresses').map(parseAddr).filter((a): a is AddrInfo => a !== null);
  }

  #findLink(): LinkInfo | null {
    return this.listLinks().find((l) => l.name === this.name) ?? null;
  }

  /** The addresses on link `index`; `ours`: only those of the full prefix length, as ensure() adds them. */
  #addrsOn(index: number, ours = false): string[] {
    return this.listAddresses()
      .filter((a) => a.index === index && (!ours || a.prefixLen === (a.address.includes(':') ? 128 : 32)))
      .map((a) => a.address);
  }

  #dump(type: typeof RTM_GETLINK | typeof RTM_GETADDR, what: string) {
    const r = this.#call(dumpRequest(this.#seq(), type));
    if (!r.ok) throw new InterfaceError(describeNetlinkError(what, r.errno, r.message, this.kind), r.errno);
    return r.messages;
  }

  #must(msg: Buffer, what: string, okErrno = -1): void {
    const r = this.#call(msg);
    if (!r.ok && r.errno !== okErrno) throw new InterfaceError(describeNetlinkError(what, r.errno, r.message, this.kind), r.errno);
  }

  #socket(): Rtnl {
    if (this.#rtnl === null) {
      try {
        this.#rtnl = new Rtnl(this.#open());
      } catch (e) {
        const errno = e instanceof NetlinkError ? e.errno : 0;
        throw new InterfaceError(describeNetlinkError('open netlink socket', errno, null, this.kind), errno);
      }
    }
    return this.#rtnl;
  }

  #seq(): number {
    return this.#socket().nextSeq();
  }

  #call(msg: Buffer): RtnlResult {
    const r = this.#socket().request(msg);
    // A send/recv failure leaves the socket in doubt: reopen on the next call.
    if (!r.ok && (r.message === 'send' || r.message === 'recv' || r.message?.startsWith('no reply') === true)) this.close();
    return r;
  }
}
