/**
 * Watches the files a configuration comes from (the --config file, the
 * kube-dns ConfigMap directory's files, resolv.conf) and says when any of
 * them changed (and read the same on the next poll: not half written).
 * Polling their contents every second on the clock's shared sweep, rather
 * than fs.watch: a Kubernetes ConfigMap volume updates by
 * swapping a symlinked directory, which inotify reports unevenly across
 * kernels and overlay filesystems, while reading three small files a second
 * costs nothing.
 */
import { readFileSync } from 'node:fs';
import type { Clock } from './clock.js';

export const CONFIG_POLL_MS = 1000;

/** What a file held when it was read: its text, null when it could not be read, undefined when it was not read. */
export type Baseline = (path: string) => string | null | undefined;

export class ConfigWatcher {
  #paths: readonly string[];
  readonly #read: (path: string) => string | null;
  readonly #onChange: () => void;
  readonly #seen: Map<string, string | null>;
  /** What the last poll read, while it differed from #seen: a change is taken once a poll reads the same again. */
  #settling: Map<string, string | null> | null;
  readonly #stop: () => void;
  #last: number;

  /**
   * `baseline`: what the configuration in force was read from (SourceReads),
   * so a change made after that read, while the agent started, is one.
   */
  constructor(clock: Clock, paths: readonly string[], onChange: () => void, read: (path: string) => string | null = readOrNull, baseline: Baseline = () => undefined) {
    this.#paths = [];
    this.#read = read;
    this.#onChange = onChange;
    this.#seen = new Map();
    this.#settling = null;
    this.watch(paths, baseline);
    this.#last = clock.now();
    this.#stop = clock.sweep((now) => {
      if (now - this.#last < CONFIG_POLL_MS) return;
      this.#last = now;
      this.#poll();
    });
  }

  /**
   * The files of the configuration now in force (a reload may have moved
   * resolv.conf, the ConfigMap directory or the CA file), compared from here
   * against what it was read from; a file it did not read keeps what the
   * watcher last saw of it, a new one is read now.
   */
  watch(paths: readonly string[], baseline: Baseline): void {
    const seen = new Map<string, string | null>();
    for (const p of paths) {
      const b = baseline(p);
      seen.set(p, b !== undefined ? b : this.#seen.has(p) ? this.#seen.get(p)! : this.#read(p));
    }
    this.#paths = paths;
    this.#settling = null;
    this.#seen.clear();
    for (const [p, text] of seen) this.#seen.set(p, text);
  }

  stop(): void {
    this.#stop();
  }

  /**
   * A change is reported once two polls a second apart read every file the
   * same: a file edited in place is empty (truncated) or half written for a
   * moment, and an empty config file is a valid one (every default).
   */
  #poll(): void {
    const now = new Map(this.#paths.map((p) => [p, this.#read(p)]));
    const before = this.#settling;
    if (this.#paths.every((p) => now.get(p) === this.#seen.get(p))) {
      this.#settling = null;
      return;
    }
    this.#settling = now;
    if (before === null || this.#paths.some((p) => now.get(p) !== before.get(p))) return;
    this.#settling = null;
    for (const [p, text] of now) this.#seen.set(p, text);
    this.#onChange();
  }
}

/**
 * A readFile for loadConfig and the agent that remembers what each file held
 * (null: unreadable) since forget(): the watcher's baseline after a start or a
 * reload is then exactly what that configuration was made from.
 */
export class SourceReads {
  readonly #texts = new Map<string, string | null>();

  readonly read = (path: string): string => {
    try {
      const text = readFileSync(path, 'utf8');
      this.#texts.set(path, text);
      return text;
    } catch (err) {
      this.#texts.set(path, null);
      throw err;
    }
  };

  readonly last: Baseline = (path) => this.#texts.get(path);

  forget(): void {
    this.#texts.clear();
  }
}

function readOrNull(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}
