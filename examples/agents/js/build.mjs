// Build the JavaScript agents into WebAssembly components.
//
//   node build.mjs [--out-dir DIR] [--stdio] [NAME ...]
//
// NAME is an agent's source file without `.js` (default: every agent in
// AGENTS); each NAME.js becomes DIR/NAME.wasm (DIR defaults to this
// directory). The world is caxton:agent/agent@0.1.0 from ../../../wit.
//
// Every componentize-js feature is disabled (http, fetch-event, stdio,
// random, clocks), so the component is "pure": its only import is
// caxton:agent/host@0.1.0, no WASI at all. --stdio keeps the stdio feature
// (console.log / console.error and uncaught-error reports go to the node's
// log for this agent), at the price of importing WASI 0.2 interfaces
// (wasi:cli, wasi:io, wasi:filesystem, wasi:clocks/wall-clock) that the node
// then provides with nothing opened. http and fetch-event are never enabled.

import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const WIT = resolve(HERE, '..', '..', '..', 'wit');
const WORLD = 'agent';
const AGENTS = ['echo', 'bidder'];
const ALL_FEATURES = ['http', 'fetch-event', 'stdio', 'random', 'clocks'];

function usage(message) {
  console.error(`build.mjs: ${message}`);
  console.error('usage: node build.mjs [--out-dir DIR] [--stdio] [NAME ...]');
  process.exit(2);
}

let outDir = HERE;
let keep = [];
const names = [];
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--out-dir') {
    if (i + 1 >= args.length) usage('--out-dir needs a directory');
    outDir = resolve(args[++i]);
  } else if (a === '--stdio') {
    keep = ['stdio'];
  } else if (a.startsWith('-')) {
    usage(`unknown option ${a}`);
  } else if (/^[A-Za-z0-9_-]+$/.test(a)) {
    names.push(a);
  } else {
    usage(`bad agent name ${a}`);
  }
}
const disableFeatures = ALL_FEATURES.filter((f) => !keep.includes(f));

await mkdir(outDir, { recursive: true });
for (const name of names.length ? names : AGENTS) {
  const started = Date.now();
  const { component, imports } = await componentize({
    sourcePath: join(HERE, `${name}.js`),
    witPath: WIT,
    worldName: WORLD,
    disableFeatures,
  });
  const out = join(outDir, `${name}.wasm`);
  await writeFile(out, component);
  const used = imports.map(([iface, fn]) => `${iface}#${fn}`).join(', ');
  console.log(
    `${out}: ${component.length} bytes in ${Date.now() - started} ms ` +
      `(disabled: ${disableFeatures.join(' ')}; host imports: ${used})`,
  );
}
