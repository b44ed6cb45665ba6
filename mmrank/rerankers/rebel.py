"""REBEL: multi-criteria reranking by prompting ("Relevance Isn't All You Need: Scaling RAG Systems
With Inference-Time Compute Via Multi-Criteria Reranking", LeVine and Varjavand, 2025).

The model reads a batch of candidates, ``Document i:\\n<text>`` separated by blank lines, after an
instruction and before ``Question: q\\nAnswer:``, and answers one line per candidate it keeps,
``Doc: i, Relevance: x`` (x the candidate's weighted composite score, the "Final Score"). The
candidates the answer lists are sorted by x.

- ``mode: one-turn``: a fixed prompt asks for relevance (0-10) and depth, diversity, clarity,
  authoritativeness and recency (0-5 each), to drop relevance below 3 and to write
  ``Relevance + 0.5 * (each criterion)``. One call per ``choice_batch_size`` candidates.
- ``mode: two-turn`` (the reference class's default): first a meta-prompt, which sees only the
  query, makes the model write a query-specific ranking prompt (its own criteria and weights) with
  ``{context_str}`` / ``{query_str}`` slots; that prompt then ranks the batches. One call more per
  query.

References read:

- bvarjavand/llama_index (the fork of run-llama/llama_index PR 17590, which REBEL's README installs)
  at ad1ae5b32bceb82a79b8281166371ce7d331e9d4 (its REBEL files as of
  f0e9cd661cfe633b50288f52cd5819286537164f): ``llama-index-core/llama_index/core/postprocessor/
  rebel_rerank.py`` (``REBELRerank``: two-turn unless ``one_turn``, ``choice_batch_size`` 10,
  ``top_n`` 10, ``sorted(..., key=score or 0.0, reverse=True)[:top_n]``),
  ``llama_index/core/prompts/default_prompts.py`` (``DEFAULT_REBEL_META_PROMPT_TMPL``,
  ``DEFAULT_REBEL_CHOICE_SELECT_PROMPT_TMPL``: :data:`REBEL_META_PROMPT`,
  :data:`REBEL_ONE_TURN_PROMPT`, "theselected" sic), ``llama_index/core/indices/utils.py``
  (``default_format_node_batch_fn``: ``Document {n}:\\n{content}`` joined by ``\\n\\n``;
  ``default_parse_choice_select_answer_fn``), ``llama_index/core/prompts/utils.py``
  (``SafeFormatter``: fills only the ``{key}`` slots it is given, in one pass, and leaves any other
  brace alone), ``tests/postprocessor/test_rebel_rerank.py``.
- microsoft/REBEL at e797c9542c59504d8fc42015c7185ae8aef6648c: ``experiments.py`` (10 candidates
  from the retriever, ``choice_batch_size=10``, ``top_n=3``; the relevance-only meta-prompt
  :data:`RELEVANCE_ONLY_META_PROMPT`), ``main.py`` (gpt-4o at temperature 0), ``README.md``; and
  ``experiments.py`` at 28ff3e419c179671d4e096e3d893fd25b601f3bb (the one-turn prompt as
  ``MULTICRITERIA_STATIC_RERANKING_PROMPT``, the same text).

The spec took the PR's prompt texts as not recovered; they were found in that fork and are kept
here character for character (as Python reads the reference's literals: the meta-prompt's
``"Example format: \\n"`` lines hold real line breaks). What is ours, each an option:

- Nothing is silently lost: the reference returns only the listed candidates (up to ``top_n``);
  here the candidates a batch does not list (REBEL's prompt leaves out relevance below 3; or the
  answer did not parse) follow the listed ones in their incoming order, unscored, each with a note,
  then the hits after ``depth``. ``top_n`` (default None) cuts the returned list.
- The parser (:func:`parse_rebel_answer`) reads ``Doc: i, Relevance: x`` with any case and spacing,
  brackets, bold marks, ``Document`` for ``Doc``, several per line, after a ``</think>``; ids out
  of range are ignored and a repeated id counts once (first wins), both noted. The reference reads
  only the first run of digits of x (``7.5`` is 7; ``integer_scores: true`` does the same), would
  take id 0 as the batch's last candidate and keep repeats twice.
- ``weights`` (one-turn): the criteria's weights in the prompt's formula, default 0.5 each (the
  reference's text); ``min_relevance`` (3) the threshold it states.
- ``composite: stage`` (one-turn, ours): a prompt of ours (:data:`CRITERIA_INSTRUCTIONS` after the
  reference's rubric) asks for every criterion's score on every candidate, and the stage computes
  ``relevance + sum(weight * score)`` itself and moves relevance below ``min_relevance`` after the
  listed ones (noted), so the arithmetic does not rest on the model.
- Two-turn: the written prompt is filled by replacing exactly ``{context_str}`` and
  ``{query_str}``, in one pass (``SafeFormatter``'s behaviour; never ``str.format`` on model
  output, so stray braces stay as written). A written prompt without ``{context_str}`` gets the
  reference's example tail appended (``{context_str}\\nQuestion: {query_str}\\nAnswer:\\n``), and
  an empty one falls back to the one-turn prompt, both noted. ``meta_prompt``: ``default``,
  ``relevance-only`` (the experiments' ablation) or a text holding ``{user_query}``.
- Candidates: ``title\\n\\ntext`` (BEIR's layout; llama_index shows a node's content, here the item's
  text), whole, or their first ``passage_words`` words. Decoding: greedy at ``temperature`` 0, at
  most ``max_new_tokens`` (1024) per ranking answer and ``meta_max_new_tokens`` (2048) for the
  written prompt. ``<think>`` blocks of reasoning models are skipped.
- Page images (``use_images``): ``Document i:`` and the page's picture (recency and authority then
  rest on what the page shows). Default model ``Qwen/Qwen2.5-7B-Instruct`` (any instruction-tuned
  chat model; the paper used gpt-4o: give ``url`` and ``model``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

from mmrank.errors import InputError
from mmrank.mllm.base import check_generation_options
from mmrank.rerankers.base import HeadPlace, at_least_one, reorder_head
from mmrank.rerankers.llm_stage import LLMReranker, first_words, merged_text, showable_head, title_and_body

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.mllm import Conversation, VisionLanguageModel
    from mmrank.types import Hit, Item, Query, Ranking

REBEL_MODEL = "Qwen/Qwen2.5-7B-Instruct"

# bvarjavand/llama_index default_prompts.py: DEFAULT_REBEL_META_PROMPT_TMPL, DEFAULT_REBEL_CHOICE_SELECT_PROMPT_TMPL;
# then experiments.py's RELEVANCE_ONLY_REBEL_META_PROMPT_TMPL (microsoft/REBEL), written line by line (it has lines
# of trailing spaces).
REBEL_META_PROMPT = (
    '''You are a prompt generator. You will receive only a user's query as input. Your task is to:

Analyze the user's query and identify additional properties beyond basic relevance that would be desirable for selecting and ranking context documents. These properties should be inferred from the query's subject matter, without the user specifying them. Such properties may include:

Domain appropriateness (e.g., technical accuracy, authoritative sourcing, correctness of information)
Perspective diversity (multiple viewpoints, ideological balance, different theoretical frameworks)
Temporal relevance (up-to-date information, recent data)
Depth of detail and specificity (thorough coverage, multi-faceted analysis, detailed examples)
Trustworthiness, neutrality, impartiality (reliable sources, unbiased accounts)
Reasoning depth or conceptual complexity
Authoritativeness (recognition of reputable experts, institutions, or high-quality sources)
After inferring these properties from the query, produce a final prompt that instructs a large-language model re-ranker on how to:

Take the user's query and a set of candidate documents.
The documents and the query will appear after your instructions in this format: A list of documents is shown below. Each document has a number and a summary. The summaries may indicate the type of source, credibility level, publication date, or the nature of the information. After listing all documents, the user's query will be presented on a single line labeled "Question:". For example: Document 1: <summary of document 1> Document 2: <summary of document 2> ... Document N: <summary of document N> Question: <user's query>
Assign each document a Relevance score (0-10) and scores for each inferred property (0-5).
Compute a weighted composite score for each document. This composite score should not just be used to break ties, but to determine the final ordering. For instance, you may define a formula like: Final Score = Relevance + (Weight1 * Property1) + (Weight2 * Property2) + ... The weights should be specified by you. For example, if you have three properties, you might say: Final Score = Relevance + 0.5*(Property1) + 0.5*(Property2) + 0.5*(Property3) This ensures that documents which strongly exhibit the desired secondary properties can surpass documents with slightly higher relevance but weaker secondary property scores.
Filter out irrelevant documents first. For example, discard any document with Relevance < 3.
Rank all remaining documents by their Final Score (based on the chosen weights).
If two documents end up with the exact same Final Score, you may choose a consistent approach to pick one over the other (e.g., prefer the document with higher authoritativeness).
If no documents meet the relevance threshold, output nothing.
Produce only the final ranked list of chosen documents with their Final Score, in descending order of Final Score. The format for each selected document should be: Doc: [document number], Relevance: [score], where [score] is actually the final score - not the relevance score.
Include no commentary, explanation, or additional text beyond these lines.
Your final prompt should:

Include the user's query verbatim.
Enumerate and define the inferred properties in detail, clearly stating their significance.
Provide the exact scoring rubric for Relevance (0-10) and each inferred property (0-5), explaining what high and low scores mean.
Specify the weighted composite score formula and list the weights for each property.
Give a step-by-step procedure: assign Relevance, assign property scores, discard low-relevance documents, compute Final Scores, sort by Final Score, handle ties if any, then output the final list.
State what to do if no documents qualify (output nothing).
Remind the re-ranker that the documents and query will be shown after this prompt, and that the only acceptable output is the final sorted list of documents and their relevance scores.
Your output should be a single prompt that can be given directly to the large-language model re-ranker. After this prompt, the re-ranker will receive the documents and the query and must follow the instructions to produce the final answer.

At the end of your prompt, you should ALWAYS NO MATTER WHAT include the following:

"Example format: \n"
"Document 1:\n<summary of document 1>\n\n"
"Document 2:\n<summary of document 2>\n\n"
"...\n\n"
"Document 10:\n<summary of document 10>\n\n"
"Question: <question>\n"
"Answer:\n"
"Doc: 9, Relevance: 7\n"
"Doc: 3, Relevance: 4\n"
"Doc: 7, Relevance: 3\n\n"
"Let's try this now: \n\n"
"{context_str}\n"
"Question: {query_str}\n"
"Answer:\n"

Below are 5 k-shot examples demonstrating the required level of detail and explicitness. Each example:

Presents a user query.
Infers multiple properties and explains their relevance.
Provides a scoring rubric for Relevance and the inferred properties.
Defines a weighted composite scoring formula that incorporates Relevance and all secondary properties.
Gives step-by-step instructions for scoring, filtering, ranking, and outputting results.
Explains what to do if no suitable documents remain.
Instructs that the final output should only be lines of the form "Doc: [number], Relevance: [score]" with no extra text.
Example 1 User Query: "How do different countries' tax policies affect income inequality, and what arguments exist from various economic schools of thought?"

Inferred Properties:

Perspective diversity (0-5): Documents that mention or compare multiple economic theories or viewpoints score higher. A high score (5) means it covers several distinct schools of thought. A low score (0) means it is one-dimensional.
Authoritativeness (0-5): Documents from credible economists, reputable research institutes, or peer-reviewed studies score higher. A 5 might be a well-cited academic paper; a 0 might be an anonymous blog post.
Comparative breadth (0-5): Documents discussing tax policies in multiple countries score higher. A 5 means it covers several countries, a 0 means it focuses on just one or does not compare countries at all.
Scoring Rubric: Relevance (0-10): A 10 means the document directly addresses how tax policies influence income inequality and references arguments from different economic viewpoints. A 0 means it is off-topic. Perspective diversity (0-5): Assign based on how many distinct economic perspectives are included. Authoritativeness (0-5): Assign based on credibility and source quality. Comparative breadth (0-5): Assign based on the number of countries or breadth of international comparison.

Weighted Composite Score: Final Score = Relevance + 0.5*(Perspective diversity) + 0.5*(Authoritativeness) + 0.5*(Comparative breadth)

Instructions: After this prompt, you will see: Document 1: <summary> Document 2: <summary> ... Document N: <summary> Question: "How do different countries' tax policies affect income inequality, and what arguments exist from various economic schools of thought?"

Assign Relevance to each document (0-10). Discard documents with Relevance < 3.
For remaining documents, assign Perspective diversity, Authoritativeness, and Comparative breadth (each 0-5).
Compute Final Score as described above.
Sort all remaining documents by Final Score (descending).
If two documents have identical Final Scores, pick consistently, for example by preferring the one with higher Authoritativeness.
If no document remains, output nothing.
Output only: Doc: [number], Relevance: [score] for each selected document, no commentary or explanation, where [score] is actually the final score.

"Example format: \n"
"Document 1:\n<summary of document 1>\n\n"
"Document 2:\n<summary of document 2>\n\n"
"...\n\n"
"Document 10:\n<summary of document 10>\n\n"
"Question: <question>\n"
"Answer:\n"
"Doc: 9, Relevance: 7\n"
"Doc: 3, Relevance: 4\n"
"Doc: 7, Relevance: 3\n\n"
"Let's try this now: \n\n"
"{context_str}\n"
"Question: {query_str}\n"
"Answer:\n"


Example 2 User Query: "What are the latest recommended treatments for chronic lower back pain according to recent medical research?"

Inferred Properties:

Recency (0-5): Higher if the document references recent studies, new clinical guidelines, or up-to-date research (within the last few years). A 5 means it is very recent, a 0 means outdated or no mention of timeliness.
Authoritativeness (0-5): Higher if sourced from reputable medical journals, recognized health organizations, or consensus guidelines.
Specificity (0-5): Higher if it focuses specifically on chronic lower back pain treatments. A 5 means it precisely addresses chronic lower back pain, a 0 means it only vaguely mentions pain or general treatments without specificity.
Scoring Rubric: Relevance (0-10): A 10 means the document explicitly discusses current recommended treatments for chronic lower back pain based on recent research. A 0 means off-topic. Recency (0-5) Authoritativeness (0-5) Specificity (0-5)

Weighted Composite Score: Final Score = Relevance + 0.5*(Recency) + 0.5*(Authoritativeness) + 0.5*(Specificity)

Instructions: After this prompt: Document 1: <summary> ... Document N: <summary> Question: "What are the latest recommended treatments for chronic lower back pain according to recent medical research?"

Assign Relevance. Exclude Relevance < 3.
Assign Recency, Authoritativeness, Specificity.
Compute Final Score.
Sort by Final Score.
If tied, choose consistently (e.g., prefer higher Authoritativeness).
If none remain, output nothing.
Output only lines like: Doc: X, Relevance: Y, where Y is actually the final score.

"Example format: \n"
"Document 1:\n<summary of document 1>\n\n"
"Document 2:\n<summary of document 2>\n\n"
"...\n\n"
"Document 10:\n<summary of document 10>\n\n"
"Question: <question>\n"
"Answer:\n"
"Doc: 9, Relevance: 7\n"
"Doc: 3, Relevance: 4\n"
"Doc: 7, Relevance: 3\n\n"
"Let's try this now: \n\n"
"{context_str}\n"
"Question: {query_str}\n"
"Answer:\n"


Example 3 User Query: "How did the policies of Emperor Qin Shi Huang shape the political and cultural landscape of ancient China?"

Inferred Properties:

Historical depth (0-5): Higher if it provides detailed historical context, dates, and direct evidence. A 5 is richly detailed, a 0 is very superficial.
Perspective range (0-5): Higher if it references multiple historians or scholarly opinions. A 5 means multiple perspectives, a 0 is one-sided.
Cultural/political detail (0-5): Higher if it addresses both political structures and cultural changes. A 5 is comprehensive, a 0 is minimal detail.
Scoring Rubric: Relevance (0-10): A 10 means it explicitly discusses Qin Shi Huang's policies and their impact on both political and cultural aspects of ancient China. Historical depth (0-5) Perspective range (0-5) Cultural/political detail (0-5)

Weighted Composite Score: Final Score = Relevance + 0.5*(Historical depth) + 0.5*(Perspective range) + 0.5*(Cultural/political detail)

Instructions: After this prompt: Document 1: <summary> ... Document N: <summary> Question: "How did the policies of Emperor Qin Shi Huang shape the political and cultural landscape of ancient China?"

Assign Relevance, discard < 3.
Assign Historical depth, Perspective range, Cultural/political detail.
Compute Final Score.
Sort by Final Score.
Tie-break by preferring more historically authoritative perspectives if still tied.
If none qualify, output nothing.
Only output: Doc: [number], Relevance: [score], where [score] is actually the final score.

"Example format: \n"
"Document 1:\n<summary of document 1>\n\n"
"Document 2:\n<summary of document 2>\n\n"
"...\n\n"
"Document 10:\n<summary of document 10>\n\n"
"Question: <question>\n"
"Answer:\n"
"Doc: 9, Relevance: 7\n"
"Doc: 3, Relevance: 4\n"
"Doc: 7, Relevance: 3\n\n"
"Let's try this now: \n\n"
"{context_str}\n"
"Question: {query_str}\n"
"Answer:\n"


Example 4 User Query: "What are the main differences between various machine learning frameworks like TensorFlow, PyTorch, and Scikit-learn?"

Inferred Properties:

Technical accuracy (0-5): Higher if the document correctly and specifically describes features, performance characteristics, or typical uses. A 5 means very accurate and specific.
Comparative breadth (0-5): Higher if the document compares multiple frameworks directly, ideally all three. A 5 means it covers all three well, a 0 means it only mentions one.
Authoritativeness (0-5): Higher if citing official documentation, known ML experts, or reputable evaluation sources.
Scoring Rubric: Relevance (0-10): A 10 means the document explicitly compares these ML frameworks in detail. Technical accuracy (0-5) Comparative breadth (0-5) Authoritativeness (0-5)

Weighted Composite Score: Final Score = Relevance + 0.5*(Technical accuracy) + 0.5*(Comparative breadth) + 0.5*(Authoritativeness)

Instructions: After prompt: Document 1: <summary> ... Document N: <summary> Question: "What are the main differences between various machine learning frameworks like TensorFlow, PyTorch, and Scikit-learn?"

Assign Relevance, exclude < 3.
Assign Technical accuracy, Comparative breadth, Authoritativeness.
Compute Final Score.
Sort by Final Score.
Tie-break by preferring documents that are more authoritative or have greater comparative breadth.
If none remain, output nothing.
Output only lines like: Doc: [number], Relevance: [score], where [score] is actually the final score.

"Example format: \n"
"Document 1:\n<summary of document 1>\n\n"
"Document 2:\n<summary of document 2>\n\n"
"...\n\n"
"Document 10:\n<summary of document 10>\n\n"
"Question: <question>\n"
"Answer:\n"
"Doc: 9, Relevance: 7\n"
"Doc: 3, Relevance: 4\n"
"Doc: 7, Relevance: 3\n\n"
"Let's try this now: \n\n"
"{context_str}\n"
"Question: {query_str}\n"
"Answer:\n"

Example 5 User Query: "What are the arguments for and against universal basic income in modern economies?"

Inferred Properties:

Balance of perspectives (0-5): Higher if the document presents both pro and con arguments. A 5 means thorough coverage of both sides.
Reasoning depth (0-5): Higher if it explains the rationale behind arguments, providing logic or evidence.
Authoritativeness (0-5): Higher if referencing economists, studies, or policy analyses from reputable sources.
Scoring Rubric: Relevance (0-10): A 10 means it clearly discusses UBI arguments both for and against. Balance of perspectives (0-5) Reasoning depth (0-5) Authoritativeness (0-5)

Weighted Composite Score: Final Score = Relevance + 0.5*(Balance of perspectives) + 0.5*(Reasoning depth) + 0.5*(Authoritativeness)

Instructions: After prompt: Document 1: <summary> ... Document N: <summary> Question: "What are the arguments for and against universal basic income in modern economies?"

Assign Relevance, discard < 3.
Assign Balance of perspectives, Reasoning depth, Authoritativeness.
Compute Final Score.
Sort by Final Score.
If tied, prefer documents with higher reasoning depth or authoritativeness.
If none remain, output nothing.
Output only: Doc: [number], Relevance: [score], where [score] is actually the final score.

"Example format: \n"
"Document 1:\n<summary of document 1>\n\n"
"Document 2:\n<summary of document 2>\n\n"
"...\n\n"
"Document 10:\n<summary of document 10>\n\n"
"Question: <question>\n"
"Answer:\n"
"Doc: 9, Relevance: 7\n"
"Doc: 3, Relevance: 4\n"
"Doc: 7, Relevance: 3\n\n"
"Let's try this now: \n\n"
"{context_str}\n"
"Question: {query_str}\n"
"Answer:\n"


Follow these examples as a template for your final prompt. For any new user query, do the following:

Include the user's query verbatim.
Infer the relevant secondary properties and define them clearly.
Give a scoring rubric for Relevance and each property.
Specify a weighted composite score formula that combines Relevance and the properties.
Provide step-by-step instructions: assign scores, filter out irrelevant documents, compute Final Score, sort by Final Score, handle ties, and if none qualify, output nothing.
Instruct the re-ranker to output only the final list of documents and their Relevance scores, with no extra commentary.
Now, here is the user's query:

{user_query}
'''
)

REBEL_ONE_TURN_PROMPT = (
"""You are a re-ranking system. Your task is to analyze a user's query and a set of candidate documents, assign scores based on specified properties, and output the final ranking of documents.

