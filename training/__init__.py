"""LLaVA two-stage training on transformers' `LlavaForConditionalGeneration` (never imports Prefect).

Read in this order: `config.py` (one config model, stage defaults), `vision.py` (vision towers by
model_type), `preprocess.py` (resize / pad / crop), `model.py` (assemble or load the model and processor),
`templates.py` + `data.py` (json -> token ids, labels, pixels), `preflight.py` (check every record first),
`sampler.py`, `stages.py` (what trains),
`lora.py`, `loop.py` (the training loop), `checkpoint.py`, `metrics.py`, `merge.py`, `serving.py` (the
`linear` projector in a form vLLM loads). `tiny.py` builds tiny random base models for tests and the demo.
"""
