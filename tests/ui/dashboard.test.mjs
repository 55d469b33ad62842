// End-to-end test of the dashboard (GET /ui) in headless Chromium, driven by playwright-core.
//
// scripts/ui-test.sh prepares everything and runs this file with `node --test`: a kafka-retry
// process with API_TOKEN set, on its own Redis key prefix, holding two dead tasks. Environment:
//   UI_BASE_URL     the service, e.g. http://127.0.0.1:41234
//   UI_API_TOKEN    its API_TOKEN
//   UI_RETRY_TASK   a dead task to retry from the page
//   UI_DELETE_TASK  a dead task to delete from the page
//   UI_SCREENSHOT   where to save the screenshot [../../target/ui/dashboard.png]
//   CHROMIUM        the browser [/usr/bin/chromium]

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const BASE = required("UI_BASE_URL").replace(/\/$/, "");
const TOKEN = required("UI_API_TOKEN");
const RETRY_TASK = required("UI_RETRY_TASK");
const DELETE_TASK = required("UI_DELETE_TASK");
const SCREENSHOT = path.resolve(process.env.UI_SCREENSHOT || path.join(here, "../../target/ui/dashboard.png"));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

// Generous: the machine may be a slow 2-core box with Kafka, Redis and a debug build running.
const WAIT = 30_000;

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set; run this test through scripts/ui-test.sh`);
  return value;
}

async function api(method, route) {
  const response = await fetch(BASE + route, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}` },
  });
  const text = await response.text();
  let body = text;
  try { body = JSON.parse(text); } catch { /* metrics are text */ }
  return { status: response.status, body };
}

async function task(id) {
  return api("GET", `/tasks/${id}`);
}

async function deadTotal() {
  const { status, body } = await api("GET", "/tasks?state=dead&limit=1");
  assert.equal(status, 200, JSON.stringify(body));
  return body.total;
}

async function metric(name) {
  const { status, body } = await api("GET", "/metrics");
  assert.equal(status, 200);
  const line = body.split("\n").find((l) => l.startsWith(name + " "));
  return line ? Number(line.split(/\s+/)[1]) : 0;
}

// Polls `check` until it returns a truthy value, or fails with the last thing it saw.
async function eventually(what, check, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; last seen: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

let context;
let page;
let profile;
const pageErrors = [];

before(async () => {
  profile = await mkdtemp(path.join(tmpdir(), "kafka-retry-ui-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1360, height: 900 },
    timeout: 60_000,
  });
  context.setDefaultTimeout(WAIT);
  page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push(`${m.text()} (${m.location().url})`); });
  // Any request the page makes must stay on the service: no CDNs, no external URLs.
  page.on("request", (r) => {
    if (!r.url().startsWith(BASE) && !r.url().startsWith("data:")) pageErrors.push(`external request: ${r.url()}`);
  });
});

after(async () => {
  await context?.close();
  if (profile) await rm(profile, { recursive: true, force: true });
});

// Runs a test; on failure, keeps a picture of what the page showed.
function uiTest(name, fn) {
  test(name, { timeout: 90_000 }, async (t) => {
    try {
      await fn(t);
    } catch (e) {
      const file = SCREENSHOT.replace(/\.png$/, "") + "-failure.png";
      if (page) {
        await mkdir(path.dirname(file), { recursive: true }).catch(() => {});
        await page.screenshot({ path: file, fullPage: true }).then(() => t.diagnostic(`failure screenshot: ${file}`), () => {});
      }
      throw e;
    }
  });
}

const row = (id) => page.locator(`#dead-rows tr[data-task-id="${id}"]`);

uiTest("without a token the page says the API needs one", async () => {
  const response = await page.goto(`${BASE}/ui`, { waitUntil: "load" });
  assert.equal(response.status(), 200);
  assert.match(await page.title(), /kafka-retry/);
  const alert = page.getByRole("alert");
  await alert.waitFor({ state: "visible" });
  await page.waitForFunction(() => /401/.test(document.getElementById("alert").textContent));
  const text = await alert.textContent();
  assert.match(text, /needs an API token/);
  assert.match(text, /missing or invalid bearer token/);
  assert.equal(await page.locator("#dead-rows tr").count(), 0);
  await mkdir(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT.replace(/\.png$/, "") + "-401.png" });
});

