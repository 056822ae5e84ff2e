import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { NotFoundError } from "../src/index.js";
import { adminClient, collect, keyClient, NEEDS_SERVER, uniqueSubject } from "./helpers.js";

describe("memories against a live server", { skip: NEEDS_SERVER }, () => {
  test("add, get, update, history, search, delete", async () => {
    const app = await keyClient("app");
    const subject = uniqueSubject("ts-crud");

    const added = await app.memories.add({
      subject,
      text: "My dog is named Biscuit and I live in Lisbon.",
      metadata: { topic: "home" },
      kind: "fact",
    });
    assert.equal(added.subject, subject);
    assert.equal(added.text, "My dog is named Biscuit and I live in Lisbon.");
    assert.deepEqual(added.metadata, { topic: "home" });
    assert.equal(added.status, "active");

    const fetched = await app.memories.get(added.id);
    assert.equal(fetched.id, added.id);
    assert.equal(fetched.text, added.text);

    const updated = await app.memories.update(added.id, { text: "My dog is named Biscuit and I live in Porto." });
    assert.equal(updated.text, "My dog is named Biscuit and I live in Porto.");
    const history = await app.memories.history(added.id);
    assert.equal(history.memory_id, added.id);
    assert.ok(history.events.length >= 2, JSON.stringify(history.events.map((e) => e.action)));

    await app.memories.add({ subject, text: "Prefers window seats on long flights.", kind: "preference" });
    const results = await app.memories.search({ subject, query: "what is my dog called?", k: 2 });
    assert.ok(results.length >= 1);
    assert.equal(results[0]?.id, added.id);
    assert.equal(typeof results[0]?.score, "number");
    const filtered = await app.memories.search({ subject, query: "seats", filters: { kinds: ["preference"] } });
    assert.deepEqual(
      filtered.map((r) => r.kind),
      ["preference"],
    );

    await app.memories.delete(added.id);
    await assert.rejects(app.memories.get(added.id), NotFoundError);
  });

  test("batch add is one operation and returns every memory", async () => {
    const app = await keyClient("app");
    const subject = uniqueSubject("ts-batch");
    const memories = await app.memories.addBatch([
      { subject, text: "Allergic to peanuts." },
      { subject, text: "Works as a nurse.", kind: "fact", importance: 0.9 },
      { subject, text: "Likes jazz.", kind: "preference" },
    ]);
    assert.equal(memories.length, 3);
    assert.deepEqual(
      memories.map((m) => m.text),
      ["Allergic to peanuts.", "Works as a nurse.", "Likes jazz."],
    );
    assert.equal(memories[1]?.importance, 0.9);
  });

  test("list iterates every page, newest first; listPage gives one page", async () => {
    const app = await keyClient("app");
    const subject = uniqueSubject("ts-list");
    const added = [];
    for (let i = 0; i < 5; i++) added.push(await app.memories.add({ subject, text: `Fact number ${i}.` }));

    const first = await app.memories.listPage({ subject, limit: 2 });
    assert.equal(first.items.length, 2);
    assert.ok(first.next_cursor, "a next_cursor on a page that is not the last");

    const all = await collect(app.memories.list({ subject, limit: 2 }));
    assert.equal(all.length, 5);
    assert.deepEqual(new Set(all.map((m) => m.id)), new Set(added.map((m) => m.id)));
    const times = all.map((m) => Date.parse(m.created_at));
    assert.deepEqual(times, [...times].sort((a, b) => b - a), "newest first");

    // Leaving the loop early stops fetching.
    let seen = 0;
    for await (const memory of app.memories.list({ subject, limit: 2 })) {
      assert.ok(memory.id);
      if (++seen === 3) break;
    }
    assert.equal(seen, 3);
  });

  test("admin listings: subjects by offset, memories and audit by cursor", async () => {
    const admin = adminClient();
    const prefix = uniqueSubject("ts-admin");
    for (const n of [1, 2, 3]) await admin.memories.add({ subject: `${prefix}-${n}`, text: `Subject ${n} fact.` });

    const subjects = (await collect(admin.admin.subjects({ limit: 1 }))).map((s) => s.subject);
    for (const n of [1, 2, 3]) assert.ok(subjects.includes(`${prefix}-${n}`), `${prefix}-${n} listed`);
    assert.equal(new Set(subjects).size, subjects.length, "no subject twice across pages");

    const inspected = await collect(admin.admin.memories({ subject: `${prefix}-2`, limit: 1 }));
    assert.deepEqual(
      inspected.map((m) => m.text),
      ["Subject 2 fact."],
    );

    const records = [];
    for await (const record of admin.admin.audit({ limit: 4 })) {
      records.push(record);
      if (records.length === 10) break;
    }
    assert.equal(records.length, 10);
    const seqs = records.map((r) => r.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => b - a), "newest first, no repeats across pages");
    assert.equal(new Set(seqs).size, seqs.length);

    const verified = await admin.admin.verifyAudit();
    assert.equal(verified.ok, true);
  });
});

describe("conversation ingestion against a live server", { skip: NEEDS_SERVER }, () => {
  test("ingest answers one event per statement; the async form is a job to follow", async () => {
    const app = await keyClient("app");
    const subject = uniqueSubject("ts-ingest");
    const result = await app.memories.ingest({
      subject,
      messages: [
        { role: "user", content: "My dog is named Biscuit." },
        { role: "assistant", content: "Nice name!" },
      ],
    });
    assert.ok(result.session_id);
    assert.ok(result.events.length >= 1, JSON.stringify(result));
    const added = result.events.find((e) => e.event === "ADD");
    assert.ok(added, JSON.stringify(result.events));
    assert.match((await app.memories.get(added.memory_id)).text, /Biscuit/);

    const job = await app.memories.ingestAsync({ subject, messages: [{ role: "user", content: "I live in Porto." }] });
    assert.ok(job.job_id);
    const done = await app.memories.waitForIngest(job.job_id, { intervalMs: 100, timeoutMs: 20_000 });
    assert.equal(done.status, "done", JSON.stringify(done));
    assert.ok((done.events ?? []).some((e) => e.event === "ADD"), JSON.stringify(done.events));
  });
});
