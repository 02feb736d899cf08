"""``python -m service rollout status|shadow|advance|promote|rollback MODEL``: steer a running service's rollout.

    python -m service rollout status   digits
    python -m service rollout shadow   digits 4 --template course --reason "nightly 2026-12-06"
    python -m service rollout advance  digits
    python -m service rollout promote  digits --reason "a week in two regions, no alarms"
    python -m service rollout rollback digits

The service is ``--url`` (``SERVING_URL``, default http://127.0.0.1:8080); changes need the admin token,
``--token`` (``SERVING_ADMIN_TOKEN``). ``--json`` prints the service's answer as it is. A refused change exits
with status 1 and the service's message; a service out of reach, with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from bundle.rollout_client import RolloutClient, RolloutError

VERBS = ("status", "shadow", "advance", "promote", "rollback")
DEFAULT_URL = "http://127.0.0.1:8080"


def add_commands(commands: Any) -> None:
    """The verbs that talk to a running service, as subcommands of ``python -m service rollout``."""
    helps = {
        "status": "print a model's rollout on a running service",
        "shadow": "start a loaded version as the candidate in shadow (the stable version keeps answering)",
        "advance": "move a rollout held in shadow to its plan's first step",
        "promote": "the candidate answers everyone",
        "rollback": "the candidate answers no one",
    }
    for verb in VERBS:
        command = commands.add_parser(verb, help=helps[verb])
        command.add_argument("model")
        if verb == "shadow":
            command.add_argument("version", help="the loaded version to start, e.g. 4")
            command.add_argument("--template", help="a template of the policy file's templates: (default: shadow only)")
        if verb != "status":
            command.add_argument("--reason", default="", help="why, for the audit trail")
            command.add_argument("--if-match", type=int, dest="revision", help="the revision read; 409 if it moved")
        command.add_argument(
            "--url", default=os.environ.get("SERVING_URL", DEFAULT_URL), help="the service (SERVING_URL)"
        )
        command.add_argument("--token", default=None, help="the admin token (default: SERVING_ADMIN_TOKEN)")
        command.add_argument("--actor", default=os.environ.get("USER"), help="who, for the audit trail (X-Actor)")
        command.add_argument("--json", action="store_true", help="print the service's JSON answer")
        command.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the service")


def run(args: argparse.Namespace) -> int:
    token = args.token if args.token is not None else os.environ.get("SERVING_ADMIN_TOKEN")
    client = RolloutClient(args.url, token=token, timeout_s=args.timeout, actor=args.actor)
    try:
        if args.command == "status":
            state = client.status(args.model)
        elif args.command == "shadow":
            state = client.shadow(args.model, args.version, args.template, args.reason, args.revision)
        else:
            state = getattr(client, args.command)(args.model, args.reason, args.revision)
    except RolloutError as exc:
        print(f"{args.command} {args.model}: {exc.message}", file=sys.stderr)
        return 1 if exc.status else 2
    except ValueError as exc:
        print(f"{args.command} {args.model}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(state, indent=2) if args.json else summary(state))
    return 0


def summary(state: dict[str, Any]) -> str:
    """A model's rollout in a few lines: stable, candidate, step, shares, guardrails, the last decision."""
    name = state.get("model")
    held = state.get("held") or []
    held_line = f"  held (pinned only): {', '.join(f'v{v}' for v in held)}" if held else None
    if state.get("stage") == "none":
        lines = [f"{name}: no rollout policy; v{state.get('stable')} serves unpinned traffic"]
        return "\n".join(line for line in [*lines, held_line] if line)
    stable, candidate, stage = state.get("stable"), state.get("candidate"), state.get("stage")
    serving = state.get("serving", stable)
    lines = [f"{name}: stage {stage} (revision {state.get('revision')}, from {state.get('source')})"]
    lines.append(
        f"  stable v{stable}"
        + (f", candidate v{candidate}" if candidate is not None else ", no candidate")
        + f"; v{serving} serves unpinned traffic as stable"
    )
    if held_line:
        lines.append(held_line)
    if stage == "shadow" and candidate is not None:
        lines.append(f"  shadow: v{candidate} also runs on {state.get('shadow_percent', 0):g}% of requests")
    step = state.get("step") or {}
    if step.get("of"):
        where = f"step {step['index']} of {step['of']}" if step.get("index") is not None else step.get("phase")
        nxt = f", next change at {step['next_at']}" if step.get("next_at") else ""
        lines.append(f"  plan: {where}{nxt}")
    shares = state.get("shares") or {}
    if shares and candidate is not None:
        lines.append("  candidate share: " + ", ".join(f"{r} {s * 100:g}%" for r, s in shares.items()))
    guardrails = state.get("guardrails") or {}
    if guardrails:
        lines.append(f"  guardrails: {guardrails.get('status')}: {guardrails.get('message')}")
    decisions = state.get("last_decisions") or []
    if decisions:
        last = decisions[0]
        why = f": {last['reason']}" if last.get("reason") else ""
        lines.append(f"  last decision: {last.get('action')} by {last.get('actor')} at {last.get('at')}{why}")
    for problem in state.get("problems") or []:
        lines.append(f"  problem: {problem}")
    return "\n".join(lines)