**Inferred Properties**

1. **Depth of Content (0-5):**
- Higher scores indicate thorough detail and comprehensive coverage of the topic.
- A "5" is exceptionally in-depth with multiple facets addressed; a "0" is very superficial.

2. **Diversity of Perspectives (0-5):**
- Higher scores indicate that multiple viewpoints or angles are represented.
- A "5" means it engages with a variety of perspectives or sources; a "0" means it is entirely one-sided.

3. **Clarity and Specificity (0-5):**
- Higher scores indicate that the document presents information clearly and addresses the query with precise, unambiguous detail.
- A "5" means it is highly specific and clear, while a "0" means it is vague or overly general.

4. **Authoritativeness (0-5):**
- Higher scores indicate reputable sources, expert authorship, or recognized credibility.
- A "5" might be an extensively cited academic work or an official standard; a "0" would be an unknown or dubious source.

5. **Recency (0-5):**
- Higher scores indicate that the document references recent studies, data, or developments.
- A "5" means it is very current and up-to-date; a "0" means it is outdated or does not reference any time-sensitive information.

**Scoring Rubric**

- **Relevance (0-10):**
- A "10" means the document directly addresses the user's query, covering the key subject comprehensively.
- A "0" means it is completely off-topic.

- **Depth of Content (0-5):** Based on how detailed or thorough the document is.
- **Diversity of Perspectives (0-5):** Based on how many viewpoints or angles are presented.
- **Clarity and Specificity (0-5):** Based on how clear and precise the document is.
- **Authoritativeness (0-5):** Based on source credibility or recognized expertise.
- **Recency (0-5):** Based on how up-to-date the document is.

