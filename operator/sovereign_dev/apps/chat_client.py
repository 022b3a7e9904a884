"""A stack application that asks its model a question and shows the answer (stdlib only).

It is what an application of a SovereignStack looks like from the inside: it knows a model only
by the logical name and URL the operator puts in its environment (``SOVEREIGN_MODEL_<NAME>_URL``
and ``SOVEREIGN_MODEL_<NAME>_NAME``, see ``sovereign.render.application``) and calls that
OpenAI-compatible endpoint, whatever model or engine serves it. It serves, on ``PORT`` (8080):

* ``GET /ask?q=<question>``: asks the model, answers ``{"model", "servedBy", "answer", "seconds"}``
  (502 with ``error`` and the endpoint when the model does not answer);
* ``GET /healthz``: 200 once started (it does not depend on the model).

Every answer is also logged as one line, ``answer model=<name> served_by=<id> text=<json>``;
with ``ASK_EVERY_SECONDS`` > 0 it asks ``ASK_QUESTION`` at that period by itself, so its log shows
whether the application gets completions. Writes nothing to disk (read-only root filesystems).
``CHAT_MODEL`` picks the model when the application is given several. Packed into the
``chat-client`` image by ``sovereign_dev.images``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DEFAULT_QUESTION = "Say hello in one short sentence."
URL_VARIABLE = re.compile(r"^SOVEREIGN_MODEL_(\w+)_URL$")


class ConfigError(ValueError):
    """The environment names no model this client can use; the message says which variables to set."""


@dataclass(frozen=True)
class Model:
    """The model as the application knows it: its logical name and its OpenAI-compatible base URL."""

    name: str
    url: str


@dataclass(frozen=True)
class Answer:
    model: str
    served_by: str
    text: str
    seconds: float


def model_from_env(env: Mapping[str, str]) -> Model:
    """The model to call, from the variables the operator injects (``CHAT_MODEL`` picks one of several)."""
    models = {
        env.get(f"SOVEREIGN_MODEL_{match.group(1)}_NAME", match.group(1).lower()): value
        for key, value in env.items() if (match := URL_VARIABLE.match(key))
    }
    wanted = env.get("CHAT_MODEL")
    if wanted:
        if wanted not in models:
            raise ConfigError(f"CHAT_MODEL={wanted} but the environment gives only the models {sorted(models)}: "
                              "list the model in the application's `models` of the stack")
        return Model(name=wanted, url=models[wanted])
    if len(models) != 1:
        raise ConfigError(f"the environment gives the models {sorted(models)}: list exactly one model in the "
                          "application's `models`, or set CHAT_MODEL to the one to call")
    ((name, url),) = models.items()
    return Model(name=name, url=url)


def ask(model: Model, question: str, *, max_tokens: int = 32, timeout: float = 60) -> Answer:
    """One chat completion of ``question`` from ``model``, by its logical name."""
    body = json.dumps({
        "model": model.name,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
    }).encode()
    request = urllib.request.Request(f"{model.url.rstrip('/')}/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.load(response)
    return Answer(model=model.name, served_by=str(reply.get("model", "")),
                  text=reply["choices"][0]["message"]["content"], seconds=round(time.monotonic() - started, 3))


def log_answer(answer: Answer) -> None:
    print(f"answer model={answer.model} served_by={answer.served_by} seconds={answer.seconds} "
          f"text={json.dumps(answer.text)}", flush=True)


def make_handler(model: Model, *, max_tokens: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self.reply(200, {"status": "ok", "model": model.name})
            elif url.path == "/ask":
                question = (parse_qs(url.query).get("q") or [DEFAULT_QUESTION])[0]
                try:
                    answer = ask(model, question, max_tokens=max_tokens)
                except (OSError, ValueError, KeyError, IndexError) as err:
                    print(f"error model={model.name} url={model.url} error={err!r}", flush=True)
                    self.reply(502, {"model": model.name, "endpoint": model.url, "error": str(err)})
                    return
                log_answer(answer)
                self.reply(200, {"model": answer.model, "servedBy": answer.served_by, "answer": answer.text,
                                 "seconds": answer.seconds})
            else:
                self.reply(404, {"error": f"no {url.path}: use /ask?q=<question> or /healthz"})

        def reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
            # One line per answer is the log's job; access lines would drown it.
            pass

    return Handler


def ask_periodically(model: Model, *, question: str, every: float, max_tokens: int) -> None:
    while True:
        try:
            log_answer(ask(model, question, max_tokens=max_tokens))
        except (OSError, ValueError, KeyError, IndexError) as err:
            print(f"error model={model.name} url={model.url} error={err!r}", flush=True)
        time.sleep(every)


def main(env: Mapping[str, str] = os.environ) -> int:
    try:
        model = model_from_env(env)
        port = int(env.get("PORT", "8080"))
        every = float(env.get("ASK_EVERY_SECONDS", "0"))
        max_tokens = int(env.get("MAX_TOKENS", "32"))
    except ConfigError as err:
        print(f"chat-client: {err}", file=sys.stderr, flush=True)
        return 2
    except ValueError as err:
        print(f"chat-client: PORT, ASK_EVERY_SECONDS and MAX_TOKENS must be numbers: {err}", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer(("0.0.0.0", port), make_handler(model, max_tokens=max_tokens))
    print(f"chat-client: model {model.name} at {model.url}; serving /ask on port {port}", flush=True)
    if every > 0:
        threading.Thread(target=ask_periodically, daemon=True, kwargs={
            "model": model, "question": env.get("ASK_QUESTION", DEFAULT_QUESTION), "every": every,
            "max_tokens": max_tokens}).start()
    # As a container's PID 1 the process gets no default action for SIGTERM: stop when asked.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
