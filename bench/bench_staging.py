"""Staging a pack of N GiB: our one-pass download + sha256 (`ObjectStore.download_to`) beside
`aws s3 cp`, `aws s3 cp` + `sha256sum` and `curl -o FILE` (a presigned GET) of the same object,
all in this run, on a private SeaweedFS; our hash-in-flight of it (`verify_in_flight`, what
staging does with an Exchange blob: nothing written); peak-RSS growth while staging;
re-verification of the staged pack (`hash_files_parallel`) beside `sha256sum` of the same files.

Usage: python bench/bench_staging.py [--size GIB] [--runs N] [--workdir DIR] [--no-aws] [--json]
Targets (DESIGN §7): ours <= 1.05 x `aws s3 cp`; RSS growth while staging < 64 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import median, note, table, verdict

from kristal.store.blobcache import BlobCache, hash_file, hash_files_parallel
from kristal.store.s3 import MiB, ObjectStore, StoreConfig

GiB = 1024 * MiB
KEY = "bench/staging/pack.bin"
RATIO_TARGET = 1.05
RSS_TARGET_MB = 64

# Runs in a fresh interpreter: imports and botocore's S3 model are loaded (and the connection
# pool warmed by a HEAD) before the kernel's peak-RSS counter is reset, so VmHWM - VmRSS is what
# the download itself added. ru_maxrss would be dominated by the model loading (~125 MB).
_PROBE = r"""
import json, resource, sys, time
from pathlib import Path
from kristal.runtime.measure import reset_peak_rss
from kristal.store.s3 import ObjectStore, StoreConfig

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)

store = ObjectStore(StoreConfig(**json.loads(sys.argv[1])))
store.head(sys.argv[2])
reset = reset_peak_rss()
before = status("VmRSS")
t0 = time.perf_counter()
if sys.argv[6] == "in-flight":
    from kristal.store.download import verify_in_flight
    verify_in_flight(store, sys.argv[2], expected_sha256=sys.argv[4],
                     expected_size=int(sys.argv[5]))
else:
    store.download_to(sys.argv[2], Path(sys.argv[3]), expected_sha256=sys.argv[4],
                      expected_size=int(sys.argv[5]))
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "rss_before_kb": before, "hwm_after_kb": status("VmHWM"),
                  "reset_worked": reset,
                  "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def make_source(path: Path, size: int) -> str:
    """`size` bytes of random-ish data (a 16 MiB random block, each copy stamped with its
    index so no two blocks are equal); returns the sha256 hex."""
    block = bytearray(os.urandom(16 * MiB))
    digest = hashlib.sha256()
    written = 0
    with path.open("wb") as out:
        n = 0
        while written < size:
            block[:8] = n.to_bytes(8, "big")
            piece = memoryview(block)[: min(len(block), size - written)]
            out.write(piece)
            digest.update(piece)
            written += len(piece)
            n += 1
    return digest.hexdigest()


def find_aws(quiet: bool) -> str | None:
    aws = shutil.which("aws")
    if aws:
        return aws
    note("`aws` not found: installing awscli from PyPI (pip install awscli) for the baseline",
         quiet=quiet)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "awscli"],
                          capture_output=True, text=True, check=False)
    aws = shutil.which("aws") or _script_next_to_python("aws")
    if proc.returncode != 0 or not aws:
        print("awscli could not be installed (pip said: "
              f"{(proc.stderr or proc.stdout).strip()[-300:]}); the `aws s3 cp` baselines are "
              "skipped", file=sys.stderr)
        return None
    return aws


