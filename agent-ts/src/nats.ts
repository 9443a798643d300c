/**
 * The NATS edge: the only importer of the official client (`@nats-io/transport-node`), and
 * the one place its errors become ours (`errors.ts`). What the rest of the library sees is
 * `Bus`: publish, request, subscribe, flush, leave; messages as plain `BusMessage`s.
 *
 * @module
 */
import {
  connect as natsConnect,
  errors,
  headers as natsHeaders,
  nuid,
  type Msg,
  type NatsConnection,
  type NodeConnectionOptions,
  type Subscription,
} from "@nats-io/transport-node";

import {
  AgentError,
  ClosedError,
  ConnectError,
  InvalidArgumentError,
  NoAnswerError,
  PermissionError,
} from "./errors.js";

/** TLS to NATS: the CA that signed the server's certificate, and a client certificate. */
export interface TlsFiles {
  /** PEM file of the CA that signed the server's certificate (NATS_TLS_CA). */
  caFile?: string | undefined;
  /** PEM files of a client certificate and its key, where the server asks for one. */
  certFile?: string | undefined;
  keyFile?: string | undefined;
}

export interface BusOptions {
  servers: string[];
  name: string;
  inboxPrefix: string;
  user?: string | undefined;
  password?: string | undefined;
  token?: string | undefined;
  tls?: TlsFiles | undefined;
  /** Milliseconds to connect (each server) and to flush. */
  timeoutMs: number;
  /** Milliseconds the first connection is tried, an attempt every `RECONNECT_WAIT_MS`. */
  firstConnectionWindowMs: number;
  /**
   * Told each distinct reason an attempt at the first connection failed, once, while the
   * window goes on (the last reason is the ConnectError's).
   */
  onFirstConnectionError?: ((reason: string) => void) | undefined;
}

// Distinct reasons told during the first connection, at most (a server that fails a new way
// on every attempt does not fill the log).
const FIRST_REASONS_TOLD = 16;

/** Between two attempts at one server (nats.js's default is 2 s). */
export const RECONNECT_WAIT_MS = 500;

/** What the connection goes through (see `Bus.events`). */
export type BusEvent =
  | { type: "disconnected" | "reconnected"; server: string }
  | { type: "refused"; operation: "publish" | "subscription"; subject: string; message: string }
  | { type: "error"; message: string };

/** A message received, in the library's terms. */
export interface BusMessage {
  subject: string;
  reply: string | undefined;
  data: Uint8Array;
  /** The first value of a header (names as sent), or undefined. */
  header(name: string): string | undefined;
}

// Permission errors remembered for `confirm`: the server says "refused" asynchronously.
const REFUSALS_KEPT = 64;

