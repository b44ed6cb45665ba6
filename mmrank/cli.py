"""The ``mmrank`` command line: index, import-vectors, search, serve, info, eval, score, demo.

Only typer is imported at start-up; every command imports what it needs, so ``--help`` is fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmrank.datasets import known_kinds
from mmrank.encoders import ENCODERS
from mmrank.documents import MAX_DPI, MIN_DPI
from mmrank.errors import InputError, MMRankError
from mmrank.rerankers import RERANKERS
from mmrank.resources import bundled_pipelines

REPORT_HITS = 10  # hits per query on an eval --report sheet
SNIPPET_CHARS = 70  # of a hit's snippet in the terminal table

app = typer.Typer(
    name="mmrank",
    help="Multimodal retrieval and reranking: index images and PDF pages, then search them with "
         "text, an image, or both.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DeviceOption = Annotated[str, typer.Option(help="Where models run: auto (a GPU if present), cpu, cuda, cuda:1 ...")]
GpusOption = Annotated[Optional[str], typer.Option(
    help="Spread the collection's FAISS indexes over several GPUs: all, a count, or GPU numbers such as 0,2.",
    show_default="one GPU, or the CPU")]
MultiGpuOption = Annotated[str, typer.Option(
    help="With --gpus: shard (each GPU holds a part: for indexes larger than one GPU) or replicate (each "
         "holds all: more queries per second).")]
MemoryBudgetOption = Annotated[Optional[str], typer.Option(
    help="With --index-factory auto: the memory the index may take while searching (4GB, 512MB ...); the index "
         "type, its code size and whether it is searched from disk follow from it and the number of vectors.",
    show_default="4GB")]
PageModelOption = Annotated[Optional[str], typer.Option(
    help="Late-interaction page model: every page's (and image's) patch vectors are stored and searched by MaxSim "
         "(the patches retrieval path, e.g. --pipeline docqa-colqwen). A transformers ColPali / ColQwen2 / ColQwen2.5 "
         "checkpoint: a Hugging Face id, a local folder, or colpali / colqwen2 for vidore's.",
    show_default="none, or the collection's")]
TokenPoolingOption = Annotated[int, typer.Option(
    help="With --page-model: merge similar patch vectors of a page into one, N to one (hierarchical pooling, as "
         "colpali-engine's), cutting storage N-fold; 1 keeps every patch.")]
MLLMOption = Annotated[Optional[str], typer.Option(
    "--mllm", help="Vision-language model for the pipeline's MLLM rerankers: a Hugging Face id or a local "
                   "model folder (with --mllm-url: the model name the server serves).",
    show_default="the pipeline's")]
PIPELINE_HELP = (f"Pipeline YAML file, or the name of a bundled one: {', '.join(bundled_pipelines())}. "
                 f"Stage types for a YAML of your own: {', '.join(RERANKERS)}.")
TrustOption = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Let the pipeline's MLLM load a model that runs Python code of its own (only for "
                                "a model you trust; a pipeline file cannot turn this on).")]
MLLMUrlOption = Annotated[Optional[str], typer.Option(
    "--mllm-url", help="An OpenAI-compatible server (vLLM, SGLang) to run the MLLM rerankers, e.g. "
                       "http://localhost:8000.", show_default=False)]


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Image files, PDF files, or folders to index (recursively).",
                                                show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Collection folder to create or add to.")],
    text_model: Annotated[Optional[str], typer.Option(
        help="sentence-transformers model name or local folder for page text.",
        show_default="the collection's, else all-MiniLM-L6-v2")] = None,
    image_model: Annotated[Optional[str], typer.Option(
        help="Image model: an open_clip model, passed unchanged (a built-in name with "
             "--image-pretrained, hf-hub:org/repo or local-dir:/path), or an encoder name of a registered "
             f"kind ({', '.join(f'{kind}:...' for kind in ENCODERS)}), such as a CNN with GeM pooling, "
             "gem:<timm backbone>/<pooling> with pooling gem, gem+, regional-gem, scale-gem or superglobal, and "
             "optionally ;checkpoint=PATH. "
             "Loaded only when images need it.",
        show_default="the collection's, else ViT-B-32")] = None,
    image_pretrained: Annotated[Optional[str], typer.Option(
        help="open_clip pretrained tag for a built-in model name.",
        show_default="laion2b_s34b_b79k")] = None,
    pages_as_images: Annotated[bool, typer.Option(
        help="Also embed every PDF page's picture with the image model (text-less pages always are).")] = False,
    page_model: PageModelOption = None,
    token_pooling: TokenPoolingOption = 1,
    patch_dtype: Annotated[str, typer.Option(
        help="With --page-model: how patch vectors are stored, float16 (half the disk) or float32.")] = "float16",
    dpi: Annotated[int, typer.Option(
        help=f"Resolution at which PDF pages are rendered for the image model ({MIN_DPI} to {MAX_DPI}).")] = 144,
    ocr: Annotated[str, typer.Option(
        help="Read pages by OCR (Tesseract): auto (pages without a text layer, when Tesseract is installed), "
             "off, or force (every page).")] = "auto",
    index_factory: Annotated[Optional[str], typer.Option(
        "--index-factory", "--index",
        help="FAISS index type: Flat (exact), IVF4096,Flat, HNSW32, IVF4096,PQ64 ..., or auto (chosen from "
             "the number of vectors and --memory-budget).",
        show_default="Flat, or the collection's")] = None,
    memory_budget: MemoryBudgetOption = None,
    batch_size: Annotated[int, typer.Option(help="Items encoded per batch (and stored per transaction).")] = 32,
    device: DeviceOption = "auto",
    strict: Annotated[bool, typer.Option(help="Exit with an error if any file or page is skipped.")] = False,
    keep_missing: Annotated[bool, typer.Option(
        help="Keep the items of files under PATHS that no longer exist (by default they are removed).")] = False,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="If another mmrank process is writing to the collection, stop at once instead of "
                          "waiting for it.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Read, render and encode on Ray Data (mmrank's ray extra), in a local Ray started for the run "
                      "unless --ray-address names a cluster; this process still writes the collection.")] = False,
    ray_address: Annotated[Optional[str], typer.Option(
        help="The Ray cluster for --ray (implies it): auto (the one this machine is part of), ray://HOST:10001 "
             "(Ray Client) or HOST:PORT. Every node must see PATHS at the same paths.",
        show_default="a local Ray")] = None,
    ray_workers: Annotated[Optional[int], typer.Option(
        help="Encoder actors with --ray (one GPU each on a cluster with GPUs).",
        show_default="one per GPU, else half the CPUs")] = None,
) -> None:
    """Build or update a collection from images and PDFs.

    Re-running the same command resumes an interrupted build: unchanged files are skipped, changed
    files replace their items, and files under PATHS that were deleted are removed (unless
    --keep-missing). Bad files and pages are reported and skipped. One process writes to a
    collection at a time; another waits for it (or stops at once with --no-wait). With --ray,
    Ray Data reads and encodes the files and this process writes them, with the same results.
    """
    from mmrank.collection import Collection
    from mmrank.documents import check_dpi, check_ocr
    from mmrank.indexing import EncoderChoice, index_paths
    from mmrank.ingest import require_existing

    require_existing(paths)  # options and paths are checked before anything is created
    check_dpi(dpi)
    check_ocr(ocr)
    _check_page_options(page_model, token_pooling, patch_dtype)
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}.")
    ray = ray or ray_address is not None
    if ray:
        from mmrank.ray_indexing import check_workers, index_paths_on_ray, require_ray_data

        require_ray_data()
        check_workers(ray_workers)
    elif ray_workers is not None:
        raise InputError("--ray-workers needs --ray.")
    waiting = {"wait": not no_wait, "on_wait": lambda message: typer.echo(message, err=True)}
    collection = Collection.open_or_create(out, index_factory=index_factory, device=device,
                                           memory_budget=memory_budget, **waiting)
    choice = EncoderChoice(text_model, image_model, image_pretrained, pages_as_images, dpi, ocr, page_model,
                           token_pooling, patch_dtype)
    with collection.writing(**waiting):
        if not ray:
            encoder = choice.item_encoder(collection.spaces, device)  # as the lock found them
            report = index_paths(collection, paths, encoder, batch_size=batch_size, progress=not quiet,
                                 prune=not keep_missing)
        else:
            report = index_paths_on_ray(collection, paths, choice, address=ray_address, workers=ray_workers,
                                        batch_size=batch_size, device=device, progress=not quiet,
                                        prune=not keep_missing)
    info = collection.info()
    removed = f"; removed {report.removed_files} that no longer exist" if report.removed_files else ""
    typer.echo(
        f"Indexed {report.added_files} new and {report.replaced_files} changed files "
        f"({report.items_added} items) in {report.seconds:.1f} s; {report.unchanged_files} unchanged{removed}. "
        f"{out} now holds {info['items']} items."
    )
    _echo_problems(report.warnings, report.skipped)
    if not report.indexed_anything:
        _fail("nothing could be indexed.")
    if strict and report.skipped:
        _fail(f"{len(report.skipped)} files or pages were skipped (--strict).")


@app.command(name="import-vectors")
def import_vectors(
    source: Annotated[Path, typer.Argument(help="Folder of embedding shards (or one .npy / .parquet file).",
                                           show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Collection folder to create or add to.")],
    encoder: Annotated[str, typer.Option(
        help="The model that made the vectors, as an mmrank encoder name, e.g. "
             "open_clip:ViT-B-32/laion2b_s34b_b79k or open_clip:ViT-L-14/openai; queries are encoded with it.",
        show_default=False)],
    space: Annotated[str, typer.Option(help="Vector space to fill: image or text.")] = "image",
    layout: Annotated[str, typer.Option(
        help="numpy: img_emb_N.npy (text_emb_N.npy for --space text) with metadata_N.parquet of the same "
             "rows (clip-retrieval inference's output); parquet: .parquet files with an embedding column "
             "(lists of floats) beside id and metadata columns; auto: numpy when there are .npy files.")] = "auto",
    embedding_column: Annotated[str, typer.Option(help="parquet layout: the vectors' column.")] = "embedding",
    id_column: Annotated[Optional[str], typer.Option(
        help="Column of item ids.", show_default="the source column, else <shard>:<row>")] = None,
    source_column: Annotated[str, typer.Option(
        help="Column naming each row's image (rows with one become image items).")] = "image_path",
    text_column: Annotated[str, typer.Option(help="Column of each row's text (caption).")] = "caption",
    index_factory: Annotated[Optional[str], typer.Option(
        "--index-factory", "--index",
        help="FAISS index type for a new collection: Flat (exact), IVF4096,Flat, HNSW32 ..., or auto.",
        show_default="Flat, or the collection's")] = None,
    memory_budget: MemoryBudgetOption = None,
    batch_size: Annotated[int, typer.Option(help="Rows read and stored per transaction.")] = 8192,
    strict: Annotated[bool, typer.Option(help="Exit with an error if any file or row is skipped.")] = False,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="If another mmrank process is writing to the collection, stop at once.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Build or extend a collection from embeddings computed elsewhere (no encoding).

    SOURCE is laid out as clip-retrieval's inference writes it (numpy: img_emb_N.npy or text_emb_N.npy
    matrices, each with a metadata_N.parquet of the same rows, e.g. image_path, caption, url) or as
    parquet files with an embedding column. Each row becomes an item: an image when its source column names one, else a text. Vectors are
    L2-normalised; rows with NaN, infinite or zero vectors are skipped. Re-running adds only what is
    missing. A shard that cannot be read, has another dimension, or whose metadata has another number
    of rows is reported and skipped.
    """
    from mmrank.collection import Collection
    from mmrank.vector_import import check_encoder_name, find_shards, import_embeddings

    check_encoder_name(encoder, space)  # checked before anything is created
    find_shards(source, space, layout)
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}.")
    waiting = {"wait": not no_wait, "on_wait": lambda message: typer.echo(message, err=True)}
    with Collection.open_or_create(out, index_factory=index_factory, memory_budget=memory_budget,
                                   **waiting) as collection:
        report = import_embeddings(collection, source, encoder=encoder, space=space, layout=layout,
                                   embedding_column=embedding_column, id_column=id_column,
                                   source_column=source_column, text_column=text_column, batch_size=batch_size,
                                   progress=not (quiet or as_json), **waiting)
        items = len(collection)
    if as_json:
        typer.echo(json.dumps({**report.to_dict(), "collection": str(out), "items": items}, indent=2))
    else:
        typer.echo(f"Imported {report.added} {space} vectors from {report.files} {report.layout} files in "
                   f"{report.seconds:.1f} s; {report.already_present} already there, {report.bad_rows} bad rows "
                   f"and {len(report.bad_files)} bad files skipped. {out} now holds {items} items.")
    _echo_problems(report.warnings, report.bad_files)
    if not report.imported_anything:
        _fail("nothing could be imported.")
    if strict and (report.bad_files or report.bad_rows):
        _fail(f"{len(report.bad_files)} files and {report.bad_rows} rows were skipped (--strict).")


