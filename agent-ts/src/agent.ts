/**
 * An agent on the bus (DESIGN.md, "The bus", "Councils", "Agents on the bus"): presence,
 * council opportunities, acks, claims with the council's answer, peers and their changes,
 * messages between agents, and a clean leave.
 *
 * @module
 */
import { checkAgentId, isAgentId } from "./agent_id.js";
import { BadAnswerError, ClosedError, InvalidArgumentError, NoAnswerError } from "./errors.js";
import type { Logger } from "./log.js";
import {
  decodeAnnouncement,
  decodeClaimAnswer,
  decodeErrorReply,
  decodeOpportunity,
  decodeRoster,
  encode,
  parseJson,
  type Announcement,
  type ClaimAnswer,
  type CouncilOpportunity,
  type Peer,
} from "./messages.js";
import { inboxPrefix, type Names, OPPORTUNITY_ID_PATTERN } from "./names.js";
import type { Bus, BusMessage } from "./nats.js";
import { PeerMessage, toBytes, type Payload } from "./peer_message.js";
import type { PresenceWriter } from "./presence.js";
import { installSignalHandlers, type SignalOptions } from "./signals.js";
import { openStream, type Stream, type StreamSpec } from "./streams.js";

/** Milliseconds a claim, the roster or a peer's answer is waited for, unless configured. */
export const REQUEST_TIMEOUT_MS = 5000;
/** Milliseconds the leave may take to send what is pending before the connection closes. */
export const LEAVE_TIMEOUT_MS = 5000;
/** The header of a roster page that is not the last: the id to ask `after` next. */
export const ROSTER_NEXT_HEADER = "Chorus-Roster-Next";
// Pages of the roster asked for at most (10,000 agents are 2): a bridge that keeps answering
// "more" is not followed for good.
const MAX_ROSTER_PAGES = 1000;

/** An answer to a request, from whoever answered on this agent's inbox. */
export interface Reply {
  data: Uint8Array;
  string(): string;
  json(): unknown;
}

/** One agent on the bus; made by `connectAgent`. */
export class BusAgent {
  /** This agent's id. */
  readonly id: string;
  /** The subjects and bucket of the deployment. */
  readonly names: Names;
  private readonly opportunityStream: Stream<CouncilOpportunity>;
  private readonly messageStream: Stream<PeerMessage>;
  private readonly streams = new Set<Stream<object>>();
  private readonly requestTimeoutMs: number;
  private leaving: Promise<void> | undefined;
  private readonly left: Promise<void>;

  /** @internal use `connectAgent`. */
  constructor(
    private readonly bus: Bus,
    names: Names,
    agentId: string,
    private readonly presence: PresenceWriter,
    private readonly log: Logger,
    options: { requestTimeoutMs: number },
  ) {
    this.id = agentId;
    this.names = names;
    this.requestTimeoutMs = options.requestTimeoutMs;
    // Subscribed before the presence write: on the bus means receiving.
    this.opportunityStream = this.open({
      subject: names.opportunities,
      decode: (msg) => decodeOpportunity(msg.data),
      name: "opportunities",
      stopOnReturn: false,
    });
    this.messageStream = this.open({
      subject: names.message(agentId, "*"),
      decode: (msg) => this.peerMessage(msg),
      name: "messages",
      stopOnReturn: false,
    });
    // Ends when the connection closes, by a leave or by itself.
    this.left = this.follow();
  }

  /**
   * @internal the first presence write (then refreshed until the leave), confirmed with the
   * subscriptions: the server has them all, and refused none.
   */
  async join(): Promise<void> {
    this.presence.start();
    const { names, id } = this;
    await this.bus.confirm([names.presence(id), names.opportunities, names.message(id, "*")]);
    this.log("info", "agent_joined_bus", {
      agent_id: this.id,
      bucket: this.names.presenceBucket,
      server: this.bus.server,
    });
  }

  /**
   * Council opportunities as they arrive, until the agent leaves; one reader at a time.
   * What is not a valid opportunity (DESIGN.md: id `[A-Za-z0-9_-]{1,128}`, roles not empty,
   * role names not empty, at most 64 KiB) is skipped. A reader that leaves its loop can
   * read on later; at most 1024 wait for it (then the oldest go).
   */
  opportunities(): AsyncIterable<CouncilOpportunity> {
    return this.opportunityStream;
  }

  /**
   * Tell the bridge this agent received the opportunity: `{"agent_id", "opportunity_id"}` on
   * `<prefix>.council.<opportunity id>.acks.<agent id>`. Ack within BRIDGE_BUS_ACK_WAIT (1 s
   * by default), or the opportunity is also sent by HTTP.
   * @throws InvalidArgumentError (not an opportunity id), ClosedError.
   */
  async ack(opportunityId: string): Promise<void> {
    checkOpportunityId(opportunityId);
    const body = encode({ agent_id: this.id, opportunity_id: opportunityId });
    this.bus.publish(this.names.acks(opportunityId, this.id), body);
  }