/** One connection to NATS. Reconnects forever once connected (`maxReconnectAttempts: -1`). */
export class Bus {
  private readonly refusals: { subject: string; message: string }[] = [];
  private connected = true;
  private readonly watcher: Promise<void>;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly options: BusOptions,
  ) {
    this.watcher = this.track();
  }

  /**
   * Connect to the first server of `options.servers` that answers.
   * @throws ConnectError naming the servers (without user info) and the client's reason.
   */
  static async connect(options: BusOptions): Promise<Bus> {
    const settings: NodeConnectionOptions = {
      servers: options.servers,
      name: options.name,
      inboxPrefix: options.inboxPrefix,
      timeout: options.timeoutMs,
      maxReconnectAttempts: -1,
      reconnectTimeWait: RECONNECT_WAIT_MS,
      // Once connected it reconnects forever, refusals included, as the Python library does
      // (nats.js would give up at the second refusal in a row).
      ignoreAuthErrorAbort: true,
      ...(options.user !== undefined ? { user: options.user } : {}),
      ...(options.password !== undefined ? { pass: options.password } : {}),
      ...(options.token !== undefined ? { token: options.token } : {}),
      ...(options.tls !== undefined ? { tls: tlsOptions(options.tls) } : {}),
    };
    // The first connection is tried for a window whatever each attempt's failure but a
    // certificate the CA does not vouch for: an agent started with its stack waits for NATS,
    // and with the auth callout is refused until a discovery round lists its task.
    const deadline = Date.now() + options.firstConnectionWindowMs;
    const told = new Set<string>();
    for (;;) {
      try {
        return new Bus(await natsConnect(settings), options);
      } catch (err) {
        const why = reason(err);
        if (/certificate/i.test(why) || Date.now() + RECONNECT_WAIT_MS >= deadline) {
          throw new ConnectError(
            `cannot connect to NATS at ${options.servers.map(redact).join(", ")}: ` +
              `${why}; check the URL, the credentials and the TLS CA`,
            { cause: err },
          );
        }
        if (!told.has(why) && told.size < FIRST_REASONS_TOLD) {
          told.add(why);
          options.onFirstConnectionError?.(why);
        }
      }
      await new Promise((wake) => setTimeout(wake, RECONNECT_WAIT_MS));
    }
  }

  /** The server this connection is on, without user info. */
  get server(): string {
    return redact(this.nc.getServer());
  }

  get isClosed(): boolean {
    return this.nc.isClosed();
  }

  /** True while connected to a server (false while it reconnects, and once closed). */
  get isConnected(): boolean {
    return this.connected && !this.nc.isClosed();
  }

  /**
   * Publish `data` on `subject` with no reply subject (and `headers`, if given).
   * @throws InvalidArgumentError over the server's max payload; ClosedError after leave.
   */
  publish(subject: string, data: Uint8Array, headers?: Record<string, string>): void {
    try {
      this.nc.publish(subject, data, headers ? { headers: toHeaders(headers) } : undefined);
    } catch (err) {
      throw mapCallError(err, subject);
    }
  }

  /** Publish `data` on `reply` (an answer to a request). Errors as `publish`. */
  respond(reply: string, data: Uint8Array): void {
    this.publish(reply, data);
  }

  /**
   * Request on `subject` and return the first answer, on this connection's inbox; with
   * `replyTo`, on `<replyTo>.<a fresh token>` (a subscription of its own for the answer).
   * @throws NoAnswerError (nobody listens, or no answer within `timeoutMs`), PermissionError
   *   (the server refused the request or the inbox), InvalidArgumentError, ClosedError.
   */
  async request(
    subject: string,
    data: Uint8Array,
    timeoutMs: number,
    replyTo?: string,
  ): Promise<BusMessage> {
    const options =
      replyTo === undefined
        ? { timeout: timeoutMs }
        : { timeout: timeoutMs, noMux: true, reply: `${replyTo}.${nuid.next()}` };
    try {
      return toMessage(await this.nc.request(subject, data, options));
    } catch (err) {
      throw mapRequestError(err, subject, timeoutMs);
    }
  }

  /**
   * Subscribe `subject`; `onMessage` gets each message until `stop()` or leave.
   * @throws ClosedError after leave.
   */
  subscribe(subject: string, onMessage: (msg: BusMessage) => void): { stop(): void } {
    let sub: Subscription;
    try {
      sub = this.nc.subscribe(subject, {
        callback: (err, msg) => {
          if (err === null) onMessage(toMessage(msg));
        },
      });
    } catch (err) {
      throw mapCallError(err, subject);
    }
    return { stop: () => sub.unsubscribe() };
  }

  /**
   * Round trip to the server: what was published before has reached it, subscriptions made
   * before are in place. @throws NoAnswerError when it takes over the timeout.
   */
  async flush(): Promise<void> {
    const limit = bound(this.options.timeoutMs, "flush");
    try {
      await Promise.race([this.nc.flush(), limit.promise]);
    } catch (err) {
      throw err instanceof AgentError ? err : mapCallError(err, "");
    } finally {
      limit.cancel();
    }
  }

  /**
   * Drain (subscriptions, then what is waiting to be sent) and close, within `timeoutMs`;
   * past that, or while disconnected (a drain would wait for the server), close at once.
   * Never throws.
   */
  async leave(timeoutMs: number): Promise<void> {
    const limit = bound(timeoutMs, "drain");
    try {
      if (this.isConnected && !this.nc.isDraining()) {
        await Promise.race([this.nc.drain(), limit.promise]);
      }
    } catch {
      // a drain cut short (timeout, or a connection lost meanwhile): closed below
    } finally {
      limit.cancel();
      if (!this.nc.isClosed()) await this.nc.close().catch(() => undefined);
      await this.watcher;
    }
  }

  /**
   * The connection's events from now until it closes (then the iteration ends). Each call
   * is a reader of its own.
   */
  async *events(): AsyncIterable<BusEvent> {
    try {
      for await (const status of this.nc.status()) {
        if (status.type === "disconnect" || status.type === "reconnect") {
          yield { type: `${status.type}ed`, server: redact(status.server) };
        } else if (status.type === "error") {
          const err = status.error;
          yield err instanceof errors.PermissionViolationError
            ? {
                type: "refused",
                operation: err.operation,
                subject: err.subject,
                message: err.message,
              }
            : { type: "error", message: reason(err) };
        }
      }
    } catch (err) {
      yield { type: "error", message: `status of the NATS connection unreadable: ${reason(err)}` };
    }
  }

  /** Resolves when the connection has closed (a leave, or the server refused the user). */
  async closed(): Promise<void> {
    await this.nc.closed();
  }

  private async track(): Promise<void> {
    for await (const event of this.events()) {
      if (event.type === "disconnected") this.connected = false;
      if (event.type === "reconnected") this.connected = true;
      if (event.type !== "refused") continue;
      this.refusals.push({ subject: event.subject, message: event.message });
      if (this.refusals.length > REFUSALS_KEPT) this.refusals.shift();
    }
  }

  /**
   * A round trip, then a PermissionError if the server has refused any of `subjects` (a
   * publish or a subscription) on this connection: it says so before the round trip's answer,
   * asynchronously, and a publish or a subscribe call sees nothing of it.
   * @throws PermissionError, NoAnswerError (as `flush`).
   */
  async confirm(subjects: readonly string[]): Promise<void> {
    await this.flush();
    await new Promise((resolve) => setImmediate(resolve)); // its status event comes a tick after
    const hit = this.refusals.find((r) => subjects.includes(r.subject));
    if (hit !== undefined) throw refused(hit.subject, hit.message);
  }
}

