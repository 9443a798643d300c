/**
 * Every subject and bucket name an agent uses, derived from the subject prefix in one place
 * (DESIGN.md, "The bus", "Councils", "Agents on the bus"; bridge/subjects.py).
 *
 * @module
 */
import { InvalidArgumentError } from "./errors.js";

/** The subject prefix of a deployment unless configured (BRIDGE_SUBJECT_PREFIX). */
export const DEFAULT_PREFIX = "chorus";

// One subject token that can also start a bucket name (`<prefix>_presence`).
const PREFIX_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
// An opportunity id, as the bridge accepts it (DESIGN.md): one subject token.
export const OPPORTUNITY_ID_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;

/**
 * The names of one deployment. With the default prefix `chorus`:
 * `chorus.council.opportunities`, `chorus.council.<opp>.acks.<agent>`,
 * `chorus.council.<opp>.claims.<agent>`, `chorus.bridge.agents`, `chorus.agents.announce`,
 * `chorus.agents.<recipient>.messages.<sender>`, and the bucket `chorus_presence`.
 * Ids are checked by the caller (`agent_id.ts`); `*` gives a wildcard subject.
 */
export class Names {
  readonly prefix: string;

  /** @throws InvalidArgumentError when `prefix` is not one subject token. */
  constructor(prefix: string = DEFAULT_PREFIX) {
    if (!PREFIX_PATTERN.test(prefix)) {
      throw new InvalidArgumentError(
        `subject prefix ${JSON.stringify(prefix)}: use 1 to 64 letters, digits, '-' or '_'`,
      );
    }
    this.prefix = prefix;
  }

  get presenceBucket(): string {
    return `${this.prefix}_presence`;
  }

  /** The subject of the presence key `agentId`: `$KV.<prefix>_presence.<agent id>`. */
  presence(agentId: string): string {
    return `$KV.${this.presenceBucket}.${agentId}`;
  }

  get opportunities(): string {
    return `${this.prefix}.council.opportunities`;
  }

  acks(opportunityId: string, agentId: string): string {
    return `${this.prefix}.council.${opportunityId}.acks.${agentId}`;
  }

  claims(opportunityId: string, agentId: string): string {
    return `${this.prefix}.council.${opportunityId}.claims.${agentId}`;
  }

  get roster(): string {
    return `${this.prefix}.bridge.agents`;
  }

  get announce(): string {
    return `${this.prefix}.agents.announce`;
  }

  /** `<prefix>.agents.<recipient>.messages.<sender>`. */
  message(recipient: string, sender: string): string {
    return `${this.prefix}.agents.${recipient}.messages.${sender}`;
  }

  /** The sender a message subject to `recipient` names (its last token), or null. */
  senderOf(subject: string, recipient: string): string | null {
    const head = `${this.prefix}.agents.${recipient}.messages.`;
    const sender = subject.startsWith(head) ? subject.slice(head.length) : "";
    return sender !== "" && !sender.includes(".") ? sender : null;
  }
}

/** The inbox prefix of an agent: `_INBOX.<agent id>` (the callout lets only it read there). */
export function inboxPrefix(agentId: string): string {
  return `_INBOX.${agentId}`;
}

// One token of a reply subject: not empty, no wildcard, no whitespace.
const TOKEN = /^[^.*>\s]+$/;

/**
 * True when `reply` is `sender`'s inbox for an answer from `recipient`:
 * `_INBOX.<sender>.<recipient>.<token>…`. With the auth callout `recipient` may publish only
 * `_INBOX.*.<recipient>.>`, so an answer carries its sender as a message does; an agent
 * answers nowhere else (docs/trust-design.md).
 */
export function isReplyFor(reply: string, sender: string, recipient: string): boolean {
  const head = `${inboxPrefix(sender)}.${recipient}.`;
  if (!reply.startsWith(head)) return false;
  const rest = reply.slice(head.length);
  return rest !== "" && rest.split(".").every((token) => TOKEN.test(token));
}
