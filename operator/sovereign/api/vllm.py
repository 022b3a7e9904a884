"""vLLM's command line as this operator release renders and guards it (vLLM 0.33.0, ``vllm serve``).

Read from vLLM 0.33.0's own parser (``vllm/engine/arg_utils.py``, ``vllm/utils/argparse_utils.py``,
``vllm/entrypoints/common/cli_args.py``), which decides what an ``extraArgs`` entry really sets:
- every long flag may be spelled with underscores (``--tensor_parallel_size``): vLLM turns them
  into dashes before parsing;
- argparse's prefix matching is on (vLLM never turns ``allow_abbrev`` off), so ``--tensor-para 2``
  sets ``--tensor-parallel-size`` and ``-t 2`` sets ``-tp``;
- the parallel sizes have short aliases (``-tp``, ``-pp``, ``-dp``, ``-dpl``, ``-pcp``, ...), and
  one-letter options take their value glued on (``-n2`` is ``--nnodes 2``).

``OWNED_FLAGS`` are the flags the operator derives from the model's fields (weights path, names,
address), the ones that change how many GPUs one replica uses or spread it over nodes (the GPU
request would then disagree with what vLLM starts), and ``--config``, whose YAML file could set
any of them. ``owned_flag`` is the Python rule and ``OWNED_FLAG_CEL`` its CEL twin for the CRD;
``tests/unit/api/test_api_vllm.py`` holds both to the same cases and the apiserver test to the CEL.

Used by ``api.models`` (the ``extraArgs`` check) and ``render.inference`` (the rendered flags).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The vLLM release the default image runs, and whose command line this module describes.
VLLM_VERSION = "0.33.0"
DEFAULT_VLLM_IMAGE = f"docker.io/vllm/vllm-openai:v{VLLM_VERSION}"

#: Long flags the operator owns, each with its short aliases (vLLM 0.33.0).
OWNED_FLAGS: dict[str, tuple[str, ...]] = {
    # Derived from the model's fields.
    "--model": (),
    "--served-model-name": (),
    "--tensor-parallel-size": ("-tp",),
    "--host": (),
    "--port": (),
    "--uds": (),
    "--headless": (),
    "--download-dir": (),
    # Would make one replica use more GPUs than it requests, or other nodes' GPUs.
    "--pipeline-parallel-size": ("-pp",),
    "--data-parallel-size": ("-dp",),
    "--data-parallel-size-local": ("-dpl",),
    "--data-parallel-rank": ("-dpn",),
    "--data-parallel-start-rank": ("-dpr",),
    "--data-parallel-address": ("-dpa",),
    "--prefill-context-parallel-size": ("-pcp",),
    "--nnodes": ("-n",),
    "--node-rank": ("-r",),
    "--device-ids": (),
    # A YAML file of arguments: could set any of the above.
    "--config": (),
}
_LONG = tuple(OWNED_FLAGS)
_SHORT = tuple(alias for aliases in OWNED_FLAGS.values() for alias in aliases)
# One-letter options, whose value may follow without a space or '='.
_GLUED = tuple(alias for alias in _SHORT if len(alias) == 2)

#: The flags ``render.inference`` puts on the command line; each is a ``vllm serve`` flag of
#: VLLM_VERSION (the model is positional: ``--model`` is deprecated with ``vllm serve``).
RENDERED_FLAGS = ("--served-model-name", "--tensor-parallel-size", "--host", "--port")

OWNED_FLAG_MESSAGE = (
    "must not set " + ", ".join(f"{flag} ({', '.join(aliases)})" if aliases else flag
                                for flag, aliases in OWNED_FLAGS.items())
    + ", in any spelling vLLM accepts (underscores, abbreviations): the operator derives them from "
    "the model's fields, and the parallel sizes must match gpusPerReplica (set that instead)"
)


def _spellings(flags: tuple[str, ...], *, shortest: int) -> tuple[str, ...]:
    """Each flag, and each prefix of it argparse would take for it: a prefix of one owned flag
    only (a prefix shared by two is ambiguous, which vLLM refuses by itself)."""
    found: dict[str, None] = {}
    for flag in flags:
        for end in range(shortest, len(flag) + 1):
            prefix = flag[:end]
            if prefix in flags or sum(other.startswith(prefix) for other in flags) == 1:
                found[prefix] = None
    return tuple(found)


# Every spelling argparse would accept for an owned flag (underscores aside), as constants: the
# apiserver estimates a rule's cost from its string operations on an argument (up to 1024
# characters, 64 per model, 32 models), and startsWith with a constant is the cheap one. The
# argument with underscores read as dashes is computed once per argument, bound to ``n`` through
# a one-element list (this apiserver's CEL has no cel.bind).
_LONG_SPELLINGS = _spellings(_LONG, shortest=3)
_SHORT_SPELLINGS = _spellings(_SHORT, shortest=2)


def _cel_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


@dataclass(frozen=True)
class FlagRule:
    """One CEL rule of the CRD over an argument ``a``, for some of the owned flags: the apiserver
    limits the estimated cost of each rule, so the spellings are spread over a few rules."""

    flags: frozenset[str]
    cel: str


def _rule(spellings: tuple[str, ...], *, long: bool, glued: tuple[str, ...] = ()) -> FlagRule:
    # n: the argument with underscores read as dashes, computed once (a one-element list stands
    # in for cel.bind, which this apiserver's CEL does not have).
    whole = _cel_list(spellings)
    with_value = _cel_list([p + "=" for p in spellings] + list(glued))
    kind = "n.startsWith('--')" if long else "!n.startsWith('--')"
    flags = _LONG if long else _SHORT
    return FlagRule(
        flags=frozenset(flag for flag in flags if flag in spellings),
        cel=f"[a.replace('_', '-')].exists(n, {kind} && ({whole}.exists(p, size(n) == size(p) && "
            f"n.startsWith(p)) || {with_value}.exists(p, n.startsWith(p))))")


def _groups(*, most: int) -> list[tuple[str, ...]]:
    """The long flags' spellings in groups of at most ``most``, a flag's spellings never split."""
    groups: list[list[str]] = [[]]
    for flag in _LONG:
        mine = [p for p in _LONG_SPELLINGS if flag.startswith(p)
                and not any(p in group for group in groups)]
        if len(groups[-1]) + len(mine) > most:
            groups.append([])
        groups[-1] += mine
    return [tuple(group) for group in groups]


#: The CRD's rules; together they refuse what ``owned_flag`` refuses.
OWNED_FLAG_RULES: tuple[FlagRule, ...] = (
    *(_rule(group, long=True) for group in _groups(most=60)),
    _rule(_SHORT_SPELLINGS, long=False, glued=_GLUED),
)


def owned_flag(arg: str) -> str | None:
    """The owned flag (long or short form) that ``arg`` would set in vLLM, or None."""
    if not arg.startswith("-"):
        return None
    name = arg.split("=", 1)[0].replace("_", "-")
    spellings = _LONG_SPELLINGS if name.startswith("--") else _SHORT_SPELLINGS
    if name in spellings:
        return next(flag for flag in (_LONG if name.startswith("--") else _SHORT)
                    if flag.startswith(name))
    if not name.startswith("--"):
        return next((alias for alias in _GLUED if arg.startswith(alias)), None)
    return None
