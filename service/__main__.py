"""``python -m service --models models/ [--host H] [--port P] [--rollout FILE]``; ``python -m service rollout ...``.

Command-line flags override ``SERVING_*`` environment variables, which
override the defaults; ``--help`` lists every setting.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from service.settings import ServiceSettings


def settings_help() -> str:
    lines = ["settings (environment variables):"]
    for name, field in ServiceSettings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        lines.append(f"  SERVING_{name.upper():<24} {field.description} (default: {default})")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve a model repository over HTTP.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", help="model repository root (SERVING_MODELS)")
    parser.add_argument("--host", help="interface to listen on (SERVING_HOST)")
    parser.add_argument("--port", type=int, help="TCP port (SERVING_PORT)")
    parser.add_argument("--rollout", help="rollout policy YAML file (SERVING_ROLLOUT)")
    parser.add_argument("--log-level", dest="log_level", help="log level (SERVING_LOG_LEVEL)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["rollout"]:  # python -m service rollout check|plan|at FILE
        from service.rollout.cli import main as rollout_main

        return rollout_main(argv[1:])
    args = parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from service.models.runtime import cpu_quota

    quota = cpu_quota()
    workers = settings.workers or quota
    if workers > 1:  # a supervisor, its workers and a control process (service.parallel)
        from service.parallel.group import use_multiprocess_metrics

        use_multiprocess_metrics()  # before prometheus-client is imported, here and in every child
        from service.parallel.supervisor import Supervisor

        return Supervisor(settings, workers, quota).run()
    import uvicorn

    from service.app import create_app
    from service.http.connections import server_config

    # The connection limits (header size, header/body/keep-alive timeouts, connection and request caps) live
    # in service.http.connections, with the protocol that enforces them.
    uvicorn.Server(server_config(create_app(settings), settings)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
