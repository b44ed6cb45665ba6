"""InsertRank: listwise reranking with each candidate's first-stage (BM25) score in the prompt
("InsertRank: LLMs can reason over BM25 scores to Improve Listwise Reranking", Seetharaman et al.,
2025).

The paper ranks zero-shot by permutation generation (GPT, Gemini, DeepSeek-R1) with each
document's BM25 score beside it, on BRIGHT and R2MED; no official code was found and its exact
wording and score normalisation were not recovered. The prompt here is rank_llm's community
template, the RankZephyr prompt plus a note that BM25 scores are given, a line
``BM25 score for passge [i]: <score>`` after each passage ("passge" sic, kept as in the template)
and a suffix asking to weigh content and score. Windows, passage rendering and both decoding modes
are FIRST's (:mod:`mmrank.rerankers.first`): by default a greedy generated permutation of numeric
ids, as in the template; ``mode: single-token`` reads the ids' next-token log-probabilities instead
(with numbers: windows up to 9, or ``scoring: sequence``; or ``identifiers: letters``, which the
reference renders with the template's text unchanged).

Reference read: castorini/rank_llm at 99f70f1b90fe27c888b3d56598a78e1f4d4582f3 (the parent of
94d8c51; the file is the same at HEAD 1b3cabb, added in e04b7e1 (#263), last changed in 2a860a4
(#280)): ``src/rank_llm/rerank/prompt_templates/insert_rank_template.yaml``, and
``src/rank_llm/rerank/listwise/singleturn_listwise_inference_handler.py`` (``_generate_body``:
``score = f"{cand.score:.3f}"``).

Not recovered, chosen (options):

- ``score_stage``: whose score is shown. Default (None): the hit's ``bm25`` record when it has one
  (a ``bm25`` retrieval path, alone or fused), else its first recorded stage (the first stage of the
  pipeline, e.g. a run file's or a dense retriever's). A hit without a score from that stage makes
  its window keep its order, noted.
- ``score_format``: ``raw`` (the reference: the score with 3 decimals); ``minmax``: min-max scaled
  over the window the model sees (a window of equal scores shows 1.000 each), so scores of
  different first stages and queries read alike; ``x100``: the raw score times 100 (for first
  stages scoring in [0, 1], such as cosine similarities).
- The score shown is the candidate's own. (rank_llm's ``receive_permutation`` leaves the scores at
  their positions when it reorders a window, so in its later windows a candidate shows the score of
  the place it moved to; the paper pairs each document with its own score.)
- Default model ``Qwen/Qwen2.5-7B-Instruct``, an instruction model of the kind the paper prompts
  zero-shot (none is named by the template).
- Page images: the ``[i]`` label, the page picture, then its score line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mmrank.errors import InputError
from mmrank.rerankers.first import RANKLLM_SYSTEM, Identifiers, ListwiseTemplate, Mode, RankLLMListwiseReranker

if TYPE_CHECKING:
    from mmrank.types import Hit

INSERTRANK_MODEL = "Qwen/Qwen2.5-7B-Instruct"

# rank_llm's insert_rank_template.yaml as yaml.safe_load reads it ("passge" sic).
INSERT_RANK_PREFIX = (
    "I will provide you with {num} passages, each indicated by a numerical identifier []. I will also provide the "
    "BM25 scores from a lexical retrieval system.\n\nRank the passages based on their relevance to the search "
    "query: {query}.\n")
INSERT_RANK_BODY = "[{rank}] {candidate}\nBM25 score for passge [{rank}]: {score}\n"
INSERT_RANK_SUFFIX = (
    "Search Query: {query}.\nRerank the above {num} passages based on their relevance to the query. Consider both "
    "the document content and the BM25 scores as signals for relevance. All the passages should be included and "
    "listed using identifiers, in descending order of relevance. The output format should be [] > [], e.g., "
    "[2] > [1]. Return the ranking as a list of numbers from 1 to {num}, most relevant first. Answer concisely and "
    "directly and only respond with the ranking results, do not say any word or explain.")
INSERT_RANK_TEMPLATE = ListwiseTemplate(RANKLLM_SYSTEM, INSERT_RANK_PREFIX, INSERT_RANK_BODY, INSERT_RANK_SUFFIX)

ScoreFormat = Literal["raw", "minmax", "x100"]
SCORE_FORMATS = ("raw", "minmax", "x100")
BM25_STAGE = "bm25"


def first_stage_score(hit: Hit, stage: str | None) -> float:
    """The score ``hit`` got from ``stage`` (None: its ``bm25`` record, else its first one).
    InputError when it has none."""
    name = stage if stage is not None else BM25_STAGE if BM25_STAGE in hit.stages else next(iter(hit.stages), None)
    record = hit.stages.get(name) if name is not None else None
    if record is None or record.score is None:
        recorded = ", ".join(f"{key!r}" for key, value in hit.stages.items() if value.score is not None) or "none"
        raise InputError(f"The insertrank stage shows each candidate's first-stage score, but hit {hit.item_id!r} "
                         f"has no score from {name!r} (stages with a score: {recorded}); set score_stage to one "
                         "of them.")
    return float(record.score)


def shown_scores(scores: Sequence[float], score_format: str) -> list[float]:
    """The scores as the prompt shows them: raw, min-max over ``scores`` (all 1 when equal), or x100."""
    if score_format == "x100":
        return [score * 100 for score in scores]
    if score_format == "minmax":
        low, high = min(scores), max(scores)
        return [1.0 if high == low else (score - low) / (high - low) for score in scores]
    return list(scores)


@dataclasses.dataclass(kw_only=True)
class InsertRankReranker(RankLLMListwiseReranker):
    """InsertRank: listwise reranking of the top ``depth`` (100) candidates in windows of 20, stride
    10, each passage followed by its first-stage score (``score_stage``, shown as ``score_format``:
    see the module docstring). By default a generated permutation of numeric ids; other options as
    in :class:`~mmrank.rerankers.first.RankLLMListwiseReranker`."""

    default_model: ClassVar[str | None] = INSERTRANK_MODEL

    name: str = "insertrank"
    mode: Mode = "generate"
    identifiers: Identifiers = "numbers"
    score_stage: str | None = None
    score_format: ScoreFormat = "raw"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score_format not in SCORE_FORMATS:
            raise InputError(f"score_format must be one of {', '.join(SCORE_FORMATS)}; got {self.score_format!r}.")
        if self.score_stage is not None and (not isinstance(self.score_stage, str) or not self.score_stage):
            raise InputError(f"score_stage names a stage (e.g. bm25), or is None; got {self.score_stage!r}.")

    def template(self) -> ListwiseTemplate:
        return INSERT_RANK_TEMPLATE

    def body_values(self, hits: Sequence[Hit]) -> list[dict[str, Any]]:
        scores = shown_scores([first_stage_score(hit, self.score_stage) for hit in hits], self.score_format)
        return [{"score": f"{score:.3f}"} for score in scores]
