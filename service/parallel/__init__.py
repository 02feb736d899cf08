"""Several worker processes that stay one service: the supervisor, its workers and its control process.

``python -m service`` with ``SERVING_WORKERS`` > 1 runs :mod:`service.parallel.supervisor`: it binds the
listening socket once, starts one control process (:mod:`service.parallel.control`) and the workers
(:mod:`service.parallel.worker`), and restarts any that die. Workers serve the whole API; they hand what
monitoring and the guardrails need to the control process over one bounded queue
(:mod:`service.parallel.channel`) and forward the few routes that answer from that state to it
(:mod:`service.parallel.forward`). See docs/operations.md ("Worker processes").
"""
