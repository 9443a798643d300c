// Joining and leaving the bus: the presence entry, its refreshes and its purge, as the bridge
// sees them in the presence bucket, against a real nats-server.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import type { KV } from "@nats-io/kv";
import type { Msg, NatsConnection } from "@nats-io/transport-node";

import {
  connectAgent,
  InvalidArgumentError,
  PermissionError,
  silentLogger,
  type BusAgent,
} from "@chorus-bridge/agent";

import {
  BUCKET,
  bridgeConnection,
  eventually,
  first,
  liveEntry,
  NatsServer,
  PASSWORDS,
  presenceBucket,
} from "./harness.js";

describe("presence", () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let kv: KV;

  before(async () => {
    server = await NatsServer.start();
    nc = await bridgeConnection(server);
    kv = await presenceBucket(nc);
  });
  after(async () => {
    await nc?.close();
    await server?.stop();
  });

  const join = (agentId: string, extra: object = {}): Promise<BusAgent> =>
    connectAgent({
      servers: server.url,
      agentId,
      user: "agent",
      password: PASSWORDS.agent,
      logger: silentLogger,
      ...extra,
    });

  test("join: the entry is in the bucket once connectAgent resolves, with the contract's fields", async () => {
    const agent = await join("task-join-1", {
      taskId: "task-join-1",
      endpoint: "http://127.0.0.1:8080",
      roles: ["tpm", "qa-engineer"],
    });
    try {
      const entry = await liveEntry(kv, "task-join-1");
      assert.ok(entry, "the presence entry is there");
      const value = entry.json<Record<string, unknown>>();
      assert.deepEqual(Object.keys(value).sort(), [
        "agent_id",
        "at",
        "endpoint",
        "roles",
        "task_id",
      ]);
      assert.equal(value["agent_id"], "task-join-1");
      assert.equal(value["task_id"], "task-join-1");
      assert.equal(value["endpoint"], "http://127.0.0.1:8080");
      assert.deepEqual(value["roles"], ["tpm", "qa-engineer"]);
      assert.ok(
        Math.abs(Date.parse(String(value["at"])) - Date.now()) < 60000,
        "at is RFC 3339 UTC",
      );
    } finally {
      await agent.close();
    }
  });

  test("without task id, endpoint or roles the entry has null, null and []", async () => {
    const agent = await join("task-bare");
    try {
      const value = (await liveEntry(kv, "task-bare"))?.json<Record<string, unknown>>();
      assert.deepEqual(
        [value?.["task_id"], value?.["endpoint"], value?.["roles"]],
        [null, null, []],
      );
    } finally {
      await agent.close();
    }
  });

  test("presence refreshes: plain publishes with no reply subject, every interval", async () => {
    const writes = nc.subscribe(`$KV.${BUCKET}.task-refresh`);
    await nc.flush();
    const agent = await join("task-refresh", { presenceIntervalMs: 100 });
    try {
      const seen: Msg[] = [];
      await first("three presence writes", writes, (msg) => seen.push(msg) >= 3);
      for (const msg of seen) {
        assert.equal(msg.reply ?? "", "", "no reply subject: the presence stream answers nothing");
        assert.equal(msg.headers, undefined, "a put has no headers");
        assert.equal(msg.json<{ agent_id: string }>().agent_id, "task-refresh");
      }
      const revisions = new Set<number>();
      await eventually("the entry rewritten in the bucket", async () => {
        const entry = await liveEntry(kv, "task-refresh");
        if (entry) revisions.add(entry.revision);
        return revisions.size >= 2 ? true : undefined;
      });
    } finally {
      writes.unsubscribe();
      await agent.close();
    }
  });

  test("clean leave: close() deletes the entry at once (a DEL) and closes the connection", async () => {
    const agent = await join("task-leave");
    const writes = nc.subscribe(`$KV.${BUCKET}.task-leave`);
    await nc.flush();
    assert.ok(await liveEntry(kv, "task-leave"));
    const opportunities = agent.opportunities()[Symbol.asyncIterator]();
    await agent.close();
    assert.equal(await liveEntry(kv, "task-leave"), null, "no live entry after close()");
    const entry = await kv.get("task-leave");
    assert.equal(entry?.operation, "DEL");
    const deleted = await first(
      "the delete on the presence subject",
      writes,
      (m) => m.data.length === 0,
    );
    assert.equal(deleted.headers?.get("KV-Operation"), "DEL");
    // Not a purge: a rollup, which the stream agents' writes land in refuses.
    assert.equal(deleted.headers?.has("Nats-Rollup"), false);
    writes.unsubscribe();
    assert.deepEqual(await opportunities.next(), { value: undefined, done: true });
    await agent.closed(); // resolved
    await assert.rejects(agent.ack("council-1"), { name: "ClosedError" });
    await agent.close(); // a second close is no error
  });

  test("bad agent ids are refused at connect, before any connection", async () => {
    const nowhere = "nats://127.0.0.1:1"; // refused if it were ever dialled
    for (const agentId of ["", "a.b", "a*", "a>", "a b", "ü", "a/b", "x".repeat(257), "a\n"]) {
      await assert.rejects(connectAgent({ servers: nowhere, agentId }), (err: unknown) => {
        assert.ok(
          err instanceof InvalidArgumentError,
          `${JSON.stringify(agentId)}: ${String(err)}`,
        );
        assert.match(err.message, /agent id/);
        return true;
      });
    }
    const longest = await join("x".repeat(256));
    await longest.close();
  });

  test("a presence entry over 4 KiB, or an interval over 5 s, is refused before connecting", async () => {
    const nowhere = "nats://127.0.0.1:1";
    const roles = Array.from({ length: 200 }, (_, i) => `role-with-a-long-name-${i}`);
    await assert.rejects(
      connectAgent({ servers: nowhere, agentId: "task-big", roles }),
      (err: unknown) => {
        assert.ok(err instanceof InvalidArgumentError);
        assert.match(err.message, /is 5\d{3} bytes, over the 4096 the presence bucket takes/);
        return true;
      },
    );
    for (const presenceIntervalMs of [0, -1, 5001, Number.NaN]) {
      await assert.rejects(
        connectAgent({ servers: nowhere, agentId: "task-slow", presenceIntervalMs }),
        /presence interval .*at most 5000/,
      );
    }
    // 146 of those roles make a 4075-byte entry: the bucket takes it.
    const justFits = await join("task-fits", { roles: roles.slice(0, 146) });
    assert.ok(await liveEntry(kv, "task-fits"));
    await justFits.close();
  });

  test("a user that may not write its presence key gets a PermissionError at connect", async () => {
    await assert.rejects(
      connectAgent({
        servers: server.url,
        agentId: "task-denied",
        user: "nopresence",
        password: PASSWORDS.agent,
        logger: silentLogger,
      }),
      (err: unknown) => {
        assert.ok(err instanceof PermissionError, String(err));
        assert.equal(err.subject, `$KV.${BUCKET}.task-denied`);
        assert.match(err.message, /refused .*task-denied.*permissions/);
        return true;
      },
    );
  });

  test("a user that may not hear its messages gets a PermissionError at connect", async () => {
    await assert.rejects(
      connectAgent({
        servers: server.url,
        agentId: "task-deaf",
        user: "deaf",
        password: PASSWORDS.agent,
        logger: silentLogger,
      }),
      (err: unknown) => {
        assert.ok(err instanceof PermissionError, String(err));
        assert.equal(err.subject, "chorus.agents.task-deaf.messages.*");
        return true;
      },
    );
  });

  test("a prefix gives the presence bucket <prefix>_presence and the subjects <prefix>.…", async () => {
    const other = await new (await import("@nats-io/kv")).Kvm(nc).create("fleet2_presence", {
      ttl: 15000,
    });
    const agent = await connectAgent({
      servers: server.url,
      agentId: "task-prefixed",
      user: "bridge",
      password: PASSWORDS.bridge,
      prefix: "fleet2",
      logger: silentLogger,
    });
    try {
      assert.ok(await liveEntry(other, "task-prefixed"));
      assert.equal(agent.names.opportunities, "fleet2.council.opportunities");
      assert.equal(await kv.get("task-prefixed"), null);
    } finally {
      await agent.close();
    }
    assert.equal(await liveEntry(other, "task-prefixed"), null);
  });
});
