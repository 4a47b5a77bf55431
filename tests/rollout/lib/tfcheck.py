#!/usr/bin/env python3
"""Reads what Terraform and the hosts recorded, for the rollout test's assertions (prints JSON).

  tfcheck.py plan PLAN.json
      the nodes each kind of action touches: {"create": [...], "delete": [...], "update": [...],
      "replace": [...]} in plan order (a node name is the for_each key of its slot module)
  tfcheck.py apply-log LOG
      the nodes in the order Terraform created (or destroyed) them, and whether one node's step began
      before the previous one's had completed: {"created": [...], "destroyed": [...], "overlaps": N}
  tfcheck.py secrets STATE KEYFILE...
      whether the state holds key material: a PEM private key header or any line of a key file's body
  tfcheck.py rollout-log LOG... --since NS
      the hosts' /var/log/hf-mirror-rollout.log lines after NS, merged by time: per node the time of
      its "restarting" and "deployed" lines, the node order, and whether two restarts overlapped
"""

from __future__ import annotations

import json
import re
import sys

NODE_ADDRESS = re.compile(r'module\.node_\d+\["([A-Za-z0-9-]+)"\]\.terraform_data\.node')


def node_of(address: str) -> str | None:
    match = NODE_ADDRESS.search(address)
    return match.group(1) if match else None


def plan(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    summary: dict[str, list[str]] = {"create": [], "delete": [], "update": [], "replace": []}
    for change in document.get("resource_changes", []):
        name = node_of(change["address"])
        actions = change["change"]["actions"]
        if name is None or actions == ["no-op"] or actions == ["read"]:
            continue
        if "create" in actions:
            summary["create"].append(name)
        if "delete" in actions:
            summary["delete"].append(name)
        if "update" in actions:
            summary["update"].append(name)
        if "create" in actions and "delete" in actions and "deposed" not in change:
            summary["replace"].append(name)
    return summary


def apply_log(path: str) -> dict:
    created: list[str] = []
    destroyed: list[str] = []
    running: set[str] = set()
    overlaps = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            name = node_of(line)
            if name is None:
                continue
            if ": Creating..." in line:
                if running:
                    overlaps += 1
                running.add(name)
                created.append(name)
            elif ": Creation complete" in line or ": Creation errored" in line:
                running.discard(name)
            elif ": Destroying..." in line and "deposed object" not in line:
                destroyed.append(name)
    return {"created": created, "destroyed": destroyed, "overlaps": overlaps}


def secrets(state_path: str, key_paths: list[str]) -> dict:
    with open(state_path, encoding="utf-8", errors="replace") as handle:
        state = handle.read()
    found = []
    if "PRIVATE KEY" in state:
        found.append("a PEM private key header")
    for key_path in key_paths:
        with open(key_path, encoding="utf-8", errors="replace") as handle:
            body = [line.strip() for line in handle if line.strip() and not line.startswith("-----")]
        for line in body:
            if len(line) >= 16 and line in state:
                found.append(f"a line of {key_path}")
                break
    return {"clean": not found, "found": found, "bytes": len(state)}


def rollout_log(paths: list[str], since: int) -> dict:
    events = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                parts = line.rstrip("\n").split(" ", 2)
                if len(parts) == 3 and parts[0].isdigit() and int(parts[0]) > since:
                    events.append((int(parts[0]), parts[1], parts[2]))
    events.sort()
    windows: dict[str, dict] = {}
    order: list[str] = []
    for stamp, node, message in events:
        window = windows.setdefault(node, {"restarting": None, "deployed": None, "rolled_back": False, "failed": False})
        if message.startswith("restarting"):
            window["restarting"] = stamp
            order.append(node)
        elif message.startswith("deployed"):
            window["deployed"] = stamp
        elif message.startswith("rolled back") or message.startswith("rolling back"):
            window["rolled_back"] = True
        elif message.startswith("FAILED"):
            window["failed"] = True
    spans = sorted((w["restarting"], w["deployed"] or w["restarting"], n) for n, w in windows.items() if w["restarting"])
    overlaps = sum(1 for (_, end, _), (start, _, _) in zip(spans, spans[1:]) if start < end)
    return {"order": order, "windows": windows, "overlaps": overlaps}


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    command, arguments = sys.argv[1], sys.argv[2:]
    if command == "plan":
        result = plan(arguments[0])
    elif command == "apply-log":
        result = apply_log(arguments[0])
    elif command == "secrets":
        result = secrets(arguments[0], arguments[1:])
    elif command == "rollout-log":
        since = 0
        if "--since" in arguments:
            index = arguments.index("--since")
            since = int(arguments[index + 1])
            arguments = arguments[:index] + arguments[index + 2:]
        result = rollout_log(arguments, since)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