def _script_next_to_python(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else None


def aws_env(work: Path, aws: str) -> dict[str, str]:
    """A private AWS CLI config (path-style addressing), credentials from the environment."""
    env = {**os.environ,
           "AWS_CONFIG_FILE": str(work / "aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(work / "aws-credentials-none"),
           "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_PAGER": ""}
    subprocess.run([aws, "configure", "set", "default.s3.addressing_style", "path"],
                   env=env, check=True, capture_output=True)
    return env


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed, proc.stdout


def fresh(path: Path) -> None:
    """Remove a previous run's output and flush dirty pages, outside any timed region."""
    path.unlink(missing_ok=True)
    os.sync()


def run_ours(config: StoreConfig, dest: Path, sha: str, size: int,
             mode: str = "download") -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(config.__dict__), KEY, str(dest), sha,
         str(size), mode],
        capture_output=True, text=True, check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"download probe failed: {proc.stderr.strip()[-800:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["process_wall"] = wall
    figures["growth_mb"] = (figures["hwm_after_kb"] - figures["rss_before_kb"]) / 1024
    return figures


def split_file(src: Path, parts: int, out_dir: Path) -> list[Path]:
    """The same bytes as `parts` files (copy_file_range, no userspace copy)."""
    size = src.stat().st_size
    step = -(-size // parts)
    paths = []
    with src.open("rb") as source:
        for i in range(parts):
            path = out_dir / f"part-{i}.bin"
            with path.open("wb") as out:
                offset, end = i * step, min(size, (i + 1) * step)
                while offset < end:
                    copied = os.copy_file_range(source.fileno(), out.fileno(), end - offset,
                                                offset)
                    if copied == 0:
                        break
                    offset += copied
            paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1.0, help="pack size in GiB (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median; default 3)")
    parser.add_argument("--parts", type=int, default=4,
                        help="files for the multi-file re-verification (default 4)")
    parser.add_argument("--workdir", help="keep everything here instead of a temp dir")
    parser.add_argument("--no-aws", action="store_true", help="skip the aws s3 cp baselines")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    quiet = False
    size = int(args.size * GiB)

    benchlib.bench_credentials()  # before the aws CLI environment is copied from os.environ
    with benchlib.workdir(args.workdir, "kristal-bench-staging-") as work:
        aws = None if args.no_aws else find_aws(quiet)
        env = aws_env(work, aws) if aws else None
        with benchlib.seaweed(work) as server:
            config = benchlib.store_config(server)
            store = ObjectStore(config)
            store.ensure_bucket()

            src = work / "source.bin"
            note(f"generating {size / GiB:.2f} GiB ...", quiet=quiet)
            sha = make_source(src, size)
            note("uploading ...", quiet=quiet)
            t0 = time.perf_counter()
            store.upload_file(KEY, src)
            upload_s = time.perf_counter() - t0
            src.unlink()

            dest = work / "dest.bin"
            ours: list[dict[str, Any]] = []
            aws_cp: list[float] = []
            aws_cp_fsync: list[float] = []
            aws_cp_sum: list[float] = []
            aws_noop: list[float] = []
            curl_s: list[float] = []
            in_flight: list[dict[str, Any]] = []
            url = f"s3://{config.bucket}/{KEY}"
            presigned = store._client.generate_presigned_url(
                "get_object", Params={"Bucket": config.bucket, "Key": store.full_key(KEY)},
                ExpiresIn=3600)
            for run in range(args.runs):
                note(f"download run {run + 1}/{args.runs} ...", quiet=quiet)
                fresh(dest)
                ours.append(run_ours(config, dest, sha, size))
                fresh(dest)
                curl_s.append(timed(["curl", "-sS", "--fail", "-o", str(dest), presigned])[0])
                if dest.stat().st_size != size:
                    raise RuntimeError("curl: wrong size")
                fresh(dest)
                in_flight.append(run_ours(config, dest, sha, size, "in-flight"))
                if aws and env:
                    cp = [aws, "s3", "cp", url, str(dest), "--endpoint-url",
                          server.endpoint_url, "--only-show-errors", "--no-progress"]
                    fresh(dest)
                    aws_cp.append(timed(cp, env)[0])
                    fresh(dest)
                    t0 = time.perf_counter()
                    timed(cp, env)
                    timed(["sync", str(dest)])
                    aws_cp_fsync.append(time.perf_counter() - t0)
                    fresh(dest)
                    t0 = time.perf_counter()
                    timed(cp, env)
                    _, out = timed(["sha256sum", str(dest)])
                    aws_cp_sum.append(time.perf_counter() - t0)
                    if out.split()[0] != sha:
                        raise RuntimeError("aws s3 cp + sha256sum: digest differs")
                    aws_noop.append(timed([aws, "s3api", "head-object", "--bucket",
                                           config.bucket, "--key", KEY, "--endpoint-url",
                                           server.endpoint_url], env)[0])
            fresh(dest)

            # The staging path proper: BlobCache.fetch -> download_to -> rename (no fsync).
            note("staging into the blob cache, then re-verification ...", quiet=quiet)
            cache = BlobCache(work / "cache")
            fetch_s: list[float] = []
            for _ in range(args.runs):
                fresh(cache.path_for(sha))
                t0 = time.perf_counter()
                blob = cache.fetch(sha, size, lambda tmp: store.download_to(
                    KEY, tmp, expected_sha256=sha, expected_size=size))
                fetch_s.append(time.perf_counter() - t0)

        # Re-verification of the staged pack (SeaweedFS no longer needed; warm page cache).
        parts_dir = work / "parts"
        parts_dir.mkdir(exist_ok=True)
        parts = split_file(blob, args.parts, parts_dir)
        part_digests = [hash_file(p)[0] for p in parts]  # also warms the page cache
        reverify: dict[str, list[float]] = {k: [] for k in (
            "verified_path", "hash_files_parallel_1", "sha256sum_1",
            "hash_files_parallel_n", "sha256sum_n")}
        for _ in range(args.runs):
            t0 = time.perf_counter()
            ok = cache.verified_path(sha, size)
            reverify["verified_path"].append(time.perf_counter() - t0)
            assert ok is not None
            t0 = time.perf_counter()
            got = hash_files_parallel([blob])
            reverify["hash_files_parallel_1"].append(time.perf_counter() - t0)
            assert got[0][0] == sha
            reverify["sha256sum_1"].append(timed(["sha256sum", str(blob)])[0])
            t0 = time.perf_counter()
            got = hash_files_parallel(parts)
            reverify["hash_files_parallel_n"].append(time.perf_counter() - t0)
            assert [g[0] for g in got] == part_digests
            reverify["sha256sum_n"].append(timed(["sha256sum", *map(str, parts)])[0])

    figures = summarise(args, size, upload_s, ours, aws_cp, aws_cp_fsync, aws_cp_sum, aws_noop,
                        fetch_s, reverify)
    figures["curl_o_file"] = {"median_s": median(curl_s), "samples_s": curl_s,
                              "mb_per_s": size / MiB / median(curl_s)}
    in_flight_s = [o["seconds"] for o in in_flight]
    figures["ours_verify_in_flight"] = {
        "median_s": median(in_flight_s), "samples_s": in_flight_s,
        "mb_per_s": size / MiB / median(in_flight_s),
        "rss_growth_mb": [o["growth_mb"] for o in in_flight]}
    figures["ratios"]["ours_vs_curl"] = median([o["seconds"] for o in ours]) / median(curl_s)
    figures["ratios"]["in_flight_vs_curl"] = median(in_flight_s) / median(curl_s)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        report(figures)
    return 0


def summarise(args: argparse.Namespace, size: int, upload_s: float, ours: list[dict[str, Any]],
              aws_cp: list[float], aws_cp_fsync: list[float], aws_cp_sum: list[float],
              aws_noop: list[float], fetch_s: list[float],
              reverify: dict[str, list[float]]) -> dict[str, Any]:
    def fig(samples: list[float]) -> dict[str, Any] | None:
        if not samples:
            return None
        m = median(samples)
        return {"median_s": m, "samples_s": samples, "mb_per_s": size / MiB / m}

    ours_s = [o["seconds"] for o in ours]
    ours_wall = [o["process_wall"] for o in ours]
    growth = [o["growth_mb"] for o in ours]
    res: dict[str, Any] = {
        "benchmark": "staging", "machine": benchlib.machine(), "size_bytes": size,
        "runs": args.runs, "upload_s": upload_s,
        "ours_download_to": fig(ours_s),
        "ours_process_wall": fig(ours_wall),
        "aws_s3_cp": fig(aws_cp),
        "aws_s3_cp_then_sync": fig(aws_cp_fsync),
        "aws_s3_cp_then_sha256sum": fig(aws_cp_sum),
        "aws_cli_fixed_cost_head_object": fig(aws_noop),
        "blobcache_fetch": fig(fetch_s),
        "rss": {"growth_mb": growth, "growth_mb_max": max(growth),
                "rss_before_mb": [o["rss_before_kb"] / 1024 for o in ours],
                "ru_maxrss_mb": [o["ru_maxrss_kb"] / 1024 for o in ours],
                "reset_worked": all(o["reset_worked"] for o in ours)},
        "reverify": {k: fig(v) for k, v in reverify.items()},
        "reverify_parts": args.parts,
    }
    ratios: dict[str, Any] = {}
    if aws_cp:
        ratios["ours_vs_aws_cp"] = median(ours_s) / median(aws_cp)
        ratios["ours_process_vs_aws_cp"] = median(ours_wall) / median(aws_cp)
        net = median(aws_cp) - median(aws_noop)
        ratios["ours_vs_aws_cp_minus_cli_fixed_cost"] = median(ours_s) / net if net > 0 else None
        ratios["ours_vs_aws_cp_sha256sum"] = median(ours_s) / median(aws_cp_sum)
        ratios["ours_vs_aws_cp_then_sync"] = median(ours_s) / median(aws_cp_fsync)
    ratios["hash_files_parallel_vs_sha256sum_1_file"] = (
        median(reverify["hash_files_parallel_1"]) / median(reverify["sha256sum_1"]))
    ratios["hash_files_parallel_vs_sha256sum_n_files"] = (
        median(reverify["hash_files_parallel_n"]) / median(reverify["sha256sum_n"]))
    res["ratios"] = ratios
    res["targets"] = {
        "ours_vs_aws_cp_le_1.05": (ratios["ours_vs_aws_cp"] <= RATIO_TARGET) if aws_cp else None,
        "rss_growth_lt_64mb": max(growth) < RSS_TARGET_MB,
    }
    return res


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report(f: dict[str, Any]) -> None:
    size_gib = f["size_bytes"] / GiB
    print(f"staging a {size_gib:.2f} GiB object, median of {f['runs']} "
          f"(upload took {f['upload_s']:.1f} s)")
    rows = []
    for label, key in (("(a) ours: download_to (one pass + sha256)", "ours_download_to"),
                       ("(a') ours: same, whole fresh process", "ours_process_wall"),
                       ("(b) aws s3 cp", "aws_s3_cp"),
                       ("(b') aws s3 cp + sync FILE", "aws_s3_cp_then_sync"),
                       ("(c) aws s3 cp + sha256sum", "aws_s3_cp_then_sha256sum"),
                       ("    aws CLI fixed cost (s3api head-object)",
                        "aws_cli_fixed_cost_head_object"),
                       ("    BlobCache.fetch (the staging path: download_to + rename)",
                        "blobcache_fetch")):
        fig = f[key]
        if fig is None:
            rows.append((label, "skipped", "-"))
        else:
            rate = None if key == "aws_cli_fixed_cost_head_object" else fig["mb_per_s"]
            rows.append((label, fig["median_s"], rate))
    print(table(("download", "median s", "MB/s"), rows))
    r = f["ratios"]
    c, h = f["curl_o_file"], f["ours_verify_in_flight"]
    print(f"curl -o FILE (presigned GET) {c['median_s']:.3f} s ({c['mb_per_s']:.0f} MB/s); "
          f"ours verify_in_flight (hash, nothing written) {h['median_s']:.3f} s "
          f"({h['mb_per_s']:.0f} MB/s, RSS growth max {max(h['rss_growth_mb']):.1f} MB); "
          f"download_to/curl = {r['ours_vs_curl']:.3f}, in-flight/curl = "
          f"{r['in_flight_vs_curl']:.3f}")
    if "ours_vs_aws_cp" in r:
        print(f"ours/(b) = {r['ours_vs_aws_cp']:.3f} (target <= {RATIO_TARGET}: "
              f"{verdict(f['targets']['ours_vs_aws_cp_le_1.05'])}); "
              f"ours/(b - CLI fixed cost) = {_ratio(r['ours_vs_aws_cp_minus_cli_fixed_cost'])}; "
              f"(a')/(b) = {r['ours_process_vs_aws_cp']:.3f}; "
              f"ours/(b') = {r['ours_vs_aws_cp_then_sync']:.3f}; "
              f"ours/(c) = {r['ours_vs_aws_cp_sha256sum']:.3f}")
    else:
        print("aws s3 cp baselines skipped: no ratio")
    rss = f["rss"]
    print(f"peak RSS growth while staging: max {rss['growth_mb_max']:.1f} MB over a baseline of "
          f"{median(rss['rss_before_mb']):.0f} MB (runs: "
          + ", ".join(f"{g:.1f}" for g in rss["growth_mb"])
          + f"; target < {RSS_TARGET_MB} MB: {verdict(f['targets']['rss_growth_lt_64mb'])}; "
          f"ru_maxrss {median(rss['ru_maxrss_mb']):.0f} MB for comparison)")
    print()
    print(f"re-verifying the staged pack (warm page cache), median of {f['runs']}")
    rv = f["reverify"]
    n = f["reverify_parts"]
    print(table(("re-verification", "median s", "MB/s"), [
        ("BlobCache.verified_path (before a switch)", rv["verified_path"]["median_s"],
         rv["verified_path"]["mb_per_s"]),
        ("hash_files_parallel, 1 file", rv["hash_files_parallel_1"]["median_s"],
         rv["hash_files_parallel_1"]["mb_per_s"]),
        ("sha256sum, 1 file", rv["sha256sum_1"]["median_s"], rv["sha256sum_1"]["mb_per_s"]),
        (f"hash_files_parallel, {n} files (2 workers)", rv["hash_files_parallel_n"]["median_s"],
         rv["hash_files_parallel_n"]["mb_per_s"]),
        (f"sha256sum, {n} files", rv["sha256sum_n"]["median_s"], rv["sha256sum_n"]["mb_per_s"]),
    ]))
    print(f"ratio ours/sha256sum: 1 file {r['hash_files_parallel_vs_sha256sum_1_file']:.3f}, "
          f"{n} files {r['hash_files_parallel_vs_sha256sum_n_files']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
