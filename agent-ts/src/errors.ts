/**
 * The library's own errors. Every failure a caller can meet is one of these, with a message
 * that says what happened and what to do; the NATS client's errors never escape (they are
 * mapped in `nats.ts`, and kept as `cause`).
 *
 * @module
 */

/** The base of every error this library throws. */
export class AgentError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** An argument that cannot be used: an agent id, a role, an opportunity id, a payload. */
export class InvalidArgumentError extends AgentError {}

/** NATS could not be reached, refused the credentials, or the TLS handshake failed. */
export class ConnectError extends AgentError {}

/** The server refused an operation of this agent (a publish or subscribe permission). */
export class PermissionError extends AgentError {
  constructor(
    message: string,
    /** The subject the server refused. */
    readonly subject: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** A request was not answered: nobody listens on its subject, or no answer came in time. */
export class NoAnswerError extends AgentError {
  constructor(
    message: string,
    /** The subject the request was sent on. */
    readonly subject: string,
    /** True when the server said at once that nobody listens on `subject`. */
    readonly noResponders: boolean,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** An answer arrived that is not what the contract says it is (or is the bridge's error). */
export class BadAnswerError extends AgentError {}

/** A reply that would go elsewhere than the asking agent's own inbox; nothing was sent. */
export class ReplyRefusedError extends AgentError {}

/** The agent has left the bus (`close()`); make a new one with `connect()`. */
export class ClosedError extends AgentError {}
