"""`vistune chat` on a pseudo-terminal (pexpect): two turns about an image, /image, /reset, /quit; and `--prompt`.

Each reply shown must be exactly what the model answers to the whole conversation so far, rendered in its trained
template (computed here in-process with the same backend): so the second turn proves the history is kept.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from tests.test_inference_support import inference_checkpoints, question_images
from training.chat import chat, printable
from training.inference import Conversation, GenerationParams, TransformersBackend

REPO = Path(__file__).resolve().parents[1]
PARAMS = GenerationParams(max_new_tokens=10)
TIMEOUT_S = 180  # loading torch + transformers on a busy 2-core host


def _vistune() -> list[str]:
    script = Path(sys.executable).with_name("vistune")  # the console script a user runs
    return [str(script)] if script.exists() else [sys.executable, "-c", "from flows.cli import main; main()"]


@pytest.fixture(scope="module")
def setup(coco_images: Path) -> tuple[Path, list[Path], TransformersBackend]:
    checkpoint = inference_checkpoints(coco_images)["full"]
    images = [coco_images / "train2017" / name for name in question_images(coco_images, 2)]
    return checkpoint, images, TransformersBackend(checkpoint)


def _expected(backend: TransformersBackend, turns: list[str], replies: list[str], image: Path) -> str:
    history: list[dict[str, str]] = []
    for question, answer in zip(turns[:-1], replies, strict=True):
        history += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    conversation = Conversation((*history, {"from": "human", "value": turns[-1]}), image)
    return backend.generate([conversation], PARAMS)[0].text


def _ask(child: pexpect.spawn, question: str) -> str:
    child.sendline(question)
    child.expect_exact("ASSISTANT: ")
    child.expect_exact("\r\nUSER: ")
    return child.before.replace("\r\n", "\n").strip()


def test_a_session_keeps_the_conversation_and_obeys_image_reset_quit(setup):
    checkpoint, (image, other), backend = setup
    argv = [*_vistune(), "chat", "--model", str(checkpoint), "--image", str(image), "--max-new-tokens", "10"]
    child = pexpect.spawn(argv[0], argv[1:], cwd=str(REPO), encoding="utf-8", timeout=TIMEOUT_S,
                          dimensions=(50, 400))
    try:
        child.expect_exact("USER: ")
        first, second = "What is in the image?", "Say it shorter."
        reply_1 = _expected(backend, [first], [], image)
        reply_2 = _expected(backend, [first, second], [reply_1], image)
        assert reply_2 != _expected(backend, [second], [], image), "pick questions whose history changes the reply"
        assert _ask(child, first) == printable(reply_1)
        assert _ask(child, second) == printable(reply_2)

        child.sendline(f"/image {other}")
        child.expect_exact(f"(new conversation about {other})")
        child.expect_exact("USER: ")
        other_reply = _expected(backend, [first], [], other)
        assert other_reply != reply_1
        assert _ask(child, first) == printable(other_reply)

        _ask(child, second)
        child.sendline("/reset")
        child.expect_exact("(conversation cleared")
        child.expect_exact("USER: ")
        assert _ask(child, first) == printable(other_reply)  # no history: the first turn again, same image

        child.sendline("/image /no/such/image.jpg")
        child.expect_exact("error: image /no/such/image.jpg not found")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_a_prompt_gets_one_answer_and_a_missing_image_one_error(setup, tmp_path):
    checkpoint, (image, _), backend = setup
    argv = [*_vistune(), "chat", "--model", str(checkpoint), "--image", str(image), "--max-new-tokens", "10",
            "--prompt", "What is in the image?"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == printable(_expected(backend, ["What is in the image?"], [], image))

    missing = subprocess.run([*argv[:-6], "--image", str(tmp_path / "gone.jpg")], cwd=REPO, capture_output=True,
                             text=True, timeout=TIMEOUT_S)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: image {tmp_path / 'gone.jpg'} not found"


class ScriptedBackend:
    """Streams 'reply N' for the Nth question; the question 'stop me' raises Ctrl-C in the middle of its reply."""

    default_model_id, template = "scripted", "vicuna_v1"

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], ...]] = []

    def stream(self, conversation, params):
        self.seen.append(conversation.turns)
        yield "reply "
        if conversation.turns[-1]["value"] == "stop me":
            raise KeyboardInterrupt
        yield str(len(self.seen))


def test_ctrl_c_stops_a_reply_and_leaves_it_out_of_the_conversation(coco_images):
    image = coco_images / "train2017" / question_images(coco_images, 1)[0]
    lines = iter(["first", "stop me", "second", "/quit"])
    out = io.StringIO()
    backend = ScriptedBackend()
    chat(backend, image, PARAMS, read=lambda prompt: next(lines), out=out)
    assert "ASSISTANT: reply \n(reply interrupted" in out.getvalue()
    assert [t["value"] for t in backend.seen[-1]] == ["first", "reply 1", "second"]
