#!/usr/bin/env node
/**
 * Entry point: the stop and reload signals' handlers first (stop-signals.ts),
 * then the agent's modules (agent-main.ts runs it). Imported statically, their
 * graph took about 250 ms to load before any handler existed: a SIGTERM then
 * met the default action, and as PID 1 in its container (Dockerfile
 * ENTRYPOINT node ...) the kernel drops such a signal, so the agent started
 * and served, and the pod's deletion ended in a SIGKILL that left the link
 * and the rules on the node. This module imports nothing else statically but
 * the V8 settings (v8-tuning.ts), which import only node:v8.
 */
import { StopSignals, type HeldSignal } from './stop-signals.js';
import { tuneV8 } from './v8-tuning.js';

// Before the agent's modules load: every allocation site of theirs is made under these flags.
tuneV8();

// Until agent-main.ts says otherwise, nothing has started: a stop is held (the agent then does not start), a second one exits.
let whileStarting = (signal: HeldSignal, repeated: boolean): void => {
  if (signal !== 'SIGHUP' && repeated) process.exit(1);
};
const signals = new StopSignals(process, (signal, repeated) => whileStarting(signal, repeated));

import('./agent-main.js')
  .then(({ main }) => main(process.argv.slice(2), signals, (fn) => {
    whileStarting = fn;
  }))
  .then(
    (code) => {
      process.exitCode = code;
      // Everything is closed by now; if some handle still holds the loop, do not hang the pod's termination on it.
      setTimeout(() => process.exit(code), 1000).unref();
    },
    (err: unknown) => {
      process.stderr.write(`nodelocal-dns: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exitCode = 1;
    },
  );
