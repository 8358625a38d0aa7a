/**
 * The browser console's page (GET /console): xterm.js over a websocket to
 * /v1/nodes/{id}/console. Static text; the service adds xterm.js's own browser build and CSS,
 * read from node_modules at start-up (console.ts).
 *
 * Open it as `/console?node=<node id>#token=<bearer token>`. The token stays in the URL fragment,
 * which a browser never sends to a server, and the page removes it from the address bar at once.
 * A browser cannot put an Authorization header on a websocket, so the page offers the token as a
 * subprotocol (`bearer.<token>`) beside `baremetal.console`; the service answers with
 * `baremetal.console` only.
 */

export const CONSOLE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Node console</title>
<link rel="stylesheet" href="/console/xterm.css">
<style>
  body { margin: 0; background: #111; color: #ddd; font: 14px system-ui, sans-serif; }
  header { padding: 6px 10px; display: flex; gap: 12px; align-items: baseline; }
  #node { font-family: monospace; }
  #status[data-state="refused"], #status[data-state="error"] { color: #f66; }
  #status[data-state="connected"] { color: #6c6; }
  #terminal { padding: 4px; height: calc(100vh - 40px); }
</style>
</head>
<body>
<header><strong>Serial console</strong> <span id="node"></span> <span id="status" data-state="idle">idle</span></header>
<div id="terminal"></div>
<script src="/console/xterm.js"></script>
<script src="/console/console.js"></script>
</body>
</html>
`;

export const CONSOLE_JS = `(function () {
  "use strict";
  var status = document.getElementById("status");
  function say(state, text) { status.dataset.state = state; status.textContent = text; }
  var params = new URLSearchParams(location.search);
  var node = params.get("node");
  var token = new URLSearchParams(location.hash.slice(1)).get("token");
  // The token stays out of the address bar, the history and any Referer.
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  document.getElementById("node").textContent = node || "";
  var term = new Terminal({ convertEol: false, scrollback: 5000, cols: 100, rows: 30 });
  window.consoleTerminal = term;
  term.open(document.getElementById("terminal"));
  if (!node) { say("error", "no node: open /console?node=<node id>#token=<token>"); return; }
  if (!token) { say("error", "no token: add #token=<your API token> to the address"); return; }
  var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/nodes/" + encodeURIComponent(node) + "/console";
  var ws = new WebSocket(url, ["baremetal.console", "bearer." + token]);
  token = null;
  ws.binaryType = "arraybuffer";
  var opened = false;
  say("connecting", "connecting...");
  ws.onopen = function () { opened = true; say("connected", "connected"); term.focus(); };
  ws.onmessage = function (e) { term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data)); };
  ws.onclose = function (e) {
    if (!opened) say("refused", "console refused: the service did not let this token open this node's console (invalid token, or not authorised for this node)");
    else say("closed", "console closed" + (e.reason ? ": " + e.reason : ""));
  };
  term.onData(function (d) { if (ws.readyState === WebSocket.OPEN) ws.send(d); });
})();
`;