**Weighted Composite Score**
Final Score = Relevance + 0.5*(Depth of Content) + 0.5*(Diversity of Perspectives) + 0.5*(Clarity and Specificity) + 0.5*(Authoritativeness) + 0.5*(Recency)

**Instructions**
1. Assign Relevance to each document on a scale of 0-10. Discard any document with Relevance < 3.
2. For the remaining documents, assign scores for:
- Depth of Content (0-5)
- Diversity of Perspectives (0-5)
- Clarity and Specificity (0-5)
- Authoritativeness (0-5)
- Recency (0-5)
3. Compute each document's Final Score using the formula above.
4. Sort the documents by their Final Score in descending order.
5. If two documents end up with the same Final Score, prefer the one with higher Authoritativeness (or apply another consistent tie-breaking rule).
6. If no documents remain after filtering for Relevance, output nothing.
7. Output only the list of theselected documents with their Relevance scores, in this format (no extra text or commentary), where [score] is actually the Final Score and NOT the relevance score.
```
Doc: [document number], Relevance: [score]
```

**Example format:**
```
Document 1:
<summary of document 1>

Document 2:
<summary of document 2>

...

Document 10:
<summary of document 10>

Question: <question>
Answer:
Doc: 9, Relevance: 7
Doc: 3, Relevance: 4
Doc: 7, Relevance: 3

Let's try this now:

{context_str}
Question: {query_str}
Answer:
```""")

RELEVANCE_ONLY_META_PROMPT = (
    "You are a prompt generator. You will receive only a user's query as input. Your task is to produce a final prompt that instructs a large-language model re-ranker to process a set of candidate documents solely based on their relevance to the user's query. The re-ranker will see the documents and the query in the following format:\n"
    '    \n'
    'A list of documents is shown below. Each document has a number and a summary. The summaries may indicate the source type, publication date, or other contextual details. After listing all documents, the user\'s query is presented on a single line labeled "Question:".\n'
    '    \n'
    'For example:\n'
    '    \n'
    'Document 1:\n'
    '<summary of document 1>\n'
    '    \n'
    'Document 2:\n'
    '<summary of document 2>\n'
    '    \n'
    '...\n'
    '    \n'
    'Document N:\n'
    '<summary of document N>\n'
    '    \n'
    "Question: <user's query>\n"
    '    \n'
    'Your final prompt must instruct the re-ranker as follows:\n'
    '    \n'
    '1. For each document, assign a Relevance score from 0 to 10, where:\n'
    "   - A score of 10 means the document directly and comprehensively addresses the user's query.\n"
    '   - A score of 0 means the document is completely off-topic.\n'
    '    \n'
    '2. Immediately discard any document with a Relevance score lower than 3.\n'
    '    \n'
    '3. For the remaining documents, use the Relevance score as the sole metric to compute a Final Score (i.e. Final Score = Relevance).\n'
    '    \n'
    '4. Sort the documents in descending order of their Final Score.\n'
    '    \n'
    '5. If two documents have the same Final Score, maintain their original order.\n'
    '    \n'
    '6. If no document qualifies (i.e. all have Relevance < 3), output nothing.\n'
    '    \n'
    '7. Output only the final ranked list, with each line in the following format (and no extra commentary):\n'
    'Doc: [document number], Relevance: [Final Score]\n'
    '\n'
    '    \n'
    'At the end of your prompt, ALWAYS include the following exact example to illustrate the expected format:\n'
    '    \n'
    '"Example format: \n'
    '"\n'
    '"Document 1:\n'
    '<summary of document 1>\n'
    '\n'
    '"\n'
    '"Document 2:\n'
    '<summary of document 2>\n'
    '\n'
    '"\n'
    '"...\n'
    '\n'
    '"\n'
    '"Document 10:\n'
    '<summary of document 10>\n'
    '\n'
    '"\n'
    '"Question: <question>\n'
    '"\n'
    '"Answer:\n'
    '"\n'
    '"Doc: 9, Relevance: 7\n'
    '"\n'
    '"Doc: 3, Relevance: 4\n'
    '"\n'
    '"Doc: 7, Relevance: 3\n'
    '\n'
    '"\n'
    '"Let\'s try this now: \n'
    '\n'
    '"\n'
    '"{context_str}\n'
    '"\n'
    '"Question: {query_str}\n'
    '"\n'
    '"Answer:\n'
    '"\n'
    '    \n'
    "Remember to include the user's query verbatim at the end of your prompt.\n"
    '    \n'
    "Now, here is the user's query:\n"
    '{user_query}\n'
)

# ---------------------------------------------------------------------------------------------------- ours
# The reference's one-turn criteria, their names in its text, and what it writes that the options change.
CRITERIA = ("depth", "diversity", "clarity", "authoritativeness", "recency")
CRITERION_NAMES = {"depth": "Depth of Content", "diversity": "Diversity of Perspectives",
                   "clarity": "Clarity and Specificity", "authoritativeness": "Authoritativeness", "recency": "Recency"}
DEFAULT_WEIGHT = 0.5
REFERENCE_FORMULA = ("Final Score = Relevance + 0.5*(Depth of Content) + 0.5*(Diversity of Perspectives) + "
                     "0.5*(Clarity and Specificity) + 0.5*(Authoritativeness) + 0.5*(Recency)")
REFERENCE_THRESHOLD = "Discard any document with Relevance < 3."
REFERENCE_TASK = ", and output the final ranking of documents."
# The tail REBEL's meta-prompt makes the written prompt end with (its "Example format" block, last lines).
SLOTS_TAIL = "\n\n{context_str}\nQuestion: {query_str}\nAnswer:\n"
# composite: stage (ours): after the reference's text up to its "**Weighted Composite Score**" heading.
CRITERIA_TASK = ". The final ranking is computed from your scores."
CRITERIA_INSTRUCTIONS = """**Instructions**
1. Assign Relevance to each document on a scale of 0-10.
2. Assign each document scores for:
- Depth of Content (0-5)
- Diversity of Perspectives (0-5)
- Clarity and Specificity (0-5)
- Authoritativeness (0-5)
- Recency (0-5)
3. Output one line for every document, in the order the documents are listed, in this format (no extra text or commentary):
```
Doc: [document number], Relevance: [score], Depth: [score], Diversity: [score], Clarity: [score], Authoritativeness: [score], Recency: [score]
```