@app.command()
def search(
    collection_path: Annotated[Path, typer.Argument(metavar="COLLECTION", help="A collection folder.")],
    text: Annotated[Optional[str], typer.Argument(help="The question or description to search for.")] = None,
    image: Annotated[Optional[Path], typer.Option(
        help="A query image; with a text, a composed query (this picture, changed as the text says).")] = None,
    text_option: Annotated[Optional[str], typer.Option(
        "--text", "-t", help="The text as an option instead of an argument, e.g. with --image: "
                             "--image ref.jpg --text 'make it red'.", show_default=False)] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="How many results.")] = 10,
    pipeline: Annotated[Optional[str], typer.Option(help=PIPELINE_HELP, show_default="docqa-text")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of hits.")] = False,
    report: Annotated[Optional[Path], typer.Option(
        help="Also write an HTML sheet: thumbnails, every stage's score and rank per hit, how far it "
             "moved, and what the models said and saw (e.g. a target caption, the grid).")] = None,
    mllm: MLLMOption = None,
    mllm_url: MLLMUrlOption = None,
    trust_remote_code: TrustOption = False,
    device: DeviceOption = "auto",
    gpus: GpusOption = None,
    multi_gpu: MultiGpuOption = "shard",
) -> None:
    """Search a collection with text, an image, or both.

    An image with a text is a composed query: results look like the image, changed as the text
    says (e.g. --image ref.jpg --text "make it red" --pipeline cir-square); the reference image
    itself is left out of them.
    """
    from mmrank.collection import Collection
    from mmrank.types import Query

    if text is not None and text_option is not None:
        raise InputError("Give the text once: as an argument or with --text, not both.")
    text = text if text is not None else text_option
    if image is not None and not image.is_file():
        raise InputError(f"{image}: no such image file.")
    if image is None:
        query = Query(text=text)
    elif text is None:
        query = Query(image=image)
    else:  # a composed query: the reference itself, when the collection holds it, is no answer
        query = Query(image=image, modification=text, excluded={str(image.resolve())})
    _check_output(report, "--report")
    collection = Collection.open(collection_path, device=device, gpus=gpus, multi_gpu=multi_gpu)
    runner = _pipeline(pipeline, collection, mllm, mllm_url, trust_remote_code)
    ranking = runner.search(query, k)
    if as_json:
        typer.echo(json.dumps(ranking.to_dicts(), indent=2))
    else:
        typer.echo(_results_table(ranking))
        if len(ranking.timings) > 1:
            from mmrank.report import stage_table

            typer.echo(f"\nRank after each stage:\n{stage_table(ranking)}")
        for stage, texts in ranking.explanations.items():
            for number, said in enumerate(texts, start=1):
                if said.strip():
                    label = stage if len(texts) == 1 else f"{stage}, window {number}"
                    typer.echo(f"\n{label}: {said.strip()}")
    if report is not None:
        from mmrank.report import write_html_report

        write_html_report([ranking], report, title=f"mmrank: {query.search_text or image}")
        typer.echo(f"Report written to {report}", err=as_json)


