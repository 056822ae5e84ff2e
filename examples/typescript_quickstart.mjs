// Sealmem from TypeScript/JavaScript: add, search and list memories, mint a subject token for one end user,
// and stream a chat reply with memory.
//
//   (cd clients/typescript && npm ci && npm run build)     # once
//   SEALMEM_URL=http://localhost:8080 SEALMEM_API_KEY=smk_... node examples/typescript_quickstart.mjs
//
// SEALMEM_API_KEY is an admin or app key (`sealmem tenant create NAME` prints the first admin key).
// In your own app: `npm install <path to>/clients/typescript`, then `import { SealmemClient } from "sealmem-client"`.

import { randomUUID } from "node:crypto";

async function loadClient() {
  try {
    return await import("sealmem-client"); // installed as a dependency
  } catch (error) {
    if (error?.code !== "ERR_MODULE_NOT_FOUND") throw error;
    return import("../clients/typescript/dist/src/index.js"); // this repository's build
  }
}

const { SealmemClient, NotFoundError, UnavailableError } = await loadClient();

const baseUrl = process.env.SEALMEM_URL ?? "http://localhost:8080";
const apiKey = process.env.SEALMEM_API_KEY;
if (!apiKey) {
  console.error("Set SEALMEM_API_KEY to an admin or app key.");
  process.exit(2);
}

// The backend's client: an API key reaches every subject of its tenant.
const sealmem = new SealmemClient({ baseUrl, apiKey });
const subject = `user-42-${randomUUID().slice(0, 8)}`;

// Add one memory, then a batch (stored atomically).
const dog = await sealmem.memories.add({
  subject,
  text: "My dog is named Biscuit and I live in Lisbon.",
  metadata: { topic: "home" },
});
await sealmem.memories.addBatch([
  { subject, text: "Prefers window seats on long flights.", kind: "preference" },
  { subject, text: "Allergic to peanuts." },
]);
console.log("added", dog.id);

// Search: best first.
const results = await sealmem.memories.search({ subject, query: "what is my dog called?", k: 2 });
for (const hit of results) console.log(`search ${hit.score.toFixed(3)} ${hit.text}`);

// List: the iterator fetches page after page (`limit` per page).
for await (const memory of sealmem.memories.list({ subject, limit: 2 })) console.log("list", memory.kind, memory.text);

// A subject token for this user's browser or phone app: only this subject, only these scopes.
const { token, expires_at } = await sealmem.tokens.create({ subject, scopes: ["read", "write", "chat"], ttl_seconds: 600 });
const user = new SealmemClient({ baseUrl, token });
console.log("token valid until", expires_at);
await user.memories.add({ text: "I just started learning the cello." }); // the subject comes from the token
try {
  await user.memories.listPage({ subject: "someone-else" });
} catch (error) {
  if (!(error instanceof NotFoundError)) throw error;
  console.log(`someone else's memories: ${error.status} ${error.code} (request ${error.requestId})`);
}

// Chat with memory, streamed as it is generated (needs chat enabled on the server).
try {
  const stream = user.chat.stream({ message: "What is my dog called?" });
  process.stdout.write("chat: ");
  for await (const delta of stream) process.stdout.write(delta);
  const reply = await stream.final();
  console.log(`\nchat used ${reply.memories_used.length} memories, session ${reply.session_id}`);
} catch (error) {
  if (!(error instanceof UnavailableError)) throw error;
  console.log(`\nchat is not available on this server: ${error.message}`);
}
