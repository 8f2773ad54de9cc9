/**
 * koffi, without its installer. The package's entry (index.js) bundles its
 * build tools and loads node:crypto, https, tls and zlib at its top for
 * them: 1.2-1.5 MiB in every thread that imports it, each batched worker
 * among them, for code that never runs there. The native addon it wraps is
 * the whole API we call (the entry adds only deprecated aliases); it is
 * loaded directly when it sits where the package publishes it for this
 * platform (x64 or arm64 Linux, glibc or musl) and is of the package's own
 * version, else through the package's entry as before.
 */
import { createRequire } from 'node:module';
import type koffiModule from 'koffi';

export type Koffi = typeof koffiModule;

const requireHere = createRequire(import.meta.url);
let loaded: Koffi | null = null;

/** The koffi API, loaded once per thread (throws where koffi cannot load at all, as importing the package does). */
export function koffi(): Koffi {
  loaded ??= direct() ?? (requireHere('koffi') as Koffi);
  return loaded;
}

/** The native addon itself, or null where it is not published as expected here. */
function direct(): Koffi | null {
  if (process.platform !== 'linux' || (process.arch !== 'x64' && process.arch !== 'arm64')) return null;
  let version: unknown;
  try {
    version = (requireHere('koffi/package.json') as { version?: unknown }).version;
  } catch {
    return null;
  }
  for (const libc of ['linux', 'musl']) {
    try {
      const native = requireHere(`koffi/build/koffi/${libc}_${process.arch}/koffi.node`) as Koffi & { version?: unknown };
      // A stale addon beside a newer entry: the entry refuses that too.
      if (native.version === version) return native;
    } catch {
      // This libc's build does not load here (musl on glibc, or absent): the next, then the entry.
    }
  }
  return null;
}
