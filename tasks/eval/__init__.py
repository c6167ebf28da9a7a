"""Evaluation the way the LLaVA paper does it: held-out images, questions, references, answers, a judge LLM.

Plain functions, no Prefect (the `evaluate` flow and `vistune eval` compose them):

- `sets.py`: `build_set` (held-out images of an ingested split; the engine writes the questions and the
  text-only reference answers) and `import_llava_bench` (LLaVA-Bench's question/context/answer files);
- `answers.py`: the model under test answers every question: a local checkpoint through
  `python -m training infer` in a subprocess, or an OpenAI-compatible vision endpoint through the engine;
- `judge.py`: the judge LLM scores reference and candidate side by side (optionally in both orders);
- `report.py`: relative score per category and overall with a bootstrap interval, per model.

Every LLM call (question, reference, openai answer, review) is a `requests` row sent by the engine
(`tasks/llm/engine.py`), with its own `kind` (`tasks/eval/parsing.py`) and a `sample_type` starting with
`schemas.eval.EVAL_SAMPLE_TYPE_PREFIX`, so validation and `slot_status` leave it alone. docs/EVALUATION.md
explains the method.
"""
