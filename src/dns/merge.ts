/**
 * Joining a CNAME answer with the answer for its target, as a resolver does
 * when it follows an ExternalName service's CNAME out of the cluster zone.
 * A full decode and encode with dns-packet: this runs once per fallback
 * answer, which the cache then serves, never per hit.
 */
import dnsPacket from 'dns-packet';
import { FLAG_AA, FLAG_QR, FLAG_RA, FLAG_RD, HEADER_LEN, MAX_MESSAGE, RCODE_MASK, Rcode } from './constants.js';

/**
 * `cname`: our answer for the question, ending in a CNAME. `target`: an
 * upstream answer for the CNAME's target. Returns the question with the
 * CNAME chain followed by the target's records, the target's rcode and
 * authority; null when either does not decode, the join would not fit a
 * DNS message, or the target's rcode says nothing of the target (only
 * NOERROR and NXDOMAIN do: a FORMERR is about our query to its server, and
 * joined the client would read it as about its own). An OPT with an extended
 * RCODE (RFC 6891 6.1.3: BADVERS is 0 in the header) makes the header's bits
 * no rcode at all: no join, as scanAnswer makes such an answer malformed.
 */
export function appendTargetAnswer(cname: Buffer, target: Buffer): Buffer | null {
  try {
    const head = dnsPacket.decode(cname);
    const tail = dnsPacket.decode(target);
    const rcode = target.length >= HEADER_LEN ? target[3]! & RCODE_MASK : Rcode.SERVFAIL;
    if (rcode !== Rcode.NOERROR && rcode !== Rcode.NXDOMAIN) return null;
    if ((tail.additionals ?? []).some((rr) => rr.type === 'OPT' && (rr as { extendedRcode?: number }).extendedRcode !== 0)) return null;
    const body = dnsPacket.encode({
      type: 'response',
      id: 0,
      flags: FLAG_AA | FLAG_RD | FLAG_RA | rcode,
      questions: head.questions ?? [],
      answers: [...(head.answers ?? []), ...(tail.answers ?? [])],
      authorities: tail.authorities ?? [],
      additionals: [],
    });
    // Too big for any transport: the CNAME alone is still a true answer.
    if (body.length > MAX_MESSAGE) return null;
    body.writeUInt16BE(FLAG_QR | FLAG_AA | FLAG_RD | FLAG_RA | rcode, 2);
    return body;
  } catch {
    return null;
  }
}
