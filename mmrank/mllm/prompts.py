"""Prompt texts the MLLM rerankers send, kept in one place so they can be read and compared.

Templates are ``str.format`` strings. ``{answer}`` stands for the answer instruction built from the
reranker's choice words by :func:`answer_instruction` ("Answer 'Yes' or 'No'.").
"""

from __future__ import annotations

from collections.abc import Sequence

# Pointwise yes/no relevance (RagLLaVA, "MLLM Is a Strong Reranker"): one sentence per line; the
# candidate image comes before this text in the user message.
POINTWISE_CAPTION_TEMPLATE = (
    "Image Caption: {caption}\n"
    "Question: {question}\n"
    "Based on the image and its caption, is the image relevant to the question? {answer}"
)
POINTWISE_PLAIN_TEMPLATE = "Question: {question}\nIs this image relevant to the question? {answer}"
# A text-only candidate (no image): the passage stands where the image would be.
POINTWISE_PASSAGE_TEMPLATE = (
    "Passage: {passage}\n"
    "Question: {question}\n"
    "Is this passage relevant to the question? {answer}"
)


def answer_instruction(choices: Sequence[str]) -> str:
    """``Answer 'Yes' or 'No'.`` for ("Yes", "No"); ``Answer 'A', 'B' or 'C'.`` for three words."""
    quoted = [f"'{choice}'" for choice in choices]
    if len(quoted) == 1:
        return f"Answer {quoted[0]}."
    return f"Answer {', '.join(quoted[:-1])} or {quoted[-1]}."

# Reasoning listwise reranking of pages (MM-R5, Xu et al. 2025). The wording is the authors' own, from
# their inference example (github.com/i2vec/MM-R5, examples/reranker.py), kept character for
# character, the missing space before "For example" included: it is the prompt the model was tuned
# on. The user message is REASONING_TEMPLATE, then for each page REASONING_IMAGE_LABEL and the page.
REASONING_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think><answer> answer here "
    "</answer>"
)
REASONING_TEMPLATE = (
    "Please rank the following images according to their relevance to the question. Provide your "
    "response in the format: <think>your reasoning process here</think><answer>[image_id_1, "
    "image_id_2, ...]</answer> where the numbers in the list represent the ranking order of images'id "
    "from most to least relevant. Before outputting the answer, you need to analyze each image and "
    "provide your analysis process.For example: <think>Image 1 shows the most relevant content "
    "because...</think><answer>[id_most_relevant, id_second_relevant, ...]</answer>"
    "\nThe question is: {question}"
    "\n\nThere are {count} images, id from 1 to {count}, Image ID to image mapping:\n"
)
REASONING_IMAGE_LABEL = "\nImage {index}: "

# Composed image retrieval (SQUARE, Wu et al. 2025). These wordings are ours (the paper's exact
# prompts are not reproduced here); both are parameters of their stages.
# SQAF: the user message is the reference image, then this text.
TARGET_CAPTION_PROMPT = (
    "The image above is a reference image. A user wants an image like it, changed as follows: "
    "\"{modification}\"\n"
    "Write one concise sentence describing the image the user wants: keep everything the request "
    "does not change and apply what it does. Describe only that image; do not mention the "
    "reference image or the request. Answer with the sentence only."
)
# EBR: the user message is GRID_REFERENCE_LABEL, the reference image, GRID_CANDIDATES_LABEL, the grid,
# then GRID_COMPOSED_TEMPLATE (or, for a text-only query, the grid then GRID_TEXT_TEMPLATE).
GRID_REFERENCE_LABEL = "Reference image:"
GRID_CANDIDATES_LABEL = "Candidate images, each marked with its number in the top-left corner:"
GRID_COMPOSED_TEMPLATE = (
    "The user wants an image like the reference image, changed as follows: \"{request}\"\n"
    "The second image is a grid of {count} candidate images numbered 1 to {count}. Rank all {count} "
    "candidates from the best to the worst match for the image the user wants. Answer with JSON "
    "only, in the form {{\"ranking\": [{example}]}}, listing every number from 1 to {count} once."
)
GRID_TEXT_TEMPLATE = (
    "The user is looking for: \"{request}\"\n"
    "The image is a grid of {count} candidate images numbered 1 to {count}. Rank all {count} "
    "candidates from the best to the worst match. Answer with JSON only, in the form "
    "{{\"ranking\": [{example}]}}, listing every number from 1 to {count} once."
)
# The assistant's answer is primed with this, so that the first generated token is a number.
GRID_ANSWER_PREFIX = '{"ranking": ['