function tlsOptions(files: TlsFiles): NonNullable<NodeConnectionOptions["tls"]> {
  const { caFile, certFile, keyFile } = files;
  return {
    ...(caFile !== undefined ? { caFile } : {}),
    ...(certFile !== undefined ? { certFile } : {}),
    ...(keyFile !== undefined ? { keyFile } : {}),
  };
}

function toHeaders(values: Record<string, string>): ReturnType<typeof natsHeaders> {
  const h = natsHeaders();
  for (const [name, value] of Object.entries(values)) h.set(name, value);
  return h;
}

function toMessage(msg: Msg): BusMessage {
  const headers = msg.headers;
  return {
    subject: msg.subject,
    reply: msg.reply !== undefined && msg.reply !== "" ? msg.reply : undefined,
    data: msg.data,
    header: (name) => (headers?.has(name) ? headers.get(name) : undefined),
  };
}

function mapCallError(err: unknown, subject: string): AgentError {
  if (
    err instanceof errors.ClosedConnectionError ||
    err instanceof errors.DrainingConnectionError
  ) {
    return new ClosedError("the agent has left the bus (its NATS connection is closed)", {
      cause: err,
    });
  }
  if (err instanceof errors.InvalidArgumentError || err instanceof errors.InvalidSubjectError) {
    return new InvalidArgumentError(`cannot send on ${subject}: ${reason(err)}`, { cause: err });
  }
  return new AgentError(`NATS call on ${subject} failed: ${reason(err)}`, { cause: err });
}

function refused(subject: string, message: string, cause?: unknown): PermissionError {
  return new PermissionError(
    `the NATS server refused ${subject} (${message}): this agent's user may not use it; ` +
      "check its permissions (or the auth callout's)",
    subject,
    { cause },
  );
}

function mapRequestError(err: unknown, subject: string, timeoutMs: number): AgentError {
  // The client fails a request at once when the server refuses its subject or the inbox.
  const denied = err instanceof Error && err.cause !== undefined ? err.cause : err;
  if (denied instanceof errors.PermissionViolationError) {
    return refused(denied.subject, denied.message, err);
  }
  if (err instanceof errors.TimeoutError) {
    return new NoAnswerError(`no answer on ${subject} within ${timeoutMs} ms`, subject, false, {
      cause: err,
    });
  }
  if (err instanceof errors.RequestError && err.isNoResponders()) {
    return new NoAnswerError(`nobody listens on ${subject}`, subject, true, { cause: err });
  }
  if (err instanceof errors.RequestError) {
    return new NoAnswerError(`request on ${subject} failed: ${reason(err)}`, subject, false, {
      cause: err,
    });
  }
  return mapCallError(err, subject);
}

/** A promise that rejects with NoAnswerError after `ms` (unless cancelled). */
function bound(ms: number, what: string): { promise: Promise<never>; cancel(): void } {
  let timer: NodeJS.Timeout | undefined;
  const promise = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new NoAnswerError(`NATS ${what} took over ${ms} ms`, "", false)),
      ms,
    );
  });
  promise.catch(() => undefined); // a bound nobody awaits any more is no unhandled rejection
  return { promise, cancel: () => clearTimeout(timer) };
}

function reason(err: unknown): string {
  if (err instanceof Error) {
    const cause = err.cause instanceof Error ? ` (${err.cause.message})` : "";
    return `${err.message || err.name}${cause}`;
  }
  return String(err);
}

/** A server URL without its user info (`nats://user:secret@host` -> `nats://host`). */
export function redact(server: string): string {
  return server.replace(/^([a-z]+:\/\/)?[^@/]*@/i, "$1");
}
