"""``python -m service rollout check|plan|at FILE``: validate a policy, print its timeline, route one request;
``status|shadow|advance|promote|rollback MODEL``: steer a running service.

    python -m service rollout check deploy/rollout.yaml        (its models and its templates)
    python -m service rollout plan  deploy/rollout.yaml [--model digits]
    python -m service rollout at    deploy/rollout.yaml --time 2026-12-02T09:00:00Z --region campsite-1 --key u42

These read the file alone (no store): what they print is the plan as written,
before any rollback, promotion or admin edit recorded since. The verbs that
steer a running service (status, shadow, advance, promote, rollback) are
:mod:`service.rollout.steer`'s.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bundle.durations import format_duration
from service.rollout import steer
from service.rollout.policy import (
    PolicyError,
    RolloutFile,
    Template,
    iso,
    load_policy_file,
    parse_time,
)
from service.rollout.routing import BUCKETS, bucket, candidate_share, choose_version, step_at, timeline


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service rollout", description=" ".join(__doc__.splitlines()[:2]))
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a rollout file")
    check.add_argument("file")
    plan = commands.add_parser("plan", help="print when each step starts and its shares per region")
    plan.add_argument("file")
    plan.add_argument("--model", help="only this model")
    at = commands.add_parser("at", help="which version a request would get")
    at.add_argument("file")
    at.add_argument("--time", default="now", help="ISO time, e.g. 2026-12-02T09:00:00Z (default: now)")
    at.add_argument("--region", default=None, help="the X-Region value")
    at.add_argument("--key", required=True, help="the sticky key (X-Request-Key value)")
    at.add_argument("--model", help="only this model")
    steer.add_commands(commands)
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.command in steer.VERBS:
        return steer.run(args)
    try:
        policies = load_policy_file(args.file)
    except PolicyError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    names = _names(policies, getattr(args, "model", None))
    if names is None:
        print(f"no model {args.model!r} in {args.file}; models: {sorted(policies.models)}", file=sys.stderr)
        return 1
    if args.command == "check":
        for name in names:
            p = policies.models[name]
            print(f"ok: {name}: stable v{p.stable}, candidate {_v(p.candidate)}, stage {p.stage}, {len(p.steps)} steps")
        for name, template in sorted(policies.templates.items()):
            print(f"ok: template {name}: {_describe_template(template)}")
        if not names and not policies.templates:
            print(f"ok: {args.file} has no models")
        return 0
    if args.command == "plan":
        for name in names:
            _print_plan(name, policies)
        return 0
    try:
        now = parse_time(args.time)
    except ValueError:
        print(f"--time: not an ISO time: {args.time!r}", file=sys.stderr)
        return 1
    for name in names:
        p = policies.models[name]
        state = step_at(p, now)
        version = choose_version(name, p, args.key, args.region, now)
        share = candidate_share(p, args.region, now)
        role = "candidate" if version == p.candidate and version != p.stable else "stable"
        where = f"step {state.index}" if state.index is not None else state.phase.replace("_", " ")
        key_bucket = bucket(name, p.candidate, args.key) if p.candidate is not None else None
        print(
            f"{name}: v{version} ({role}) at {iso(now)}, region {args.region or '-'}, key {args.key!r}: "
            f"stage {p.stage}, {where}, candidate share {share:g}%"
            + (f", key bucket {key_bucket}/{BUCKETS}" if key_bucket is not None else "")
        )
    return 0


def _names(policies: RolloutFile, model: str | None) -> list[str] | None:
    if model is None:
        return sorted(policies.models)
    return [model] if model in policies.models else None


def _print_plan(name: str, policies: RolloutFile) -> None:
    p = policies.models[name]
    print(f"{name}: stable v{p.stable}, candidate {_v(p.candidate)}, stage {p.stage}, sticky key {p.sticky_key}")
    if p.stage == "shadow":
        print(f"  shadow: the candidate also runs on {p.shadow.percent:g}% of requests; stable answers all")
    if p.stage != "canary":
        print(f"  the steps below apply in stage canary only (now: {p.stage})")
    if p.start is None:
        print("  no start time: the candidate gets nothing")
        return
    print(f"  before {iso(p.start.timestamp())}: stable everywhere")
    for row in timeline(p):
        until = f"until {row['ends_at']}" if row["ends_at"] else "until promoted"
        shares = ", ".join(f"{region} {share:g}%" for region, share in row["regions"].items())
        print(f"  step {row['step']}: from {row['starts_at']} {until} ({row['hold'] or 'open'}): {shares}")
    if p.end is not None:
        print(f"  from {iso(p.end.timestamp())}: stable everywhere (end)")
    else:
        print("  after the last step its shares stay until someone promotes")


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "none"


def _describe_template(t: Template) -> str:
    shadow = f"shadow {t.shadow.percent:g}%" + (f" for {format_duration(t.shadow.hold)}" if t.shadow.hold else "")
    steps = ", then ".join(
        ", ".join(f"{region} {share:g}%" for region, share in step.regions.items())
        + (f" for {format_duration(step.hold)}" if step.hold else "")
        for step in t.steps
    )
    advance = "advances by itself after the shadow hold" if t.auto_advance else "an admin advances it from shadow"
    return f"{shadow}, then {steps or 'promote'}; {advance}"
