"""Ask a stack's model one chat question by its logical name: what ``sovereign chat`` does.

``ask`` finds the SovereignStack that declares the model (in one namespace, or in every one),
checks from the stack's status that the model has a ready replica, then POSTs an OpenAI chat
completion to the model's Service through the apiserver's service proxy
(``Kube.post_to_service``), so it works on any cluster a kubeconfig reaches, with no port-forward.
The answer names the logical model and the model behind it (the stack's status says which: an
OpenAI server answers with the name it was asked for). Every failure a user can act on
is one ``ChatError`` subclass whose message says what to do. Called by ``cli.chat``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sovereign.api import ConditionType
from sovereign.kube import errors
from sovereign.kube.client import Kube
from sovereign.kube.resources import STACK
from sovereign.render.names import MODEL_PORT

#: Where OpenAI-compatible servers (vLLM, llama-server) take chat completions.
COMPLETIONS_PATH = "v1/chat/completions"


class ChatError(RuntimeError):
    """The question could not be answered; the message says why and what to do."""


class ModelUnknown(ChatError):
    """No stack declares a model of that name (or several do and the namespace must choose)."""


class ModelNotReady(ChatError):
    """The model exists but has no ready replica to answer."""


class NoAnswer(ChatError):
    """The model was asked but gave no usable answer (an error, a timeout, an empty reply)."""


@dataclass(frozen=True)
class ChatAnswer:
    namespace: str
    stack: str
    model: str
    served_by: str
    text: str
    seconds: float


def ask(kube: Kube, *, model: str, message: str, namespace: str | None = None,
        stack: str | None = None, max_tokens: int = 64, timeout: float = 60) -> ChatAnswer:
    """The model's answer to ``message``; ``ChatError`` when there is none (``KubeError`` when
    the cluster cannot be read at all)."""
    body = _find(kube, model=model, namespace=namespace, stack=stack)
    namespace, stack_name = body["metadata"]["namespace"], body["metadata"]["name"]
    status = next((m for m in (body.get("status") or {}).get("models") or [] if m.get("name") == model), {})
    ready = status.get("readyReplicas", 0)
    if not ready:
        raise ModelNotReady(
            f"model {model} of stack {namespace}/{stack_name} has no ready replica "
            f"({ready}/{status.get('replicas', 0)} ready){_models_condition(body)}; "
            f"watch it with `sovereign status {stack_name} -n {namespace} --watch` and ask again")
    started = time.monotonic()
    try:
        reply = kube.post_to_service(
            namespace=namespace, service=model, port=MODEL_PORT, path=COMPLETIONS_PATH, timeout=timeout,
            body={"model": model, "max_tokens": max_tokens,
                  "messages": [{"role": "user", "content": message}]})
    except errors.KubeError as err:
        raise NoAnswer(f"model {model} of stack {namespace}/{stack_name} did not answer: {err}") from None
    seconds = time.monotonic() - started
    text = completion_text(reply)
    if text is None:
        raise NoAnswer(f"model {model} of stack {namespace}/{stack_name} answered without a chat "
                       f"completion: {str(reply)[:300]}")
    return ChatAnswer(namespace=namespace, stack=stack_name, model=model,
                      served_by=str(status.get("model") or reply.get("model") or ""),
                      text=text, seconds=seconds)


def _find(kube: Kube, *, model: str, namespace: str | None,
          stack: str | None) -> dict[str, Any]:
    """The one stack declaring ``model`` (``ModelUnknown`` when none or several do)."""
    if stack is not None:
        found = kube.get(STACK, name=stack, namespace=namespace)
        bodies = [found] if found else []
    else:
        bodies = kube.list(STACK, namespace=namespace)
    where = (f"stack {namespace}/{stack}" if stack else
             f"namespace {namespace}" if namespace else "any namespace")
    if stack is not None and not bodies:
        raise ModelUnknown(f"there is no SovereignStack {namespace}/{stack}; list them with `sovereign status`")
    matches = [b for b in bodies
               if any(m.get("name") == model for m in (b.get("spec") or {}).get("models") or [])]
    if not matches:
        declared = sorted(f"{m.get('name')} ({b['metadata']['namespace']}/{b['metadata']['name']})"
                          for b in bodies for m in (b.get("spec") or {}).get("models") or [])
        raise ModelUnknown(f"no stack in {where} declares a model named {model!r}; "
                           + (f"the models there: {', '.join(declared)}" if declared
                              else "there are no models there"))
    if len(matches) > 1:
        names = ", ".join(sorted(f"{b['metadata']['namespace']}/{b['metadata']['name']}" for b in matches))
        raise ModelUnknown(f"several stacks declare a model named {model!r} ({names}): "
                           "choose one with --namespace")
    return matches[0]


def _models_condition(body: dict[str, Any]) -> str:
    """``: <ModelsReady message>`` when the stack says why its models wait, else nothing."""
    condition = next((c for c in (body.get("status") or {}).get("conditions") or []
                      if c.get("type") == ConditionType.MODELS_READY and c.get("status") != "True"), None)
    return f": {condition.get('message')}" if condition and condition.get("message") else ""


def completion_text(reply: Any) -> str | None:
    """The text of an OpenAI chat completion's first choice; None when the reply is not one."""
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) and content else None
