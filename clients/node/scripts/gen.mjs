#!/usr/bin/env node
// Regenerates src/gen/ from the repo's protos (default), or with --check fails when
// src/gen/ differs from a fresh generation (stale or hand-edited generated code).
//
// Same compiler as the Python side (scripts/gen.sh): grpcio-tools' protoc from the
// repo's .venv, driving the protoc-gen-es plugin installed by `npm ci`. Nothing is
// downloaded. Well-known types (google/protobuf/*) are not generated: the generated
// code imports them from @bufbuild/protobuf/wkt.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repo = resolve(pkg, "../..");
const python = process.env.BYOK_PYTHON ?? join(repo, ".venv/bin/python");
const plugin = join(pkg, "node_modules/.bin/protoc-gen-es");
const outDir = join(pkg, "src/gen");
const check = process.argv.includes("--check");

function protoFiles(root, sub) {
  const found = [];
  const walk = (dir) => {
    for (const entry of readdirSync(dir).sort()) {
      const path = join(dir, entry);
      if (statSync(path).isDirectory()) walk(path);
      else if (entry.endsWith(".proto")) found.push(relative(root, path));
    }
  };
  walk(join(root, sub));
  return found;
}

function listFiles(dir) {
  if (!existsSync(dir)) return [];
  const found = [];
  const walk = (d) => {
    for (const entry of readdirSync(d).sort()) {
      const path = join(d, entry);
      if (statSync(path).isDirectory()) walk(path);
      else found.push(relative(dir, path));
    }
  };
  walk(dir);
  return found;
}

function generate(out) {
  mkdirSync(out, { recursive: true });
  for (const [what, path] of [["python", python], ["protoc-gen-es (run npm ci)", plugin]]) {
    if (!existsSync(path)) {
      console.error(`gen: ${what} not found at ${path}`);
      process.exit(2);
    }
  }
  // byok's own protos plus the vendored google/api and google/rpc they import
  // (google/rpc is also what the client decodes grpc-status-details-bin with).
  const files = [
    ...protoFiles(join(repo, "proto"), "byok"),
    ...protoFiles(join(repo, "third_party"), "google/api"),
    ...protoFiles(join(repo, "third_party"), "google/rpc"),
  ];
  const args = [
    "-m", "grpc_tools.protoc",
    "-I", join(repo, "proto"),
    "-I", join(repo, "third_party"),
    `--plugin=protoc-gen-es=${plugin}`,
    `--es_out=${out}`,
    "--es_opt=target=ts,import_extension=js",
    ...files,
  ];
  const run = spawnSync(python, args, { cwd: repo, stdio: "inherit" });
  if (run.status !== 0) {
    console.error(`gen: protoc failed (exit ${run.status})`);
    process.exit(1);
  }
  return files.length;
}

if (!check) {
  rmSync(outDir, { recursive: true, force: true });
  const n = generate(outDir);
  console.log(`gen: regenerated ${relative(pkg, outDir)}/ from ${n} protos`);
} else {
  const tmp = mkdtempSync(join(tmpdir(), "byok-gen-ts-"));
  try {
    generate(tmp);
    const want = listFiles(tmp);
    const have = listFiles(outDir);
    const problems = [];
    for (const f of want) {
      if (!have.includes(f)) problems.push(`missing: src/gen/${f}`);
      else if (!readFileSync(join(tmp, f)).equals(readFileSync(join(outDir, f)))) {
        problems.push(`differs: src/gen/${f}`);
      }
    }
    for (const f of have) if (!want.includes(f)) problems.push(`extra: src/gen/${f}`);
    if (problems.length) {
      console.error("gen:check: src/gen/ is stale or was edited by hand; run 'npm run gen' and commit:");
      for (const p of problems) console.error(`  ${p}`);
      process.exit(1);
    }
    console.log(`gen:check: src/gen/ matches a fresh generation (${want.length} files)`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