  /**
   * Claim `role` of the opportunity's council, as this agent, and return the bridge's answer:
   * `{granted: true, role, holder}` or `{granted: false, role, reason, holder}` (DESIGN.md,
   * "Councils"). The request `{"role", "agent_id"}` goes on
   * `<prefix>.council.<opportunity id>.claims.<agent id>`; the answer comes on this agent's
   * own inbox.
   * @throws NoAnswerError (no bridge answered within `timeoutMs`), BadAnswerError (the answer
   *   is no claim answer, or the bridge's error), InvalidArgumentError, PermissionError,
   *   ClosedError.
   */
  async claim(
    opportunityId: string,
    role: string,
    options: { timeoutMs?: number } = {},
  ): Promise<ClaimAnswer> {
    checkOpportunityId(opportunityId);
    if (typeof role !== "string" || role === "") {
      throw new InvalidArgumentError(`role ${JSON.stringify(role)}: a role name is not empty`);
    }
    const what = `the claim of role ${JSON.stringify(role)} of opportunity ${opportunityId}`;
    const answer = await this.askBridge(
      this.names.claims(opportunityId, this.id),
      encode({ role, agent_id: this.id }),
      what,
      options.timeoutMs,
    );
    return expectAnswer(decodeClaimAnswer(answer.data), answer, what);
  }

  /**
   * The roster, from the bridge (`<prefix>.bridge.agents`): every agent it knows, with
   * `{id, on_bus, healthy, source, roles}` (no endpoints or addresses), sorted by id. A large
   * fleet's roster comes in pages (`{"after": "<id>"}` asked until an answer has no
   * `Chorus-Roster-Next` header): all of them are read.
   * @throws NoAnswerError, BadAnswerError, PermissionError, ClosedError (as `claim`).
   */
  async peers(options: { timeoutMs?: number } = {}): Promise<Peer[]> {
    const peers: Peer[] = [];
    let after: string | undefined;
    for (let pages = 0; pages < MAX_ROSTER_PAGES; pages++) {
      const body = after === undefined ? new Uint8Array() : encode({ after });
      const answer = await this.askBridge(
        this.names.roster,
        body,
        "the roster request",
        options.timeoutMs,
      );
      peers.push(...expectAnswer(decodeRoster(answer.data), answer, "the roster request"));
      after = answer.header(ROSTER_NEXT_HEADER);
      if (after === undefined || after === "") return peers;
    }
    throw new BadAnswerError(`the roster did not end within ${MAX_ROSTER_PAGES} pages`);
  }

  /**
   * Joins, updates and leaves of the fleet as they happen (`<prefix>.agents.announce`),
   * from now until the loop ends (`break` stops the subscription) or the agent leaves.
   * For who is there now, ask `peers()`.
   * @throws ClosedError.
   */
  announcements(): AsyncIterable<Announcement> & { stop(): void } {
    return this.open({
      subject: this.names.announce,
      decode: (msg) => decodeAnnouncement(msg.data),
      name: "announcements",
      stopOnReturn: true,
    });
  }

  /**
   * Send `payload` to the agent `recipient`, on `<prefix>.agents.<recipient>.messages.<self>`.
   * @throws InvalidArgumentError (a bad recipient id, over the server's max payload),
   *   ClosedError.
   */
  async send(recipient: string, payload: Payload): Promise<void> {
    checkAgentId(recipient, "recipient");
    this.bus.publish(this.names.message(recipient, this.id), toBytes(payload));
  }

  /**
   * Send `payload` to `recipient` as a request and return its answer, which comes on this
   * agent's own inbox, `_INBOX.<self>.<recipient>.<token>`: with the auth callout only that
   * peer may publish there.
   * @throws NoAnswerError (the recipient does not listen, or did not answer in time), and as
   *   `send`.
   */
  async request(
    recipient: string,
    payload: Payload,
    options: { timeoutMs?: number } = {},
  ): Promise<Reply> {
    checkAgentId(recipient, "recipient");
    const subject = this.names.message(recipient, this.id);
    const answer = await this.bus.request(
      subject,
      toBytes(payload),
      options.timeoutMs ?? this.requestTimeoutMs,
      `${inboxPrefix(this.id)}.${recipient}`,
    );
    const data = answer.data;
    return { data, string: () => new TextDecoder().decode(data), json: () => parseJson(data) };
  }

  /**
   * Messages from peers, until the agent leaves; one reader at a time. The sender is the
   * subject's last token; `message.reply()` answers a request on the sender's inbox only.
   * A reader that leaves its loop can read on later; at most 1024 wait for it.
   */
  messages(): AsyncIterable<PeerMessage> {
    return this.messageStream;
  }

  /**
   * Write the presence entry now and make sure the server has it (it is also written every
   * `presenceIntervalMs`). @throws NoAnswerError, ClosedError.
   */
  async writePresence(): Promise<void> {
    this.presence.writeNow();
    await this.flush();
  }

  /**
   * A round trip to the server: what this agent sent before has reached it, and its
   * subscriptions made before are in place. @throws NoAnswerError, ClosedError.
   */
  async flush(): Promise<void> {
    if (this.bus.isClosed) throw new ClosedError("the agent has left the bus");
    await this.bus.flush();
  }