**Example format:**
```
Document 1:
<summary of document 1>

Document 2:
<summary of document 2>

Question: <question>
Answer:
Doc: 1, Relevance: 7, Depth: 3, Diversity: 2, Clarity: 4, Authoritativeness: 3, Recency: 1
Doc: 2, Relevance: 2, Depth: 1, Diversity: 0, Clarity: 2, Authoritativeness: 1, Recency: 0

Let's try this now:

{context_str}
Question: {query_str}
Answer:
```"""

Mode = Literal["one-turn", "two-turn"]
Composite = Literal["model", "stage"]
MODES = ("one-turn", "two-turn")
COMPOSITES = ("model", "stage")
META_PROMPTS = {"default": REBEL_META_PROMPT, "relevance-only": RELEVANCE_ONLY_META_PROMPT}

_SLOT = re.compile(r"\{(context_str|query_str)\}")
_THINK_END = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
_NUMBER = r"\d+(?:\.\d+)?"
# "Doc: 3, Relevance: 7.5" and its looser spellings: "**Document 3** - relevance = [7]".
_ENTRY = re.compile(r"\bdoc(?:ument)?\b[\s*_#:.\[\]]*(\d+)[\s*_\]\[)(,;:.|-]*relevance\b[\s*_:=\[(]*(" + _NUMBER + ")",
                    re.IGNORECASE)
# One "Depth: 3" field of a line's comma-separated rest (a name of at most 40 characters).
_FIELD = re.compile(r"[\s*_]*([A-Za-z][A-Za-z /&-]{0,40}?)[\s*_]*[:=][\s*_\[(]*(" + _NUMBER + ")")


class Listed(NamedTuple):
    """One candidate an answer lists: its 0-based index in the batch, the ``Relevance`` value (the
    composite score when the model computes it) and any criterion scores on its line."""

    index: int
    relevance: float
    criteria: Mapping[str, float]


@dataclass(frozen=True)
class RebelAnswer:
    """What one batch's answer said: the candidates listed (in the answer's order, each once),
    ``problems`` (what was ignored: the 0-based index of the candidate it is about, None for an id
    that is none of them, and a note) and ``failure`` (why nothing could be read, else None)."""

    listed: tuple[Listed, ...]
    problems: tuple[tuple[int | None, str], ...]
    failure: str | None


def parse_rebel_answer(text: str, count: int, integer_scores: bool = False) -> RebelAnswer:
    """The ``Doc: i, Relevance: x`` entries of an answer about ``count`` candidates (see the module
    docstring), with the criteria written after each (``Depth: 3, ...``, read by the first four
    letters of their names). ``integer_scores``: read only x's whole part, as the reference does."""
    if count < 1:
        raise InputError(f"count must be at least 1, got {count}.")
    answer = _THINK_END.split(text)[-1]
    entries = list(_ENTRY.finditer(answer))
    listed: dict[int, Listed] = {}
    problems = []
    for number, entry in enumerate(entries):
        identifier = int(entry[1]) if len(entry[1]) <= 6 else 0
        if not 1 <= identifier <= count:
            problems.append((None, f"Doc {entry[1][:12]} is not one of 1 to {count}: ignored"))
            continue
        if identifier - 1 in listed:
            problems.append((identifier - 1, f"Doc {identifier} listed again: its first line counts"))
            continue
        value = _value(entry[2], integer_scores)
        if not math.isfinite(value):
            problems.append((identifier - 1, f"Doc {identifier}: its score is too large to use: ignored"))
            continue
        end = entries[number + 1].start() if number + 1 < len(entries) else len(answer)
        line = answer[entry.end():end].split("\n", 1)[0]
        listed[identifier - 1] = Listed(identifier - 1, value, _criteria(line, integer_scores))
    failure = None
    if not listed:
        failure = "empty output" if not answer.strip() else (
            f"no usable 'Doc: i, Relevance: x' line (i from 1 to {count})" if entries or problems
            else "no 'Doc: i, Relevance: x' line")
    return RebelAnswer(tuple(listed.values()), tuple(problems), failure)