uiTest("with the token it shows counts, lateness, counters and both dead tasks", async () => {
  await page.getByLabel("API token").fill(TOKEN);
  await page.getByRole("button", { name: "Save token" }).click();
  await page.getByRole("alert").waitFor({ state: "hidden" });
  assert.equal(await deadTotal(), 2, "the API holds the two dead tasks the script made");
  await page.waitForFunction(() => document.getElementById("count-dead").textContent === "2");
  assert.equal(await page.locator("#count-scheduled").textContent(), "0");
  assert.equal(await page.locator("#count-in_flight").textContent(), "0");
  assert.equal(await page.evaluate(() => localStorage.getItem("kafka-retry.api-token")), TOKEN);

  for (const id of [RETRY_TASK, DELETE_TASK]) {
    const r = row(id);
    await r.waitFor();
    const cells = await r.locator("td").allTextContents();
    const { body } = await task(id);
    assert.equal(cells[0], id);
    assert.equal(cells[1], `${body.destination.topic} / 7`);
    assert.equal(cells[2], "1 / 1");
    assert.match(cells[3], /Unknown partition/i);
    assert.equal(await r.locator("time").getAttribute("datetime"), body.died_at);
    await r.getByRole("button", { name: `Retry task ${id}` }).waitFor();
    await r.getByRole("button", { name: `Delete task ${id}` }).waitFor();
  }
  // The newest death comes first.
  const ids = await page.locator("#dead-rows tr").evaluateAll((rows) => rows.map((r) => r.dataset.taskId));
  const died = await Promise.all(ids.map(async (id) => Date.parse((await task(id)).body.died_at)));
  assert.ok(died[0] >= died[1], `rows newest first: ${ids.join(", ")}`);

  // Both tasks were claimed once: lateness and counters come from /metrics.
  assert.equal(await page.locator("#lateness-count").textContent(), "2");
  assert.match(await page.locator("#lateness-p50").textContent(), /^\d+(\.\d+)? (ms|s)$/);
  assert.match(await page.locator("#lateness-p99").textContent(), /^\d+(\.\d+)? (ms|s)$/);
  assert.equal(await page.locator("#counter-created").textContent(), "2");
  assert.equal(await page.locator("#counter-failed").textContent(), "2");
  assert.equal(await page.locator("#counter-processed").textContent(), "0");
});

uiTest("Retry puts the dead task back in the schedule", async () => {
  const before = (await task(RETRY_TASK)).body;
  assert.equal(before.state, "dead");
  const revivedBefore = await metric("kafka_retry_tasks_revived_total");

  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url() === `${BASE}/tasks/${RETRY_TASK}/retry` && r.request().method() === "POST"),
    row(RETRY_TASK).getByRole("button", { name: `Retry task ${RETRY_TASK}` }).click(),
  ]);
  assert.equal(response.status(), 200, await response.text());
  assert.match((await response.json()).message, /fresh retry budget/);
  // The row goes and the dead count drops at once; the next refresh comes a full interval later.
  await page.waitForFunction(
    (id) => !document.querySelector(`#dead-rows tr[data-task-id="${id}"]`) &&
      document.getElementById("count-dead").textContent === "1",
    RETRY_TASK,
  );
  await page.getByRole("status").filter({ hasText: "scheduled again" }).waitFor();

  // Through the API: the task left the dead set. With its destination partition missing it
  // fails again within milliseconds, so it may already be dead again, but then it died later.
  assert.equal(await metric("kafka_retry_tasks_revived_total"), revivedBefore + 1);
  const now = (await task(RETRY_TASK)).body;
  assert.ok(
    now.state !== "dead" || Date.parse(now.died_at) > Date.parse(before.died_at),
    `the task left the dead state: before ${JSON.stringify(before)}, now ${JSON.stringify(now)}`,
  );

  // Once its fresh attempt fails, auto-refresh shows it again with its new time of death.
  const again = await eventually("the retried task to die again", async () => {
    const t = (await task(RETRY_TASK)).body;
    return t.state === "dead" && Date.parse(t.died_at) > Date.parse(before.died_at) && t;
  });
  await page.waitForFunction(
    ({ id, diedAt }) => document.querySelector(`#dead-rows tr[data-task-id="${id}"] time`)?.dateTime === diedAt,
    { id: RETRY_TASK, diedAt: again.died_at },
    { timeout: WAIT },
  );
});

uiTest("Delete removes the dead task for good", async () => {
  const totalBefore = await deadTotal();
  let asked = null;
  page.once("dialog", (dialog) => {
    asked = { type: dialog.type(), message: dialog.message() };
    dialog.accept().catch(() => {});
  });
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url() === `${BASE}/tasks/${DELETE_TASK}` && r.request().method() === "DELETE"),
    row(DELETE_TASK).getByRole("button", { name: `Delete task ${DELETE_TASK}` }).click(),
  ]);
  assert.equal(asked?.type, "confirm", "Delete asks first");
  assert.match(asked.message, new RegExp(DELETE_TASK));
  assert.equal(response.status(), 200, await response.text());
  await row(DELETE_TASK).waitFor({ state: "detached" });
  await page.getByRole("status").filter({ hasText: "deleted" }).waitFor();
  assert.equal((await task(DELETE_TASK)).status, 404);
  assert.equal(await deadTotal(), totalBefore - 1);

  // The next refresh agrees: one dead task left, the retried one.
  await page.getByRole("button", { name: "Refresh now" }).click();
  await page.waitForFunction(() => document.getElementById("count-dead").textContent === "1");
  await row(RETRY_TASK).waitFor();
  assert.equal(await page.locator("#dead-rows tr").count(), 1);
  assert.equal(await page.getByRole("alert").isHidden(), true);

  await mkdir(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  console.log(`screenshot: ${SCREENSHOT}`);
});

test("the page made no external requests and raised no script errors", () => {
  // The 401s of the first test are logged by Chromium as failed resource loads; nothing else may be.
  const unexpected = pageErrors.filter((e) => !/status of 401/.test(e));
  assert.deepEqual(unexpected, []);
});
