// Peers: the roster from the bridge (`<prefix>.bridge.agents`) and the fleet's changes
// (`<prefix>.agents.announce`). The roster comes from the bridge: a responder in the test
// answers as DESIGN.md ("Agents on the bus") specifies, so the roster tests pin the
// protocol's shape; the same scenarios run against the real bridge once it serves `agents`.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { headers, type NatsConnection } from "@nats-io/transport-node";

import {
  BadAnswerError,
  connectAgent,
  NoAnswerError,
  silentLogger,
  type Announcement,
  type BusAgent,
} from "@chorus-bridge/agent";

import {
  bridgeConnection,
  first,
  NatsServer,
  PASSWORDS,
  presenceBucket,
  unsubscribed,
} from "./harness.js";

const ROSTER = [
  { id: "0jig50gaxfdp5tlel09i565ab", on_bus: true, healthy: null, source: "swarm", roles: ["tpm"] },
  { id: "dns-10-0-1-7-8080", on_bus: false, healthy: true, source: "dns", roles: [] },
  { id: "agent-1", on_bus: true, healthy: null, source: null, roles: ["qa-engineer"] },
];

function agentRecord(id: string): Record<string, unknown> {
  return {
    id,
    endpoint: "http://10.0.1.6:8080",
    address: "10.0.1.6",
    port: 8080,
    source: "swarm",
    service: "CHORUS_chorus",
    network: "chorus_default",
    task_id: id,
    slot: 35,
    node_id: "ousupy8h40kaicy5rc4sz50s9",
    container_id: "2dcea3bc",
    healthy: null,
    on_bus: false,
    first_seen: "2026-11-27T00:37:18.123456Z",
  };
}

describe("peers", () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let agent: BusAgent;

  before(async () => {
    server = await NatsServer.start();
    nc = await bridgeConnection(server);
    await presenceBucket(nc);
    agent = await connectAgent({
      servers: server.url,
      agentId: "agent-1",
      user: "agent",
      password: PASSWORDS.agent,
      logger: silentLogger,
      requestTimeoutMs: 2000,
    });
  });
  after(async () => {
    await agent?.close();
    await nc?.close();
    await server?.stop();
  });

  test("peers (protocol shape, stand-in bridge): the roster, answered on the agent's inbox", async () => {
    const replies: string[] = [];
    const bridge = nc.subscribe("chorus.bridge.agents", {
      callback: (_err, msg) => {
        replies.push(msg.reply ?? "");
        if (msg.reply?.startsWith("_INBOX.agent-1.")) msg.respond(JSON.stringify(ROSTER));
      },
    });
    await nc.flush();
    try {
      assert.deepEqual(await agent.peers(), ROSTER);
      assert.match(replies[0] ?? "", /^_INBOX\.agent-1\./);
    } finally {
      await unsubscribed(nc, bridge);
    }
  });

  test("peers (protocol shape, stand-in bridge): every page of a paged roster", async () => {
    const sorted = [...ROSTER].sort((a, b) => (a.id < b.id ? -1 : 1));
    const asked: string[] = [];
    const bridge = nc.subscribe("chorus.bridge.agents", {
      callback: (_err, msg) => {
        const body = msg.data.length === 0 ? {} : (msg.json() as { after?: string });
        asked.push(body.after ?? "");
        const rest = sorted.filter((p) => body.after === undefined || p.id > body.after);
        const page = rest.slice(0, 1);
        const more = rest.length > 1 && page[0] !== undefined;
        const h = headers();
        if (more) h.set("Chorus-Roster-Next", page[0]?.id ?? "");
        msg.respond(JSON.stringify(page), more ? { headers: h } : {});
      },
    });
    await nc.flush();
    try {
      assert.deepEqual(await agent.peers(), sorted);
      assert.deepEqual(asked, ["", sorted[0]?.id, sorted[1]?.id]);
    } finally {
      await unsubscribed(nc, bridge);
    }
  });

  test("peers: missing optional fields get their defaults; no bridge and bad answers are clear errors", async () => {
    const answers = [
      JSON.stringify([{ id: "a", on_bus: false }]),
      JSON.stringify({ not: "a list" }),
    ];
    const bridge = nc.subscribe("chorus.bridge.agents", {
      callback: (_err, msg) => {
        msg.respond(answers.shift() ?? "");
      },
    });
    await nc.flush();
    try {
      assert.deepEqual(await agent.peers(), [
        { id: "a", on_bus: false, healthy: null, source: null, roles: [] },
      ]);
      await assert.rejects(agent.peers(), BadAnswerError);
    } finally {
      await unsubscribed(nc, bridge);
    }
    await assert.rejects(agent.peers(), (err: unknown) => {
      assert.ok(err instanceof NoAnswerError);
      assert.match(
        err.message,
        /roster request: nobody listens on chorus\.bridge\.agents.*bridge running/,
      );
      return true;
    });
  });

  test("announcements: joins and leaves decoded, invalid ones skipped; break stops it", async () => {
    const changes = agent.announcements();
    await agent.flush(); // the subscription is in place
    const at = "2026-11-27T00:37:18Z";
    nc.publish(
      "chorus.agents.announce",
      JSON.stringify({ event: "joined", agent: { id: "x" }, at }),
    );
    nc.publish("chorus.agents.announce", "[]");
    nc.publish(
      "chorus.agents.announce",
      JSON.stringify({ event: "joined", agent: agentRecord("t1"), at }),
    );
    nc.publish(
      "chorus.agents.announce",
      JSON.stringify({ event: "left", agent: agentRecord("t2"), at }),
    );
    await nc.flush();
    const seen: Announcement[] = [];
    for await (const change of changes) {
      seen.push(change);
      if (seen.length === 2) break;
    }
    assert.deepEqual(
      seen.map((a) => [a.event, a.agent.id, a.agent.port]),
      [
        ["joined", "t1", 8080],
        ["left", "t2", 8080],
      ],
    );
    assert.deepEqual(seen[0]?.agent, agentRecord("t1"));
    // After the break the stream is over.
    assert.deepEqual(await changes[Symbol.asyncIterator]().next(), {
      value: undefined,
      done: true,
    });
  });

  test("announcements end when the agent leaves", async () => {
    const other = await connectAgent({
      servers: server.url,
      agentId: "agent-2",
      user: "agent",
      password: PASSWORDS.agent,
      logger: silentLogger,
    });
    const changes = other.announcements();
    const ended = first("the end", changes).then(
      () => "an item",
      (err: Error) => err.message,
    );
    await other.close();
    assert.match(await ended, /ended before a match/);
  });
});
