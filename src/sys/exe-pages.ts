/**
 * The `node` binary's own pages in our address space, and a way to let go
 * of the ones we no longer use. Starting the agent touches about 40 MiB of
 * the binary (V8's and Node's bootstrap, the module loader, the compiler's
 * rarely used paths, ICU data): file-backed pages that count in RSS for good,
 * though a running agent uses a few MiB of them. They are page cache the
 * kernel may reclaim, but RSS is what operators and their limits read.
 *
 * What is dropped: only the binary's mappings that are read-only and hold
 * no private copy of any page (smaps `Anonymous: 0 kB`), so every resident
 * page there is the file's own bytes. MADV_COLD first (Linux 5.4+: the pages
 * go to the inactive list, where reclaim looks first and the cgroup's
 * working set no longer counts them), then MADV_DONTNEED: they leave our
 * page tables, stay in the page cache, and a page touched again comes back
 * as a minor fault from there (no disk read). A relocated (RELRO) or written
 * page holds a private copy: its mapping is left alone, since DONTNEED would
 * throw that copy away.
 */
import { readFile } from 'node:fs/promises';
import { readlinkSync } from 'node:fs';
import { koffi as loadKoffi } from './koffi.js';

/** One mapping of the binary whose resident pages may be dropped. */
export interface ExeRange {
  readonly start: bigint;
  readonly bytes: number;
  /** Its resident bytes when smaps was read. */
  readonly resident: number;
}

const MAPPING = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+ *(.*)$/;
const FIELD = /^(Rss|Anonymous|Locked):\s+(\d+) kB$/;

/**
 * The mappings of `exe` in `smaps` (the text of /proc/PID/smaps) that are
 * safe to drop: not writable, no private (anonymous) page, none locked.
 * A mapping whose fields are missing counts as unsafe.
 */
export function droppableRanges(smaps: string, exe: string): ExeRange[] {
  const out: ExeRange[] = [];
  let cur: { start: bigint; bytes: number; mine: boolean; rss: number; anon: number; locked: number } | null = null;
  const finish = (): void => {
    if (cur !== null && cur.mine && cur.anon === 0 && cur.locked === 0 && cur.rss > 0) out.push({ start: cur.start, bytes: cur.bytes, resident: cur.rss * 1024 });
  };
  for (const line of smaps.split('\n')) {
    const m = MAPPING.exec(line);
    if (m !== null) {
      finish();
      const start = BigInt(`0x${m[1]!}`);
      const end = BigInt(`0x${m[2]!}`);
      const perms = m[3]!;
      cur = { start, bytes: Number(end - start), mine: m[4] === exe && perms[0] === 'r' && perms[1] === '-', rss: -1, anon: -1, locked: -1 };
      continue;
    }
    if (cur === null || !cur.mine) continue;
    const f = FIELD.exec(line);
    if (f === null) continue;
    const kb = Number(f[2]);
    if (f[1] === 'Rss') cur.rss = kb;
    else if (f[1] === 'Anonymous') cur.anon = kb;
    else cur.locked = kb;
  }
  finish();
  return out;
}

export interface ExePages {
  /** The droppable mappings now, read off this thread (smaps walks the page tables: 2-4 ms). */
  read(done: (err: Error | null, ranges: readonly ExeRange[]) => void): void;
  /** COLD then DONTNEED on each range, on the thread pool (a few ms for 40 MiB). `done`: how many ranges failed. */
  drop(ranges: readonly ExeRange[], done: (failed: number) => void): void;
}

type MadviseAsync = { async(addr: bigint, len: number, advice: number, cb: (err: unknown, r: number) => void): void };

const MADV_DONTNEED = 4;
const MADV_COLD = 20;

let loading: Promise<ExePages | string> | null = null;

/** The binding, or why it is unavailable (no koffi, no glibc, no /proc). Loaded once. */
export function loadExePages(): Promise<ExePages | string> {
  loading ??= load();
  return loading;
}

async function load(): Promise<ExePages | string> {
  try {
    const exe = readlinkSync('/proc/self/exe');
    const koffi = loadKoffi();
    const madvise = koffi.load('libc.so.6').func('int madvise(uintptr_t addr, size_t len, int advice)') as unknown as MadviseAsync;
    const advise = (r: ExeRange, advice: number): Promise<number> =>
      new Promise((resolve) => madvise.async(r.start, r.bytes, advice, (err, rc) => resolve(err === null || err === undefined ? rc : -1)));
    return {
      read(done) {
        readFile('/proc/self/smaps', 'utf8').then(
          (text) => done(null, droppableRanges(text, exe)),
          (err: unknown) => done(err instanceof Error ? err : new Error(String(err)), []),
        );
      },
      drop(ranges, done) {
        void (async () => {
          let failed = 0;
          for (const r of ranges) {
            // COLD is only advice (EINVAL before Linux 5.4): DONTNEED alone decides.
            await advise(r, MADV_COLD);
            if ((await advise(r, MADV_DONTNEED)) !== 0) failed++;
          }
          done(failed);
        })();
      },
    };
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}
