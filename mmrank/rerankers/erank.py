"""ERank: pointwise reranking with a reasoned 0-10 score ("ERank: Fusing Supervised Fine-Tuning and
Reinforcement Learning for Effective and Efficient Text Reranking", Cai et al. 2025, arXiv
2509.00520; Hugging Face ``Alibaba-NLP/ERank-{4B,14B,32B}``).

Each candidate is one user message (no system turn) asking for a relevance score from 0 to 10
under a relevance definition (the instruction), with the query and the document. The model thinks
in ``<think>...</think>`` and answers ``<answer>s</answer>``; the candidate's score is s x P(s),
the probability the model gave the answer's token, read from the generation's per-step top
log-probabilities (greedy, at most 4096 new tokens, top 20 per step).

References: the model card's ``examples/utils.py``, ``examples/ERank_vLLM.py`` and
``examples/ERank_Transformer.py`` were looked for (the card repository Alibaba-NLP/ERank-4B, the
authors' GitHub repository YZ-Cai/ERank, mirrors of both) and are in no store this project can
read. What is here follows the spec and the paper (arXiv 2509.00520v1): Figure 5 (the prompt),
Section 3.2 (score s x Pr(token = s)), Appendix D (queries and documents cut at 2048 tokens),
Table 7 (the instructions per benchmark), Appendix G (the BRIGHT hybrid with BM25).

Not recovered, chosen (each an option):

- The prompt's exact text: the paper's Figure 5 wording, with its line breaks reconstructed (the
  figure survives only as flowed text, which puts a paragraph break after the instruction and
  nothing else): :data:`ERANK_TEMPLATE`. ``template`` gives another one (``{instruction}``,
  ``{query}``, ``{document}``), e.g. the card's ``utils.py`` text when at hand.
- "10" is two tokens for Qwen's tokenizer ("1", "0"), and how ``ERank_vLLM.py`` reads its
  probability was not recovered. ``answer_probability: product`` (default) takes the probability of
  the whole answer as generated: the product of its digit tokens' probabilities, P("1") x
  P("0" | "1") for 10 (for a one-digit answer, that token's probability); ``first`` takes the
  first digit's token alone, P("1") for 10. Each step's probability is the generated token's entry
  in that step's top log-probabilities (full softmax).
- A parse failure (no ``</think>``, no ``<answer>integer</answer>`` after it, a number above 10, or
  the answer's token missing from its step's top log-probabilities, as after sampling a rare
  token) scores 0, the spec's assumption (``on_parse_failure: zero``), with a note saying why;
  ``unscored`` keeps such a candidate unscored, after the scored ones in its incoming place.
- ``instruction``: a key of :data:`ERANK_INSTRUCTIONS` (Table 7: ``beir``, for BEIR and TREC DL,
  "Given a query, retrieval relevant passage." sic, the default; ``bright``; ``bright-aops``,
  ``bright-leetcode``, ``bright-pony``, ``bright-theoremqa``; ``followir``) or the text itself. In
  the TheoremQA rows the extracted paper text reads "Wewant" / "Adocument" (lost spaces); they
  are written with their spaces here.
- Truncation: query and document each cut at their first ``query_tokens`` / ``document_tokens``
  (2048) tokens of the model's tokenizer; a server model, whose tokenizer is not here, cuts at as
  many words instead. A candidate's text is its title and body joined by a space.
- ``hybrid_weight`` (None: off): the BRIGHT hybrid. Per query, the rerank scores of the scored
  head and their first-stage scores (``hybrid_stage``: None reads each hit's ``bm25`` record, else
  its first recorded stage) are each z-scored (population standard deviation; all 0 when equal),
  and the stage scores ``w x z(rerank) + (1 - w) x z(first stage)`` (the paper: w = 0.8); each
  hit's note keeps its rerank score.
- Decoding: greedy (``temperature`` 0), ``max_new_tokens`` 4096, ``top_logprobs`` 20, through
  the model's own chat template.
- Page images: a candidate that is a page or an image is shown as its picture in place of the
  document text when the model reads images (``use_images``). No ERank checkpoint reads images:
  this is zero-shot use of a vision-language model, and its scores are not calibrated.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from mmrank.errors import InputError
from mmrank.mllm.base import check_generation_options
from mmrank.rerankers.base import HeadPlace, at_least_one
from mmrank.rerankers.llm_stage import PointwiseLLMReranker, merged_text
from mmrank.rerankers.qwen3_reranker import Verdict, ask_each, cut_to_tokens, document_text

if TYPE_CHECKING:
    from mmrank.mllm import Conversation, Generation, VisionLanguageModel
    from mmrank.types import Hit, Item, Ranking

ERANK_MODEL = "Alibaba-NLP/ERank-4B"

# The paper's Figure 5, its line breaks reconstructed (see the module docstring).
ERANK_TEMPLATE = (
    "Given a query and a document, please give a relevance score of 0 to 10.\n"
    "The goal or relevance definition is: {instruction}\n\n"
    "Here is the query: {query}\n"
    "Here is the document: {document}\n"
    "After thinking, directly choose a relevance score from [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10].\n"
    "- 0 represents completely not related.\n"
    "- 10 means perfectly related.\n"
    "Desired output format: <think> put your thinking here </think><answer> Only allows an integer here </answer>\n"
    "Your output:")
# The paper's Table 7 ("retrieval relevant passage", "Retrieval the relevant passage" sic).
_THEOREMQA = ("We want to find a document which uses the same mathematical process as the query. A document is "
              "relevant if it uses the same mathematical process as the query.")
ERANK_INSTRUCTIONS = {
    "beir": "Given a query, retrieval relevant passage.",
    "bright": ("A document is relevant if it contains information that helps answer or address the query. A document "
               "is not relevant if it doesn't contain information that helps answer the query, even if it mentions "
               "similar topics."),
    "bright-aops": ("We want to find different but similar math problems to the query. A document is relevant if it "
                    "uses the same class of functions and shares any overlapping techniques."),
    "bright-leetcode": (
        "I am looking to find different problems that share similar data structures (of any kind) or algorithms "
        "(e.g. DFS, DP, sorting, traversals, etc.). I am looking for problems that share one or both of these "
        "similarities to the query. Does the passage below share any similarities? e.g. if there was a textbook on "
        "leetcode problems, this would be in the same book even though it could be in a different chapter."),
    "bright-pony": ("I will use the programming language pony. But to solve the problem above, I need to know things "
                    "about pony. A passage is relevant if it contains docs that match any part (even basic parts) of "
                    "the code I will have to write for the above program."),
    "bright-theoremqa": _THEOREMQA,
    "followir": ("Retrieval the relevant passage for the given query. Be careful about the extra requirements about "
                 "relevance in the query."),
}
THINK_END = "</think>"
ANSWER = re.compile(r"<answer>\s*([0-9]+)\s*</answer>")
_FIELDS = {"instruction", "query", "document"}

AnswerProbability = Literal["product", "first"]
OnParseFailure = Literal["zero", "unscored"]
ANSWER_PROBABILITIES = ("product", "first")
ON_PARSE_FAILURE = ("zero", "unscored")


@dataclass(frozen=True)
class ERankAnswer:
    """What one generation says: the answer's score (0-10) and the probability the model gave it,
    or None for both and the reason it could not be read."""

    score: int | None
    probability: float | None
    reason: str | None

    @property
    def value(self) -> float | None:
        """s x P(s), or None."""
        return None if self.score is None else self.score * self.probability


def parse_erank_answer(generation: Generation, answer_probability: str = "product") -> ERankAnswer:
    """The ``<answer>s</answer>`` after the last ``</think>`` of ``generation`` and P(s) from its
    steps' top log-probabilities (see the module docstring for ``answer_probability``). The text
    read is the generated tokens joined (special tokens included), or the text when there are none;
    never raises."""
    tokens, steps = generation.tokens, generation.top_logprobs
    text = "".join(tokens) if tokens else generation.text
    end = text.rfind(THINK_END)
    if end < 0:
        return _failed("empty output" if not text.strip() else f"no {THINK_END} in the output")
    match = ANSWER.search(text, end + len(THINK_END))
    if match is None:
        return _failed(f"no <answer>integer</answer> after {THINK_END}")
    digits = match[1]
    if len(digits) > 2 or int(digits) > 10:
        return _failed(f"answer {digits[:12]}{'...' if len(digits) > 12 else ''} is not a score from 0 to 10")
    if not tokens or len(steps) < len(tokens):
        return _failed("no per-token log-probabilities in the generation (top_logprobs)")
    covering = covering_steps(tokens, match.start(1), match.end(1))
    total = 0.0
    for step in covering[:1] if answer_probability == "first" else covering:
        logprob = next((value for token, value in steps[step] if token == tokens[step]), None)
        if logprob is None:
            return _failed(f"the answer's token {tokens[step]!r} is not among its step's top log-probabilities")
        total += logprob
    return ERankAnswer(int(digits), math.exp(total), None)


def _failed(reason: str) -> ERankAnswer:
    return ERankAnswer(None, None, reason)


def covering_steps(tokens: Sequence[str], start: int, stop: int) -> list[int]:
    """The indices of the tokens whose text overlaps characters [start, stop) of their concatenation."""
    found, position = [], 0
    for index, token in enumerate(tokens):
        if position < stop and position + len(token) > start:
            found.append(index)
        position += len(token)
    return found


def zscores(values: Sequence[float]) -> np.ndarray:
    """(x - mean) / std with the population standard deviation; all 0 when the values are equal."""
    array = np.asarray(values, dtype=np.float64)
    spread = array.std()
    return np.zeros_like(array) if spread == 0 else (array - array.mean()) / spread


def first_stage_score(hit: Hit, stage: str | None) -> float:
    """The score ``hit`` got from ``stage`` (None: its ``bm25`` record, else its first one)."""
    name = stage if stage is not None else "bm25" if "bm25" in hit.stages else next(iter(hit.stages), None)
    record = hit.stages.get(name) if name is not None else None
    if record is None or record.score is None:
        raise InputError(f"hybrid_weight mixes in each candidate's first-stage score, but hit {hit.item_id!r} has "
                         f"no score from {name!r}; set hybrid_stage to the stage that scored it (one of "
                         f"{sorted(hit.stages)}).")
    return float(record.score)


@dataclasses.dataclass(kw_only=True)
class ERankReranker(PointwiseLLMReranker):
    """Reorders the top ``depth`` (100) candidates by ERank's s x P(s) (see the module docstring).

    ``instruction``: a key of :data:`ERANK_INSTRUCTIONS` or the text. ``template``: the user
    message (None: :data:`ERANK_TEMPLATE`). ``query_tokens`` / ``document_tokens``: truncation
    (None: none). ``max_new_tokens``, ``temperature``, ``top_logprobs``: decoding.
    ``answer_probability``: ``product`` or ``first`` (multi-token answers such as 10).
    ``on_parse_failure``: ``zero`` or ``unscored``. ``hybrid_weight`` / ``hybrid_stage``: the
    BRIGHT hybrid with the first stage (None: off). ``batch_size``: candidates per model call.

    Candidates with nothing to show (no text, and no picture for this model) or whose picture does
    not load are not scored: they keep their place after the scored ones, with a note.
    """

    default_model: ClassVar[str | None] = ERANK_MODEL

    name: str = "erank"
    depth: int = 100
    instruction: str = "beir"
    template: str | None = None
    query_tokens: int | None = 2048
    document_tokens: int | None = 2048
    max_new_tokens: int = 4096
    temperature: float = 0.0
    top_logprobs: int = 20
    answer_probability: AnswerProbability = "product"
    on_parse_failure: OnParseFailure = "zero"
    hybrid_weight: float | None = None
    hybrid_stage: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise InputError(f"instruction must be one of {', '.join(ERANK_INSTRUCTIONS)} or a non-empty text; "
                             f"got {self.instruction!r}.")
        _check_template(self.user_template)
        for option, value, allowed in (("answer_probability", self.answer_probability, ANSWER_PROBABILITIES),
                                       ("on_parse_failure", self.on_parse_failure, ON_PARSE_FAILURE)):
            if value not in allowed:
                raise InputError(f"{option} must be one of {', '.join(allowed)}; got {value!r}.")
        for option in ("query_tokens", "document_tokens", "top_logprobs"):
            at_least_one(option, getattr(self, option))
        check_generation_options(self.max_new_tokens, self.temperature, self.top_logprobs)
        weight = self.hybrid_weight
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                                   or not 0.0 <= weight <= 1.0):
            raise InputError(f"hybrid_weight must be between 0 and 1 (the rerank score's share; the paper's BRIGHT "
                             f"hybrid: 0.8) or null for off; got {weight!r}.")

    @property
    def relevance_definition(self) -> str:
        """The instruction's text (a Table 7 key resolved)."""
        return ERANK_INSTRUCTIONS.get(self.instruction, self.instruction)

    @property
    def user_template(self) -> str:
        return ERANK_TEMPLATE if self.template is None else self.template

    def conversation(self, model: VisionLanguageModel, question: str, item: Item) -> Conversation:
        """The one user message about ``item``: the template with the (cut) query and document, or
        the picture in the document's place. InputError when the picture cannot be loaded."""
        before, _, after = self.user_template.partition("{document}")
        values = {"instruction": self.relevance_definition, "query": cut_to_tokens(model, question, self.query_tokens)}
        text = "" if self.shows_picture(model, item) else cut_to_tokens(model, document_text(item),
                                                                          self.document_tokens)
        parts = [{"type": "text", "text": before.format(**values)}, self.candidate_part(model, item, text),
                 {"type": "text", "text": after.format(**values)}]
        content = merged_text(parts)
        user: Any = content[0]["text"] if len(content) == 1 and content[0]["type"] == "text" else content
        return [{"role": "user", "content": user}]

    def score_candidates(self, model: VisionLanguageModel, questions: Sequence[str],
                         hits: Sequence[Hit]) -> list[Verdict]:
        asked, conversations, verdicts = ask_each(self, model, questions, hits, self.conversation)
        if conversations:
            generations = model.generate(conversations, max_new_tokens=self.max_new_tokens,
                                         temperature=self.temperature, top_logprobs=self.top_logprobs)
            for index, generation in zip(asked, generations, strict=True):
                verdicts[index] = self._verdict(parse_erank_answer(generation, self.answer_probability))
        return verdicts

    def _verdict(self, answer: ERankAnswer) -> Verdict:
        if answer.reason is None:
            return answer.value, None
        if self.on_parse_failure == "zero":
            return 0.0, f"answer not parsed: {answer.reason}; scored 0"
        return None, f"answer not parsed: {answer.reason}; not scored, kept its place after the scored hits"

    def _apply(self, ranking: Ranking, verdicts: dict[int, HeadPlace]) -> Ranking:
        if self.hybrid_weight is not None:
            verdicts = self.hybrid(ranking, verdicts)
        return super()._apply(ranking, verdicts)

    def hybrid(self, ranking: Ranking, verdicts: dict[int, HeadPlace]) -> dict[int, HeadPlace]:
        """The scored head's places with ``w z(rerank) + (1 - w) z(first stage)`` as their scores."""
        scored = [place for place in verdicts.values() if place.score is not None]
        if not scored:
            return verdicts
        weight = float(self.hybrid_weight)
        rerank = zscores([place.score for place in scored])
        first = zscores([first_stage_score(ranking.hits[place.position], self.hybrid_stage) for place in scored])
        mixed = dict(verdicts)
        for place, own, other in zip(scored, rerank, first):
            note = "; ".join(filter(None, [place.note, f"rerank score {place.score:.6g}"]))
            mixed[place.position] = HeadPlace(place.position, float(weight * own + (1 - weight) * other), note)
        return mixed


def _check_template(template: Any) -> None:
    """InputError unless ``template`` is a format string with ``{query}`` and one ``{document}``
    (and optionally ``{instruction}``), no other placeholders."""
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except (ValueError, TypeError) as error:
        raise InputError(f"template {template!r} is not a valid format string: {error}.") from None
    if not {"query", "document"} <= fields <= _FIELDS or template.count("{document}") != 1:
        raise InputError(f"template must be a format string with {{query}}, one {{document}} and optionally "
                         f"{{instruction}}; got {template!r} (placeholders {sorted(fields)}).")
