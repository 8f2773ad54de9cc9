/**
 * The environment the DaemonSet gives the agent: the literal `value:` entries
 * of its container's env in daemonset.yaml (MALLOC_ARENA_MAX, NODE_OPTIONS),
 * so that what the bench measures is the process as deployed (its young
 * generation, its malloc arenas). AS_DEPLOYED=0 in the bench's environment
 * leaves them out.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { repoRoot } from './repo-root.js';

export function deployedEnv(): Record<string, string> {
  if (process.env['AS_DEPLOYED'] === '0') return {};
  const doc = parseYaml(readFileSync(path.join(repoRoot(), 'daemonset.yaml'), 'utf8').split(/^---$/m).find((d) => /kind:\s*DaemonSet/.test(d)) ?? '') as {
    spec?: { template?: { spec?: { containers?: { env?: { name: string; value?: string }[] }[] } } };
  };
  const out: Record<string, string> = {};
  for (const e of doc.spec?.template?.spec?.containers?.[0]?.env ?? []) if (typeof e.value === 'string') out[e.name] = e.value;
  return out;
}
