"""The bare polygon-api-client WebSocketClient with a no-op handler, as a child process of throughput.py.

Receives N events from the fake Polygon and prints one JSON line: when the Nth event arrived
(time.monotonic, comparable across processes), its CPU seconds and its own peak RSS: VmHWM, which exec
resets (ru_maxrss survives exec, so it carried the benchmark parent's high-water mark: 0.4-1.1 GB).
"""
import argparse
import asyncio
import json
import os
import resource
import time

from polygon import WebSocketClient

from spy_streamer.peak_memory import peak_rss_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--feed", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--raw", action="store_true", help="raw frames instead of parsed model objects")
    parser.add_argument("--channel", default="A", help="subscribe to CHANNEL.* (A, T, Q...)")
    args = parser.parse_args()
    received = 0
    marker = f'"ev":"{args.channel}"'

    async def no_op_handler(messages) -> None:
        nonlocal received
        # Parsed mode hands a list of models (EquityAgg, EquityTrade); raw mode the frame text.
        received += messages.count(marker) if args.raw else len(messages)
        if received >= args.events:
            done = time.monotonic()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(json.dumps({"done_monotonic": done, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                              "peak_rss_bytes": peak_rss_bytes()}), flush=True)
            os._exit(0)  # measured; no need for a graceful close

    client = WebSocketClient(api_key=args.key, feed=args.feed, secure=False, raw=args.raw,
                             subscriptions=[f"{args.channel}.*"], max_reconnects=0)
    asyncio.run(client.connect(no_op_handler))


if __name__ == "__main__":
    main()
