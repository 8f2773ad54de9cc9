/**
 * `npm run bench -- [options]`: parse options, run the benchmark, print the
 * table, exit with a meaningful code. Progress goes to stderr, the table and
 * file paths to stdout. Ctrl-C stops the current run, stops everything that
 * was started and still writes (partial) results; a second Ctrl-C kills at once.
 */
import { pathToFileURL } from 'node:url';
import { EXIT_INTERRUPTED, handleInterrupts, killAll } from './interrupt.js';
import { UsageError, helpText, parseOptions, type BenchOptions } from './options.js';
import { terminalExtras, terminalTable } from './report.js';
import { live, runBench } from './suite.js';

export { EXIT_INTERRUPTED };
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_WRONG_ANSWERS = 3;

export async function main(argv: readonly string[]): Promise<number> {
  let opts: BenchOptions;
  try {
    opts = parseOptions(argv);
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n`);
    return EXIT_USAGE;
  }
  if (opts.help) {
    process.stdout.write(helpText());
    return EXIT_OK;
  }
  const interrupts = handleInterrupts('bench', live);
  try {
    const out = await runBench(opts, { log: (l) => process.stderr.write(l + '\n'), signal: interrupts.signal, argv });
    process.stdout.write('\n' + terminalTable(out.results) + '\n\n');
    const extras = terminalExtras(out.results);
    if (extras !== '') process.stdout.write(extras + '\n\n');
    const warnings = out.results.warnings;
    if (warnings.length > 0) {
      process.stdout.write(`warnings (${warnings.length}):\n`);
      for (const w of warnings.slice(0, 20)) process.stdout.write(`  - ${w}\n`);
      if (warnings.length > 20) process.stdout.write(`  ... ${warnings.length - 20} more in results.md\n`);
      process.stdout.write('\n');
    }
    const r = out.reports;
    process.stdout.write(`results:  ${r.json}\n          ${r.markdown}\n          ${r.plot}\n`);
    if (r.publishedSummary !== null) process.stdout.write(`summary:  ${r.publishedSummary}\n`);
    if (out.exitCode === EXIT_WRONG_ANSWERS) process.stderr.write('bench: some answers were wrong (see the warnings); exit code 3\n');
    return out.exitCode;
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`bench: ${err.message}\n`);
      return EXIT_USAGE;
    }
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
    return EXIT_FAILURE;
  } finally {
    interrupts.dispose();
  }
}

const entry = process.argv[1];
if (entry !== undefined && import.meta.url === pathToFileURL(entry).href) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
    // Everything started has been stopped; if a handle still lingers, do not hang.
    setTimeout(() => process.exit(code), 3000).unref();
  }, (err: unknown) => {
    process.stderr.write(`bench: ${String(err)}\n`);
    killAll(live);
    process.exit(EXIT_FAILURE);
  });
}
