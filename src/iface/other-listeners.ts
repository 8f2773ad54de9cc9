/**
 * Whether another process serves one of our addresses: a TCP listener on it
 * in this network namespace that is not a socket of ours. In an upgrade by
 * surge that is the new agent, bound beside us with SO_REUSEPORT; the link
 * and rules are then its, and our teardown leaves them.
 *
 * Counting only the others gives the same answer before and after our own
 * listeners close, so the interception part (stopped before the listeners)
 * and the interface part (stopped after them) agree.
 */
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { isIP } from 'node:net';
import { procAddress } from '../sys/reuseport.js';
import type { ServerAddress } from '../upstream/types.js';

export interface ProcReader {
  readFile(path: string): string;
  /** Socket inodes this process holds open (every thread: the fd table is shared). */
  ownSockets(): ReadonlySet<string>;
}

const SOCKET_LINK = /^socket:\[(\d+)\]$/;

export const procReader: ProcReader = {
  readFile: (p) => readFileSync(p, 'utf8'),
  ownSockets: () => {
    const inodes = new Set<string>();
    for (const fd of readdirSync('/proc/self/fd')) {
      let target: string;
      try {
        target = readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        continue; // closed between the listing and the read
      }
      const m = SOCKET_LINK.exec(target);
      if (m !== null) inodes.add(m[1]!);
    }
    return inodes;
  },
};

/** TCP_LISTEN as /proc/net/tcp prints it. */
const PROC_LISTEN = '0A';

/** TCP listeners on `addr` held by other processes; 0 when /proc cannot be read. */
export function otherListenersOn(addr: ServerAddress, proc: ProcReader = procReader): number {
  const six = isIP(addr.host.split('%')[0] ?? '') === 6;
  let table: string;
  let own: ReadonlySet<string>;
  try {
    table = proc.readFile(six ? '/proc/net/tcp6' : '/proc/net/tcp');
    own = proc.ownSockets();
  } catch {
    return 0;
  }
  const local = procAddress(addr);
  let n = 0;
  for (const line of table.split('\n')) {
    // "  0: 0100007F:0035 00000000:0000 0A tx:rx tr:when retrnsmt uid timeout inode ..."
    const cols = line.trim().split(/\s+/);
    if (cols[1] === local && cols[3] === PROC_LISTEN && cols[9] !== undefined && !own.has(cols[9])) n++;
  }
  return n;
}
