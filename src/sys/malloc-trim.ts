/**
 * glibc's malloc_trim and mallinfo2, through koffi. glibc gives freed memory
 * back to the kernel only from the top of a heap; what is freed below a
 * live chunk stays resident until malloc_trim releases its whole pages
 * (madvise). A cache that grew, churned and settled leaves ~10 MB of such
 * holes at 100,000 names (bench/agent-memory.ts: 90 MiB at rest without,
 * 79 MiB with). musl has neither call: the caller gets a reason and does
 * without.
 */
import { koffi as loadKoffi } from './koffi.js';

/** What mallinfo2 reports, summed over every arena, in bytes. */
export interface MallocStats {
  /** Bytes of chunks in use. */
  readonly inUse: number;
  /** Bytes of free chunks the heaps hold (resident where they were ever touched). */
  readonly free: number;
  /** Of `free`, what sits at the top of the main heap (glibc trims that itself). */
  readonly top: number;
}

export interface MallocTrim {
  stats(): MallocStats;
  /**
   * malloc_trim(0) on a libuv thread-pool thread, so this thread never waits
   * for the walk (1-40 ms measured with a 100,000-entry cache). `done` gets
   * whether memory was released, or the error.
   */
  trimAsync(done: (err: Error | null, released: boolean) => void): void;
}

interface Mallinfo2 {
  readonly uordblks: number | bigint;
  readonly fordblks: number | bigint;
  readonly keepcost: number | bigint;
}

type AsyncFn = { async(pad: number, cb: (err: unknown, r: number) => void): void };

let loading: Promise<MallocTrim | string> | null = null;

/** The binding, or why it is unavailable (no koffi, not glibc, glibc before 2.33). Loaded once. */
export function loadMallocTrim(): Promise<MallocTrim | string> {
  loading ??= load();
  return loading;
}

async function load(): Promise<MallocTrim | string> {
  try {
    const koffi = loadKoffi();
    const libc = koffi.load('libc.so.6');
    const size = 'size_t';
    koffi.struct('nodelocal_mallinfo2', {
      arena: size, ordblks: size, smblks: size, hblks: size, hblkhd: size, usmblks: size, fsmblks: size, uordblks: size, fordblks: size, keepcost: size,
    });
    const mallinfo2 = libc.func('nodelocal_mallinfo2 mallinfo2()') as () => Mallinfo2;
    const trim = libc.func('int malloc_trim(size_t pad)') as unknown as AsyncFn;
    return {
      stats() {
        const m = mallinfo2();
        return { inUse: Number(m.uordblks), free: Number(m.fordblks), top: Number(m.keepcost) };
      },
      trimAsync(done) {
        trim.async(0, (err, r) => done(err === null || err === undefined ? null : err instanceof Error ? err : new Error(String(err)), r === 1));
      },
    };
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}
