/**
 * Inbound streams: a subscription whose messages are decoded, checked, and queued for an
 * async iterator (`for await`). What does not decode is skipped and counted.
 *
 * @module
 */
import type { Logger } from "./log.js";
import type { Bus, BusMessage } from "./nats.js";
import { BoundedQueue } from "./queue.js";

/** Messages kept for a slow reader; past this, the oldest go (and a line says so). */
export const QUEUE_LIMIT = 1024;

/** An async iterator that can also be stopped from outside its loop. */
export interface Stream<T> extends AsyncIterableIterator<T, undefined> {
  /** Stop receiving; a reader gets what is queued, then the end. */
  stop(): void;
}

export interface StreamSpec<T> {
  subject: string;
  /** The item a message is, or null to skip it. */
  decode(msg: BusMessage): T | null;
  /** Names the stream in log lines. */
  name: string;
  agentId: string;
  log: Logger;
  /**
   * True: leaving a `for await` loop (break, return, throw) stops the subscription. False:
   * it only ends that loop, and a later loop reads on (streams the agent holds for its life).
   */
  stopOnReturn: boolean;
  /** Called once, when the stream stops. */
  onStop: () => void;
}

/** Subscribe `spec.subject` now and return the stream of its decoded messages. */
export function openStream<T extends object>(bus: Bus, spec: StreamSpec<T>): Stream<T> {
  const { name, agentId, log } = spec;
  const queue = new BoundedQueue<T>(QUEUE_LIMIT, (dropped) => {
    if (dropped === 1 || dropped % QUEUE_LIMIT === 0) {
      log("warn", "agent_stream_overflow", { agent_id: agentId, stream: name, dropped });
    }
  });
  let invalid = 0;
  const sub = bus.subscribe(spec.subject, (msg) => {
    const item = spec.decode(msg);
    if (item !== null) return queue.push(item);
    invalid += 1;
    if (invalid === 1 || invalid % 100 === 0) {
      log("warn", "agent_stream_invalid", { agent_id: agentId, stream: name, invalid });
    }
  });
  let stopped = false;
  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    sub.stop();
    queue.end();
    spec.onStop();
  };
  const stream: Stream<T> = {
    next: () => queue.next(),
    return: () => {
      if (spec.stopOnReturn) stop();
      return Promise.resolve({ value: undefined, done: true });
    },
    stop,
    [Symbol.asyncIterator]: () => stream,
  };
  return stream;
}
