/**
 * A deadline on one API request: a silent peer on a live connection (a
 * proxy, a wedged API server) answers TCP keepalive, so nothing else would
 * ever end the wait. Past it the request is aborted, which releases its socket.
 */
import type { Timers } from './list-watch-options.js';

/** What within() gives when the deadline came first. */
export const TIMED_OUT: unique symbol = Symbol('timed out');

export function within<R>(p: Promise<R>, timers: Timers, ms: number, abort: AbortController | null): Promise<R | typeof TIMED_OUT> {
  return new Promise((resolve, reject) => {
    const timer = timers.set(() => {
      resolve(TIMED_OUT);
      abort?.abort();
    }, ms);
    p.then(
      (v) => {
        timers.clear(timer);
        resolve(v);
      },
      (e: unknown) => {
        timers.clear(timer);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
