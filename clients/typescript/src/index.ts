export * from "./client.js";
export * from "./errors.js";
export { DEFAULT_RETRY, retryingFetch, type RetryInfo, type RetryOptions } from "./retry.js";
export { readServerSentEvents, type ServerSentEvent } from "./sse.js";
export type { components, operations, paths } from "./schema.js";
