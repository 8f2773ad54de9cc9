/**
 * What one list or watch of the reflector (list-watch.ts) came to, which
 * decides how its loop goes on: watch next, watch again, list again, or
 * back off first (for at least as long as the server asked).
 */
import { statusMessage } from './api-body.js';

export type Outcome =
  | { readonly kind: 'listed' }
  /** The server ended the watch (timeoutSeconds): watch again from the kept RV. */
  | { readonly kind: 'ended' }
  /** 410 Gone: the RV (or continue token) is older than the server's history; list again. */
  | { readonly kind: 'expired'; readonly reason: string }
  /** `retryAfterMs`: the least wait the server asked for. */
  | { readonly kind: 'failed'; readonly error: string; readonly retryAfterMs?: number | undefined };

export const LISTED: Outcome = { kind: 'listed' };

/** A watch line that is no event (blank, or of a type we do not know): it changes nothing, and a watch of only such lines is very short. */
export const NO_EVENT: unique symbol = Symbol('no event');
export const ENDED: Outcome = { kind: 'ended' };

export function failed(error: string, retryAfterMs?: number): Outcome {
  return { kind: 'failed', error, retryAfterMs };
}

/**
 * An HTTP error with the wait it asked for: client-go honours Retry-After on
 * 429 and 5xx, what kube-apiserver (priority and fairness, a watch cache not
 * ready) and the load balancers before it send when shedding load.
 */
export function httpFailure(what: string, r: { readonly status: number; readonly retryAfterMs?: number }, text: string): Outcome {
  const asksWait = r.status === 429 || r.status >= 500;
  return failed(`${what}: HTTP ${r.status}: ${statusMessage(text)}`, asksWait ? r.retryAfterMs : undefined);
}
