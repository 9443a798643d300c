// What an operator or a coordinator does with chorus-bridge, through the official JavaScript
// NATS client, under one user of nats.conf. One JSON line per step on stdout; exit status 1
// with {"error": ...} on the first failure.
//
// Environment: NATS_URL, NATS_USER, NATS_PASSWORD, INBOX_PREFIX (the user's, as in nats.conf),
// PREFIX (subject prefix, default chorus), OPPORTUNITY (JSON of a council opportunity).
// STEPS: the steps to run, comma-separated (default: all), for users that may not do all.
// After the line {"step": "watching"} it waits (20 s at most) for one announcement.
import { connect } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { Svcm } from "@nats-io/services";

const env = process.env;
const prefix = env.PREFIX ?? "chorus";
const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");

async function drain(iterator) {
  const out = [];
  for await (const item of iterator) out.push(item);
  return out;
}

async function buckets(kvm) {
  const names = [];
  for await (const status of kvm.list()) names.push(status.bucket);
  say({ step: "buckets", names: names.sort() });
}

async function agents(kvm) {
  const kv = await kvm.open(`${prefix}_agents`);
  const keys = (await drain(await kv.keys())).sort();
  const agents = [];
  for (const key of keys) agents.push((await kv.get(key)).json());
  say({ step: "agents", keys, agents });
}

// `nats kv watch BUCKET`: the current values first; stops after `count` of them (20 s at most).
async function watchBucket(kvm, bucket, count) {
  const kv = await kvm.open(bucket);
  const watcher = await kv.watch();
  const keys = [];
  const timer = setTimeout(() => watcher.stop(), 20000);
  for await (const entry of watcher) {
    if (entry.operation === "PUT") keys.push(entry.key);
    if (keys.length >= count) break;
  }
  clearTimeout(timer);
  watcher.stop();
  const status = await kv.status();  // `nats kv info BUCKET`
  say({ step: `watch ${bucket}`, keys: keys.sort(), values: status.values });
}

async function leader(kvm) {
  const kv = await kvm.open(`${prefix}_bridge`);
  const entry = await kv.get("leader");
  say({ step: "leader", value: entry ? entry.json() : null });
}

async function micro(nc) {
  const client = new Svcm(nc).client({ maxWait: 1000 });
  const pings = await drain(await client.ping("chorus-bridge"));
  const infos = await drain(await client.info("chorus-bridge"));
  const stats = await drain(await client.stats("chorus-bridge"));
  say({
    step: "micro",
    pings: pings.map((p) => p.name),
    endpoints: infos.flatMap((i) => i.endpoints.map((e) => [e.name, e.subject, e.queue_group])),
    requests: stats.flatMap((s) => s.endpoints.map((e) => e.num_requests)),
  });
}

async function broadcast(nc) {
  const subject = `${prefix}.bridge.broadcast`;
  const reply = await nc.request(subject, env.OPPORTUNITY, { timeout: 30000 });
  const refused = await nc.request(subject, '{"id": "bad id!", "roles": []}', { timeout: 30000 });
  say({
    step: "broadcast",
    report: reply.json(),
    refused: refused.json(),
    refused_code: refused.headers?.get("Nats-Service-Error-Code") ?? null,
  });
}

async function watch(nc) {
  const sub = nc.subscribe(`${prefix}.agents.announce`, { max: 1, timeout: 20000 });
  await nc.flush();
  say({ step: "watching" });
  for await (const msg of sub) say({ step: "announcement", announcement: msg.json() });
}

async function main() {
  const nc = await connect({
    servers: env.NATS_URL, user: env.NATS_USER, pass: env.NATS_PASSWORD,
    inboxPrefix: env.INBOX_PREFIX || undefined, timeout: 5000, reconnect: false,
  });
  const kvm = new Kvm(nc);
  const steps = {
    buckets: () => buckets(kvm),
    agents: () => agents(kvm),
    watch_agents: () => watchBucket(kvm, `${prefix}_agents`, Number(env.AGENTS ?? 1)),
    watch_presence: () => watchBucket(kvm, `${prefix}_presence`, Number(env.ON_BUS ?? 1)),
    leader: () => leader(kvm),
    micro: () => micro(nc),
    broadcast: () => broadcast(nc),
    watch: () => watch(nc),
  };
  const wanted = env.STEPS ? env.STEPS.split(",") : Object.keys(steps);
  try {
    for (const name of wanted) await steps[name]();
  } finally {
    await nc.close();
  }
}

main().then(
  () => process.exit(0),
  (err) => { say({ error: String(err?.message ?? err) }); process.exit(1); },
);
