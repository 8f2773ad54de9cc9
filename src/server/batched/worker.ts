/**
 * Entry of a batched UDP worker thread: binds libc, builds the loop from
 * what the main thread sent (its sockets, shared words and counters, cache
 * settings) and runs it until told to close. A failure before the loop runs
 * is reported, so start() rejects with the reason instead of hanging; one
 * inside the loop ends the thread with an error, and the main thread takes
 * the worker's sockets out of the group and starts a new one.
 */
import { workerData, type MessagePort } from 'node:worker_threads';
import { loadUdpBatch } from '../../sys/udp-batch.js';
import { useScratchAnswers } from '../../dns/answer-buffer.js';
import { WorkerLoop } from './loop.js';
import type { WorkerInit, WorkerReport } from './protocol.js';

const { init, port } = workerData as { init: WorkerInit; port: MessagePort };
const sys = await loadUdpBatch();
if (typeof sys === 'string') {
  port.postMessage({ misses: null, logs: null, failed: sys } satisfies WorkerReport);
} else {
  sys.nameThread(`udp-worker-${init.index}`);
  // Every answer made here is copied into a send vector before the next is made: no Buffer per answer (answer-buffer.ts).
  useScratchAnswers();
  let loop: WorkerLoop | null = null;
  try {
    loop = new WorkerLoop(sys, port, init);
  } catch (err) {
    port.postMessage({ misses: null, logs: null, failed: err instanceof Error ? err.message : String(err) } satisfies WorkerReport);
  }
  // Outside the try: an error in the running loop must end the thread (the main thread restarts it), not look like a start failure.
  try {
    loop?.run();
  } finally {
    // Its native block (~360 KB and ~90 KB a socket) would outlive the thread: every restart after an exception leaked one.
    // A thread ended by terminate() runs no finally: the main thread frees the block after 'exit' (protocol.ts holdBlock).
    loop?.dispose();
  }
}
