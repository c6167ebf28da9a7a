"""Data path: templates, label masks, mismatch detection, truncation, RGB conversion, image-token count, sampler."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, trainers
from transformers import PreTrainedTokenizerFast

from schemas.llava import IMAGE_PLACEHOLDER
from tests.test_training_support import tiny_base
from training.config import load_config
from training.data import (
    IGNORE_INDEX,
    Collator,
    ImagePathError,
    LlavaJsonDataset,
    TokenizationMismatch,
    expand_and_truncate,
    load_rgb,
    resolve_image,
    tokenize_segments,
)
from training.model import build_base_model, build_processor, num_image_tokens
from training.sampler import ModalityLengthGroupedSampler
from training.templates import VICUNA_SYSTEM, Segment
from training.tiny import write_tiny_config


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    vision, llm = tiny_base()
    path = write_tiny_config(tmp_path_factory.mktemp("cfg") / "tiny.yaml", vision, llm)
    return load_config(path)


@pytest.fixture(scope="module")
def processor(tiny_cfg):
    return build_processor(tiny_cfg, patch_size=8)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "rgb.png")
    Image.new("L", (40, 40), 90).save(tmp_path / "gray.png")
    Image.new("CMYK", (40, 48), (0, 120, 200, 10)).save(tmp_path / "cmyk.jpg")
    return tmp_path


def _runs(labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return [*runs, current] if current else runs


MULTI_TURN = {
    "id": "sample-7",
    "image": "rgb.png",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat is on the table?"},
        {"from": "gpt", "value": "A red apple and two forks."},
        {"from": "human", "value": "How many forks?"},
        {"from": "gpt", "value": "Two."},
    ],
}


@pytest.fixture(scope="module")
def llama_style_processor(tiny_cfg, tmp_path_factory):
    """A Vicuna-style tokenizer: a sentencepiece BPE `tokenizer.model` (byte fallback, no pad), trained offline
    and loaded the way Vicuna's is (transformers converts the .model file)."""
    import sentencepiece

    corpus = [VICUNA_SYSTEM, "USER: What is on the table? ASSISTANT: A red apple and two forks.", "How many forks?"]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 20), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("vicuna-style-tokenizer")
    (path / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    processor = build_processor(tiny_cfg.model_copy(update={"llm": str(path)}), patch_size=8)
    assert "▁A" in processor.tokenizer.tokenize("ASSISTANT: A red")  # word-initial "▁" pieces, as in Vicuna
    return processor


@pytest.mark.parametrize("tokenizer_style", ["byte_level_bpe", "vicuna_sentencepiece"])
def test_vicuna_labels_decode_to_exactly_the_assistant_replies(
    tokenizer_style, processor, llama_style_processor, image_root
):
    processor = {"byte_level_bpe": processor, "vicuna_sentencepiece": llama_style_processor}[tokenizer_style]
    dataset = LlavaJsonDataset([MULTI_TURN], image_root, processor, "vicuna_v1", 256)
    example = dataset[0]
    tokenizer = processor.tokenizer
    decoded = [tokenizer.decode(run).strip() for run in _runs(example.labels)]
    assert decoded == ["A red apple and two forks.</s>", "Two.</s>"]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    image_positions = [i for i, t in enumerate(example.input_ids) if t == image_id]
    assert len(image_positions) == num_image_tokens(processor) == 16
    assert all(example.labels[i] == IGNORE_INDEX for i in image_positions)
    text = tokenizer.decode([t for t in example.input_ids if t != image_id])
    assert "USER: \nWhat is on the table? ASSISTANT: A red apple" in text
    assert example.pixel_values.shape == (3, 32, 32)


def test_saved_chat_template_renders_the_training_format(processor, tmp_path):
    from transformers import AutoProcessor

    from training.templates import vicuna_v1

    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    turns = MULTI_TURN["conversations"]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is on the table?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": turns[1]["value"]}]},
        {"role": "user", "content": [{"type": "text", "text": turns[2]["value"]}]},
    ]
    prompt = reloaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    trained = "".join(segment.text for segment in vicuna_v1(turns, "s", "</s>"))
    assert prompt == trained.removesuffix(" Two.</s>")
    assert prompt.endswith("USER: How many forks? ASSISTANT:")


