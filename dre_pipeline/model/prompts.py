"""Graph-word prompts, assembled token by token.

As in the paper's case study: the task and the candidate class names, then the node's
words per view ("1-hop information being w1 w2 ...; 2-hop ..."), then the node's text
where asked, then the answer. Everything up to the node-specific part is the *shared
prefix*, identical for every node, computed once per batch by the LLM (see
:mod:`dre_pipeline.model.predictor`).

Code words are placed by token id, never re-tokenized: each code is one vocabulary
token, so its position in the prompt is known, which the joint pass needs to put the
GNN's straight-through embeddings there.
"""

from dataclasses import dataclass, field

PLACEHOLDER = "\x00"  # marks where the node part goes inside the chat template


def instruction(class_names: list, num_views: int, use_text: bool) -> str:
    """The task; ``num_views`` 0 is a prompt of text alone (the bench's text-only row)."""
    hops = ", ".join(f"{t}-hop" for t in range(1, num_views + 1))
    parts = ([f"words that summarise its {hops} graph neighbourhood"] if num_views else []) + (
        ["its own text"] if use_text else [])
    return (
        f"Classify the node into one of these categories: {', '.join(class_names)}. "
        f"It is described by {', then by '.join(parts)}. "
        "Answer with the category only."
    )


@dataclass
class PromptTemplate:
    prefix_ids: list  # shared by every node
    view_ids: list  # per view, the tokens before its words ("1-hop information being")
    text_ids: list  # tokens before the node's text
    close_ids: list  # end of the user turn, start of the answer
    answer_ids: list  # per class, its answer tokens
    instruction: str = ""
    first_token_unique: bool = field(init=False)

    def __post_init__(self):
        firsts = [ids[0] for ids in self.answer_ids]
        self.first_token_unique = len(set(firsts)) == len(firsts)


def build_template(tokenizer, class_names: list, num_views: int, use_text: bool) -> PromptTemplate:
    task = instruction(class_names, num_views, use_text)
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": task}, {"role": "user", "content": PLACEHOLDER}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before, after = rendered.split(PLACEHOLDER)
    else:
        before, after = f"{tokenizer.bos_token or ''}{task}\n", "\nAnswer:"

    def ids(text: str) -> list:
        return tokenizer(text, add_special_tokens=False).input_ids

    return PromptTemplate(
        prefix_ids=ids(before),
        view_ids=[ids(f"{'; ' if t > 1 else ''}{t}-hop information being") for t in range(1, num_views + 1)],
        text_ids=ids(". Its own text:" if num_views else "Its own text:"),
        close_ids=ids(after),
        # A leading space makes each name start with a word token, like the code words.
        answer_ids=[ids(f" {name}") for name in class_names],
        instruction=task,
    )


def node_text(title: str, rest: str) -> str:
    """A node's text as the prompt carries it, in its own word order: its title first, each part named, where
    the graph gives titles; the text as it is otherwise. The leading space makes the first word a word token,
    as it is after "text:" in running prose."""
    return f" Title: {title}. Abstract: {rest}" if title else f" {rest}"


def node_suffix(template: PromptTemplate, view_token_ids: list, text_ids: list = ()) -> tuple:
    """The node-specific tokens after the shared prefix, and where its code words sit.

    Args:
        view_token_ids: per view, the K vocabulary ids of the node's code words.
        text_ids: the node's (already truncated) text tokens, or empty.
    Returns:
        ``(ids, code_positions)``; ``code_positions[t]`` are the K indices of view t's words in ``ids``.
    """
    ids, positions = [], []
    for lead, words in zip(template.view_ids, view_token_ids):
        ids += lead
        positions.append(list(range(len(ids), len(ids) + len(words))))
        ids += list(words)
    if len(text_ids):
        ids += template.text_ids + list(text_ids)
    return ids + template.close_ids, positions


def render(tokenizer, template: PromptTemplate, suffix_ids: list) -> str:
    """The prompt as text, for people (``explain``)."""
    return tokenizer.decode(template.prefix_ids + list(suffix_ids))
