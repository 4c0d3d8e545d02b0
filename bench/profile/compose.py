"""CPU cost of composing hostile documents, in-process (issue #12 items 1, 2).

    .venv/bin/python bench/profile/compose.py [--repeat R]

Composes, with the packages the node uses and no limits applied (the
package is called directly), the shapes a hostile publisher can store:

* ``wide NxM``: one PIDF body whose root binds N prefixes above M small
  children, entity not the presentity URI, so every SUBSCRIBE rebuilds it;
* ``ids K``: K publications of one presentity sharing one tuple id;
* ``dialogs K``: K dialogs (distinct call-ids) sharing one dialog id.

Prints the body size and the best of R runs in milliseconds of CPU time
(process time: other processes on the machine count less than in wall
time).  To compare with another checkout, point PYTHONPATH at its ``node``
directory.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import presence_node
from presence_node.packages.dialog import DialogPackage
from presence_node.packages.presence import PresencePackage

ENTITY = "sip:bob@example.com"
PIDF_NS = "urn:ietf:params:xml:ns:pidf"
DI_NS = "urn:ietf:params:xml:ns:dialog-info"


def wide(prefixes: int, children: int) -> bytes:
    decls = "".join(f' xmlns:p{i}="urn:example:ns{i}"' for i in range(prefixes))
    kids = "".join(f"<p{i % prefixes}:e/>" for i in range(children))
    return (
        f'<presence xmlns="{PIDF_NS}"{decls} entity="sip:bob@192.0.2.1">'
        f'<tuple id="t"><status><basic>open</basic></status></tuple>{kids}</presence>'
    ).encode()


def same_tuple_id(n: int) -> list[bytes]:
    body = (
        f'<presence xmlns="{PIDF_NS}" entity="{ENTITY}"><tuple id="t"><status><basic>open</basic>'
        f"</status></tuple></presence>"
    ).encode()
    return [body] * n


def same_dialog_id(n: int) -> list[bytes]:
    return [
        f'<dialog-info xmlns="{DI_NS}" version="0" state="full" entity="{ENTITY}">'
        f'<dialog id="1" call-id="c{i}"><state>confirmed</state></dialog></dialog-info>'.encode()
        for i in range(n)
    ]


def best_ms(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    presence, dialog = PresencePackage(), DialogPackage()
    print(f"# {presence_node.__file__}")
    print(f"{'shape':<18} {'bytes':>9} {'ms':>9}")
    for prefixes, children in ((32, 1000), (128, 4000), (200, 200), (400, 400), (800, 800), (1000, 1000)):
        body = wide(prefixes, children)
        ms = best_ms(lambda: presence.compose(ENTITY, [body]), args.repeat)
        print(f"{f'wide {prefixes}x{children}':<18} {len(body):>9} {ms:>9.1f}")
    for n in (2000, 8000):
        bodies = same_tuple_id(n)
        ms = best_ms(lambda: presence.compose(ENTITY, bodies), args.repeat)
        print(f"{f'ids {n}':<18} {sum(map(len, bodies)):>9} {ms:>9.1f}")
    for n in (2000, 8000):
        bodies = same_dialog_id(n)
        ms = best_ms(lambda: dialog.compose(ENTITY, bodies), args.repeat)
        print(f"{f'dialogs {n}':<18} {sum(map(len, bodies)):>9} {ms:>9.1f}")


if __name__ == "__main__":
    main()
