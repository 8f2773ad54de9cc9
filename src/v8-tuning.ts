/**
 * V8 settings the agent runs with, set before any of its modules load
 * (main.ts): through v8.setFlagsFromString, so they hold however the agent
 * is started (the DaemonSet's command, the quick start), where NODE_OPTIONS
 * refuses most V8 flags.
 *
 * Allocation-site pretenuring off. V8 watches object and array literals,
 * and once a site's objects are all found alive at a young-generation
 * collection it allocates that site's objects in the old generation from
 * then on. A miss's records live about a millisecond, but the collection
 * finds those of the misses in flight alive, and in some runs a miss-path
 * site tipped over early: from then on every miss left old-generation
 * garbage. At 5,000 cluster misses/s on the batched backend (its Map
 * tables already out of the way, int-table.ts) two runs of four had a
 * mark-compact every 1.5-2 s (4-5 ms pause, incremental steps up to 12 ms
 * on the agent's one pinned CPU); with it off, none in four runs. What
 * pretenuring saves, copying long-lived bulk (a large list of the
 * Kubernetes view) through the young generation, is a one-off at sync.
 */
import v8 from 'node:v8';

export const V8_FLAGS = ['--no-allocation-site-pretenuring'] as const;

export function tuneV8(): void {
  for (const flag of V8_FLAGS) v8.setFlagsFromString(flag);
}
