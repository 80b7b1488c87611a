// Drives the tenant console in headless Chromium (tests/console.rs runs it): sign in with the
// dev token endpoint, upload a document with the file picker and one by drag and drop, ask a
// question, wait for the streamed answer and its sources, read the usage table, take a
// screenshot; then sign in again in a fresh tab with a pasted token (a bad one first).
// Prints what it saw as one JSON object on stdout; tests/console.rs asserts on it.
//
// Environment: CONSOLE_URL, CONSOLE_TENANT, CONSOLE_TOKEN (to paste), CONSOLE_FILE (a .md file
// to upload), CONSOLE_SCREENSHOT (PNG path). NODE_PATH must hold playwright-core.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

async function main() {
  const url = env("CONSOLE_URL");
  const origin = new URL(url).origin;
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tenantry-console-chromium-"));
  // Everything that would reach the network (updates, sync, field trials) is off.
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
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
    viewport: { width: 1100, height: 900 },
  });
  const seen = { errors: [], foreign: [] };
  const watch = (page) => {
    page.setDefaultTimeout(60000);
    page.on("console", (m) => m.type() === "error" && seen.errors.push(m.text()));
    page.on("pageerror", (e) => seen.errors.push(String(e)));
    page.on("request", (r) => {
      if (!r.url().startsWith(origin)) seen.foreign.push(r.url());
    });
  };
  try {
    const page = context.pages()[0] || (await context.newPage());
    watch(page);
    const loaded = await page.goto(url);
    seen.csp = loaded.headers()["content-security-policy"];

    // Sign in through /dev/token.
    await page.locator("#dev-form").waitFor({ state: "visible" });
    seen.app_visible_before = await page.isVisible("#app");
    await page.fill("#dev-tenant", env("CONSOLE_TENANT"));
    await page.click("#dev-form button[type=submit]");
    await page.locator("#app").waitFor({ state: "visible" });
    seen.who = await page.textContent("#who");
    seen.signin_visible_after = await page.isVisible("#signin");
    seen.stored_token = await page.evaluate(() => sessionStorage.getItem("tenantry.token") !== null);

    // Upload with the file picker, then by drag and drop (with a file of a refused kind).
    const file = env("CONSOLE_FILE");
    await page.setInputFiles("#file", file);
    await page.locator("#docs li", { hasText: path.basename(file) }).waitFor();
    seen.upload_status = await page.textContent("#upload-status");
    seen.upload_progress = await page.evaluate(() => {
      const p = document.getElementById("upload-progress");
      return [p.value, p.max];
    });
    await page.evaluate(() => {
      const dt = new DataTransfer();
      dt.items.add(new File(["Acme ships worldwide from Rotterdam. Shipping is free over 50 euros."], "shipping.txt", { type: "text/plain" }));
      dt.items.add(new File(["%PDF-1.4"], "scan.pdf", { type: "application/pdf" }));
      const drop = document.getElementById("drop");
      drop.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    });
    await page.locator("#docs li", { hasText: "shipping.txt" }).waitFor();
    seen.docs_error = await page.textContent("#docs-error");
    seen.documents = await page.locator("#docs li").allTextContents();
    seen.more_visible = await page.isVisible("#docs-more");

    // Ask: the answer streams in, with its sources.
    const chat = page.waitForResponse((r) => r.url().endsWith("/v1/chat/completions"));
    await page.fill("#question", "What is the refund policy?");
    await page.click("#ask");
    const response = await chat;
    seen.chat_request = JSON.parse(response.request().postData());
    seen.chat_content_type = response.headers()["content-type"];
    const answer = page.locator(".msg.assistant[data-done=true]");
    await answer.waitFor();
    seen.answer = await answer.locator(".answer").textContent();
    seen.sources = await answer.locator(".sources li").allTextContents();

    // Usage, refreshed after the answer.
    await page.locator('#usage tr[data-usage="Documents"] td', { hasText: "2 /" }).waitFor();
    seen.usage = await page.$$eval("#usage tr", (rows) =>
      Object.fromEntries(rows.map((r) => [r.dataset.usage, r.cells[1].textContent])),
    );
    await page.screenshot({ path: env("CONSOLE_SCREENSHOT"), fullPage: true });

    // A fresh tab has no token (sessionStorage is per tab): paste one, a bad one first.
    const tab = await context.newPage();
    watch(tab);
    await tab.goto(url);
    await tab.fill("#token", "not-a-token");
    await tab.click("#token-form button[type=submit]");
    await tab.locator("#signin-error", { hasText: "Token refused" }).waitFor();
    seen.bad_token = await tab.textContent("#signin-error");
    // The refused request's console message is expected; nothing else may log an error.
    seen.errors = seen.errors.filter((e) => !e.includes("401"));
    await tab.fill("#token", env("CONSOLE_TOKEN"));
    await tab.click("#token-form button[type=submit]");
    await tab.locator("#docs li", { hasText: "shipping.txt" }).waitFor();
    seen.pasted_documents = await tab.locator("#docs li").allTextContents();
    await tab.click("#signout");
    await tab.locator("#signin").waitFor({ state: "visible" });
    seen.signed_out = await tab.evaluate(() => sessionStorage.getItem("tenantry.token") === null);
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(seen) + "\n");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
