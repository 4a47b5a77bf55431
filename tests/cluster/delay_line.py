#!/usr/bin/env python3
"""A slow link for one node of the cluster harness: what `tc netem delay D loss L` does on the egress of
an interface, for kernels without netem (this machine's has neither netem nor any other delaying qdisc).

Run inside the node's network namespace. It makes a TUN device; the harness routes the node's outgoing
packets into it (main table) and routes what comes out of it on to the real interface (`ip rule iif`).
Every packet read is dropped with probability LOSS (seeded) or written back after DELAY ms, in order.
Prints `ready` once the device exists; stops on SIGTERM or when stdin closes (its parent went away).
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_QUEUED = 20_000  # packets held at once; beyond, drop (a full queue, as netem's limit)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", args.name.encode(), IFF_TUN | IFF_NO_PI))
    rng = random.Random(args.seed)
    delay = args.delay_ms / 1000.0
    queue: list[tuple[float, int, bytes]] = []
    sequence = 0
    counts = {"forwarded": 0, "dropped": 0}
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    stdin = sys.stdin.fileno()
    while running:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, packet = heapq.heappop(queue)
            try:
                os.write(tun, packet)
                counts["forwarded"] += 1
            except BlockingIOError:
                counts["dropped"] += 1
        timeout = max(0.0, queue[0][0] - now) if queue else 0.5
        readable, _, _ = select.select([tun, stdin], [], [], timeout)
        if stdin in readable and not os.read(stdin, 4096):
            break
        if tun in readable:
            for _ in range(256):
                try:
                    packet = os.read(tun, 65_536)
                except BlockingIOError:
                    break
                if rng.random() < args.loss or len(queue) >= MAX_QUEUED:
                    counts["dropped"] += 1
                    continue
                sequence += 1
                heapq.heappush(queue, (time.monotonic() + delay, sequence, packet))
    print(f"forwarded {counts['forwarded']} dropped {counts['dropped']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
