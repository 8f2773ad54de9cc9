/**
 * Parent side of the simulator process (sim/serve.ts): fork it, wait for
 * both servers, ask for counters, stop it. The child exits by itself if this
 * process dies (its IPC channel closes).
 */
import { fork, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Endpoint } from '../loadgen.js';
import type { ApiCounters, ClusterState, ParentMessage, SimConfig, SimCounters, SimMessage } from './serve.js';

export type { ApiCounters, ClusterState, SimConfig, SimCounters } from './serve.js';

const READY_TIMEOUT_MS = 20000;
const STATS_TIMEOUT_MS = 5000;
const STOP_TIMEOUT_MS = 3000;

export interface SimTotals {
  readonly cluster: SimCounters;
  readonly external: SimCounters;
  /** The fake API server's counters, when it runs. */
  readonly api: ApiCounters | null;
}

/** The answer to a cluster state change: the counters right before it, or why it failed. */
export interface ClusterChange {
  readonly totals: SimTotals | null;
  readonly error: string | null;
}

export class SimProcess {
  readonly cluster: Endpoint;
  readonly external: Endpoint;
  /** The fake Kubernetes API server (http://127.0.0.1:PORT), or null when not asked for. */
  readonly apiUrl: string | null;
  readonly #child: ChildProcess;
  #seq = 0;
  readonly #waiting = new Map<number, (t: SimTotals | null, error: string | null) => void>();
  #exited = false;

  private constructor(child: ChildProcess, cluster: Endpoint, external: Endpoint, apiUrl: string | null) {
    this.#child = child;
    this.cluster = cluster;
    this.external = external;
    this.apiUrl = apiUrl;
    child.on('message', (m: SimMessage) => {
      if (m.type !== 'stats' && m.type !== 'cluster') return;
      const w = this.#waiting.get(m.seq);
      this.#waiting.delete(m.seq);
      w?.({ cluster: m.cluster, external: m.external, api: m.api }, m.type === 'cluster' ? m.error : null);
    });
    child.on('exit', () => {
      this.#exited = true;
      for (const w of this.#waiting.values()) w(null, 'the simulator exited');
      this.#waiting.clear();
    });
  }

  get pid(): number {
    return this.#child.pid ?? 0;
  }

  get alive(): boolean {
    return !this.#exited;
  }

  static async start(cfg: SimConfig): Promise<SimProcess> {
    // serve.js next to this file in dist/, serve.ts when run from source (tests).
    const self = fileURLToPath(import.meta.url);
    const script = path.join(path.dirname(self), 'serve' + path.extname(self));
    const child = fork(script, [JSON.stringify(cfg)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json' });
    return new Promise<SimProcess>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`simulator did not start within ${READY_TIMEOUT_MS} ms`));
      }, READY_TIMEOUT_MS);
      const onExit = (code: number | null): void => {
        clearTimeout(timer);
        reject(new Error(`simulator exited during startup (code ${code})`));
      };
      child.once('exit', onExit);
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.on('message', (m: SimMessage) => {
        if (m.type === 'error') {
          clearTimeout(timer);
          child.off('exit', onExit);
          child.kill('SIGKILL');
          reject(new Error(`simulator failed to start: ${m.message}`));
        } else if (m.type === 'ready') {
          clearTimeout(timer);
          child.off('exit', onExit);
          resolve(new SimProcess(child, m.cluster, m.external, m.apiUrl));
        }
      });
    });
  }

  /** Cumulative query counters of both servers (null if the simulator is gone). */
  async stats(): Promise<SimTotals | null> {
    return (await this.#ask((seq) => ({ type: 'stats', seq }))).totals;
  }

  /**
   * Takes the fake kube-dns up, stops it (a dead kube-dns: connections
   * refused) or black-holes it (listening, answering nothing). Resolves once
   * done, with the counters right before the change.
   */
  setCluster(state: ClusterState): Promise<ClusterChange> {
    return this.#ask((seq) => ({ type: 'cluster', seq, state }));
  }

  #ask(msg: (seq: number) => ParentMessage): Promise<ClusterChange> {
    if (this.#exited) return Promise.resolve({ totals: null, error: 'the simulator is not running' });
    const seq = ++this.#seq;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(seq);
        resolve({ totals: null, error: `no answer from the simulator within ${STATS_TIMEOUT_MS} ms` });
      }, STATS_TIMEOUT_MS);
      this.#waiting.set(seq, (totals, error) => {
        clearTimeout(timer);
        resolve({ totals, error });
      });
      this.#child.send(msg(seq));
    });
  }

  async stop(): Promise<void> {
    if (this.#exited) return;
    const exited = new Promise<void>((resolve) => this.#child.once('exit', () => resolve()));
    try {
      const msg: ParentMessage = { type: 'stop' };
      this.#child.send(msg);
    } catch {
      this.#child.kill('SIGTERM');
    }
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  }

  /** Synchronous last resort (process 'exit' handler). */
  killNow(): void {
    if (!this.#exited) this.#child.kill('SIGKILL');
  }
}
