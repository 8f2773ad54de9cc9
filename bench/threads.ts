/**
 * The threads of a process, from /proc (Linux): their names, CPU times,
 * scheduler waits and affinity, and pinning one thread with taskset. For
 * the isolation bench, which must put the batched worker thread on a CPU of
 * its own and show how busy the main thread was.
 *
 * The batched workers name themselves `udp-worker-<i>` (prctl PR_SET_NAME in
 * src/server/batched/worker.ts); every other thread of the agent is `node`
 * or one of V8's and libuv's.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { clockTicks } from './proc-stats.js';

export const WORKER_THREAD_PREFIX = 'udp-worker-';

export interface ThreadInfo {
  readonly tid: number;
  /** /proc/PID/task/TID/comm: at most 15 characters. */
  readonly name: string;
}

/** Every thread of `pid` alive now (empty once it is gone). */
export function threadsOf(pid: number): ThreadInfo[] {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  const out: ThreadInfo[] = [];
  for (const t of tids) {
    try {
      out.push({ tid: Number(t), name: readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim() });
    } catch {
      /* exited between readdir and read */
    }
  }
  return out.sort((a, b) => a.tid - b.tid);
}

/** The batched worker threads of `pid`, by index (udp-worker-0 first). */
export function workerThreads(pid: number): ThreadInfo[] {
  const index = (t: ThreadInfo): number => Number(t.name.slice(WORKER_THREAD_PREFIX.length));
  return threadsOf(pid)
    .filter((t) => t.name.startsWith(WORKER_THREAD_PREFIX))
    .sort((a, b) => index(a) - index(b));
}

/**
 * Waits (bounded) until `pid` has `count` worker threads, and returns them;
 * throws naming the threads it saw if they never appear: a bench that cannot
 * find the worker cannot pin it, and must not report figures as if it had.
 */
export async function findWorkerThreads(pid: number, count: number, timeoutMs: number): Promise<ThreadInfo[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = workerThreads(pid);
    if (found.length >= count) return found.slice(0, count);
    if (Date.now() >= deadline) {
      const seen = threadsOf(pid).map((t) => `${t.tid}:${t.name}`).join(' ');
      throw new Error(`process ${pid}: ${found.length} of ${count} threads named ${WORKER_THREAD_PREFIX}<i> after ${timeoutMs} ms (threads: ${seen || 'none, process gone'})`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface ThreadStat {
  /** User and system CPU time so far, seconds. */
  readonly utime: number;
  readonly stime: number;
  /** From schedstat: time spent running, and runnable but waiting for a CPU, seconds. */
  readonly run: number;
  readonly wait: number;
  /** Times the kernel took the CPU away from the thread while it wanted it. */
  readonly preempted: number;
  /** CPU it last ran on. */
  readonly lastCpu: number;
  /** Cpus_allowed_list, e.g. "1" or "0-1". */
  readonly cpus: string;
}

/** One thread's counters now, or null if it is gone. */
export function threadStat(pid: number, tid: number): ThreadStat | null {
  const dir = `/proc/${pid}/task/${tid}`;
  try {
    const stat = readFileSync(`${dir}/stat`, 'utf8');
    // After the ')' closing the name: field 3 (state) is rest[0]; utime 14, stime 15, processor 39.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const status = readFileSync(`${dir}/status`, 'utf8');
    const sched = readFileSync(`${dir}/schedstat`, 'utf8').trim().split(' ');
    const hz = clockTicks();
    return {
      utime: Number(rest[11]) / hz,
      stime: Number(rest[12]) / hz,
      run: Number(sched[0]) / 1e9,
      wait: Number(sched[1]) / 1e9,
      preempted: Number(/^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1] ?? NaN),
      lastCpu: Number(rest[36]),
      cpus: /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1] ?? '?',
    };
  } catch {
    return null;
  }
}

/** What a thread did between two readings, as shares of `wallS` (1 = one whole CPU). */
export interface ThreadUse {
  readonly user: number;
  readonly system: number;
  /** Running or runnable: 1 means the thread never slept, i.e. it had more work than CPU. */
  readonly busy: number;
  readonly preempted: number;
  readonly cpus: string;
  readonly lastCpu: number;
}

export function threadUse(before: ThreadStat, after: ThreadStat, wallS: number): ThreadUse {
  const w = Math.max(1e-9, wallS);
  return {
    user: (after.utime - before.utime) / w,
    system: (after.stime - before.stime) / w,
    busy: (after.run - before.run + after.wait - before.wait) / w,
    preempted: after.preempted - before.preempted,
    cpus: after.cpus,
    lastCpu: after.lastCpu,
  };
}

/** Pins one thread (taskset without -a). Throws with taskset's message on failure. */
export function pinThread(tid: number, cpus: string): void {
  execFileSync('taskset', ['-p', '-c', cpus, String(tid)], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 5000 });
}

/** Sum of utime+stime (seconds) over the threads of `pid` selected by `pick`, alive now. */
export function cpuOfThreads(pid: number, pick: (t: ThreadInfo) => boolean): number {
  let s = 0;
  for (const t of threadsOf(pid)) {
    if (!pick(t)) continue;
    const st = threadStat(pid, t.tid);
    if (st !== null) s += st.utime + st.stime;
  }
  return s;
}
