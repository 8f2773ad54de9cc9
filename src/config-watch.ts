/**
 * Watches the files a configuration comes from (the --config file, the
 * kube-dns ConfigMap directory's files, resolv.conf) and says when any of
 * them changed. Polling their contents every second on the clock's shared
 * sweep, rather than fs.watch: a Kubernetes ConfigMap volume updates by
 * swapping a symlinked directory, which inotify reports unevenly across
 * kernels and overlay filesystems, while reading three small files a second
 * costs nothing.
 */
import { readFileSync } from 'node:fs';
import type { Clock } from './clock.js';

export const CONFIG_POLL_MS = 1000;

export class ConfigWatcher {
  readonly #paths: readonly string[];
  readonly #read: (path: string) => string | null;
  readonly #onChange: () => void;
  readonly #seen: Map<string, string | null>;
  readonly #stop: () => void;
  #last: number;

  constructor(clock: Clock, paths: readonly string[], onChange: () => void, read: (path: string) => string | null = readOrNull) {
    this.#paths = paths;
    this.#read = read;
    this.#onChange = onChange;
    this.#seen = new Map(paths.map((p) => [p, read(p)]));
    this.#last = clock.now();
    this.#stop = clock.sweep((now) => {
      if (now - this.#last < CONFIG_POLL_MS) return;
      this.#last = now;
      this.#poll();
    });
  }

  stop(): void {
    this.#stop();
  }

  #poll(): void {
    let changed = false;
    for (const p of this.#paths) {
      const text = this.#read(p);
      if (text !== this.#seen.get(p)) {
        this.#seen.set(p, text);
        changed = true;
      }
    }
    if (changed) this.#onChange();
  }
}

function readOrNull(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}
