/**
 * The one agent-id rule, the one the bridge enforces on presence keys (bridge/presence.py):
 * an agent id is a presence key and one subject token at once (its acks, claims and
 * messages name it), so no `.`, `*`, `>`, space or other character.
 *
 * @module
 */
import { InvalidArgumentError } from "./errors.js";

/** `[A-Za-z0-9_-]{1,256}`; a Swarm task ID (`{{.Task.ID}}`) fits. */
export const AGENT_ID_PATTERN = /^[A-Za-z0-9_-]{1,256}$/;

/** True when `value` is a valid agent id. */
export function isAgentId(value: string): boolean {
  return AGENT_ID_PATTERN.test(value);
}

/**
 * `value` if it is a valid agent id.
 * @param what names the value in the error ("agent id", "recipient").
 * @throws InvalidArgumentError otherwise.
 */
export function checkAgentId(value: string, what = "agent id"): string {
  if (typeof value !== "string" || !isAgentId(value)) {
    throw new InvalidArgumentError(
      `${what} ${JSON.stringify(value)}: use 1 to 256 letters, digits, '-' or '_' ` +
        "(a Swarm task ID is fine)",
    );
  }
  return value;
}
