"""`python -m bench`: load tests of jetsink (docs/benchmarks.md).

    python -m bench                                  ~60 s load test on the embedded default
    python -m bench --config FILE --workers N --messages N | --duration S --rate R
                    --payload-bytes B --preload --baseline --sink naive
                    --sweep workers=1,2,4 --compare OLD/results.json --out DIR
                    --chaos kill-worker|kill-supervisor|kill-nats|kill-clickhouse [--chaos-at 0.3]
                    --cluster 3 --chaos kill-stream-leader,kill-consumer-leader|kill-kv-leader --repeat 5
                    --clickhouse-cluster 2x2 [--chaos kill-clickhouse]

Exit codes: 0 ok, 1 the bench itself failed, 2 bad usage or config, 3 the sink could not
boot, 4 messages were lost (with --repeat: lost or stored twice in any run).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench import chaos, report, stats
from workers import exitcodes

SWEEPABLE = ("workers", "payload_bytes", "rate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="Load-test jetsink: publish, sink, account for every message, profile."
    )
    p.add_argument(
        "--config",
        default=None,
        help="base config (default: the shipped config.yaml); its servers are used unless marked embedded",
    )
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: the config's)")
    p.add_argument("--instances", type=int, default=1,
                   help="jetsink instances sharing the partitions, each with --workers (default 1)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--messages", type=int, default=None, help="publish this many messages")
    size.add_argument("--duration", type=float, default=None, help="publish for this many seconds (default 60)")
    p.add_argument(
        "--rate", type=float, default=None, help="target publish rate, messages/s (default: as fast as JetStream acks)"
    )
    p.add_argument("--payload-bytes", type=int, default=350, help="size of each JSON event (default 350)")
    p.add_argument("--preload", action="store_true", help="publish everything first, then time the sink's drain")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="after jetsink, drain the same data with the naive sink and report the speedup",
    )
    p.add_argument("--sink", choices=("jetsink", "naive"), default="jetsink", help="what to measure (default jetsink)")
    p.add_argument(
        "--sweep", default=None, metavar="PARAM=V1,V2,...", help=f"one run per value; PARAM in {', '.join(SWEEPABLE)}"
    )
    p.add_argument("--compare", default=None, metavar="OLD/results.json", help="print each metric's ratio new/old")
    p.add_argument("--out", default=None, help="output directory (default bench/results/<UTC timestamp>)")
    p.add_argument(
        "--keys", type=int, default=256, help="distinct subject keys, spread over the partitions (default 256)"
    )
    p.add_argument(
        "--traceparent-share", type=float, default=0.1, help="share of messages with a traceparent header (default 0.1)"
    )
    p.add_argument(
        "--no-profiles",
        action="store_true",
        help="skip py-spy and memray (their overhead is part of every profiled run)",
    )
    p.add_argument(
        "--trace", action="store_true", help="run the sink with observability.enabled (OTLP export per OTEL_* env)"
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="give up when nothing moved for this many seconds (default 60)",
    )
    p.add_argument("--quiet", action="store_true", help="no live progress lines")
    p.add_argument("--chaos", default=None, metavar="KIND[,KIND...]",
                   help=f"kill -9 this during the drain; a comma list is a schedule (bench/chaos.py). "
                        f"KIND in {', '.join(chaos.KINDS)}")
    p.add_argument("--chaos-at", type=float, default=0.3,
                   help="fraction of the messages stored when --chaos fires (default 0.3)")
    p.add_argument("--cluster", type=int, default=0, metavar="N",
                   help="run on a NATS cluster of N nodes the bench starts itself (R3 stream, KV and consumers)")
    p.add_argument("--clickhouse-cluster", default=None, metavar="SxR",
                   help="drain into a ClickHouse cluster the bench starts itself: ZooKeeper + S shards x R replicas "
                        "(ReplicatedMergeTree, clickhouse.shards/hosts); reports rows per shard and replica; "
                        "--chaos kill-clickhouse then kills the replica worker 0 inserts into")
    p.add_argument("--layout", choices=("single_stream", "stream_per_partition"), default=None,
                   help="the pipeline's stream layout (default: the config's); stream_per_partition maps the "
                   "subject on the bench's own nats-server or --cluster (a config reload)")
    p.add_argument("--routes", type=int, default=0, metavar="N",
                   help="route the events by their kind over N routes (pipelines[].routes), all into the table: "
                        "each batch is N parts (default 0: no routes)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="the whole run N times, each on a fresh stream (and fresh cluster); a summary at the end")
    return p


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exitcodes.CONFIG if exc.code else exitcodes.OK
    problem = _usage_problem(args)
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return exitcodes.CONFIG
    runs_something = any(
        (args.messages, args.duration, args.sweep, args.preload, args.baseline, args.config, args.sink != "jetsink")
    )
    if args.compare and args.out and not runs_something and Path(args.out, "results.json").exists():
        # `--compare OLD --out DIR` and nothing to run: compare DIR's results with OLD's.
        return _compare(Path(args.out) / "results.json", Path(args.compare))

    from bench.run import RunOptions

    # Our own NATS connections log their closing through jetsink's connection helper.
    logging.getLogger("workers").setLevel(logging.ERROR)

    config_path = Path(args.config) if args.config else Path(__file__).resolve().parents[1] / "config.yaml"
    try:
        base = yaml.safe_load(config_path.read_text())
        from supervisor.config import parse_config

        parse_config(base, config_path.parent, source=config_path)
    except FileNotFoundError:
        print(f"bench: config file {config_path} not found", file=sys.stderr)
        return exitcodes.CONFIG
    except Exception as exc:
        print(f"bench: invalid config {config_path}:\n{exc}", file=sys.stderr)
        return exitcodes.CONFIG

    out = (
        Path(args.out)
        if args.out
        else Path(__file__).resolve().parent / "results" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    )
    opts = RunOptions(
        workers=args.workers,
        instances=args.instances,
        messages=args.messages,
        duration_s=None if args.messages else (args.duration or 60.0),
        rate=args.rate,
        payload_bytes=args.payload_bytes,
        preload=args.preload,
        baseline=args.baseline,
        sink=args.sink,
        profiles=not args.no_profiles,
        keys=args.keys,
        traceparent_share=args.traceparent_share,
        stall_timeout_s=args.stall_timeout,
        trace=args.trace,
        progress=not args.quiet,
        chaos=args.chaos,
        chaos_at=args.chaos_at,
        cluster=args.cluster,
        clickhouse_cluster=args.clickhouse_cluster,
        routes=args.routes,
        layout=args.layout,
    )
    if args.sweep:
        param, values = _parse_sweep(args.sweep)
        series = [(v, _replace(opts, **{_field(param): v})) for v in values]
    elif args.repeat > 1:
        param, series = "run", [(k, opts) for k in range(1, args.repeat + 1)]
    else:
        param, series = None, [(None, opts)]
    return _run_series(base, config_path.parent, param, series, out, Path(args.compare) if args.compare else None)


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.messages is not None and args.messages < 1:
        return "--messages must be >= 1"
    if args.duration is not None and args.duration <= 0:
        return "--duration must be > 0"
    if args.rate is not None and args.rate <= 0:
        return "--rate must be > 0"
    if args.workers is not None and not 1 <= args.workers <= 256:
        return "--workers must be within 1..256"
    if args.payload_bytes < 0:
        return "--payload-bytes must be >= 0"
    if args.preload and args.messages is None:
        return "--preload needs --messages N (a preload publishes a fixed number of messages)"
    if args.baseline and not args.preload:
        return "--baseline needs --preload (both sinks drain the same preloaded stream)"
    if args.baseline and args.sink == "naive":
        return "--baseline compares jetsink with the naive sink; drop --sink naive"
    if not 0 <= args.traceparent_share <= 1:
        return "--traceparent-share must be within 0..1"
    if args.keys < 1:
        return "--keys must be >= 1"
    if args.sweep:
        try:
            _parse_sweep(args.sweep)
        except ValueError as exc:
            return str(exc)
    if args.cluster and args.cluster < 3:
        return "--cluster N: a NATS cluster needs at least 3 nodes (R3 needs a quorum of 2 after a kill)"
    if args.clickhouse_cluster is not None:
        try:
            parse_cluster(args.clickhouse_cluster)
        except ValueError as exc:
            return str(exc)
        if args.sink == "naive" or args.baseline:
            return "--clickhouse-cluster measures jetsink's own cluster inserts: drop --sink naive and --baseline"
    if args.repeat < 1:
        return "--repeat must be >= 1"
    if args.repeat > 1 and (args.sweep or args.baseline):
        return "--repeat runs one drain N times: drop --sweep and --baseline"
    if args.chaos:
        try:
            kinds = chaos.parse_kinds(args.chaos)
        except ValueError as exc:
            return str(exc)
        leader = [k for k in kinds if k in chaos.LEADER_KINDS]
        if leader and not args.cluster:
            return f"--chaos {leader[0]} kills a NATS cluster node: it needs --cluster 3 (the bench's own cluster)"
        if args.cluster and "kill-nats" in kinds:
            return "--chaos kill-nats kills the bench's one nats-server; on --cluster use kill-stream-leader, " \
                   "kill-consumer-leader or kill-kv-leader"
    if args.chaos and args.messages is None:
        return "--chaos needs --messages N (it fires at a fraction of them)"
    if args.chaos and (args.sink == "naive" or args.baseline or args.sweep):
        return "--chaos runs one jetsink drain: drop --sink naive, --baseline and --sweep"
    if not 0 < args.chaos_at < 1:
        return "--chaos-at must be within 0..1 (exclusive)"
    if args.compare and not Path(args.compare).is_file():
        return f"--compare: {args.compare} is not a file"
    return None


def parse_cluster(text: str) -> tuple[int, int]:
    """--clickhouse-cluster SxR -> (shards, replicas)."""
    shards, sep, replicas = text.lower().partition("x")
    if not (sep and shards.isdigit() and replicas.isdigit() and 1 <= int(shards) <= 8 and 1 <= int(replicas) <= 4):
        raise ValueError(f"--clickhouse-cluster takes SHARDSxREPLICAS (1..8 x 1..4), e.g. 2x2; got {text!r}")
    return int(shards), int(replicas)


def _parse_sweep(text: str) -> tuple[str, list[Any]]:
    param, _, values = text.partition("=")
    param = param.strip().replace("-", "_")
    if param not in SWEEPABLE or not values:
        raise ValueError(f"--sweep takes PARAM=V1,V2,... with PARAM in {', '.join(SWEEPABLE)}, got {text!r}")
    try:
        parsed = [float(v) if param == "rate" else int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep {param}: values must be numbers, got {values!r}") from None
    if not parsed:
        raise ValueError(f"--sweep {param}: no values")
    return param, parsed


def _field(param: str) -> str:
    return {"workers": "workers", "payload_bytes": "payload_bytes", "rate": "rate"}[param]


def _replace(opts: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(opts, **changes)


def _run_series(
    base: dict[str, Any],
    base_dir: Path,
    param: str | None,
    series: list[tuple[Any, Any]],
    out: Path,
    compare: Path | None,
) -> int:
    from bench import harness
    from bench.run import SinkFailed, run_once

    out.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="jetsink-bench-"))
    code = exitcodes.OK
    done: list[tuple[Any, dict[str, Any]]] = []
    try:
        print(f"bench: starting servers (data under {work_dir})", file=sys.stderr)
        cluster = series[0][1].cluster
        ch_cluster = series[0][1].clickhouse_cluster
        servers = harness.bring_up(base, base_dir, work_dir, cluster=cluster,
                                   clickhouse_cluster=parse_cluster(ch_cluster) if ch_cluster else None)
        try:
            for i, (value, opts) in enumerate(series):
                run_dir = out if param is None else out / f"{param}-{value}"
                if i and cluster:
                    print(f"bench: a fresh {cluster}-node NATS cluster for {param} {value}", file=sys.stderr)
                    servers.fresh_cluster(work_dir / f"nats-cluster-{i + 1}")
                try:
                    results = run_once(base, base_dir, servers, opts, run_dir, work_dir)
                except SinkFailed as exc:
                    print(f"bench: {exc}", file=sys.stderr)
                    return exitcodes.BOOT if exc.code == exitcodes.BOOT else exitcodes.ERROR
                report.write_report(results, run_dir)
                problems = stats.schema_problems(results)
                if problems:
                    print("bench: results.json departs from its schema:\n  " + "\n  ".join(problems), file=sys.stderr)
                    code = max(code, exitcodes.ERROR)
                print()
                print(report.summary_table(results))
                went = report.where_cpu_went(results)
                if went:
                    print("\nwhere the CPU went (from the profiles, which slow the workers they sample):")
                    for line in went:
                        print(f"  {line}")
                print(f"\nresults: {run_dir / 'results.json'}\nreport:  {run_dir / 'report.html'}")
                for line in report.clickhouse_cluster_lines(results):
                    print(line)
                for note in results.get("notes") or []:
                    print(f"note: {note}")
                lost = results["lost"] + (results.get("baseline") or {}).get("lost", 0)
                if lost:
                    print(f"bench: {lost} message(s) LOST (neither in ClickHouse nor dead-lettered)", file=sys.stderr)
                    code = exitcodes.LOST
                if results.get("duplicates"):
                    print(f"bench: {results['duplicates']} row(s) stored twice", file=sys.stderr)
                    if param == "run":
                        code = exitcodes.LOST
                done.append((value, results))
        finally:
            servers.stop()
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if param == "run":
        rows = report.repeat_rows(done)
        (out / "repeat.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
        print()
        print(report.repeat_table(rows))
        print(f"repeat: {out / 'repeat.json'}")
    elif param is not None:
        (out / "sweep.json").write_bytes(
            orjson.dumps(
                [
                    {
                        param: v,
                        "throughput_msgs_per_s": r.get("throughput_msgs_per_s"),
                        "cpu_us_per_msg": r.get("cpu_us_per_msg"),
                        "lost": r.get("lost"),
                        "results": f"{param}-{v}/results.json",
                    }
                    for v, r in done
                ],
                option=orjson.OPT_INDENT_2,
            )
        )
        path = report.write_sweep_report(param, done, out)
        print(f"sweep: {path}")
    if compare is not None and done:
        new = done[-1][1]
        old = orjson.loads(compare.read_bytes())
        print()
        print(report.compare_table(stats.ratios(new, old), new, old))
    return code


def _compare(new_path: Path, old_path: Path) -> int:
    new, old = orjson.loads(new_path.read_bytes()), orjson.loads(old_path.read_bytes())
    print(report.compare_table(stats.ratios(new, old), new, old))
    return exitcodes.OK
