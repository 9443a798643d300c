// Messages between agents: `<prefix>.agents.<recipient>.messages.<sender>`, publish or
// request; the sender from the subject; answers only to the asker's own inbox.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import type { NatsConnection } from "@nats-io/transport-node";

import {
  connectAgent,
  InvalidArgumentError,
  NoAnswerError,
  ReplyRefusedError,
  silentLogger,
  type BusAgent,
  type PeerMessage,
} from "@chorus-bridge/agent";

import { bridgeConnection, first, NatsServer, PASSWORDS, presenceBucket } from "./harness.js";

describe("messages", () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let alice: BusAgent;
  let bob: BusAgent;

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
      });
    [alice, bob] = await Promise.all([join("alice"), join("bob")]);
  });
  after(async () => {
    await Promise.all([alice?.close(), bob?.close()]);
    await nc?.close();
    await server?.stop();
  });

  test("a message both ways: each knows the sender from the subject", async () => {
    await alice.send("bob", "hello bob");
    const atBob = await first("alice's message at bob", bob.messages());
    assert.equal(atBob.sender, "alice");
    assert.equal(atBob.subject, "chorus.agents.bob.messages.alice");
    assert.equal(atBob.string(), "hello bob");
    assert.equal(atBob.replyTo, undefined);

    await bob.send("alice", new TextEncoder().encode(JSON.stringify({ n: 1 })));
    const atAlice = await first("bob's message at alice", alice.messages());
    assert.equal(atAlice.sender, "bob");
    assert.deepEqual(atAlice.json(), { n: 1 });
  });

  test("request and reply: the answer comes back to the asker", async () => {
    const answering = (async () => {
      const msg = await first("alice's request", bob.messages(), (m) => m.replyTo !== undefined);
      // The sender's inbox, for an answer from this recipient: only it may publish there.
      assert.match(msg.replyTo ?? "", /^_INBOX\.alice\.bob\.[^.]+$/);
      msg.reply(`pong to ${msg.sender}: ${msg.string()}`);
    })();
    const reply = await alice.request("bob", "ping");
    await answering;
    assert.equal(reply.string(), "pong to alice: ping");
  });

  test("reply refuses a reply subject that is not the sender's inbox, and a publish", async () => {
    // Anyone with the shared user (or a bug) could name any reply subject: a peer that
    // answered there would publish where the asker chose.
    const steered = nc.subscribe("chorus.agents.carol.messages.bob");
    await nc.flush();
    nc.publish("chorus.agents.bob.messages.alice", "answer onto carol", {
      reply: "chorus.agents.carol.messages.bob",
    });
    const msg = await first("the steered request", bob.messages());
    assert.throws(
      () => msg.reply("x"),
      (err: unknown) => {
        assert.ok(err instanceof ReplyRefusedError);
        assert.match(err.message, /not its inbox \(_INBOX\.alice\.bob\.…\): not answered/);
        return true;
      },
    );
    await alice.send("bob", "no request");
    const plain = await first("a plain message", bob.messages());
    assert.throws(() => plain.reply("x"), ReplyRefusedError);
    // Whatever bob published reached the server before its flush's answer, and was routed
    // to this connection before this connection's flush is answered.
    await bob.flush();
    await nc.flush();
    assert.equal(steered.getReceived(), 0, "nothing was published on the steered subject");
    steered.unsubscribe();
  });

  test("a message whose subject names no sender is skipped", async () => {
    nc.publish("chorus.agents.bob.messages.x.y", "two tokens");
    nc.publish("chorus.agents.bob.messages.dave", "from dave");
    await nc.flush();
    const msg: PeerMessage = await first("a message", bob.messages());
    assert.equal(msg.sender, "dave");
  });

  test("request to an agent nobody is: NoAnswerError at once", async () => {
    await assert.rejects(alice.request("nobody", "hi"), (err: unknown) => {
      assert.ok(err instanceof NoAnswerError);
      assert.equal(err.noResponders, true);
      assert.match(err.message, /nobody listens on chorus\.agents\.nobody\.messages\.alice/);
      return true;
    });
  });

  test("a bad recipient id and an over-size payload are refused before sending", async () => {
    for (const recipient of ["", "bob.x", "*", ">", "b b"]) {
      await assert.rejects(alice.send(recipient, "x"), InvalidArgumentError);
      await assert.rejects(alice.request(recipient, "x"), InvalidArgumentError);
    }
    const tooBig = new Uint8Array(1024 * 1024 + 1); // the server's default max_payload is 1 MB
    await assert.rejects(alice.send("bob", tooBig), (err: unknown) => {
      assert.ok(err instanceof InvalidArgumentError, String(err));
      assert.match(err.message, /max_payload/);
      return true;
    });
  });
});
