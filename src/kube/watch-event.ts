/**
 * One line of a watch response, decoded into what the reflector
 * (list-watch.ts) does with it. Kept apart from the loop, which counts,
 * writes and decides how the watch goes on; here nothing is changed.
 */
import { asObject, messageOf, type Json } from './api-body.js';
import { objectKey, resourceVersionOf } from './convert.js';

export type WatchEvent<T> =
  | { readonly kind: 'upsert'; readonly obj: T; readonly rv: string }
  /**
   * DELETED, or an ADDED/MODIFIED object we cannot read (`unreadable`): that
   * object exists, and better no records for it than its stale ones.
   */
  | { readonly kind: 'remove'; readonly namespace: string; readonly name: string; readonly unreadable: boolean; readonly rv: string }
  | { readonly kind: 'bookmark'; readonly rv: string }
  | { readonly kind: 'error'; readonly code: unknown; readonly text: string }
  /**
   * Neither applicable nor safe to read past: a line cut short or corrupted,
   * or an event that names no object. Skipping it would let later events
   * advance the RV beyond an event never applied.
   */
  | { readonly kind: 'undecodable'; readonly what: string }
  /** A type this version does not know: it changes nothing we keep. */
  | { readonly kind: 'unknown'; readonly type: string };

function parse(line: string): Json | null {
  try {
    return asObject(JSON.parse(line));
  } catch {
    return null;
  }
}

/** A non-blank line of a watch stream. */
export function decodeWatchLine<T>(line: string, convert: (raw: unknown) => T | null): WatchEvent<T> {
  const ev = parse(line);
  if (ev === null) return { kind: 'undecodable', what: 'not a JSON object' };
  const type = ev['type'];
  const object = ev['object'];
  switch (type) {
    case 'ADDED':
    case 'MODIFIED':
    case 'DELETED': {
      const slim = type === 'DELETED' ? null : convert(object);
      if (slim !== null) return { kind: 'upsert', obj: slim, rv: resourceVersionOf(object) };
      const key = objectKey(object);
      if (key === null) return { kind: 'undecodable', what: `${type} of an object without a name` };
      return { kind: 'remove', ...key, unreadable: type !== 'DELETED', rv: resourceVersionOf(object) };
    }
    case 'BOOKMARK':
      return { kind: 'bookmark', rv: resourceVersionOf(object) };
    case 'ERROR': {
      const status = asObject(object);
      // A Status code is a number (an HTTP status); anything else is cut as the message is, for the log line.
      const code = status?.['code'];
      const codeText = typeof code === 'number' ? String(code) : String(code).slice(0, 32);
      return { kind: 'error', code, text: `${codeText} ${String(messageOf(status) ?? undefined)}` };
    }
    default:
      return { kind: 'unknown', type: String(type) };
  }
}
