// ES-module entry of pushwire.js (see the comment at the top of that file):
//
//   import { Pushwire } from "/pushwire.esm.js";
//
// pushwire.js itself is a classic script (it defines globalThis.Pushwire; a
// classic <script> cannot contain `export`); this file re-exports it. It ends
// in .js, not .mjs, so that servers whose type map has no "mjs" (nginx's
// default one, and this project's) still send a JavaScript MIME type, without
// which a browser refuses a module.
import "./pushwire.js";

export const Pushwire = globalThis.Pushwire;
export const PushwireError = Pushwire.PushwireError;
export default Pushwire;
