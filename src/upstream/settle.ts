/** The last step of every exchange, shared by the transports. */
import type { Logger } from '../log.js';
import type { UpstreamExchange, UpstreamFailure } from './types.js';

/**
 * Calls the exchange's callback. Callers guard exactly-once with their own
 * `done` flag; this only makes sure a throwing caller cannot unwind into a
 * socket handler or the sweep timer.
 */
export function settle(ex: UpstreamExchange, answer: Buffer | null, reason: UpstreamFailure, log: Logger): void {
  try {
    if (answer !== null) ex.resolve(answer);
    else ex.reject(reason);
  } catch (err) {
    log.error('upstream exchange callback threw', { error: err instanceof Error ? err.message : String(err) });
  }
}
