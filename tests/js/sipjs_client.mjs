// A real WebSocket SIP client for the tests: SIP.js (npm "sip.js") in Node,
// with the "ws" package as its WebSocket.  Driven by tests/test_sipjs.py.
//
//   node sipjs_client.mjs subscribe SERVER_URL WATCHER_URI PRESENTITY_URI UNTIL
//       SUBSCRIBE (presence), accept and print every NOTIFY as a JSON line,
//       exit 0 once a NOTIFY body contains UNTIL (without unsubscribing:
//       the process just ends, as a closed browser tab does).
//   node sipjs_client.mjs publish SERVER_URL PRESENTITY_URI BODY_FILE
//       PUBLISH the PIDF in BODY_FILE, print the states, exit 0 once published.
//
// SIPJS_MODULES names the node_modules folder holding sip.js and ws
// (scripts/setup.sh installs them).  NODE_EXTRA_CA_CERTS makes a test
// certificate trusted for wss:.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.SIPJS_MODULES;
const load = (name, file) => import(pathToFileURL(join(modules, name, file)).href);
const { WebSocket } = await load("ws", "wrapper.mjs");
globalThis.WebSocket = WebSocket;
const SIP = await load("sip.js", "lib/index.js");

const [mode, server, ...args] = process.argv.slice(2);
const say = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const fail = (why) => {
  say({ event: "error", error: String(why) });
  process.exit(1);
};
setTimeout(() => fail("timeout"), 20000).unref();

const uri = SIP.UserAgent.makeURI(args[0]);
const ua = new SIP.UserAgent({ uri, transportOptions: { server }, logLevel: "error" });
await ua.start().catch(fail);
say({ event: "connected" });

if (mode === "subscribe") {
  const [, presentity, until] = args;
  const subscriber = new SIP.Subscriber(ua, SIP.UserAgent.makeURI(presentity), "presence", { expires: 600 });
  subscriber.delegate = {
    onNotify: (notification) => {
      notification.accept();
      const req = notification.request;
      const body = req.body || "";
      say({ event: "notify", state: req.getHeader("Subscription-State"), via: req.getHeader("Via"), body });
      if (until && body.includes(until)) process.exit(0);
    },
  };
  subscriber.stateChange.addListener((state) => say({ event: "state", state }));
  await subscriber.subscribe().catch(fail);
} else if (mode === "publish") {
  const [, bodyFile] = args;
  const publisher = new SIP.Publisher(ua, uri, "presence", { expires: 600, contentType: "application/pidf+xml" });
  publisher.stateChange.addListener((state) => {
    say({ event: "state", state });
    if (state === SIP.PublisherState.Published) process.exit(0);
    if (state === SIP.PublisherState.Terminated) fail("publication refused");
  });
  await publisher.publish(readFileSync(bodyFile, "utf8")).catch(fail);
} else {
  fail(`unknown mode ${mode}`);
}
