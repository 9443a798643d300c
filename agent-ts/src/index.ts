/**
 * `@chorus-bridge/agent`: how an agent written in TypeScript or JavaScript joins the
 * chorus-bridge bus (presence, council opportunities, acks, claims, peers, messages, a clean
 * leave). The contract is DESIGN.md's "The bus", "Councils" and "Agents on the bus".
 *
 * @module
 */
export {
  BusAgent,
  LEAVE_TIMEOUT_MS,
  REQUEST_TIMEOUT_MS,
  ROSTER_NEXT_HEADER,
  type Reply,
} from "./agent.js";
export {
  CONNECT_TIMEOUT_MS,
  connectAgent,
  FIRST_CONNECTION_WINDOW_MS,
  type ConnectOptions,
} from "./connect.js";
export { AGENT_ID_PATTERN, checkAgentId, isAgentId } from "./agent_id.js";
export {
  AgentError,
  BadAnswerError,
  ClosedError,
  ConnectError,
  InvalidArgumentError,
  NoAnswerError,
  PermissionError,
  ReplyRefusedError,
} from "./errors.js";
export { silentLogger, stderrLogger, type Logger, type LogLevel } from "./log.js";
export {
  MAX_OPPORTUNITY_BYTES,
  MAX_PRESENCE_BYTES,
  type AgentRecord,
  type Announcement,
  type ClaimAnswer,
  type ClaimRefusal,
  type CouncilOpportunity,
  type Peer,
  type PresenceEntry,
  type Role,
} from "./messages.js";
export { DEFAULT_PREFIX, inboxPrefix, isReplyFor, Names } from "./names.js";
export type { TlsFiles } from "./nats.js";
export { PeerMessage, type Payload } from "./peer_message.js";
export { LEAVE_HEADERS, PRESENCE_INTERVAL_MS } from "./presence.js";
export type { SignalOptions } from "./signals.js";
export { QUEUE_LIMIT } from "./streams.js";