  /**
   * Leave the bus: stop writing presence, delete the entry (a KV delete on the same subject,
   * so the bridge sees the agent go at once), drain and close the connection (bounded: 5 s).
   * The `opportunities()`, `messages()` and `announcements()` loops end. Never throws; a
   * second call waits for the first.
   */
  close(): Promise<void> {
    this.leaving ??= this.leave();
    return this.leaving;
  }

  /** Resolves once the agent has left (`close()`, a signal, or the connection closed). */
  async closed(): Promise<void> {
    await this.left;
    await this.leaving;
  }

  /**
   * Leave cleanly on SIGTERM and SIGINT (no stack trace), then exit with status 0 unless
   * `{exit: false}`. Returns a function that removes the handlers.
   */
  leaveOnSignals(options: SignalOptions = {}): () => void {
    return installSignalHandlers(() => this.close(), this.log, this.id, options);
  }

  /** Log the connection's events; write presence at once when it is back; end with it. */
  private async follow(): Promise<void> {
    const agent_id = this.id;
    for await (const event of this.bus.events()) {
      switch (event.type) {
        case "reconnected":
          this.presence.writeNow(); // not at the next tick
          this.log("info", "agent_reconnected", { agent_id, server: event.server });
          break;
        case "disconnected":
          this.log("warn", "agent_disconnected", { agent_id, server: event.server });
          break;
        case "refused": {
          const { operation, subject, message: error } = event;
          this.log("warn", "agent_permission_refused", { agent_id, operation, subject, error });
          break;
        }
        case "error":
          this.log("warn", "agent_nats_error", { agent_id, error: event.message });
      }
    }
    await this.bus.closed();
    if (this.leaving === undefined) {
      // Not a leave: e.g. the server refused the user for good. The entry expires (15 s).
      this.log("warn", "agent_connection_closed", { agent_id });
      this.presence.stop();
      this.endStreams();
    }
  }

  /** @internal a join that failed: close without a delete or a leave's log lines. */
  abandon(): Promise<void> {
    this.leaving ??= (async () => {
      this.presence.stop();
      await this.bus.leave(LEAVE_TIMEOUT_MS);
      await this.left;
      this.endStreams();
    })();
    return this.leaving;
  }

  private async leave(): Promise<void> {
    this.presence.stop();
    if (this.bus.isConnected) this.presence.remove();
    else {
      const reason = "not connected: the entry expires with the presence TTL (15 s)";
      this.log("warn", "agent_presence_not_deleted", { agent_id: this.id, reason });
    }
    await this.bus.leave(LEAVE_TIMEOUT_MS);
    await this.left;
    this.endStreams();
    this.log("info", "agent_left_bus", { agent_id: this.id });
  }

  private endStreams(): void {
    for (const stream of [...this.streams]) stream.stop();
  }

  /** A stream of this agent's, kept until it stops (ended by the leave if still open). */
  private open<T extends object>(
    spec: Omit<StreamSpec<T>, "agentId" | "log" | "onStop">,
  ): Stream<T> {
    const stream: Stream<T> = openStream(this.bus, {
      ...spec,
      agentId: this.id,
      log: this.log,
      onStop: () => this.streams.delete(stream),
    });
    this.streams.add(stream);
    return stream;
  }

  private peerMessage(msg: BusMessage): PeerMessage | null {
    const sender = this.names.senderOf(msg.subject, this.id);
    if (sender === null || !isAgentId(sender)) return null;
    const respond = (reply: string, data: Uint8Array): void => this.bus.respond(reply, data);
    return new PeerMessage(sender, this.id, msg.subject, msg.data, msg.reply, respond);
  }

  private async askBridge(
    subject: string,
    body: Uint8Array,
    what: string,
    timeoutMs: number | undefined,
  ): Promise<BusMessage> {
    try {
      return await this.bus.request(subject, body, timeoutMs ?? this.requestTimeoutMs);
    } catch (err) {
      if (!(err instanceof NoAnswerError)) throw err;
      throw new NoAnswerError(
        `no answer to ${what}: ${err.message}; is the bridge running (and leading)?`,
        err.subject,
        err.noResponders,
        { cause: err },
      );
    }
  }
}

function checkOpportunityId(opportunityId: string): void {
  if (typeof opportunityId !== "string" || !OPPORTUNITY_ID_PATTERN.test(opportunityId)) {
    throw new InvalidArgumentError(
      `opportunity id ${JSON.stringify(opportunityId)}: an opportunity id is 1 to 128 ` +
        "letters, digits, '-' or '_'",
    );
  }
}

/** `decoded`, or the BadAnswerError that says what came instead. */
function expectAnswer<T>(decoded: T | null, answer: BusMessage, what: string): T {
  if (decoded !== null) return decoded;
  const refusal = answer.header("Nats-Service-Error") ?? decodeErrorReply(answer.data)?.error;
  const text = new TextDecoder().decode(answer.data.subarray(0, 200));
  throw new BadAnswerError(
    refusal !== undefined
      ? `the bridge refused ${what}: ${refusal}`
      : `the answer to ${what} is not what the contract says: ${JSON.stringify(text)}`,
  );
}