def test_plain_template_labels_only_the_caption_and_newline(processor, image_root):
    record = {
        "id": "cap-1",
        "image": "gray.png",
        "conversations": [{"from": "human", "value": "Describe.\n<image>"}, {"from": "gpt", "value": "A dog."}],
    }
    example = LlavaJsonDataset([record], image_root, processor, "plain", 256)[0]
    assert [processor.tokenizer.decode(run) for run in _runs(example.labels)] == ["A dog.\n"]
    # plain drops the instruction: bos, the image tokens, then the caption
    assert len(example.input_ids) == 1 + 16 + len(_runs(example.labels)[0])


def test_image_placeholder_is_added_or_moved_first_and_rejected_when_doubled(processor, image_root):
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    missing = {"id": "no-tag", "image": "rgb.png", "conversations": MULTI_TURN["conversations"][2:]}
    trailing = json.loads(json.dumps(MULTI_TURN))
    trailing["conversations"][0]["value"] = "What is on the table?\n<image>"
    examples = LlavaJsonDataset([missing, trailing, MULTI_TURN], image_root, processor, "vicuna_v1", 256)
    assert examples[0].input_ids.count(image_id) == 16
    assert examples[1].input_ids == examples[2].input_ids  # "<image>" moved to the front, as LLaVA does
    doubled = json.loads(json.dumps(MULTI_TURN))
    doubled["conversations"][2]["value"] = "<image> again?"
    with pytest.raises(ValueError, match="sample-7"):
        LlavaJsonDataset([doubled], image_root, processor, "vicuna_v1", 256)[0]


