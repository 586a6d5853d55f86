// echo.js: the smallest useful Caxton agent, as a WebAssembly component.
//
// Behaviour (same as ../wat/echo.wat and ../c/echo.c): every message it
// receives is answered with an `inform` whose content is the whole incoming
// message. The node turns the reply into a full ACL message: receiver
// (reply_to or sender), conversation_id, in_reply_to (from reply_with) and
// protocol are filled in from the message being handled.
//
// World: caxton:agent/agent@0.1.0 (../../../wit/agent.wit).
// Build: npm ci && npm run build   (see README.md)

import { reply } from 'caxton:agent/host@0.1.0';

/**
 * Handle one message (its JSON text). Returning normally is `ok`; throwing a
 * string makes the call return `err(that string)` and the node tells the
 * sender why. (Throw strings, not Error objects: see README.md.)
 */
export function handle(message) {
  let msg;
  try {
    msg = JSON.parse(message);
  } catch (e) {
    throw `message is not JSON: ${e}`;
  }
  // The reply's return code (0 or a negative error) is not our failure: the
  // node records the outcome of the reply itself.
  reply('inform', JSON.stringify(msg));
}

/** Receive the agent's config (JSON) when an instance starts: nothing to do. */
export function init(config) {}
