#!/usr/bin/env python3
"""Derives the rollout test's topology.toml from the repository's.

The file stays the repository's, comments and all; only what ties it to the real hosts changes:
each node's ipv4, peer_address, gossip_address and public_url name its test host; upstream is the
fake Hub; min_free_disk and max_disk fit a test host's disk; the replica keeper checks every 5 s
instead of 60 s (so a node added in item 7 receives its share of the blobs within the test's
bounded wait); and a [[limits.allow]] rule lets the test clients (one address per namespace: the
router's, the client namespace's) make more than the published 30 requests a second — the node
limits loopback and every other address alike, and the loop through one host runs near that rate.

--extra-node NAME=ADDRESS appends one more [[nodes]] table (a copy of the last one, renamed and
re-addressed) at the end of the node list: the topology of item 7, a fifth host added.

Usage: topology.py SOURCE OUT --hub URL --client-prefix CIDR [--extra-node NAME=ADDRESS] NODE=ADDRESS ...
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib


def set_key(table: str, key: str, value: str) -> str:
    """Sets `key = "value"` in one TOML table's text (replacing the line, or adding it after the header)."""
    line = f'{key} = "{value}"'
    pattern = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*=.*$", re.MULTILINE)
    if pattern.search(table):
        return pattern.sub(line, table, count=1)
    header_end = table.index("\n") + 1
    return table[:header_end] + line + "\n" + table[header_end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--hub", required=True, help="the fake Hub's URL (upstream of every node)")
    parser.add_argument("--client-prefix", required=True, help="the test client's network, allow-listed")
    parser.add_argument("--extra-node", default=None, help="NAME=ADDRESS: a node appended after the source's")
    parser.add_argument("addresses", nargs="+", help="NODE=ADDRESS for every node of the topology")
    args = parser.parse_args()
    addresses = dict(item.split("=", 1) for item in args.addresses)
    extra = args.extra_node.split("=", 1) if args.extra_node else None

    text = open(args.source, encoding="utf-8").read()
    # Split into the text before the first table header and one chunk per table, headers kept.
    chunks = re.split(r"(?m)^(?=\[)", text)
    out = []
    seen = []
    last_node = None
    for chunk in chunks:
        if chunk.startswith("[cluster]"):
            chunk = set_key(chunk, "replica_check_interval", "5s")
        elif chunk.startswith("[defaults]"):
            chunk = set_key(chunk, "upstream", args.hub)
            chunk = set_key(chunk, "min_free_disk", "64MB")
        elif chunk.startswith("[[nodes]]"):
            name = re.search(r'(?m)^[ \t]*name[ \t]*=[ \t]*"([^"]+)"', chunk).group(1)
            if name not in addresses:
                print(f"topology.py: no address given for node {name}", file=sys.stderr)
                return 1
            address = addresses[name]
            seen.append(name)
            chunk = set_key(chunk, "ipv4", address)
            chunk = set_key(chunk, "peer_address", f"{address}:7443")
            chunk = set_key(chunk, "gossip_address", f"{address}:7946")
            chunk = set_key(chunk, "public_url", f"http://{address}:80")
            chunk = set_key(chunk, "max_disk", "1GB")
            last_node = len(out)
        out.append(chunk)
    if extra is not None:
        name, address = extra
        if last_node is None or name in addresses:
            print(f"topology.py: cannot add node {name}", file=sys.stderr)
            return 1
        chunk = out[last_node]
        chunk = re.sub(r'(?m)^([ \t]*name[ \t]*=[ \t]*)"[^"]+"', lambda m: f'{m.group(1)}"{name}"', chunk, count=1)
        for key, value in (("ipv4", address), ("peer_address", f"{address}:7443"), ("gossip_address", f"{address}:7946"),
                           ("public_url", f"http://{address}:80")):
            chunk = set_key(chunk, key, value)
        # No IPv6 glue of another node's.
        chunk = re.sub(r"(?m)^[ \t]*ipv6[ \t]*=.*\n", "", chunk)
        if not chunk.endswith("\n\n"):
            chunk = chunk.rstrip("\n") + "\n\n"
        out.insert(last_node + 1, "# Rollout test, item 7: a fifth host, added after the others.\n" + chunk)
        seen.append(name)
        addresses[name] = address
    text = "".join(out).rstrip("\n") + "\n"
    text += (
        "\n# Rollout test: the test clients (the router's and the client namespace's addresses) are\n"
        "# allow-listed like a CI farm (the published default is 30 requests/s per address).\n"
        "[[limits.allow]]\n"
        f'prefix = "{args.client_prefix}"\n'
        "requests_per_second = 1000\n"
        "burst = 2000\n"
    )
    parsed = tomllib.loads(text)
    names = [node["name"] for node in parsed["nodes"]]
    if names != seen or set(names) != set(addresses):
        print(f"topology.py: nodes {names} do not match the addresses given {sorted(addresses)}", file=sys.stderr)
        return 1
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(" ".join(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
