"""What a recipe's generation costs, for every priced model, before any COCO download (`vistune estimate --recipe`).

The recipe states how many images its split has; its mix turns that into requests per sample type.
Prompt tokens are measured, not guessed: real prompts are rendered, with the recipe's prompt set and
format, for a sample of images (the user's database when it holds images, else the bundled sample COCO),
and their mean per type is scaled up. The assumptions that remain are stated with the figures
(`RecipeEstimate.assumptions`):
- completion tokens per request = the mean length of the prompt set's own few-shot answers for the type
  (the model is shown them as the ideal answer, so they are what it imitates);
- one request per (image, type): regenerations of rejected answers are not counted;
- cached tokens: each type's shared prefix (system + few-shots), rounded down to the provider's 128-token cache
  blocks when it has at least 1024 tokens, for every request after a type's first, on models whose
  `cached_input` price is below `input` (the price table's way of saying the provider caches prompts);
- batch = `batch_discount` x the online price, cache included.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from schemas.flow_params import SAMPLE_COCO
from schemas.recipes import Recipe
from schemas.samples import SAMPLE_TYPES
from tasks import store
from tasks.llm import pricing
from tasks.llm.estimate import batch_discount, priced_models
from tasks.recipes import prompt_set

SAMPLE_IMAGES = 100  # images of the user's database whose prompts are rendered (the first by id)
CACHE_MIN_TOKENS = 1024  # OpenAI's prompt cache: prefixes of at least this many tokens ...
CACHE_BLOCK_TOKENS = 128  # ... cached in blocks of this many


@dataclass
class ModelEstimate:
    """One priced model's figures for the whole recipe."""

    model: str
    encoding: str  # the tokenizer the counts used
    approximate: bool  # not the model's own tokenizer (offline, cl100k stands in for o200k: tasks/prompting/tokens.py)
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    online_usd: float
    batch_usd: float


@dataclass
class RecipeEstimate:
    """A recipe's requests and their cost for every model of the price table, with the assumptions stated."""

    recipe: str
    images: int
    output_format: str
    prompt_set: str
    requests_by_type: dict[str, int]
    sample: str  # where the rendered prompts came from
    completion_by_type: dict[str, int]  # assumed completion tokens per request (the recipe's model's tokenizer)
    prompt_by_type: dict[str, int]  # measured mean prompt tokens per request (the recipe's model's tokenizer)
    tokens_model: str  # the model whose tokenizer counted the per-type figures (the recipe's, when priced)
    models: list[ModelEstimate] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)


def cacheable(prefix_tokens: int) -> int:
    """Tokens of a shared prefix the provider serves from its cache on a repeat request."""
    if prefix_tokens < CACHE_MIN_TOKENS:
        return 0
    return prefix_tokens // CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS


def _contexts(db: Path | None) -> tuple[list, str]:
    """Image contexts to render prompts for: the database's first images, else the bundled sample's."""
    from tasks.ingest.coco import ingest
    from tasks.prompting.prompts import load_contexts

    if db is not None and db.exists():
        with store.read(db) as con:
            ids = [r[0] for r in con.execute(
                "SELECT image_id FROM images ORDER BY image_id LIMIT ?", [SAMPLE_IMAGES]).fetchall()]
            if ids:
                return list(load_contexts(con, ids).values()), f"{len(ids)} images of {db}"
    with tempfile.TemporaryDirectory(prefix="vistune-estimate-") as tmp:
        sample_db = Path(tmp) / "sample.duckdb"
        for split in ("train2017",):
            ingest(SAMPLE_COCO, split, sample_db, check_images=False)
        with store.read(sample_db) as con:
            contexts = list(load_contexts(con).values())
    return contexts, f"the {len(contexts)} images of the bundled sample COCO (vistune ingest yours to measure them)"


def _own_encoding(model: str) -> bool:
    import tiktoken

    from tasks.prompting.tokens import encoding_name

    try:
        own = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return False
    return encoding_name(model).removesuffix("_offline") == own


