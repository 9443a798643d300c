/**
 * Connecting an agent: options, the connection, the first presence write, and the relay of
 * the connection's events to the log and the agent.
 *
 * @module
 */
import { BusAgent, REQUEST_TIMEOUT_MS } from "./agent.js";
import { checkAgentId } from "./agent_id.js";
import { InvalidArgumentError } from "./errors.js";
import { stderrLogger, type Logger } from "./log.js";
import { DEFAULT_PREFIX, inboxPrefix, Names } from "./names.js";
import { Bus, type TlsFiles } from "./nats.js";
import { checkPresence, PRESENCE_INTERVAL_MS, PresenceWriter } from "./presence.js";

/** Milliseconds to connect, and for a round trip to the server, unless configured. */
export const CONNECT_TIMEOUT_MS = 5000;
/** How long the first connection is tried (as the Python library's FIRST_CONNECTION_WINDOW). */
export const FIRST_CONNECTION_WINDOW_MS = 60_000;

export interface ConnectOptions {
  /** NATS URL(s): an array, or comma-separated (`nats://nats:4222`, `tls://...`). */
  servers: string | readonly string[];
  /** This agent's id, `[A-Za-z0-9_-]{1,256}`; a Swarm agent's is its task ID. */
  agentId: string;
  user?: string | undefined;
  password?: string | undefined;
  token?: string | undefined;
  /** TLS to NATS: `caFile` is the CA that signed the server's certificate (NATS_TLS_CA). */
  tls?: TlsFiles | undefined;
  /** First token of every subject (BRIDGE_SUBJECT_PREFIX); the bucket is `<prefix>_presence`. */
  prefix?: string | undefined;
  /** Written into the presence entry for operators; the bridge matches by `agentId` only. */
  taskId?: string | null | undefined;
  endpoint?: string | null | undefined;
  roles?: readonly string[] | undefined;
  /** Milliseconds between presence writes: at most 5000 (the default). */
  presenceIntervalMs?: number | undefined;
  /** Milliseconds to connect and for a round trip to the server (default 5000). */
  connectTimeoutMs?: number | undefined;
  /**
   * Milliseconds the first connection is tried before ConnectError (default 60000): with the
   * auth callout, an agent is refused until a discovery round lists its task.
   */
  firstConnectionWindowMs?: number | undefined;
  /** Milliseconds a claim, the roster or a peer's answer is waited for (default 5000). */
  requestTimeoutMs?: number | undefined;
  /** Where state changes are said: one JSON line each on stderr unless given. */
  logger?: Logger | undefined;
}

/**
 * Connect to NATS as `agentId` (inbox prefix `_INBOX.<agent id>`) and put the agent on the
 * bus: its presence entry is written and reached the server, and it receives opportunities
 * and messages from then on. Reconnects forever once connected.
 * @throws InvalidArgumentError (a bad agent id, prefix, interval, or presence over 4 KiB),
 *   ConnectError (NATS unreachable, credentials or TLS refused), PermissionError (the server
 *   refused the agent's presence key), NoAnswerError (the server did not answer a round trip).
 */
export async function connectAgent(options: ConnectOptions): Promise<BusAgent> {
  const agentId = checkAgentId(options.agentId);
  const names = new Names(options.prefix ?? DEFAULT_PREFIX);
  const log = options.logger ?? stderrLogger;
  const servers = splitServers(options.servers);
  const fields = {
    agentId,
    taskId: options.taskId ?? null,
    endpoint: options.endpoint ?? null,
    roles: options.roles ?? [],
  };
  const intervalMs = options.presenceIntervalMs ?? PRESENCE_INTERVAL_MS;
  checkPresence(fields, intervalMs); // before anything touches the network
  const bus = await Bus.connect({
    servers,
    // The agent id: where agents share an address, the callout admits a connection as the
    // agent its name names (and only as one of them).
    name: agentId,
    inboxPrefix: inboxPrefix(agentId),
    user: options.user,
    password: options.password,
    token: options.token,
    tls: options.tls,
    timeoutMs: options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS,
    firstConnectionWindowMs: options.firstConnectionWindowMs ?? FIRST_CONNECTION_WINDOW_MS,
    // One line per distinct reason while the first connection is tried (as the Python library).
    onFirstConnectionError: (error) =>
      log("warn", "agent_nats_error", { agent_id: agentId, error }),
  });
  const presence = new PresenceWriter(bus, names.presence(agentId), fields, intervalMs, log);
  const agent = new BusAgent(bus, names, agentId, presence, log, {
    requestTimeoutMs: options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
  });
  try {
    await agent.join();
  } catch (err) {
    await agent.abandon();
    throw err;
  }
  return agent;
}

function splitServers(servers: string | readonly string[]): string[] {
  const list = (typeof servers === "string" ? servers.split(",") : [...servers])
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (list.length === 0) throw new InvalidArgumentError("no NATS server given (servers)");
  return list;
}
