// End-to-end test of the web dashboard in a real headless browser (Debian's
// chromium driven by playwright-core), against a running `inference-hub demo`.
// The page must load, list the demo's devices, and show in its live feed an
// anomaly injected now: a new device publishes 300 normal readings and then a
// spike through the demo's MQTT broker (device -> broker -> edge agent -> hub
// -> SSE -> page). Screenshots go to the output directory.
//
// Usage: node dashboard.mjs <api-url> <mqtt-url> <screenshot-dir>
// Run by .ci/run (which installs chromium, playwright-core and mqtt).
import { chromium } from "playwright-core";
import mqtt from "mqtt";

const [api, broker, out] = process.argv.slice(2);
const fail = (msg) => { console.error("dashboard test FAILED: " + msg); process.exit(1); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(api + "/", { waitUntil: "domcontentloaded" });
  await page.waitForFunction(() => document.querySelectorAll("#devices tbody tr").length >= 3, null, { timeout: 60000 })
    .catch(() => fail("the fleet table never listed the demo's devices"));
  const rows = await page.$$eval("#devices tbody tr", (trs) => trs.map((t) => t.dataset.device));
  console.log(`dashboard lists ${rows.length} devices, e.g. ${rows.slice(0, 3).join(", ")}`);
  await page.screenshot({ path: `${out}/dashboard-fleet.png`, fullPage: true });

  // Inject: a device the demo does not have, normal for 300 readings, then a spike.
  const client = await mqtt.connectAsync(broker, { clientId: "dashboard-test", clean: true });
  const device = "browser-probe-" + Date.now();
  const t0 = Date.now() - 400_000;
  for (let i = 0; i < 300; i++) {
    const value = 20 + Math.sin(i / 10) + 0.1 * Math.sin(i * 7.3);
    await client.publishAsync(`site1/${device}/temp`, JSON.stringify({ value, ts: t0 + i * 1000 }), { qos: 1 });
  }
  await client.publishAsync(`site1/${device}/temp`, JSON.stringify({ value: 80, ts: t0 + 300 * 1000 }), { qos: 1 });
  await client.endAsync();
  await page.waitForSelector(`#feed li[data-device="${device}"]`, { timeout: 60000 })
    .catch(() => fail(`the injected anomaly of ${device} never appeared in the live feed`));
  const item = await page.textContent(`#feed li[data-device="${device}"]`);
  console.log("live feed shows: " + item.trim());
  await page.screenshot({ path: `${out}/dashboard-anomaly.png`, fullPage: true });
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log(`dashboard test passed; screenshots in ${out}`);
} finally {
  await browser.close();
}