@app.command()
def info(
    collection_path: Annotated[Path, typer.Argument(metavar="COLLECTION", help="A collection folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what a collection holds: items, encoders, dimensions, index type. Published indexes
    that are missing or damaged are rebuilt from the database (unless another process is writing)."""
    from mmrank.collection import Collection

    with Collection.open(collection_path) as collection:
        repaired = collection.repair_indexes()
        details = collection.info()
    if repaired:
        typer.echo(f"Rebuilt from the database: {', '.join(repaired)} (missing or damaged).", err=True)
    if as_json:
        typer.echo(json.dumps(details, indent=2))
        return
    kinds = ", ".join(f"{n} {kind}s" for kind, n in sorted(details["items_by_kind"].items())) or "none"
    skipped = f"; {details['skipped_pages']} pages left out (see mmrank index's warnings)" if details["skipped_pages"] else ""
    rows = [
        ("collection", details["path"]),
        ("items", f"{details['items']} ({kinds}); {details['with_text']} with text; from {details['files']} files"
                  f"{skipped}"),
        ("index", details["index"]),
        *((f"{name} vectors", f"{space['vectors']} x {space['dim']}{_patch_summary(space)} by {space['encoder']}")
          for name, space in details["spaces"].items()),
        ("updated", details["updated"]),
    ]
    width = max(len(label) for label, _ in rows) + 2
    typer.echo("\n".join(f"{label:<{width}}{value}" for label, value in rows))


def _patch_summary(space: dict) -> str:
    """How ``mmrank info`` describes a late-interaction space's storage, e.g. `` (float16 patch
    vectors of 1200 pages, 300 MB; every page scored exactly)``."""
    if "multi_vector" not in space:
        return ""
    from mmrank.index_plan import format_size

    dead = f", {space['dead_rows']} dead rows" if space["dead_rows"] else ""
    search = (f"{space['centroids']} centroids pick the pages scored exactly" if space["centroids"]
              else "every page scored exactly")
    return (f" ({space['multi_vector']} patch vectors of {space['pages']} pages, "
            f"{format_size(space['patch_bytes'])}{dead}; {search})")


@app.command(name="eval")
def evaluate(
    dataset_root: Annotated[Path, typer.Argument(metavar="DATASET", help="The dataset's folder.")],
    dataset_format: Annotated[str, typer.Option(
        "--format", help=f"Dataset layout: {', '.join(known_kinds())}.")] = "beir",
    split: Annotated[Optional[str], typer.Option(help="Which split's judgements to use.",
                                                 show_default="the dataset's own")] = None,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-O", help="A loader option as KEY=VALUE, e.g. -O protocol=hard (repeatable).",
        show_default=False)] = None,
    pipeline: Annotated[str, typer.Option(help=PIPELINE_HELP)] = "docqa-text",
    collection_path: Annotated[Optional[Path], typer.Option(
        "--collection", help="Keep the encoded corpus in this collection folder (reused next time).",
        show_default="a temporary folder")] = None,
    text_model: Annotated[Optional[str], typer.Option(help="Text model for the corpus and the queries.",
        show_default="all-MiniLM-L6-v2")] = None,
    image_model: Annotated[Optional[str], typer.Option(
        help="Image model for image and page items (see mmrank index --help).",
        show_default="ViT-B-32")] = None,
    pages_as_images: Annotated[bool, typer.Option(
        help="Also embed the pictures of pages that have text.")] = False,
    page_model: PageModelOption = None,
    token_pooling: TokenPoolingOption = 1,
    metrics: Annotated[Optional[str], typer.Option(
        help="Comma-separated metrics: recall@K, hit@K, map@K, map, ndcg@K, mrr (as trec_eval computes "
             "them), map_min@K (CIRCO's mAP@K), and for Revisited Oxford/Paris rmap (the official AP) and mp@K.",
        show_default="the dataset's standard ones")] = None,
    k: Annotated[Optional[int], typer.Option("-k", help="Depth of the rankings that are scored.",
        show_default="100, or every item for metrics without a cutoff")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    report: Annotated[Optional[Path], typer.Option(
        help="Also write an HTML sheet of the first --report-queries queries: every stage's score and "
             "rank per hit, how far it moved, and what the models said and saw.", show_default=False)] = None,
    report_queries: Annotated[int, typer.Option(help="Queries shown in the --report sheet.")] = 20,
    submission: Annotated[Optional[Path], typer.Option(
        help="Also write the benchmark's test-server files (CIRR, CIRCO) from the final rankings into "
             "this folder.", show_default=False)] = None,
    save_runs: Annotated[Optional[Path], typer.Option(
        help="Also write what was scored as TREC files into this folder: qrels.txt and one <stage>.run "
             "per stage (per protocol for Revisited Oxford/Paris), for trec_eval -c, ranx or ir-measures.",
        show_default=False)] = None,
    run: Annotated[Optional[Path], typer.Option(
        "--run", help="Rerank a TREC run computed elsewhere ('qid Q0 docid rank score tag', e.g. BM25) instead "
                      "of searching the index: each query's first stage is the run's ranking of its id (doc ids "
                      "are the dataset's item ids), as deep as the pipeline's retriever; the pipeline's "
                      "rerankers follow.", show_default=False)] = None,
    mllm: MLLMOption = None,
    mllm_url: MLLMUrlOption = None,
    trust_remote_code: TrustOption = False,
    device: DeviceOption = "auto",
) -> None:
    """Evaluate a pipeline on a dataset: metrics and latency after every stage.

    With --run, the first stage is a run file's ranking (stage run:<file name>) and only the
    pipeline's rerankers run; doc ids the dataset lacks and queries the run does not rank are
    counted on stderr, never fatal.
    """
    import tempfile

    from mmrank.collection import Collection
    from mmrank.datasets import load_dataset
    from mmrank.encoders import load_image_encoder, load_text_encoder
    from mmrank.evaluation import (
        DEFAULT_METRICS,
        SubmissionRankings,
        add_dataset_items,
        evaluate as run_evaluation,
        ranking_depth,
    )
    from mmrank.indexing import EncoderChoice, ItemEncoder
    from mmrank.run_stage import RunFirstStage, with_run

    _check_output(report, "--report")
    _check_output(save_runs and save_runs / "qrels.txt", "--save-runs")
    _check_page_options(page_model, token_pooling, "float16")
    options = _key_values(option or [])
    if split is not None:
        options["split"] = split
    first_stage = RunFirstStage.from_file(run) if run is not None else None  # a bad line fails before encoding
    dataset = load_dataset(dataset_format, dataset_root, **options)
    if first_stage is not None:
        first_stage.check_queries([query.id for query in dataset.queries])
    if submission is not None and dataset.write_submission is None:
        raise InputError(f"--submission: the dataset {dataset.name} ({dataset_format}) has no test-server "
                         "submission format (cirr and circo have).")
    wanted = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else list(
        dataset.metrics or DEFAULT_METRICS)
    own = [m for judgements in dataset.judgements().values() for m in judgements.metrics]
    depth = k or ranking_depth([*wanted, *own], len(dataset.items), full=dataset.needs_full_ranking)
    collected = SubmissionRankings(dataset) if submission is not None else None
    if collected is not None:
        depth = max(depth, collected.depth)
    text_encoder = load_text_encoder(text_model, device=device) if any(i.has_text for i in dataset.items) else None
    pages = None if page_model is None else EncoderChoice(page_model=page_model, token_pooling=token_pooling)
    encoder = ItemEncoder(text_encoder, None if pages is not None and image_model is None and not pages_as_images
                          else lambda: load_image_encoder(image_model, device=device),
                          pages_as_images=pages_as_images, page_encoder=pages and pages.page_encoder({}, device))
    with tempfile.TemporaryDirectory(prefix="mmrank-eval-") as scratch:
        folder = collection_path or Path(scratch) / "collection"
        with Collection.open_or_create(folder, device=device) as collection:
            left_out: list = []
            add_dataset_items(collection, dataset, encoder, progress=not as_json, skipped=left_out)
            _echo_problems([], left_out)
            runner = _pipeline(pipeline, collection, mllm, mllm_url, trust_remote_code)
            if first_stage is not None:
                runner = with_run(runner, first_stage)
            shown: list = []

            def on_batch(ranked) -> None:
                if collected is not None:
                    collected(ranked)
                if report is not None:
                    shown.extend(r.ranking.top(REPORT_HITS) for r in ranked[:max(0, report_queries - len(shown))])

            stages = run_evaluation(runner, dataset, wanted, k=depth, progress=not as_json, on_batch=on_batch,
                                    save_runs=save_runs, hits=REPORT_HITS if report is not None else 0)
            if report is not None:
                from mmrank.report import write_html_report

                write_html_report(shown, report, title=f"mmrank eval: {dataset.name} ({dataset.split}), {runner.name}")
                typer.echo(f"Report written to {report}", err=as_json)
    for line in first_stage.warnings() if first_stage is not None else ():
        typer.echo(f"warning {line}", err=True)
    if collected is not None:
        submission.mkdir(parents=True, exist_ok=True)
        for written in dataset.write_submission(collected.rankings, submission, runner.name):
            typer.echo(f"Submission written to {written}", err=as_json)
    from mmrank.metrics import describe_metric

    columns = [name for name in stages[0].metrics if not name.endswith("queries")] if stages else []
    counted = {name: int(value) for name, value in stages[0].metrics.items() if name.endswith("queries")} if stages else {}
    results = {"dataset": dataset.name, "split": dataset.split, "queries": len(dataset.queries),
               "definitions": {name: describe_metric(name) for name in columns},
               "stages": [s.__dict__ for s in stages]}
    if save_runs is not None:
        from mmrank.files import write_json_atomic

        write_json_atomic(save_runs / "results.json", results, indent=2)
        typer.echo(f"Runs, qrels and results.json written to {save_runs}", err=True)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    from mmrank.report import format_table

    typer.echo(f"{dataset.name} ({dataset.split}): {len(dataset.queries)} queries, {len(dataset.items)} items")
    rows = [[s.stage, *(f"{s.metrics[m]:.4f}" for m in columns), f"{s.latency_ms:.1f}"] for s in stages]
    typer.echo(format_table(["stage", *columns, "ms/query"], rows))
    typer.echo("Queries counted in the means: " + ", ".join(
        f"{name.rpartition('/')[0] or 'all'} {count}" for name, count in counted.items()))


@app.command()
def score(
    qrels_path: Annotated[Path, typer.Argument(metavar="QRELS", help="TREC qrels file: 'qid 0 docid grade' per line.")],
    run_paths: Annotated[list[Path], typer.Argument(
        metavar="RUN", help="One or more TREC run files: 'qid Q0 docid rank score tag' per line, ranked by score as "
                               "trec_eval ranks them.")],
    metrics: Annotated[Optional[str], typer.Option(
        help="Comma-separated metrics, as mmrank eval names them: recall@K, hit@K, map@K, map, ndcg@K, mrr ...",
        show_default="mmrank eval's: recall@1,recall@5,recall@10,map@10,ndcg@10,mrr")] = None,
    averaging: Annotated[str, typer.Option(
        help="Which queries the means count: trec_eval (the judged queries the run ranks, as trec_eval and "
             "pytrec_eval count) or relevant (every judged query with a relevant item, one without a ranking "
             "scoring 0, as trec_eval -c).")] = "trec_eval",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score TREC run files against a qrels file: check what mmrank eval --save-runs printed, or score
    a run made elsewhere. Problems that do not stop the scoring (duplicate lines, negative grades,
    queries only one file has) are counted on stderr; a malformed line is an error naming its line."""
    from mmrank.evaluation import DEFAULT_METRICS
    from mmrank.metrics import AVERAGING, describe_metric, evaluate_rankings
    from mmrank.trec_files import check_run, read_qrels, read_run

    wanted = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else list(DEFAULT_METRICS)
    definitions = {name: describe_metric(name) for name in wanted}  # an unknown metric fails before any reading
    if averaging not in AVERAGING:
        raise InputError(f"--averaging must be one of {', '.join(AVERAGING)}; got {averaging!r}.")
    qrels = read_qrels(qrels_path)
    problems = qrels.problems.describe()
    scored = []
    for path in run_paths:
        run = read_run(path)
        shared = check_run(run, qrels)
        problems += run.problems.describe() + shared.describe()
        try:
            values = evaluate_rankings(run.rankings, qrels.judgements, wanted, averaging=averaging)
        except InputError as error:  # no query of this run can be scored: say so, score the others
            problems.append(f"{path}: not scored: {error}")
            values = {"queries": 0}
        scored.append({"run": str(path), "tag": run.tag, "queries": int(values.pop("queries")),
                       "metrics": values or None, "problems": {**run.problems.counts, **shared.counts}})
    for line in problems:
        typer.echo(line, err=True)
    if as_json:
        typer.echo(json.dumps({"qrels": str(qrels_path), "averaging": averaging, "definitions": definitions,
                               "qrels_problems": qrels.problems.counts, "runs": scored}, indent=2))
    else:
        from mmrank.report import format_table

        rows = [[s["run"], *(f"{s['metrics'][m]:.4f}" if s["metrics"] else "-" for m in wanted), str(s["queries"])]
                for s in scored]
        typer.echo(format_table(["run", *wanted, "queries"], rows))
    if any(s["metrics"] is None for s in scored):
        raise typer.Exit(code=1)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    collection_paths: Annotated[list[Path], typer.Argument(
        metavar="COLLECTION", help="One or more collection folders, served under their folder names.")],
    pipeline: Annotated[Optional[list[str]], typer.Option(
        help=f"{PIPELINE_HELP} Repeat to offer several; the first is the default.",
        show_default="the default pipeline")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; any but this machine's needs --token or --no-auth.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    token: Annotated[Optional[str], typer.Option(
        envvar="MMRANK_TOKEN", help="Clients must send 'Authorization: Bearer TOKEN' (also from $MMRANK_TOKEN).",
        show_default=False)] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Listen beyond this machine without a token.")] = False,
    max_batch: Annotated[int, typer.Option(help="Most searches run together (1: no batching).")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="How long a search waits for others to batch with.")] = 5.0,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body (an uploaded picture) in MB.")] = 10.0,
    mllm: MLLMOption = None,
    mllm_url: MLLMUrlOption = None,
    trust_remote_code: TrustOption = False,
    device: DeviceOption = "auto",
    gpus: GpusOption = None,
    multi_gpu: MultiGpuOption = "shard",
) -> None:
    """Serve collections over HTTP with a search page at / and the API at /search (docs at /docs),
    the models loaded once; searches that arrive together are run together."""
    from mmrank.collection import Collection
    from mmrank.server import Served, ServeOptions, create_app
    from mmrank.types import Query

    if host not in LOCAL_HOSTS and token is None and not no_auth:
        raise InputError(f"--host {host} lets other machines search: give --token (clients send it as a bearer "
                         "token) or --no-auth to allow anyone who can reach this port.")
    served = []
    for path in collection_paths:
        collection = Collection.open(path, device=device, gpus=gpus, multi_gpu=multi_gpu)
        runners = [_pipeline(name, collection, mllm, mllm_url, trust_remote_code) for name in (pipeline or [None])]
        served.append(Served(path.expanduser().absolute().name, collection,
                             {runner.name if name else "default": runner for name, runner in
                              zip(pipeline or [None], runners)}))
    for entry in served:  # load every model now, not on the first user's search
        for runner in entry.pipelines.values():
            try:
                runner.search(Query(text="warm up"), 1)
            except MMRankError:  # e.g. a text query on a collection of image vectors only
                pass
    app = create_app(served, ServeOptions(token=token, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                          max_upload_mb=max_upload_mb))
    import uvicorn

    typer.echo(f"Serving {', '.join(entry.name for entry in served)} on http://{host}:{port}/ (API docs at /docs)",
               err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


@app.command(name="convert-revisited")
def convert_revisited(
    ground_truth: Annotated[Path, typer.Argument(help="gnd_roxford5k.pkl or gnd_rparis6k.pkl, from a source you trust.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the JSON.",
                                                show_default="the same name with .json")] = None,
) -> None:
    """Convert a Revisited Oxford/Paris ground-truth pickle to JSON (read with a restricted
    unpickler that runs no code); the loader prefers the JSON when both exist."""
    from mmrank.datasets.revisited import convert_ground_truth

    written = convert_ground_truth(ground_truth, out or ground_truth.with_suffix(".json"))
    typer.echo(f"Wrote {written}")


def _pipeline(name: str | None, collection, mllm: str | None, mllm_url: str | None, trust_remote_code: bool = False):
    """The named pipeline (the default one when None) with its MLLM rerankers' model replaced;
    --mllm / --mllm-url / --trust-remote-code on a pipeline without an MLLM reranker are an error,
    not silently ignored."""
    from mmrank.pipeline import Pipeline

    runner = (Pipeline.from_yaml(name, collection, mllm=mllm, mllm_url=mllm_url, trust_remote_code=trust_remote_code)
              if name else Pipeline(collection))
    if (mllm or mllm_url or trust_remote_code) and not any(getattr(r, "uses_mllm", False) for r in runner.rerankers):
        raise InputError(f"--mllm/--mllm-url/--trust-remote-code need a pipeline with an MLLM reranker (bundled: "
                         f"{', '.join(_mllm_pipelines())}); {name or 'the default pipeline'} has none.")
    return runner


def _check_page_options(page_model: str | None, token_pooling: int, patch_dtype: str) -> None:
    """InputError for page-model options that cannot work, before anything is written."""
    from mmrank.patch_files import check_dtype

    check_dtype(patch_dtype)
    if token_pooling < 1:
        raise InputError(f"--token-pooling must be at least 1 (1: no pooling); got {token_pooling}.")
    if page_model is None and (token_pooling != 1 or patch_dtype != "float16"):
        raise InputError("--token-pooling and --patch-dtype go with --page-model.")


def _echo_problems(warnings, skipped) -> None:
    """``warning <file>: <reason>`` and ``skipped <file>: <reason>`` lines on stderr, as index and
    import-vectors report them."""
    for warning in warnings:
        typer.echo(f"warning {warning.path}: {warning.reason}", err=True)
    for bad in skipped:
        typer.echo(f"skipped {bad.path}: {bad.reason}", err=True)


def _check_output(path: Path | None, option: str) -> None:
    """InputError when a file the command would write lies inside a collection folder (it could
    overwrite the collection's own files), before anything runs."""
    from mmrank.manifest import MANIFEST

    if path is None:
        return
    folder = path.expanduser().absolute().parent
    for candidate in (folder, *folder.parents):
        if (candidate / MANIFEST).is_file():
            raise InputError(f"{option} {path}: that is inside the collection {candidate}, whose files it could "
                             "overwrite; write it elsewhere (nothing was written).")


def _mllm_pipelines() -> list[str]:
    """The bundled pipelines with a stage that asks a vision-language model."""
    from mmrank.config import read_yaml
    from mmrank.rerankers import reranker_class
    from mmrank.resources import PIPELINES_DIR

    return [name for name in bundled_pipelines()
            if any(getattr(reranker_class(stage.get("type")), "uses_mllm", False)
                   for stage in (read_yaml(PIPELINES_DIR / f"{name}.yaml") or {}).get("rerankers") or [])]


def _key_values(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings as a dict; values that read as JSON (numbers, true/false) are parsed."""

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option expects KEY=VALUE, got {pair!r}.")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the demo writes its collection and report.")] =
        Path("demo-output"),
) -> None:
    """Run the offline demo on the bundled sample PDFs.

    Indexes the PDFs with the text fallback (the offline all-MiniLM-L6-v2 model and BM25), answers
    sample questions, prints the results and writes an HTML page of the top pages.
    """
    from mmrank.demo import run_demo

    run_demo(out, echo=typer.echo)


def _results_table(ranking) -> str:
    from mmrank.report import format_table

    from mmrank.text import snippet

    question = ranking.query.search_text or ""
    rows = [[str(rank), f"{hit.score:.4f}", Path(hit.item.source).name if hit.item.source else hit.item.id,
             str(hit.item.page or ""), "+".join(hit.found_by),
             snippet(hit.snippet, question, width=SNIPPET_CHARS) if hit.snippet else ""]
            for rank, hit in enumerate(ranking.hits, start=1)]
    return format_table(["rank", "score", "source", "page", "found by", "snippet"], rows)


def _fail(message: str) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code=1)


def main() -> None:
    """Console entry point: mmrank's own errors, and a collection database that fails under a
    command, become one clear line and exit status 2."""
    import sqlite3

    try:
        app()
    except MMRankError as error:
        typer.echo(f"Error: {error}", err=True)
        sys.exit(2)
    except sqlite3.DatabaseError as error:
        typer.echo(f"Error: a collection's database failed ({error}); if it is damaged, build the collection "
                   "again from its files into a new folder.", err=True)
        sys.exit(2)
