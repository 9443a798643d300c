/**
 * A bounded queue read as an async iterator: what arrived on a subscription and has not been
 * taken yet. A slow reader loses the oldest items, never the newest, and never grows the
 * process without bound.
 *
 * @module
 */

/** Items not yet taken by a reader, at most `limit` of them. */
export class BoundedQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private readonly waiting: ((result: IteratorResult<T, undefined>) => void)[] = [];
  private ended = false;
  private dropped = 0;

  /** @param onDrop called with the number dropped so far, each time the oldest item goes. */
  constructor(
    private readonly limit: number,
    private readonly onDrop: (dropped: number) => void,
  ) {}

  /** Add an item (ignored once ended): to a waiting reader, or to the queue. */
  push(item: T): void {
    if (this.ended) return;
    const reader = this.waiting.shift();
    if (reader !== undefined) {
      reader({ value: item, done: false });
      return;
    }
    if (this.items.length >= this.limit) {
      this.items.shift();
      this.dropped += 1;
      this.onDrop(this.dropped);
    }
    this.items.push(item);
  }

  /** No more items: readers get what is queued, then the end. */
  end(): void {
    this.ended = true;
    for (const reader of this.waiting.splice(0)) reader({ value: undefined, done: true });
  }

  /** The next item, waiting for one; done once ended and empty. */
  next(): Promise<IteratorResult<T, undefined>> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve({ value: item, done: false });
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  [Symbol.asyncIterator](): AsyncIterator<T, undefined> {
    return { next: () => this.next() };
  }
}
