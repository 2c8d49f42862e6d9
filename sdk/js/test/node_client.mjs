// Drives a real Node SDK (@segment/analytics-node or posthog-node) against AAP, then
// prints what it sent as JSON: one line per call with the id the test can look for.
//
//   node node_client.mjs segment|posthog URL KEY TAG
const [sdk, url, key, tag] = process.argv.slice(2);
const t0 = Date.parse("2026-08-01T09:00:00Z");
const at = (s) => new Date(t0 + s * 1000);
const id = (n) => `00000000-0000-4000-8000-${tag.padStart(6, "0").slice(-6)}${String(n).padStart(6, "0")}`;
const anon = `node-anon-${sdk}-${tag}`;
const user = `node-user-${sdk}-${tag}`;
const sent = [];

if (sdk === "segment") {
  const { Analytics } = await import("@segment/analytics-node");
  const a = new Analytics({ writeKey: key, host: url, flushAt: 3, maxRetries: 0 });
  a.on("error", (e) => {
    console.error("analytics-node error", e);
    process.exitCode = 1;
  });
  const calls = [
    ["page", { anonymousId: anon, name: "Home", properties: { path: "/", url: "https://shop.example/" } }],
    ["track", { anonymousId: anon, event: "Search", properties: { q: "mug" } }],
    ["identify", { userId: user, anonymousId: anon, traits: { plan: "pro" } }],
    ["track", { userId: user, event: "Order Completed", properties: { revenue: 20 } }],
    ["group", { userId: user, groupId: `org-${sdk}-${tag}`, traits: { name: "Acme" } }],
    ["alias", { userId: `node-login-${sdk}-${tag}`, previousId: user }],
  ];
  calls.forEach(([type, params], i) => {
    const p = { ...params, messageId: id(i), timestamp: at(i * 5) };
    a[type](p);
    sent.push({ id: p.messageId, type, event: params.event ?? null, ts: p.timestamp.toISOString() });
  });
  await a.closeAndFlush({ timeout: 20000 });
} else if (sdk === "posthog") {
  const { PostHog } = await import("posthog-node");
  const c = new PostHog(key, { host: url, flushAt: 3, flushInterval: 0, fetchRetryCount: 0, disableGeoip: true });
  c.on("error", (e) => {
    console.error("posthog-node error", e);
    process.exitCode = 1;
  });
  const capture = (i, distinctId, event, properties) => {
    c.capture({ distinctId, event, properties, uuid: id(i), timestamp: at(i * 5) });
    sent.push({ id: id(i), type: event === "$pageview" ? "page" : "track", event, ts: at(i * 5).toISOString() });
  };
  capture(0, anon, "$pageview", { $current_url: "https://shop.example/docs", $pathname: "/docs", $is_identified: false, $device_id: anon });
  capture(1, anon, "Docs Read", { minutes: 3, $is_identified: false, $device_id: anon });
  c.identify({ distinctId: user, properties: { $set: { plan: "pro" }, $anon_distinct_id: anon } });
  sent.push({ id: null, type: "identify", event: null });
  capture(3, user, "Order Completed", { revenue: 20 });
  c.alias({ distinctId: user, alias: `node-login-${sdk}-${tag}` });
  sent.push({ id: null, type: "alias", event: null });
  c.groupIdentify({ groupType: "company", groupKey: `org-${sdk}-${tag}`, properties: { name: "Acme" }, distinctId: user });
  sent.push({ id: null, type: "group", event: null });
  await c.shutdown(20000);
} else {
  console.error(`unknown sdk ${sdk}`);
  process.exit(2);
}
console.log(JSON.stringify(sent));
