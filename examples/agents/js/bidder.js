// bidder.js: a FIPA contract-net participant with a fixed price, as a
// WebAssembly component.
//
// Behaviour (same as ../wat/cnp_bidder.wat and ../c/bidder.c):
//   init             config {"price": N} (an integer; 100 when absent or not
//                    a number). Any other config members are ignored.
//   cfp              -> reply `propose` {"price":N}
//   accept-proposal  -> reply `inform`  {"done":true,"price":N}
//   reject-proposal  -> nothing
//   anything else    -> reply `not-understood` {"reason":"unexpected"},
//                       except notices from the node itself (sender
//                       "caxton") and `not-understood` messages, which are
//                       ignored so that two agents can never bounce
//                       not-understood at each other forever.
// A message without a `performative` (which the node never delivers) fails:
// handle returns err("message has no performative").
//
// World: caxton:agent/agent@0.1.0 (../../../wit/agent.wit).
// Build: npm ci && npm run build   (see README.md)

import { reply, log } from 'caxton:agent/host@0.1.0';

const DEBUG = 0;

let price = 100;

/** Read the price from the config; anything unusable keeps the default. */
export function init(config) {
  let cfg;
  try {
    cfg = JSON.parse(config);
  } catch (e) {
    return; // like the WAT bidder: an unreadable config is not an error
  }
  if (cfg !== null && typeof cfg === 'object' && typeof cfg.price === 'number'
      && Number.isFinite(cfg.price)) {
    price = Math.trunc(cfg.price);
  }
  log(DEBUG, `bidder: price ${price}`);
}

/** Handle one ACL message (its JSON text). */
export function handle(message) {
  let msg;
  try {
    msg = JSON.parse(message);
  } catch (e) {
    throw `message is not JSON: ${e}`;
  }
  const performative = msg !== null && typeof msg === 'object' ? msg.performative : undefined;
  if (typeof performative !== 'string') {
    // Throwing a string makes handle return err(that string): the node
    // fails this message. (An Error object would trap instead: README.md.)
    throw 'message has no performative';
  }
  switch (performative) {
    case 'cfp':
      reply('propose', JSON.stringify({ price }));
      return;
    case 'accept-proposal':
      reply('inform', JSON.stringify({ done: true, price }));
      return;
    case 'reject-proposal':
    case 'not-understood':
      return;
  }
  if (msg.sender === 'caxton') {
    return;
  }
  reply('not-understood', JSON.stringify({ reason: 'unexpected' }));
}
