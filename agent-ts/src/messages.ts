/**
 * Every message an agent sends or receives, in one place (DESIGN.md, "The bus", "Councils",
 * "Agents on the bus"; the Python side's bridge/models.py). The schemas are the only importer
 * of zod. Like the Python models, decoding tolerates change: unknown fields are ignored and
 * missing optional fields get their defaults, so older and newer peers interoperate.
 *
 * @module
 */
import { z } from "zod";

import { OPPORTUNITY_ID_PATTERN } from "./names.js";

/** A presence value is at most this many bytes: the presence bucket's max value size. */
export const MAX_PRESENCE_BYTES = 4096;
/** The bridge refuses larger opportunities (DESIGN.md); larger ones are not opportunities. */
export const MAX_OPPORTUNITY_BYTES = 64 * 1024;

const PresenceEntrySchema = z.object({
  agent_id: z.string(),
  task_id: z.string().nullable().default(null),
  endpoint: z.string().nullable().default(null),
  roles: z.array(z.string()).default([]),
  at: z.string().default(""),
});
/** What an agent keeps under its id in the presence bucket. */
export type PresenceEntry = z.infer<typeof PresenceEntrySchema>;

const RoleSchema = z.object({ name: z.string().min(1), core: z.boolean().default(false) });
/** One role of a council. */
export type Role = z.infer<typeof RoleSchema>;

const OpportunitySchema = z.object({
  id: z.string().regex(OPPORTUNITY_ID_PATTERN),
  roles: z.array(RoleSchema).min(1),
  project: z.string().default(""),
  title: z.string().default(""),
  deadline: z.string().nullable().default(null),
  details: z.record(z.string(), z.unknown()).default({}),
});
/** A council offered to every agent, as published on `<prefix>.council.opportunities`. */
export type CouncilOpportunity = z.infer<typeof OpportunitySchema>;

/** Why the bridge refused a claim (DESIGN.md, "Councils"); a newer bridge may add reasons. */
export type ClaimRefusal =
  | "taken"
  | "expired"
  | "unknown opportunity"
  | "unknown role"
  | "holds another role"
  | "not an agent"
  | (string & {});

// `holder` names the holding agent; a Holder record ({"agent_id", ...}) is read as its agent.
const HolderSchema = z.union([
  z.string(),
  z.object({ agent_id: z.string() }).transform((holder) => holder.agent_id),
]);
const ClaimAnswerSchema = z.discriminatedUnion("granted", [
  z.object({ granted: z.literal(true), role: z.string(), holder: HolderSchema }),
  z.object({
    granted: z.literal(false),
    role: z.string(),
    reason: z.string(),
    holder: HolderSchema.nullable().default(null),
  }),
]);
/**
 * The bridge's answer to a claim: granted (`holder` is this agent), or refused with the
 * reason and the role's holder (an agent id, or null when the role has none).
 */
export type ClaimAnswer =
  | { granted: true; role: string; holder: string }
  | { granted: false; role: string; reason: ClaimRefusal; holder: string | null };

const PeerSchema = z.object({
  id: z.string(),
  on_bus: z.boolean(),
  healthy: z.boolean().nullable().default(null),
  source: z.string().nullable().default(null),
  roles: z.array(z.string()).default([]),
});
/** One agent of the roster, as `<prefix>.bridge.agents` answers it: no endpoint or address. */
export type Peer = z.infer<typeof PeerSchema>;
const RosterSchema = z.array(PeerSchema);

const AgentRecordSchema = z.object({
  id: z.string(),
  endpoint: z.string(),
  address: z.string(),
  port: z.number().int(),
  source: z.enum(["swarm", "dns", "static"]),
  service: z.string().nullable().default(null),
  network: z.string().nullable().default(null),
  task_id: z.string().nullable().default(null),
  slot: z.number().int().nullable().default(null),
  node_id: z.string().nullable().default(null),
  container_id: z.string().nullable().default(null),
  healthy: z.boolean().nullable().default(null),
  on_bus: z.boolean().default(false),
  first_seen: z.string().default(""),
});
/** One agent of the agents bucket, as announcements carry it. */
export type AgentRecord = z.infer<typeof AgentRecordSchema>;

const AnnouncementSchema = z.object({
  event: z.enum(["joined", "updated", "left"]),
  agent: AgentRecordSchema,
  at: z.string(),
});
/** A change of the fleet, on `<prefix>.agents.announce` (for `left`, the last record). */
export type Announcement = z.infer<typeof AnnouncementSchema>;

// A service error of a NATS micro endpoint, or the bridge's refusal: {"error", "field"}.
const ErrorReplySchema = z.object({ error: z.string(), field: z.string().nullable().optional() });

const utf8 = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

/** JSON bytes of a message. */
export function encode(message: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(message));
}

/** Parsed JSON of `data`, or undefined when it is not UTF-8 JSON (or is nested too deeply). */
export function parseJson(data: Uint8Array): unknown {
  try {
    return JSON.parse(utf8.decode(data)) as unknown;
  } catch {
    return undefined; // SyntaxError, TypeError (not UTF-8), RangeError (nested too deeply)
  }
}

/** A schema's decoder of bytes anyone may have written: the message, or null. */
function decoder<T>(schema: z.ZodType<T>, maxBytes = Infinity): (data: Uint8Array) => T | null {
  return (data) => {
    if (data.length > maxBytes) return null;
    const parsed = schema.safeParse(parseJson(data));
    return parsed.success ? parsed.data : null;
  };
}

export const decodePresence = decoder(PresenceEntrySchema, MAX_PRESENCE_BYTES);
export const decodeOpportunity = decoder(OpportunitySchema, MAX_OPPORTUNITY_BYTES);
export const decodeClaimAnswer: (data: Uint8Array) => ClaimAnswer | null =
  decoder(ClaimAnswerSchema);
export const decodeRoster = decoder(RosterSchema);
export const decodeAnnouncement = decoder(AnnouncementSchema);
export const decodeErrorReply = decoder(ErrorReplySchema);

/** The presence value of an agent, with the current time as `at` (RFC 3339 UTC). */
export function presenceEntry(
  agentId: string,
  taskId: string | null,
  endpoint: string | null,
  roles: readonly string[],
): PresenceEntry {
  return { agent_id: agentId, task_id: taskId, endpoint, roles: [...roles], at: nowRfc3339() };
}

/** The current time as RFC 3339 UTC, e.g. `2026-11-27T00:37:18.123Z`. */
export function nowRfc3339(): string {
  return new Date().toISOString();
}