def _value(text: str, integer_scores: bool) -> float:
    return float(text.split(".")[0]) if integer_scores else float(text)


def _criteria(text: str, integer_scores: bool) -> dict[str, float]:
    found = {}
    for piece in re.split(r"[,;|]", text):
        field_match = _FIELD.match(piece)
        if field_match is None:
            continue
        label, value = field_match.groups()
        stem = label.strip().lower()[:4]
        criterion = next((name for name in CRITERIA if len(stem) == 4 and name.startswith(stem)), None)
        number = _value(value, integer_scores)
        if criterion is not None and criterion not in found and math.isfinite(number):
            found[criterion] = number
    return found


def fill_slots(template: str, values: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The message parts of ``template`` with each ``{context_str}`` / ``{query_str}`` replaced by
    the parts in ``values``, in one pass (nothing else in the template is read: other braces stay)."""
    parts: list[dict[str, Any]] = []
    last = 0
    for slot in _SLOT.finditer(template):
        parts.append({"type": "text", "text": template[last:slot.start()]})
        parts += values[slot[1]]
        last = slot.end()
    parts.append({"type": "text", "text": template[last:]})
    return merged_text(parts)


def formula(weights: Mapping[str, float]) -> str:
    """The one-turn prompt's composite line for these weights (the reference's for 0.5 each)."""
    terms = " + ".join(f"{weights[criterion]:g}*({CRITERION_NAMES[criterion]})" for criterion in CRITERIA)
    return f"Final Score = Relevance + {terms}"


@dataclass
class RebelProgress:
    """One ranking through REBEL: the head positions it asks about (``eligible``), those it cannot
    show (``skipped``, with why), the ranking prompt (two-turn: once written), and what the batches'
    answers gave: ``listed`` (position, score) in the answers' order, ``notes`` per position."""

    ranking: Ranking
    question: str
    eligible: list[int]
    skipped: dict[int, str]
    template: str = ""
    listed: list[tuple[int, float]] = field(default_factory=list)
    notes: dict[int, list[str]] = field(default_factory=dict)
    explanations: list[str] = field(default_factory=list)

    def note(self, positions: Sequence[int], text: str) -> None:
        for position in positions:
            self.notes.setdefault(position, []).append(text)

    def result(self, stage: str, top_n: int | None) -> Ranking:
        """Listed candidates by score (ties in the answers' order), the others of the head in their
        incoming order (unscored), the tail; the first ``top_n`` of that."""
        def joined(position: int) -> str | None:
            return " | ".join(self.notes.get(position, [])) or None

        ordered = sorted(self.listed, key=lambda entry: -entry[1])
        placed = {position for position, _ in ordered}
        head = [HeadPlace(position, score, joined(position)) for position, score in ordered]
        head += [HeadPlace(position, None, joined(position) or self.skipped.get(position))
                 for position in sorted([*self.eligible, *self.skipped]) if position not in placed]
        placements = reorder_head(self.ranking, head, len(head))
        return self.ranking.with_stage(stage, placements[:top_n] if top_n is not None else placements,
                                       explanations=self.explanations)


