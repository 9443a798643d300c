/**
 * Log lines: one per state change (joined, left, presence failing and recovered, connection
 * lost and back, a permission refused), as the app chooses to have them.
 *
 * @module
 */

export type LogLevel = "info" | "warn";

/** Receives each state change: a level, an event name, and its fields. */
export type Logger = (level: LogLevel, event: string, fields: Record<string, unknown>) => void;

/** One JSON line per event on stderr: `{"at", "level", "event", ...fields}` (the default). */
export const stderrLogger: Logger = (level, event, fields) => {
  process.stderr.write(
    `${JSON.stringify({ at: new Date().toISOString(), level, event, ...fields })}\n`,
  );
};

/** Logs nothing. */
export const silentLogger: Logger = () => undefined;
