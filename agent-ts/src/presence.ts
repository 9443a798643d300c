/**
 * Presence: the agent's entry in the presence bucket, written at once, then at least every
 * `intervalMs` (5 s unless configured), and deleted on leave (DESIGN.md, "The bus").
 *
 * Each write is a plain publish on `$KV.<prefix>_presence.<agent id>` with no reply subject:
 * in the agents' account the presence stream acknowledges nothing (an ack would go wherever
 * the writer says, DESIGN.md, "Trust"), so the agent sees itself on the bus in its `updated`
 * announcement, not in an ack. The bucket's 15 s TTL removes the entry of an agent that stops
 * writing; the delete on leave (`KV-Operation: DEL`) removes it at once. Not a purge: that is
 * a rollup, which the stream agents' writes land in refuses (docs/trust-design.md).
 *
 * @module
 */
import { InvalidArgumentError } from "./errors.js";
import type { Logger } from "./log.js";
import { encode, MAX_PRESENCE_BYTES, presenceEntry } from "./messages.js";
import type { Bus } from "./nats.js";

/** DESIGN.md: an agent writes its presence at least every 5 s; 15 s without one is absence. */
export const PRESENCE_INTERVAL_MS = 5000;
/** A KV delete, as the NATS clients write it: watchers see DEL. */
export const LEAVE_HEADERS: Readonly<Record<string, string>> = { "KV-Operation": "DEL" };

export interface PresenceFields {
  agentId: string;
  taskId: string | null;
  endpoint: string | null;
  roles: readonly string[];
}

/**
 * Check what presence will be written, before connecting.
 * @throws InvalidArgumentError when the entry would be over 4 KiB (the bucket refuses it), or
 *   the interval is not in (0, 5000] ms.
 */
export function checkPresence(fields: PresenceFields, intervalMs: number): void {
  const size = presenceValue(fields).length;
  if (size > MAX_PRESENCE_BYTES) {
    throw new InvalidArgumentError(
      `the presence entry of agent ${fields.agentId} is ${size} bytes, over the ` +
        `${MAX_PRESENCE_BYTES} the presence bucket takes: use fewer or shorter roles`,
    );
  }
  if (!(intervalMs > 0 && intervalMs <= PRESENCE_INTERVAL_MS)) {
    throw new InvalidArgumentError(
      `presence interval ${intervalMs} ms: use more than 0 and at most ${PRESENCE_INTERVAL_MS}`,
    );
  }
}

function presenceValue(fields: PresenceFields): Uint8Array {
  const { agentId, taskId, endpoint, roles } = fields;
  return encode(presenceEntry(agentId, taskId, endpoint, roles));
}

/** Writes one agent's presence entry on a timer until `stop()`. */
export class PresenceWriter {
  private timer: NodeJS.Timeout | undefined;
  private failing = false;

  /** `fields` and `intervalMs` as `checkPresence` accepts them. */
  constructor(
    private readonly bus: Bus,
    private readonly subject: string,
    private readonly fields: PresenceFields,
    private readonly intervalMs: number,
    private readonly log: Logger,
  ) {}

  /** Write the entry now, then every `intervalMs` until `stop()`. */
  start(): void {
    this.write();
    this.schedule();
  }

  /** Write now (e.g. back from a reconnect) and restart the interval from here. */
  writeNow(): void {
    if (this.timer === undefined) return; // not started, or stopped
    this.write();
    this.schedule();
  }

  /** Stop writing. */
  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Delete the entry: a DEL on the same subject. Never throws (the TTL is the fallback). */
  remove(): void {
    try {
      this.bus.publish(this.subject, new Uint8Array(), { ...LEAVE_HEADERS });
    } catch (err) {
      this.log("warn", "agent_presence_not_deleted", {
        agent_id: this.fields.agentId,
        error: String(err),
      });
    }
  }

  private schedule(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.write();
      this.schedule();
    }, this.intervalMs);
  }

  private value(): Uint8Array {
    return presenceValue(this.fields);
  }

  private write(): void {
    try {
      this.bus.publish(this.subject, this.value());
      this.setFailing(false);
    } catch (err) {
      this.setFailing(true, String(err)); // tried again at the next tick
    }
  }

  private setFailing(failing: boolean, error = ""): void {
    if (failing === this.failing) return;
    this.failing = failing;
    const agent_id = this.fields.agentId;
    if (failing) this.log("warn", "agent_presence_failing", { agent_id, error });
    else this.log("info", "agent_presence_recovered", { agent_id });
  }
}
