"""Chat with a checkpoint about an image: one answer to `prompt`, or a multi-turn session on a terminal.

The conversation is re-rendered each turn in the checkpoint's trained template (history included), and the reply
streams as it is generated. One image per conversation, as in training: `/image PATH` starts a new conversation
about another image, `/reset` starts over with the same image, `/quit` (or end of input) leaves.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from training.inference import Conversation, GenerationParams, TransformersBackend

HELP = "Commands: /image PATH (a new conversation about another image), /reset (start over), /quit."
USER_PROMPT = "USER: "
ASSISTANT_PREFIX = "ASSISTANT: "


def printable(text: str) -> str:
    """`text` safe to print on a terminal: control characters (a reply is untrusted text; an escape sequence could
    rewrite the screen) become U+FFFD, newlines and tabs stay."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else "\ufffd" for c in text)


def reply(backend: TransformersBackend, conversation: Conversation, params: GenerationParams, out: TextIO) -> str:
    """Stream the reply to `conversation` onto `out` as it is generated; returns the whole reply (as generated)."""
    pieces = []
    for piece in backend.stream(conversation, params):
        out.write(printable(piece))
        out.flush()
        pieces.append(piece)
    out.write("\n")
    out.flush()
    return "".join(pieces).strip()


def check_image(path: Path) -> Path:
    """`path` if it is an image file that opens, else a one-line error naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image {path} cannot be read as an image ({exc})") from None
    return path


def chat(
    backend: TransformersBackend,
    image: Path,
    params: GenerationParams,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> None:
    """The interactive session: read a line, answer it with the whole conversation so far, until /quit or EOF."""
    image = check_image(image)
    out.write(f"Chatting with {backend.default_model_id} ({backend.template} template) about {image}. {HELP}\n")
    history: list[dict[str, str]] = []
    while True:
        try:
            line = read(USER_PROMPT).strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return
        if not line:
            continue
        if line == "/quit":
            return
        if line == "/reset":
            history = []
            out.write(f"(conversation cleared; still about {image})\n")
            continue
        if line == "/image" or line.startswith("/image "):
            try:
                image = check_image(Path(line[len("/image"):].strip() or "."))
            except (FileNotFoundError, ValueError) as exc:
                out.write(f"error: {exc}\n")
                continue
            history = []
            out.write(f"(new conversation about {image})\n")
            continue
        if line.startswith("/"):
            out.write(f"unknown command {line.split()[0]}. {HELP}\n")
            continue
        turns = (*history, {"from": "human", "value": line})
        out.write(ASSISTANT_PREFIX)
        try:
            answer = reply(backend, Conversation(turns, image, "chat"), params, out)
        except KeyboardInterrupt:  # Ctrl-C stops a reply, not the session
            out.write("\n(reply interrupted; the question is left out of the conversation)\n")
            continue
        history = [*turns, {"from": "gpt", "value": answer}]


def run_chat(checkpoint: Path, image: Path, prompt: str | None, params: GenerationParams) -> None:
    """`vistune chat`: load the checkpoint, then answer `prompt` once, or chat until /quit."""
    image = check_image(image)
    backend = TransformersBackend(checkpoint)
    if prompt is not None:
        reply(backend, Conversation.question(prompt, image, "prompt"), params, sys.stdout)
        return
    chat(backend, image, params)
