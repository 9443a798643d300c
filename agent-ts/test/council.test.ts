// Council opportunities, acks and claims. The claim's answer comes from the bridge: here a
// responder in the test answers the way DESIGN.md ("Councils") specifies, so these tests pin
// the protocol's shape; the same scenarios run against the real bridge once it arbitrates.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";

import {
  BadAnswerError,
  connectAgent,
  InvalidArgumentError,
  NoAnswerError,
  QUEUE_LIMIT,
  silentLogger,
  type BusAgent,
  type CouncilOpportunity,
} from "@chorus-bridge/agent";

import {
  bridgeConnection,
  first,
  NatsServer,
  PASSWORDS,
  presenceBucket,
  unsubscribed,
} from "./harness.js";

const OPPORTUNITY = {
  id: "council-42",
  project: "whoosh",
  title: "Build the API",
  roles: [
    { name: "tpm", core: true },
    { name: "senior-software-architect", core: true },
    { name: "qa-engineer", core: false },
  ],
  deadline: "2026-11-27T01:00:00Z",
  details: { repo: "whoosh" },
};

describe("council", () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let a1: BusAgent;
  let a2: BusAgent;

  before(async () => {
    server = await NatsServer.start();
    nc = await bridgeConnection(server);
    await presenceBucket(nc);
    const join = (agentId: string): Promise<BusAgent> =>
      connectAgent({
        servers: server.url,
        agentId,
        user: "agent",
        password: PASSWORDS.agent,
        logger: silentLogger,
        requestTimeoutMs: 2000,
      });
    [a1, a2] = await Promise.all([join("agent-1"), join("agent-2")]);
  });
  after(async () => {
    await Promise.all([a1?.close(), a2?.close()]);
    await nc?.close();
    await server?.stop();
  });

  const publish = async (body: unknown): Promise<void> => {
    nc.publish(
      "chorus.council.opportunities",
      typeof body === "string" ? body : JSON.stringify(body),
    );
    await nc.flush();
  };

  test("opportunities: decoded, defaults filled, invalid ones skipped", async () => {
    const received = a1.opportunities();
    await publish("not json");
    await publish({ id: "bad id!", roles: [{ name: "tpm" }] });
    await publish({ id: "council-empty", roles: [] });
    await publish({ id: "council-noname", roles: [{ name: "" }] });
    await publish({ id: "x".repeat(129), roles: [{ name: "tpm" }] });
    await publish({
      id: "council-huge",
      roles: [{ name: "tpm" }],
      details: { pad: "x".repeat(70000) },
    });
    await publish({ id: "council-min", roles: [{ name: "tpm" }], extra: "ignored" });
    await publish(OPPORTUNITY);
    const got: CouncilOpportunity[] = [];
    await first("two valid opportunities", received, (o) => got.push(o) >= 2);
    assert.deepEqual(got[0], {
      id: "council-min",
      roles: [{ name: "tpm", core: false }],
      project: "",
      title: "",
      deadline: null,
      details: {},
    });
    assert.deepEqual(got[1], OPPORTUNITY);
  });

  test("an opportunity that arrived before anyone iterates is kept for the reader", async () => {
    await publish({ ...OPPORTUNITY, id: "council-early" });
    const got = await first(
      "the early opportunity",
      a2.opportunities(),
      (o) => o.id === "council-early",
    );
    assert.equal(got.title, "Build the API");
  });

  test("a reader that falls behind loses the oldest opportunities past 1024, and a line says so", async () => {
    const lines: [string, Record<string, unknown>][] = [];
    const slow = await connectAgent({
      servers: server.url,
      agentId: "agent-slow",
      user: "agent",
      password: PASSWORDS.agent,
      logger: (_level, event, fields) => lines.push([event, fields]),
    });
    try {
      for (let i = 0; i < QUEUE_LIMIT + 76; i++) {
        nc.publish(
          "chorus.council.opportunities",
          JSON.stringify({ id: `council-${i}`, roles: [{ name: "tpm" }] }),
        );
      }
      await nc.flush();
      await slow.flush(); // all of them delivered to the agent's connection
      const got = await first("the oldest one kept", slow.opportunities());
      assert.equal(got.id, "council-76");
      const overflow = lines.filter(([event]) => event === "agent_stream_overflow");
      assert.deepEqual(overflow[0]?.[1], {
        agent_id: "agent-slow",
        stream: "opportunities",
        dropped: 1,
      });
    } finally {
      await slow.close();
    }
  });

  test("ack: {agent_id, opportunity_id} on <prefix>.council.<id>.acks.<agent id>", async () => {
    const acks = nc.subscribe("chorus.council.*.acks.*");
    await nc.flush();
    await a1.ack("council-42");
    const msg = await first("the ack", acks);
    acks.unsubscribe();
    assert.equal(msg.subject, "chorus.council.council-42.acks.agent-1");
    assert.deepEqual(msg.json(), { agent_id: "agent-1", opportunity_id: "council-42" });
    assert.equal(msg.reply ?? "", "");
  });

  test("ack and claim refuse an opportunity id that is not one subject token", async () => {
    for (const id of ["", "a.b", "a*", "a b", "x".repeat(129)]) {
      await assert.rejects(a1.ack(id), InvalidArgumentError);
      await assert.rejects(a1.claim(id, "tpm"), InvalidArgumentError);
    }
    await assert.rejects(a1.claim("council-42", ""), InvalidArgumentError);
  });

  /**
   * The bridge's side of claims as DESIGN.md specifies it: the first valid claim of a role
   * wins; an agent holds one role per opportunity; answers go only to the claiming agent's
   * inbox (`_INBOX.<agent id>.…`). `seen` gets each claim as it came.
   */
  function standInBridge(seen: Msg[] = []): Subscription {
    const holders = new Map<string, string>();
    return nc.subscribe("chorus.council.*.claims.*", {
      callback: (_err, msg) => {
        seen.push(msg);
        const agentId = msg.subject.split(".").at(-1) ?? "";
        if (!msg.reply?.startsWith(`_INBOX.${agentId}.`)) return; // not that agent's inbox
        const { role } = msg.json<{ role: string }>();
        const held = holders.get(role);
        const other = [...holders].find(([, holder]) => holder === agentId);
        let answer: object;
        if (!OPPORTUNITY.roles.some((r) => r.name === role)) {
          answer = { granted: false, role, reason: "unknown role", holder: null };
        } else if (held !== undefined) {
          answer = { granted: false, role, reason: "taken", holder: held };
        } else if (other !== undefined) {
          answer = { granted: false, role, reason: "holds another role", holder: null };
        } else {
          holders.set(role, agentId);
          answer = { granted: true, role, holder: agentId };
        }
        msg.respond(JSON.stringify(answer));
      },
    });
  }

  test("claim (protocol shape, stand-in bridge): granted, taken, holds another role, unknown role", async () => {
    const seen: Msg[] = [];
    const bridge = standInBridge(seen);
    await nc.flush();
    try {
      assert.deepEqual(await a1.claim("council-42", "tpm"), {
        granted: true,
        role: "tpm",
        holder: "agent-1",
      });
      assert.deepEqual(await a2.claim("council-42", "tpm"), {
        granted: false,
        role: "tpm",
        reason: "taken",
        holder: "agent-1",
      });
      assert.deepEqual(await a1.claim("council-42", "qa-engineer"), {
        granted: false,
        role: "qa-engineer",
        reason: "holds another role",
        holder: null,
      });
      assert.deepEqual(await a2.claim("council-42", "chef"), {
        granted: false,
        role: "chef",
        reason: "unknown role",
        holder: null,
      });
      const first = seen[0];
      assert.ok(first);
      assert.equal(first.subject, "chorus.council.council-42.claims.agent-1");
      assert.deepEqual(first.json(), { role: "tpm", agent_id: "agent-1" });
      assert.match(
        first.reply ?? "",
        /^_INBOX\.agent-1\./,
        "the answer goes to the claimer's own inbox",
      );
    } finally {
      await unsubscribed(nc, bridge);
    }
  });

  test("claim (protocol shape): a Holder record as `holder` is read as its agent id", async () => {
    const bridge = nc.subscribe("chorus.council.*.claims.*", {
      callback: (_err, msg) => {
        const holder = {
          opportunity_id: "council-42",
          role: "tpm",
          core: true,
          agent_id: "agent-1",
          via: "bus",
          granted_at: "2026-11-27T00:00:00Z",
        };
        msg.respond(JSON.stringify({ granted: true, role: "tpm", holder }));
      },
    });
    await nc.flush();
    try {
      assert.deepEqual(await a1.claim("council-42", "tpm"), {
        granted: true,
        role: "tpm",
        holder: "agent-1",
      });
    } finally {
      await unsubscribed(nc, bridge);
    }
  });

  test("claim with no bridge: NoAnswerError that says so, at once", async () => {
    await assert.rejects(a1.claim("council-42", "tpm"), (err: unknown) => {
      assert.ok(err instanceof NoAnswerError, String(err));
      assert.equal(err.noResponders, true);
      assert.equal(err.subject, "chorus.council.council-42.claims.agent-1");
      assert.match(
        err.message,
        /no answer to the claim of role "tpm" of opportunity council-42: nobody listens .*is the bridge running/,
      );
      return true;
    });
  });

  test("claim that a listener never answers: NoAnswerError after the timeout", async () => {
    const silent = nc.subscribe("chorus.council.*.claims.*");
    await nc.flush();
    try {
      const started = Date.now();
      await assert.rejects(a1.claim("council-42", "tpm", { timeoutMs: 300 }), (err: unknown) => {
        assert.ok(err instanceof NoAnswerError, String(err));
        assert.equal(err.noResponders, false);
        assert.match(err.message, /within 300 ms/);
        return true;
      });
      assert.ok(Date.now() - started >= 300);
    } finally {
      await unsubscribed(nc, silent);
    }
  });

  test("claim answered with something else, or with the bridge's error: BadAnswerError", async () => {
    const answers = [
      { data: '{"granted": "yes"}', headers: undefined, expect: /not what the contract says/ },
      {
        data: '{"error": "opportunity council-42 is not recorded", "field": null}',
        headers: undefined,
        expect: /refused .*not recorded/,
      },
    ];
    for (const answer of answers) {
      const bridge = nc.subscribe("chorus.council.*.claims.*", {
        callback: (_err, msg) => {
          msg.respond(answer.data);
        },
      });
      await nc.flush();
      try {
        await assert.rejects(a1.claim("council-42", "tpm"), (err: unknown) => {
          assert.ok(err instanceof BadAnswerError, String(err));
          assert.match(err.message, answer.expect);
          return true;
        });
      } finally {
        await unsubscribed(nc, bridge);
      }
    }
  });
});