def test_tokenizer_merging_across_a_reply_boundary_raises_naming_the_sample():
    # A BPE without pre-tokenizer learns merges such as ": Y" that straddle "ASSISTANT:" | " Yes".
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.train_from_iterator(
        ["USER: ok? ASSISTANT: Yes</s>"] * 50, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"])
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    segments = [Segment("USER: ok? ASSISTANT:", False), Segment(" Yes</s>", True)]
    with pytest.raises(TokenizationMismatch, match="sample llava-42"):
        tokenize_segments(segments, tokenizer, "llava-42")


def test_truncation_cuts_text_never_image_tokens():
    ids = [1, 9, 5, 9, 9, 9, 9, 9]  # bos, text, <image>=5, then text
    labels = [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 9, 9, 9, 9, 9]
    out_ids, out_labels = expand_and_truncate(ids, labels, 5, 4, max_length=8, sample_id="s")
    assert out_ids == [1, 9, 5, 5, 5, 5, 9, 9] and out_labels[:6] == [IGNORE_INDEX] * 6
    with pytest.raises(ValueError, match="sample s: its 4 image tokens end at position 6"):
        expand_and_truncate(ids, labels, 5, 4, max_length=5, sample_id="s")


def test_grayscale_and_cmyk_images_become_rgb_batches(processor, image_root):
    assert load_rgb(image_root / "gray.png").mode == "RGB"
    assert load_rgb(image_root / "cmyk.jpg").mode == "RGB"
    records = [{**MULTI_TURN, "id": name, "image": name} for name in ("gray.png", "cmyk.jpg")] + [
        {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    ]
    dataset = LlavaJsonDataset(records, image_root, processor, "vicuna_v1", 256)
    batch = Collator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][2].sum() < batch["attention_mask"][0].sum()  # text-only row is padded
    with pytest.raises(FileNotFoundError, match="image_root"):
        load_rgb(image_root / "missing.jpg")


def test_processor_image_tokens_equal_model_features(tiny_cfg, image_root):
    model, processor = build_base_model(tiny_cfg)
    inputs = processor(images=Image.open(image_root / "rgb.png"), text="USER: <image>\nHi", return_tensors="pt")
    inserted = int((inputs["input_ids"] == model.config.image_token_id).sum())
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
    assert inserted == features.shape[0] == num_image_tokens(processor) == model.config.image_seq_length
    assert model.config.vision_feature_layer == -2 and model.config.vision_feature_select_strategy == "default"
    assert processor.tokenizer.pad_token is not None and processor.tokenizer.pad_token != processor.tokenizer.eos_token


def test_sampler_groups_by_modality_and_is_reproducible():
    lengths = [10, -3, 40, 12, -50, 7, 33, -8, 21, 15, -2]
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=2, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    full_batches = [order[i : i + 2] for i in range(0, len(order) - 3, 2)]  # last chunk holds mixed leftovers
    for batch in full_batches:
        assert len({lengths[i] > 0 for i in batch}) == 1, batch
    assert list(ModalityLengthGroupedSampler(lengths, 2, seed=3)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_config_files_and_overrides(tmp_path):
    (tmp_path / "run.toml").write_text('projector = "mlp2x_gelu"\n[stage2]\nmethod = "lora"\nlora_r = 8\n')
    cfg = load_config(tmp_path / "run.toml", ["stage2.learning_rate=2e-4", "output_dir=/x"])
    stage2 = cfg.stage("stage2")
    assert (cfg.projector, stage2.method, stage2.lora_r, stage2.learning_rate) == ("mlp2x_gelu", "lora", 8, 2e-4)
    assert stage2.init_from == Path("/x/stage1/final") and stage2.template == "vicuna_v1"
    stage1 = cfg.stage("stage1")
    assert (stage1.learning_rate, stage1.batch_size, stage1.train, stage1.template) == (
        2e-3,
        128,
        ("projector",),
        "plain",
    )
    with pytest.raises(ValueError, match="lora_rank"):
        load_config(None, ["stage2.lora_rank=8"])


def test_vision_tower_loads_from_a_full_clip_checkpoint(tiny_cfg, tmp_path):
    # openai/clip-vit-large-patch14 (the paper's default) is a full CLIPModel: text tower included.
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    clip = CLIPModel(
        CLIPConfig(text_config=text, vision_config={**vision, "image_size": 32, "patch_size": 8}, projection_dim=16)
    )
    clip.save_pretrained(tmp_path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    model, processor = build_base_model(tiny_cfg.model_copy(update={"vision_model": str(tmp_path)}))
    loaded = model.model.vision_tower.encoder.layers[1].self_attn.q_proj.weight
    torch.testing.assert_close(loaded, clip.vision_model.encoder.layers[1].self_attn.q_proj.weight, rtol=0, atol=0)
    assert num_image_tokens(processor) == model.config.image_seq_length == 16


@pytest.mark.parametrize("image", ["../../../../etc/passwd", "/etc/passwd", "sub/../../outside.png",
                                   "..\\x.png", "C:/x.png"])
def test_an_image_path_leaving_image_root_is_refused_naming_the_record(processor, image_root, image):
    # issue 13, item 4: training never opens a file outside image_root, whatever the json says
    outside = image_root.parent / "outside.png"
    Image.new("RGB", (40, 40)).save(outside)
    records = [MULTI_TURN, {**MULTI_TURN, "id": "evil-1", "image": image}]
    with pytest.raises(ImagePathError, match=r"sample evil-1: image path .* leaves image_root"):
        LlavaJsonDataset(records, image_root, processor, "vicuna_v1", 256)
    with pytest.raises(ImagePathError, match="evil-1"):
        resolve_image(image_root, image, "evil-1")
    assert resolve_image(image_root, "rgb.png", "ok") == image_root.resolve() / "rgb.png"
    assert resolve_image(image_root, "a/./rgb.png", "ok") == image_root.resolve() / "a" / "rgb.png"
