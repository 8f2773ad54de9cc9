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
    // An abort (stop()) ends the wait too: a request may look at its signal only late (KubeApi.get after an exec plugin).
    const onAbort = (): void => {
      timers.clear(timer);
      resolve(TIMED_OUT);
    };
    const timer = timers.set(() => {
      resolve(TIMED_OUT);
      abort?.abort();
    }, ms);
    abort?.signal.addEventListener('abort', onAbort, { once: true });
    const settled = (): void => {
      timers.clear(timer);
      abort?.signal.removeEventListener('abort', onAbort);
    };
    p.then(
      (v) => {
        settled();
        resolve(v);
      },
      (e: unknown) => {
        settled();
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
