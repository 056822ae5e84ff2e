/** Shared set-up of the live-server tests: `SEALMEM_URL` and `SEALMEM_ADMIN_KEY` come from the environment. */

import { randomUUID } from "node:crypto";

import { SealmemClient, type KeyRole, type SealmemClientOptions } from "../src/index.js";

export const BASE_URL = process.env.SEALMEM_URL ?? "";
export const ADMIN_KEY = process.env.SEALMEM_ADMIN_KEY ?? "";
/** `skip` option of the live-server suites: a reason when no server was given. */
export const NEEDS_SERVER: string | false =
  BASE_URL && ADMIN_KEY ? false : "SEALMEM_URL and SEALMEM_ADMIN_KEY are not set (tests/test_typescript_client.py sets them)";

export function adminClient(options: Partial<SealmemClientOptions> = {}): SealmemClient {
  return new SealmemClient({ baseUrl: BASE_URL, apiKey: ADMIN_KEY, ...options });
}

/** A client with a fresh API key of `role`, created with the admin key. */
export async function keyClient(role: KeyRole, options: Partial<SealmemClientOptions> = {}): Promise<SealmemClient> {
  const created = await adminClient().admin.keys.create({ role, name: `ts-${role}-${randomUUID().slice(0, 8)}` });
  return new SealmemClient({ baseUrl: BASE_URL, apiKey: created.key, ...options });
}

/** A subject id no other test uses. */
export function uniqueSubject(prefix: string): string {
  return `${prefix}-${randomUUID()}`;
}

export async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}
