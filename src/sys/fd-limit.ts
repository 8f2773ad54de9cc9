/**
 * The process's open-file limit (RLIMIT_NOFILE, soft), as /proc/self/limits
 * gives it. Node raises the soft limit to the hard one at start, so this is
 * what the agent may hold: past it accept() fails with EMFILE, and libuv then
 * accepts and closes every queued connection with a spare descriptor it keeps
 * for that, with nothing reported to us (the client sees its connection
 * closed at once). Read once per listener start, never per connection.
 */
import { readFileSync } from 'node:fs';

/** The soft limit; -1 when unlimited or unreadable (no /proc). */
export function openFileLimit(path = '/proc/self/limits'): number {
  try {
    const line = readFileSync(path, 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
    const soft = line?.slice('Max open files'.length).trim().split(/\s+/)[0];
    const n = soft === undefined ? NaN : Number(soft);
    return Number.isSafeInteger(n) && n > 0 ? n : -1;
  } catch {
    return -1;
  }
}