def estimate_recipe(recipe: Recipe, *, images: int | None = None, db: Path | None = None) -> RecipeEstimate:
    """Requests, prompt / cached / completion tokens and dollars online and batch, for every priced model."""
    from tasks.prompting.prompts import build_messages, load_prompt_set, shared_prefix
    from tasks.prompting.tokens import REPLY_PRIMING, count_message_tokens, count_tokens, encoding_name

    n_images = images or recipe.coco.images
    output_format = recipe.generate.get("output_format", "structured")
    folder = prompt_set(recipe)
    types = recipe.generate.get("sample_types", list(SAMPLE_TYPES))
    requests = recipe.mix.counts(n_images) if recipe.mix is not None else dict.fromkeys(types, n_images)
    requests = {t: n for t, n in requests.items() if n}
    contexts, sample = _contexts(db)
    if not contexts:
        raise ValueError("no image to render a prompt for: the sample COCO and the database are empty")
    prompts = {t: [build_messages(ctx, t, output_format, folder)[0] for ctx in contexts] for t in requests}
    prefixes = {t: shared_prefix(t, output_format, folder) for t in requests}
    own_model = recipe.generate.get("model", "gpt-4o")
    result = RecipeEstimate(
        recipe=recipe.name, images=n_images, output_format=output_format,
        prompt_set=load_prompt_set(folder).name + (f" ({folder})" if folder else ""),
        requests_by_type=requests, sample=sample, completion_by_type={}, prompt_by_type={}, tokens_model="")
    models = priced_models()
    result.tokens_model = own_model if own_model in models else models[0]
    for model in models:
        prompt = cached = completion = 0
        caches = pricing.price(model).cached_input < pricing.price(model).input
        for t, n in requests.items():
            mean_prompt = sum(count_message_tokens(m, model) for m in prompts[t]) / len(prompts[t])
            answers = [m for m in prefixes[t] if m["role"] == "assistant"]
            # a few-shot answer as a completion: its content's tokens (no chat-format overhead)
            per_answer = sum(count_tokens(a["content"], model) for a in answers) / max(len(answers), 1)
            prefix = count_message_tokens(prefixes[t], model) - REPLY_PRIMING
            prompt += round(n * mean_prompt)
            completion += round(n * per_answer)
            cached += (n - 1) * cacheable(prefix) if caches else 0
            if model == result.tokens_model:
                result.prompt_by_type[t], result.completion_by_type[t] = round(mean_prompt), round(per_answer)
        result.models.append(ModelEstimate(
            model=model, encoding=encoding_name(model), approximate=not _own_encoding(model),
            requests=sum(requests.values()), prompt_tokens=prompt,
            cached_tokens=cached, completion_tokens=completion,
            online_usd=pricing.cost_usd(model, prompt, completion, cached),
            batch_usd=pricing.cost_usd(model, prompt, completion, cached, batch=True)))
    result.assumptions = [
        "completion tokens per request = the mean length of the prompt set's few-shot answers of the type",
        f"prompt tokens per request = the mean of the prompts rendered for {sample}",
        "one request per (image, type): regenerations of rejected answers come on top",
        f"cached = each type's shared prefix (system + few-shots) in {CACHE_BLOCK_TOKENS}-token blocks when it has "
        f">= {CACHE_MIN_TOKENS} tokens, for every request after the first, on models priced with a cache discount",
        f"batch = {batch_discount():g} x the online price, cache included",
    ]
    return result


def markdown_table(est: RecipeEstimate) -> str:
    """Tokens per request, then the per-model figures, as docs/REPRODUCE.md shows them (a test keeps the two equal)."""
    per_type = ", ".join(f"{t} {est.prompt_by_type[t]:,} prompt / {est.completion_by_type[t]:,} completion"
                         for t in est.requests_by_type)
    lines = [f"Tokens per request ({est.tokens_model}'s tokenizer): {per_type}.", "",
             "| model | requests | prompt tokens | cached tokens | completion tokens | online $ | batch $ |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {m.model} | {m.requests:,} | {m.prompt_tokens:,} | {m.cached_tokens:,} | {m.completion_tokens:,} | "
              f"{m.online_usd:,.0f} | {m.batch_usd:,.0f} |" for m in est.models]
    return "\n".join(lines) + "\n"