@dataclasses.dataclass(kw_only=True)
class RebelReranker(LLMReranker):
    """REBEL reranking of the top ``depth`` (10, the paper's) candidates (see the module docstring).

    ``mode``: ``two-turn`` (a meta call per query writes the ranking prompt; ``meta_prompt``
    ``default``, ``relevance-only`` or a text with ``{user_query}``) or ``one-turn`` (the fixed
    prompt, or ``prompt``: a text with ``{context_str}`` and ``{query_str}``). ``composite``:
    ``model`` (the model writes the composite) or ``stage`` (one-turn: the stage computes it from
    the criteria's scores with ``weights``). ``weights`` (criterion -> weight, default 0.5 each) and
    ``min_relevance`` (3) shape the one-turn prompt. ``choice_batch_size`` candidates per prompt
    (10); ``batch_size`` prompts per model call (None: those of all queries together); ``top_n``
    cuts the result (None: keep all); ``integer_scores``: read scores as the reference (whole part).

    Result: listed candidates scored by their composite, the rest unscored after them with a note
    (``batch k: ...``); ``explanations[name]``: (two-turn) the written prompt, then each batch's
    answer. A ranking in a call that fails keeps its incoming order (``on_unavailable``).
    """

    default_model: ClassVar[str | None] = REBEL_MODEL

    name: str = "rebel"
    depth: int = 10
    mode: Mode = "two-turn"
    meta_prompt: str = "default"
    prompt: str | None = None
    composite: Composite = "model"
    weights: Mapping[str, float] | None = None
    min_relevance: float = 3.0
    integer_scores: bool = False
    choice_batch_size: int = 10
    batch_size: int | None = None
    top_n: int | None = None
    passage_words: int | None = None
    max_new_tokens: int = 1024
    meta_max_new_tokens: int = 2048
    temperature: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for option, value, allowed in (("mode", self.mode, MODES), ("composite", self.composite, COMPOSITES)):
            if value not in allowed:
                raise InputError(f"{option} must be one of {', '.join(allowed)}; got {value!r}.")
        if self.meta_prompt not in META_PROMPTS and "{user_query}" not in str(self.meta_prompt):
            raise InputError(f"meta_prompt must be one of {', '.join(META_PROMPTS)} or a text holding {{user_query}}; "
                             f"got {str(self.meta_prompt)[:60]!r}.")
        if self.prompt is not None and "{context_str}" not in str(self.prompt):
            raise InputError("prompt must be a text holding {context_str} (where the documents go) and usually "
                             f"{{query_str}}; got {str(self.prompt)[:60]!r}.")
        if isinstance(self.min_relevance, bool) or not isinstance(self.min_relevance, (int, float)):
            raise InputError(f"min_relevance must be a number, got {self.min_relevance!r}.")
        one_turn_fixed = self.mode == "one-turn" and self.prompt is None
        if self.composite == "stage" and not one_turn_fixed:
            raise InputError("composite: stage needs mode: one-turn with the fixed prompt (prompt unset): the "
                             "stage then knows the criteria it combines.")
        if not one_turn_fixed and (self.weights is not None or self.min_relevance != 3.0):
            raise InputError("weights and min_relevance shape the fixed one-turn prompt; with mode: two-turn or a "
                             "custom prompt the prompt itself sets them: leave them unset.")
        if self.weights is not None:
            unknown = set(self.weights) - set(CRITERIA)
            if unknown or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                                  for w in self.weights.values()):
                raise InputError(f"weights maps criteria among {', '.join(CRITERIA)} to numbers >= 0; got "
                                 f"{dict(self.weights)!r}.")
        for option in ("choice_batch_size", "batch_size", "top_n", "passage_words"):
            at_least_one(option, getattr(self, option))
        check_generation_options(self.max_new_tokens, self.temperature)
        check_generation_options(self.meta_max_new_tokens, self.temperature)

    # ------------------------------------------------------------------ prompts
    def criterion_weights(self) -> dict[str, float]:
        """Each criterion's weight (0.5 unless ``weights`` says otherwise)."""
        return {criterion: float((self.weights or {}).get(criterion, DEFAULT_WEIGHT)) for criterion in CRITERIA}

    def ranking_prompt(self) -> str:
        """The one-turn prompt: the reference's (its formula and threshold as the options say), ours
        for ``composite: stage``, or ``prompt``."""
        if self.prompt is not None:
            return self.prompt
        if self.composite == "stage":
            head = REBEL_ONE_TURN_PROMPT.partition("**Weighted Composite Score**")[0]
            return head.replace(REFERENCE_TASK, CRITERIA_TASK, 1) + CRITERIA_INSTRUCTIONS
        return (REBEL_ONE_TURN_PROMPT.replace(REFERENCE_FORMULA, formula(self.criterion_weights()))
                .replace(REFERENCE_THRESHOLD, f"Discard any document with Relevance < {self.min_relevance:g}."))

    def meta_conversation(self, question: str) -> Conversation:
        """The two-turn meta call: one user message, the meta-prompt with the query in ``{user_query}``."""
        meta = META_PROMPTS.get(self.meta_prompt, self.meta_prompt)
        return [{"role": "user", "content": meta.replace("{user_query}", question)}]

    def passage(self, item: Item) -> str:
        """The candidate as a document: ``title\\n\\ntext`` (the text alone without a title), whole
        or its first ``passage_words`` words."""
        title, body = title_and_body(item)
        text = f"{title}\n\n{body}" if title else body
        return text if self.passage_words is None else first_words(text, self.passage_words)

    def batch_conversation(self, model: VisionLanguageModel, template: str, question: str,
                           hits: Sequence[Hit]) -> Conversation:
        """One user message: ``template`` with the batch (``Document i:\\n...`` blank-line separated)
        in ``{context_str}`` and the question in ``{query_str}``. InputError when a picture cannot
        be loaded."""
        context: list[dict[str, Any]] = []
        for number, hit in enumerate(hits, start=1):
            context += [{"type": "text", "text": ("\n\n" if number > 1 else "") + f"Document {number}:\n"},
                        self.candidate_part(model, hit.item, self.passage(hit.item))]
        content = fill_slots(template, {"context_str": context, "query_str": [{"type": "text", "text": question}]})
        user = content[0]["text"] if len(content) == 1 and content[0]["type"] == "text" else content
        return [{"role": "user", "content": user}]

    # ----------------------------------------------------------------- ranking
    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        """(Two-turn: every query's meta call first, together.) Then every batch of every ranking,
        ``batch_size`` prompts per model call."""
        calls = self.model_calls(rankings)
        progress: list[RebelProgress] = []
        if calls.model is not None:
            progress = [self._progress(calls.model, query, ranking) for query, ranking in zip(queries, rankings,
                                                                                            strict=True)]
            asking = [row for row, entry in enumerate(progress) if entry.eligible]
            if self.mode == "two-turn":
                for rows in self._chunks(asking):
                    calls.ask(rows, self._write_prompts, [progress[row] for row in rows])
            jobs = [(row, number, progress[row].eligible[begin:begin + self.choice_batch_size]) for row in asking
                    for number, begin in enumerate(range(0, len(progress[row].eligible), self.choice_batch_size), 1)]
            for chunk in self._chunks(jobs):
                chunk = [job for job in chunk if job[0] not in calls.lost]
                calls.ask({row for row, _, _ in chunk}, self._rank, progress, chunk)
        return calls.results(lambda row: progress[row].result(self.name, self.top_n))

    def _chunks(self, jobs: list[Any]) -> list[list[Any]]:
        size = self.batch_size or max(1, len(jobs))
        return [jobs[begin:begin + size] for begin in range(0, len(jobs), size)]

    def _progress(self, model: VisionLanguageModel, query: Query, ranking: Ranking) -> RebelProgress:
        eligible, unshown = showable_head(self, model, ranking)
        skipped = dict.fromkeys(unshown, "not asked: no text to show; placed after the listed candidates")
        template = self.ranking_prompt() if self.mode == "one-turn" else ""
        return RebelProgress(ranking, self.question(query), eligible, skipped, template)

    def _write_prompts(self, model: VisionLanguageModel, progress: list[RebelProgress]) -> None:
        """The two-turn meta call of each ranking (one ``generate``): its written ranking prompt."""
        generations = model.generate([self.meta_conversation(entry.question) for entry in progress],
                                     max_new_tokens=self.meta_max_new_tokens, temperature=self.temperature)
        for entry, generation in zip(progress, generations, strict=True):
            pieces = _THINK_END.split(generation.text)
            written = pieces[-1].lstrip() if len(pieces) > 1 else generation.text  # as written, less any thinking
            if not written.strip():
                entry.template = REBEL_ONE_TURN_PROMPT
                entry.note(entry.eligible, "the meta call wrote no prompt; ranked with the one-turn prompt")
            elif "{context_str}" not in written:
                entry.template = written + SLOTS_TAIL
                entry.note(entry.eligible, "the written prompt had no {context_str} slot; the documents and the "
                                           "question were put after it")
            else:
                entry.template = written
            entry.explanations.append(entry.template)

    def _rank(self, model: VisionLanguageModel, progress: list[RebelProgress],
              jobs: list[tuple[int, int, list[int]]]) -> None:
        """One ``generate`` over these batches (row, batch number, head positions); their answers
        applied. A batch that cannot be shown (a picture that does not load) is not asked, noted."""
        conversations, asked = [], []
        for row, number, positions in jobs:
            entry = progress[row]
            hits = [entry.ranking.hits[position] for position in positions]
            try:
                conversations.append(self.batch_conversation(model, entry.template, entry.question, hits))
            except (InputError, OSError) as error:
                entry.note(positions, f"batch {number}: not asked: {error}; placed after the listed candidates")
                entry.explanations.append("")
                continue
            asked.append((entry, number, positions))
        if not conversations:
            return
        generations = model.generate(conversations, max_new_tokens=self.max_new_tokens, temperature=self.temperature)
        for (entry, number, positions), generation in zip(asked, generations, strict=True):
            entry.explanations.append(generation.text)
            self._apply(entry, number, positions, parse_rebel_answer(generation.text, len(positions),
                                                                    self.integer_scores))

    def _apply(self, entry: RebelProgress, number: int, positions: list[int], answer: RebelAnswer) -> None:
        """One batch's answer: its listed candidates scored (``composite: stage``: computed, those
        below ``min_relevance`` moved after), the others noted."""
        label = f"batch {number}"
        for index, problem in answer.problems:
            entry.note(positions if index is None else [positions[index]], f"{label}: {problem}")
        if answer.failure is not None:
            entry.note(positions, f"{label}: answer not parsed: {answer.failure}; placed after the listed candidates")
            return
        weights = self.criterion_weights()
        listed = set()
        for item in answer.listed:
            position = positions[item.index]
            listed.add(position)
            if self.composite == "model":
                entry.listed.append((position, item.relevance))
                continue
            missing = [criterion for criterion in CRITERIA if criterion not in item.criteria]
            if missing:
                entry.note([position], f"{label}: no {', '.join(missing)} score; counted 0")
            if item.relevance < self.min_relevance:
                entry.note([position], f"{label}: relevance {item.relevance:g} below {self.min_relevance:g}, which "
                                       "REBEL drops; placed after the listed candidates")
                continue
            entry.listed.append((position, item.relevance + sum(weights[criterion] * item.criteria.get(criterion, 0.0)
                                                                for criterion in CRITERIA)))
        why = " (REBEL's prompts leave out relevance below 3)" if self.composite == "model" else ""
        entry.note([position for position in positions if position not in listed],
                   f"{label}: not listed by the model{why}; placed after the listed candidates")
