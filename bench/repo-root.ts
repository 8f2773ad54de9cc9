/**
 * The repository's root (where package.json is), from bench/ under tap and
 * from dist/bench/ when built. A module of its own: targets.ts needs it, and
 * suite.ts, where it was, imports targets.ts.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(path.join(dir, 'package.json'))) return dir;
    dir = path.dirname(dir);
  }
  return process.cwd();
}
