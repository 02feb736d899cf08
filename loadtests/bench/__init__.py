"""``python -m loadtests.bench``: the service against what the hardware allows and its alternatives, in one run.

See ``docs/performance.md`` for what each figure means. The modules:

- ``bundles``: the models served (resnet18, the digits and tabular examples) and the request bodies;
- ``servers``: the processes under test (the service with its defaults and with batching off, the
  course-style handler, the bare Starlette endpoint);
- ``ceilings``: in-process ONNX Runtime throughput, decode cost, the pipeline limit, single-item time;
- ``workloads``: the interleaved slices and their medians, closed and open loop;
- ``report``: the machine, the table, the targets' PASS/FAIL lines, JSON and the plot.
"""
