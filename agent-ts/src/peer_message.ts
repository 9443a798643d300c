/**
 * A message from a peer, received on `<prefix>.agents.<self>.messages.<sender>` (DESIGN.md,
 * "Agents on the bus"). The sender is the subject's last token, which the NATS server
 * enforces in the callout mode; what the message says about its sender counts for nothing.
 *
 * @module
 */
import { ReplyRefusedError } from "./errors.js";
import { isReplyFor } from "./names.js";
import { parseJson } from "./messages.js";

/** What may be sent: text (sent as UTF-8) or bytes. */
export type Payload = string | Uint8Array;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** `payload` as bytes. */
export function toBytes(payload: Payload): Uint8Array {
  return typeof payload === "string" ? encoder.encode(payload) : payload;
}

/** A message another agent sent to this one. */
export class PeerMessage {
  constructor(
    /** The sending agent's id, from the subject. */
    readonly sender: string,
    /** This agent's id (the recipient). */
    readonly recipient: string,
    /** The subject it arrived on. */
    readonly subject: string,
    /** Its bytes. */
    readonly data: Uint8Array,
    /** Where the sender asks for an answer (a request), or undefined (a publish). */
    readonly replyTo: string | undefined,
    private readonly respond: (reply: string, data: Uint8Array) => void,
  ) {}

  /** The data as text (invalid UTF-8 becomes U+FFFD). */
  string(): string {
    return decoder.decode(this.data);
  }

  /** The data as JSON, or undefined when it is not UTF-8 JSON. */
  json(): unknown {
    return parseJson(this.data);
  }

  /**
   * Answer a request, on the sender's own inbox only (`_INBOX.<sender>.<self>.…`): a reply subject
   * anywhere else could make this agent publish on a subject the asker chose for it.
   * @throws ReplyRefusedError (not a request, or not the sender's inbox; nothing is sent),
   *   InvalidArgumentError (over the server's max payload), ClosedError.
   */
  reply(payload: Payload): void {
    if (this.replyTo === undefined) {
      throw new ReplyRefusedError(
        `the message from ${this.sender} on ${this.subject} is no request: nothing to answer`,
      );
    }
    if (!isReplyFor(this.replyTo, this.sender, this.recipient)) {
      throw new ReplyRefusedError(
        `the message from ${this.sender} asks for an answer on ${this.replyTo}, which is not ` +
          `its inbox (_INBOX.${this.sender}.${this.recipient}.…): not answered`,
      );
    }
    this.respond(this.replyTo, toBytes(payload));
  }
}
