// The console in a real browser (Debian's chromium driven by playwright-core), run by
// tests/suite/console_browser.rs, which owns the services. It asks the test for actions with lines
// "@action" on stdout and waits for "ok" on stdin. Env: BASE, ADMIN, PASSWORD, TICKET_A
// (queued, no worker yet), TICKET_B (a slow upload), TICKET_C (fails once), GROUP (a
// publication group, queued) and GROUP_TICKETS (its tickets, comma-separated), SHOTS (folder).
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_DIR + "/node_modules/playwright-core");
const readline = require("readline");

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const BASE = env("BASE");
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(action) {
  process.stdout.write(`@${action}\n`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== "ok") throw new Error(`${action}: the test answered ${value}`);
}
const log = (...a) => console.error("[browser]", ...a);
const stateOf = (page) => page.locator("#ticket").getAttribute("data-state");
async function waitState(page, wanted, timeout) {
  await page.waitForFunction(
    (w) => w.includes(document.getElementById("ticket")?.dataset.state),
    wanted,
    { timeout },
  );
}
async function act(page, ticket, action) {
  await page.goto(`${BASE}/console/tickets/${ticket}`);
  await page.locator(`form[action$="/${action}"] button`).click();
  await page.waitForURL(`**/console/tickets/${ticket}/${action}`);
  await page.locator("#confirm").click();
  await page.waitForURL(`**/console/tickets/${ticket}`);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  page.on("pageerror", (e) => problems.push(String(e)));

  // Anonymous: the login page; then in as an administrator.
  await page.goto(`${BASE}/console`);
  if (!page.url().endsWith("/console/login")) throw new Error(`not sent to login: ${page.url()}`);
  await page.fill('input[name="login"]', env("ADMIN"));
  await page.fill('input[name="password"]', env("PASSWORD"));
  await page.click('button[type="submit"]');
  await page.waitForURL(`${BASE}/console`);
  await page.locator("#live[data-live=on]").waitFor();
  log("logged in");

  // Ticket A, queued with no worker running; the Workers page in a second tab.
  const a = env("TICKET_A");
  await page.goto(`${BASE}/console/tickets/${a}`);
  await page.locator("#live[data-live=on]").waitFor();
  if ((await stateOf(page)) !== "queued") throw new Error(`A is ${await stateOf(page)}`);
  await page.evaluate(() => { window.__notReloaded = true; });
  const workers = await context.newPage();
  await workers.goto(`${BASE}/console/workers`);
  await workers.locator("#live[data-live=on]").waitFor();
  if ((await workers.locator("#workers tbody tr").count()) !== 0) throw new Error("a worker before any started");
  // The group's page, its targets queued, in a third tab.
  const group = await context.newPage();
  const groupTickets = env("GROUP_TICKETS").split(",");
  await group.goto(`${BASE}/console/groups/${env("GROUP")}`);
  await group.locator("#live[data-live=on]").waitFor();
  const targetStates = () => group.locator("#targets tbody tr").evaluateAll((rows) =>
    rows.map((r) => [r.dataset.ticket, r.querySelector('[data-field="state"]').dataset.state]));
  const queued = JSON.stringify(groupTickets.map((t) => [t, "queued"]));
  if (JSON.stringify(await targetStates()) !== queued) throw new Error(`group: ${JSON.stringify(await targetStates())}`);
  await group.evaluate(() => { window.__notReloaded = true; });

  await ask("start-worker");
  await workers.locator("#workers tbody tr").first().waitFor({ timeout: 30000 });
  log("worker appeared:", await workers.locator("#workers tbody tr").first().innerText());
  await waitState(page, ["complete"], 120000);
  if (!(await page.evaluate(() => window.__notReloaded))) throw new Error("the ticket page was reloaded");
  log("A went queued -> complete without a reload");
  // The group's targets and its aggregate follow the feed too.
  await group.waitForFunction(() => {
    const states = [...document.querySelectorAll('#targets [data-field="state"]')].map((s) => s.dataset.state);
    const aggregate = document.querySelector('#group-summary [data-field="state"]');
    return states.length === 2 && states.every((s) => s === "complete") && aggregate.dataset.state === "complete";
  }, null, { timeout: 120000 });
  if (!(await group.evaluate(() => window.__notReloaded))) throw new Error("the group page was reloaded");
  if ((await group.locator("#cancel-group").count()) !== 0) throw new Error("Cancel group offered for a complete group");
  log("the group's targets went queued -> complete without a reload");
  // Shown afresh: attempts, chart, and the Glance image's state asked of the cloud.
  await page.reload();
  await page.locator("#glance-state").waitFor({ timeout: 30000 });
  const glance = await page.locator("#glance-state").innerText();
  if (!glance.includes("active")) throw new Error(`A's Glance image: ${glance}`);
  if ((await page.locator("ol.timeline li").count()) < 1) throw new Error("no attempt shown");
  await page.screenshot({ path: `${env("SHOTS")}/ticket.png`, fullPage: true });

  // B uploads slowly: cancel it from its page while it runs.
  const b = env("TICKET_B");
  await page.goto(`${BASE}/console/tickets/${b}`);
  await page.waitForFunction(() => {
    const t = document.getElementById("ticket");
    return t.dataset.state === "running" && Number(t.querySelector('[data-field="percentage"]').textContent) > 0;
  }, null, { timeout: 60000 });
  await act(page, b, "cancel");
  await waitState(page, ["cancelled"], 60000);
  log("B cancelled while running");

  // C failed once (Glance refused): retry it from its page.
  const c = env("TICKET_C");
  await page.goto(`${BASE}/console/tickets/${c}`);
  await waitState(page, ["error"], 60000);
  await act(page, c, "retry");
  await waitState(page, ["complete"], 120000);
  log("C retried and complete");

  // Filter the list.
  await page.goto(`${BASE}/console/tickets`);
  await page.selectOption('select[name="state"]', "cancelled");
  await page.click('form.filters button[type="submit"]');
  await page.waitForURL("**/console/tickets?state=cancelled**");
  const cancelled = await page.locator("#tickets tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.ticket));
  if (JSON.stringify(cancelled) !== JSON.stringify([b])) throw new Error(`cancelled filter: ${cancelled}`);
  await page.selectOption('select[name="state"]', "complete");
  await page.click('form.filters button[type="submit"]');
  await page.waitForURL("**/console/tickets?state=complete**");
  const complete = await page.locator("#tickets tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.ticket));
  const newestFirst = [...groupTickets].reverse();
  if (JSON.stringify(complete) !== JSON.stringify([...newestFirst, c, a])) throw new Error(`complete filter: ${complete}`);
  log("filters work");

  await page.goto(`${BASE}/console`);
  await page.screenshot({ path: `${env("SHOTS")}/overview.png`, fullPage: true });
  await workers.reload();
  await workers.locator("#live[data-live=on]").waitFor();
  await workers.screenshot({ path: `${env("SHOTS")}/workers.png`, fullPage: true });

  // On a phone: nothing wider than the screen but scrolling tables.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, storageState: await context.storageState() });
  const small = await phone.newPage();
  await small.goto(`${BASE}/console/tickets/${a}`);
  const width = await small.evaluate(() => document.documentElement.scrollWidth);
  if (width > 392) throw new Error(`the ticket page is ${width} px wide on a 390 px phone`);
  await small.screenshot({ path: `${env("SHOTS")}/ticket-phone.png`, fullPage: true });
  await small.goto(`${BASE}/console/groups/${env("GROUP")}`);
  const groupWidth = await small.evaluate(() => document.documentElement.scrollWidth);
  if (groupWidth > 392) throw new Error(`the group page is ${groupWidth} px wide on a 390 px phone`);
  await phone.close();

  // The worker stops: its row goes.
  await ask("stop-worker");
  await workers.locator("#workers tbody tr").first().waitFor({ state: "detached", timeout: 30000 });
  log("worker disappeared");
  if (problems.length) throw new Error(`browser errors: ${problems.join("; ")}`);
  await browser.close();
  process.stdout.write("@done\n");
  process.exit(0); // stdin stays open: the reader would keep node alive
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
