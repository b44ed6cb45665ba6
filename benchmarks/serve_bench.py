"""Load test of ``mmrank serve``: throughput, latency and errors of ``POST /search`` under
concurrent clients, with dynamic batching on (``--max-batch 32``) and off (``--max-batch 1``).

Builds a collection of the bundled sample PDFs with the default offline text model
(all-MiniLM-L6-v2; ``--collection DIR`` builds it there once and reuses it after), starts
``mmrank serve`` as a child process on 127.0.0.1 (a free port), waits for ``/healthz``, then, for
each concurrency level, sends ``--requests`` distinct text searches (the bundled questions and
variations of them, JSON bodies, k=10) from that many concurrent clients of one ``httpx``
``AsyncClient``, and stops the server (SIGINT). Once with batching on, once off: two servers.
Before each measured level, one request per client is sent and not counted (warm-up); the server
itself loads and warms its models before it listens.

With batching on, the same server also serves a collection of the bundled images indexed with a
tiny random-weight open_clip model (``tests/tiny_models.py``; no real CLIP works offline here), and
composed searches (multipart form: ``assets/images/cat.jpg`` and the text "make it red") are
measured at ``--image-concurrency``: upload parsing, image decoding and the batched encode, so a
speed and plumbing figure only, never a quality one.

For each level it prints the throughput (answered requests per second of wall time), the p50, p95
and p99 latency seen by the client, the median model time per query the server reports (each
query's share of its batch's time), errors (an HTTP status other than 200, or a 200 without hits)
and lost requests (no answer at all: a timeout or a dropped connection); then the speedup of the
highest concurrency over 1 for each batching mode, and the service goals (c32 with batching at
least 3x c1, p99 at c32 under 2 s, nothing failed or lost). The client shares the machine with the
server, so on a small machine its own CPU use is part of the figures. Exits 1 if any request
failed or was lost.

    python benchmarks/serve_bench.py
    python benchmarks/serve_bench.py --requests 400 --concurrency 1,8,32,64 --collection /tmp/bench-pdfs
    python benchmarks/serve_bench.py --batching on --max-wait-ms 10 --no-image
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mmrank.report import format_table  # noqa: E402

ASSETS = ROOT / "assets"
IMAGE_COLLECTION = "bench-images"
COMPOSED_TEXT = "make it red"
VARIATIONS = ("{}", "{} Please answer briefly.", "Tell me: {}", "{} (from the sample PDFs)", "Quick question: {}",
              "I would like to know: {}", "{} Show the page.", "Search the documents. {}")


@dataclass
class Level:
    """What one measured level gave: per-request latencies of answered requests, and counts."""

    label: str
    concurrency: int
    requests: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)
    errors: int = 0
    lost: int = 0
    first_problem: str = ""

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def row(self) -> list[str]:
        ms = [1000 * s for s in self.latencies]
        model = f"{statistics.median(self.model_ms):.0f}" if self.model_ms else "-"
        return [self.label, str(self.concurrency), str(self.requests), f"{self.throughput:.1f}",
                *(f"{percentile(ms, q):.0f}" if ms else "-" for q in (50, 95, 99)), model,
                str(self.errors), str(self.lost)]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile, nearest rank (the smallest value with q% of them at or below it)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))] if ordered else float("nan")


def questions(count: int) -> list[str]:
    """``count`` distinct questions: the bundled ones, then variations of their wording."""
    bundled = [entry["question"] for entry in json.loads((ASSETS / "questions.json").read_text())]
    out = []
    while len(out) < count:
        round_, n = divmod(len(out), len(bundled))
        template = VARIATIONS[round_ % len(VARIATIONS)]
        text = template.format(bundled[n])
        out.append(text if round_ < len(VARIATIONS) else f"{text} #{round_ // len(VARIATIONS)}")
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment of the mmrank processes: offline, this checkout first on the path."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


def mmrank(*args: str) -> list[str]:
    return [sys.executable, "-c", "from mmrank.cli import main; main()", *args]


def build_collections(scratch: Path, text_folder: Path | None, image: bool) -> tuple[Path, Path | None]:
    """The PDF collection (built unless ``text_folder`` holds one) and, with ``image``, a collection
    of the bundled images indexed with a tiny random-weight CLIP."""
    from mmrank.manifest import MANIFEST

    text_folder = text_folder or scratch / "bench-pdfs"
    if not (text_folder / MANIFEST).is_file():
        print(f"indexing {ASSETS / 'pdfs'} into {text_folder} (all-MiniLM-L6-v2)", flush=True)
        subprocess.run(mmrank("index", str(ASSETS / "pdfs"), "-o", str(text_folder), "--quiet"),
                       env=child_env(), check=True)
    if not image:
        return text_folder, None
    if text_folder.name == IMAGE_COLLECTION:
        raise SystemExit(f"--collection: name the folder anything but {IMAGE_COLLECTION!r} (served by name)")
    from tests.tiny_models import build_tiny_clip

    clip = build_tiny_clip(scratch / "tiny-clip")
    image_folder = scratch / IMAGE_COLLECTION
    print(f"indexing {ASSETS / 'images'} into {image_folder} (tiny random-weight CLIP)", flush=True)
    subprocess.run(mmrank("index", str(ASSETS / "images"), "-o", str(image_folder), "--image-model",
                          f"local-dir:{clip}", "--quiet"), env=child_env(), check=True)
    return text_folder, image_folder


class Server:
    """``mmrank serve`` in a child process on a free port of 127.0.0.1, its output in a log file."""

    def __init__(self, collections: list[Path], max_batch: int, max_wait_ms: float, log: Path) -> None:
        self.port, self.log_path = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = mmrank("serve", *map(str, collections), "--host", "127.0.0.1", "--port", str(self.port),
                           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms))

    def __enter__(self) -> Server:
        import httpx

        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=child_env())
        started = time.monotonic()
        while time.monotonic() - started < 300:
            if self.process.poll() is not None:
                raise SystemExit(f"mmrank serve exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    print(f"server up on {self.url} in {time.monotonic() - started:.1f} s", flush=True)
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"mmrank serve did not answer /healthz in 300 s:\n{self.tail()}")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def tail(self) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])


async def measure(url: str, label: str, concurrency: int, bodies: list[dict], warmup: list[dict],
                  timeout_s: float) -> Level:
    """Send ``bodies`` (each a dict of httpx request arguments) from ``concurrency`` workers pulling
    from one queue, after ``warmup`` (not counted); latencies, errors and lost requests."""
    import httpx

    level = Level(label, concurrency, len(bodies))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        async def send(body: dict, record: bool) -> None:
            started = time.perf_counter()
            try:
                response = await client.post("/search", **body)
            except httpx.HTTPError as error:
                if record:
                    level.lost += 1
                    level.first_problem = level.first_problem or f"{type(error).__name__}: {error}"
                return
            elapsed = time.perf_counter() - started
            answer = response.json() if response.headers.get("content-type", "").startswith("application/json") \
                else {}
            if not record:
                return
            if response.status_code != 200 or not answer.get("hits"):
                level.errors += 1
                level.first_problem = level.first_problem or f"{response.status_code}: {response.text[:200]}"
                return
            level.latencies.append(elapsed)
            level.model_ms.append(sum(answer.get("timings_ms", {}).values()))

        async def drain(queue: asyncio.Queue, record: bool) -> None:
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await send(body, record)

        for batch, record in ((warmup, False), (bodies, True)):
            queue: asyncio.Queue = asyncio.Queue()
            for body in batch:
                queue.put_nowait(body)
            started = time.perf_counter()
            await asyncio.gather(*(drain(queue, record) for _ in range(concurrency)))
            level.seconds = time.perf_counter() - started
    return level


def text_bodies(texts: list[str], collection: str) -> list[dict]:
    return [{"json": {"text": text, "k": 10, "collection": collection}} for text in texts]


def image_bodies(count: int) -> list[dict]:
    picture = (ASSETS / "images" / "cat.jpg").read_bytes()
    return [{"data": {"text": COMPOSED_TEXT, "k": "10", "collection": IMAGE_COLLECTION},
             "files": {"image": ("cat.jpg", picture, "image/jpeg")}} for _ in range(count)]


def run_levels(url: str, label: str, levels: list[int], make, requests: int, timeout_s: float) -> list[Level]:
    """Each concurrency level in turn on one server: ``make(n, offset)`` gives n request bodies."""
    results, used = [], 0
    for concurrency in levels:
        warmup, used = make(concurrency, used), used + concurrency
        bodies, used = make(requests, used), used + requests
        level = asyncio.run(measure(url, label, concurrency, bodies, warmup, timeout_s))
        print(f"  {label:<12} c{concurrency:<3} {level.throughput:6.1f} req/s  errors {level.errors}  "
              f"lost {level.lost}  ({level.seconds:.1f} s)", flush=True)
        results.append(level)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", type=Path, help="PDF collection folder: built there if it holds none, "
                        "reused if it does (default: a temporary one)")
    parser.add_argument("--requests", type=int, default=128, help="measured text searches per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--batching", default="on,off", help="on (--max-batch 32), off (--max-batch 1), or both")
    parser.add_argument("--max-batch", type=int, default=32, help="--max-batch of the server with batching on")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's --max-wait-ms")
    parser.add_argument("--image-requests", type=int, default=48, help="measured composed searches per level")
    parser.add_argument("--image-concurrency", default="1,8")
    parser.add_argument("--no-image", action="store_true", help="skip the composed-image searches")
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout per request, in seconds")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    image_levels = [int(c) for c in args.image_concurrency.split(",")]
    modes = [m.strip() for m in args.batching.split(",")]
    if not set(modes) <= {"on", "off"}:
        raise SystemExit("--batching: on, off, or on,off")
    image = not args.no_image and "on" in modes

    import torch

    texts = questions(sum(levels) + len(levels) * args.requests)  # the same texts for each server
    started = time.perf_counter()
    results: list[Level] = []
    image_results: list[Level] = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch_name:
        scratch = Path(scratch_name)
        text_folder, image_folder = build_collections(scratch, args.collection, image)
        name = text_folder.absolute().name
        for mode in modes:
            max_batch = args.max_batch if mode == "on" else 1
            served = [text_folder, image_folder] if mode == "on" and image_folder else [text_folder]
            print(f"batching {mode}: mmrank serve --max-batch {max_batch} --max-wait-ms {args.max_wait_ms:g}",
                  flush=True)
            with Server(served, max_batch, args.max_wait_ms, scratch / f"serve-{mode}.log") as server:
                label = f"{mode} ({max_batch})"
                results += run_levels(server.url, label, levels,
                                      lambda n, offset: text_bodies(texts[offset:offset + n], name),
                                      args.requests, args.timeout)
                if mode == "on" and image_folder:
                    image_results += run_levels(server.url, f"{mode} ({max_batch})", image_levels,
                                                lambda n, offset: image_bodies(n), args.image_requests,
                                                args.timeout)
    total = time.perf_counter() - started

    headers = ["batching (max)", "concurrency", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms",
               "model ms/q", "errors", "lost"]
    print()
    print(f"Text searches on {name} (16 PDF pages, all-MiniLM-L6-v2 + BM25, default pipeline, k=10), "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, max-wait {args.max_wait_ms:g} ms, "
          f"one warm-up request per client before each level")
    print(format_table(headers, [level.row() for level in results]))
    for mode in modes:
        by_c = {level.concurrency: level for level in results if level.label.startswith(mode)}
        low, high = min(by_c), max(by_c)
        if low != high and by_c[low].throughput:
            print(f"batching {mode}: c{high} throughput / c{low} = {by_c[high].throughput / by_c[low].throughput:.2f}x")
    if image_results:
        print()
        print(f"Composed searches (multipart: cat.jpg + {COMPOSED_TEXT!r}) on {IMAGE_COLLECTION} (8 images, tiny "
              "random-weight CLIP: a speed and plumbing figure only)")
        print(format_table(headers, [level.row() for level in image_results]))

    everything = results + image_results
    failed = sum(level.errors + level.lost for level in everything)
    on = {level.concurrency: level for level in results if level.label.startswith("on")}
    print()
    if 1 in on and 32 in on and on[1].throughput:
        speedup = on[32].throughput / on[1].throughput
        p99 = percentile(on[32].latencies, 99) if on[32].latencies else float("inf")
        print(f"goal: c32 with batching >= 3x c1: {speedup:.2f}x {'met' if speedup >= 3 else 'NOT met'}; "
              f"p99 at c32 < 2 s: {p99:.2f} s {'met' if p99 < 2 else 'NOT met'}")
    print(f"failed or lost requests: {failed} of {sum(level.requests for level in everything)} "
          f"({'met' if not failed else 'NOT met'}); whole run {total:.0f} s")
    for level in everything:
        if level.first_problem:
            print(f"  first problem at {level.label} c{level.concurrency}: {level.first_problem}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
