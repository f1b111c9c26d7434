"""The local sinks in a process of their own, until SIGTERM or Ctrl-C: so that a benchmark counts their CPU apart
from the worker's.

    python -m sinks --mail-port 1025 --slack-port 8025
"""

from __future__ import annotations

import argparse
import signal
import threading

from sinks.mail import MailSink
from sinks.slack import SlackSink


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the local mail and Slack sinks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mail-port", type=int, required=True)
    parser.add_argument("--slack-port", type=int, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with MailSink(args.host, args.mail_port) as mail, SlackSink(args.host, args.slack_port) as slack:
        print(f"sinks ready: mail on {mail.host}:{mail.port}, Slack at {slack.api_url}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
