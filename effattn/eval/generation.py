"""Generation from a run's newest checkpoint (used by eval.py --generate).

The prompt is encoded with the run's tokenizer: for text runs ``[BOS] + tokenizer(prompt)`` (bytes
by default; as training documents start), and the completion is decoded up to the first EOS. For
MQAR and ListOps runs the prompt is integer token ids ("1 2 3" or "1,2,3") and so is the output.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from effattn.models.generate import generate


def encode_prompt(cfg, prompt: str) -> tuple[list[int], object | None]:
    """(token ids, tokenizer or None for id-prompts) for a run's config."""
    from effattn.eval.run import EvalError

    if cfg.data.kind == 'text':
        from effattn.data import text

        tok = text.tokenizer_of(cfg.data)
        ids = ([] if tok.bos_id is None else [tok.bos_id]) + tok.encode(prompt)
        if not ids:
            raise EvalError('--generate: the prompt is empty and the tokenizer has no BOS token')
        return ids, tok
    try:
        ids = [int(x) for x in prompt.replace(',', ' ').split()]
    except ValueError:
        raise EvalError(
            f'--generate: a {cfg.data.kind!r} run takes integer token ids, e.g. "1 2 3"; '
            f'got {prompt!r}'
        ) from None
    vocab = cfg.model.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if not ids or bad:
        raise EvalError(
            f'--generate: need token ids in [0, {vocab}) (config.model.vocab_size), got {prompt!r}'
        )
    return ids, None


def generate_from_workdir(
    workdir: str,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> dict:
    """Generates `max_new_tokens` after `prompt` with the cache; returns the prompt, ids and text."""
    from effattn.eval.run import EvalError, load_run

    if max_new_tokens < 1:
        raise EvalError(f'--max_new_tokens must be >= 1, got {max_new_tokens}')
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise EvalError(
            f'need --temperature >= 0 and 0 < --top_p <= 1, got {temperature} and {top_p}'
        )
    cfg, model_def, state, step = load_run(workdir)
    if cfg.model.head != 'lm':
        raise EvalError(
            f'{workdir}: a classifier (config.model.head={cfg.model.head!r}) cannot generate'
        )
    ids, tok = encode_prompt(cfg, prompt)
    model = model_def.merge(state.params)
    out, _ = generate(
        model,
        jnp.asarray([ids], jnp.int32),
        max_new_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        rng=jax.random.PRNGKey(seed) if temperature > 0 else None,
    )
    new = np.asarray(out)[0, len(ids) :].tolist()
    report = {
        'workdir': os.path.abspath(workdir),
        'step': step,
        'prompt': prompt,
        'prompt_ids': ids,
        'new_ids': new,
    }
    if tok is not None:
        eos = getattr(tok, 'eos_id', None)
        cut = new.index(eos) if eos is not None and eos in new else len(new)
        report['completion'] = tok.decode(new[:cut])
        report['output'] = prompt + report['completion']
    else:
        report['completion'] = ' '.join(str(i) for i in new)
        report['output'] = ' '.join(str(i) for i in ids + new)
    return report
