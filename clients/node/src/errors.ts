// ByokError: a failed call, with the google.rpc.Status the server put in the
// `grpc-status-details-bin` trailer decoded with the generated google/rpc types.
import { createRegistry, fromBinary, type DescMessage, type Message, type MessageShape } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";

import { Code } from "./gen/google/rpc/code_pb.js";
import {
  BadRequestSchema,
  DebugInfoSchema,
  ErrorInfoSchema,
  HelpSchema,
  LocalizedMessageSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
  RequestInfoSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
  type BadRequest,
  type ErrorInfo,
  type RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema, type Status } from "./gen/google/rpc/status_pb.js";

export { Code };

const STATUS_DETAILS_BIN = "grpc-status-details-bin";

/** Every google.rpc detail type the client knows how to unpack. */
const detailRegistry = createRegistry(
  ErrorInfoSchema,
  BadRequestSchema,
  RetryInfoSchema,
  DebugInfoSchema,
  QuotaFailureSchema,
  PreconditionFailureSchema,
  RequestInfoSchema,
  ResourceInfoSchema,
  HelpSchema,
  LocalizedMessageSchema,
);

/** The canonical name of a gRPC status code: 5 → "NOT_FOUND". */
export function codeName(code: number): string {
  return Code[code] ?? `CODE_${code}`;
}

/**
 * A failed byok call. `code` is the gRPC status code (5 is NOT_FOUND); `reason`,
 * `domain` and `metadata` come from the google.rpc.ErrorInfo detail the server sends
 * with every error it raises ("RESOURCE_NOT_FOUND", "byok.dev", {name: ...}).
 */
export class ByokError extends Error {
  override readonly name = "ByokError";
  /** gRPC status code, as in google.rpc.Code (NOT_FOUND = 5). */
  readonly code: Code;
  /** The server's message, without the "[not_found]" prefix ConnectError adds. */
  readonly rawMessage: string;
  /** ErrorInfo.reason, e.g. "RESOURCE_NOT_FOUND"; "" when the server sent none. */
  readonly reason: string;
  /** ErrorInfo.domain, "byok.dev" for the server's own errors. */
  readonly domain: string;
  /** ErrorInfo.metadata, e.g. {name: "conversations/x"}. */
  readonly metadata: Readonly<Record<string, string>>;
  /** The decoded google.rpc.Status, when the trailer carried one. */
  readonly status: Status | undefined;
  /** Every detail of the Status that the client could unpack (ErrorInfo, BadRequest, ...). */
  readonly details: readonly Message[];
  /** Response headers and trailers of the failed call. */
  readonly responseMetadata: Headers;

  constructor(init: {
    code: Code;
    message: string;
    status?: Status;
    details?: Message[];
    responseMetadata?: Headers;
    cause?: unknown;
  }) {
    super(`${codeName(init.code)}: ${init.message}`, { cause: init.cause });
    this.code = init.code;
    this.rawMessage = init.message;
    this.status = init.status;
    this.details = init.details ?? [];
    this.responseMetadata = init.responseMetadata ?? new Headers();
    const info = this.detail(ErrorInfoSchema);
    this.reason = info?.reason ?? "";
    this.domain = info?.domain ?? "";
    this.metadata = Object.freeze({ ...(info?.metadata ?? {}) });
  }

  /** The canonical code name, e.g. "NOT_FOUND". */
  get codeName(): string {
    return codeName(this.code);
  }

  /** The first detail of the given type, e.g. `err.detail(BadRequestSchema)`. */
  detail<Desc extends DescMessage>(schema: Desc): MessageShape<Desc> | undefined {
    return this.details.find((d) => d.$typeName === schema.typeName) as MessageShape<Desc> | undefined;
  }

  /** ErrorInfo, when sent. */
  get errorInfo(): ErrorInfo | undefined {
    return this.detail(ErrorInfoSchema);
  }

  /** BadRequest field violations, when sent (INVALID_ARGUMENT). */
  get badRequest(): BadRequest | undefined {
    return this.detail(BadRequestSchema);
  }

  /** RetryInfo, when sent (UNAVAILABLE, RESOURCE_EXHAUSTED). */
  get retryInfo(): RetryInfo | undefined {
    return this.detail(RetryInfoSchema);
  }
}

/** Decodes a gRPC binary metadata value (base64, padded or not). */
function decodeBinaryHeader(value: string): Uint8Array {
  // Several values of one key arrive joined by ", "; the status detail is sent once.
  const first = value.split(",")[0]!.trim();
  return new Uint8Array(Buffer.from(first, "base64"));
}

/** Decodes the google.rpc.Status of the grpc-status-details-bin trailer, if any. */
export function decodeStatusDetails(metadata: Headers): Status | undefined {
  const value = metadata.get(STATUS_DETAILS_BIN);
  if (value === null || value === "") return undefined;
  try {
    return fromBinary(StatusSchema, decodeBinaryHeader(value));
  } catch {
    return undefined;
  }
}

/** Turns whatever a call threw into a ByokError (ByokErrors pass through). */
export function toByokError(err: unknown): ByokError {
  if (err instanceof ByokError) return err;
  const connectErr = ConnectError.from(err);
  const responseMetadata = connectErr.metadata;
  const status = decodeStatusDetails(responseMetadata);
  const details: Message[] = [];
  if (status) {
    for (const any of status.details) {
      const unpacked = anyUnpack(any, detailRegistry);
      if (unpacked) details.push(unpacked);
    }
  }
  return new ByokError({
    code: (status?.code ?? connectErr.code) as Code,
    message: status?.message ?? connectErr.rawMessage,
    status,
    details,
    responseMetadata,
    cause: err,
  });
}
