/**
 * Leaving on a signal: SIGTERM (what `docker stop` sends) and SIGINT (Ctrl-C) make the agent
 * leave the bus cleanly, with no stack trace, and then (unless the app says otherwise) end
 * the process with status 0. A second signal during the leave ends it at once.
 *
 * @module
 */
import { constants } from "node:os";

import type { Logger } from "./log.js";

export interface SignalOptions {
  /** The signals to leave on: SIGTERM and SIGINT unless given. */
  signals?: readonly NodeJS.Signals[];
  /**
   * True (the default): exit with status 0 once the agent has left. False: only leave; the
   * app's own shutdown runs after (its `opportunities()` and `messages()` loops end).
   */
  exit?: boolean;
}

/**
 * Install the handlers; the function returned removes them.
 * @param leave the agent's clean leave (never throws).
 */
export function installSignalHandlers(
  leave: () => Promise<void>,
  log: Logger,
  agentId: string,
  options: SignalOptions = {},
): () => void {
  const signals = options.signals ?? ["SIGTERM", "SIGINT"];
  const exit = options.exit ?? true;
  let leaving = false;
  const handler = (signal: NodeJS.Signals): void => {
    if (leaving) {
      // Asked twice: the leave is bounded, but someone wants out now.
      process.exit(128 + (constants.signals[signal] ?? 0));
    }
    leaving = true;
    log("info", "agent_leaving_on_signal", { agent_id: agentId, signal });
    void leave().then(() => {
      if (exit) process.exit(0);
    });
  };
  for (const signal of signals) process.on(signal, handler);
  return () => {
    for (const signal of signals) process.off(signal, handler);
  };
}
