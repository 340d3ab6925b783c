"""Checkpoints through orbax's CheckpointManager: async saves, keep-N, verified restore with fallback.

Items: ``state`` (params, optimizer state, step, RNG) and ``meta`` (JSON: data position, config,
and a fingerprint of the parameters). orbax writes each step into a temporary folder and renames it
when complete, so a crash or SIGKILL during a save never leaves a half-written step behind. Once a step
is complete, a manifest of its files (size and CRC-32 each, ``effattn_files.json`` in the step) is
written, and a restore checks it before orbax reads anything: corrupted files never reach tensorstore's
decoders, and the error names the file. A step that fails the manifest, is unreadable or whose parameters do not
match the fingerprint is reported, moved aside to ``checkpoints-corrupted/<step>-<time>`` (kept for
inspection, never deleted) and the previous step is used. Steps without a manifest (a crash between
the save and the manifest, or older runs) are restored as before, checked by the fingerprint alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from effattn.config import CheckpointConfig

log = logging.getLogger(__name__)


@jax.jit
def _leaf_sums(params):
    return jnp.stack([
        jnp.stack([jnp.sum(x.astype(jnp.float32)), jnp.sum(jnp.square(x.astype(jnp.float32)))])
        for x in jax.tree.leaves(params)
    ])


def fingerprint(params) -> list[list[float]]:
    """Per-leaf (sum, sum of squares) of the parameters, to verify a restored checkpoint. One compiled program: of
    sharded parameters, op-by-op sums would each be a program with its own all-reduce, dispatched asynchronously,
    and on XLA's CPU backend with many host devices such programs in flight at once could starve each other's
    collective rendezvous (seen once in CI: 'Expected 4 threads to join the rendezvous, but only 3 ...')."""
    return np.asarray(jax.device_get(_leaf_sums(params)), np.float64).tolist()


def shape_mismatches(saved_tree, abstract_state) -> list[str]:
    """'name: checkpoint (16, 16), this model (32, 32)' for every array of abstract_state whose saved shape differs,
    and the arrays one side has and the other lacks, by orbax's parameter names (saved_tree: the state item's
    metadata tree)."""
    saved = {
        x.name: tuple(x.shape)
        for x in jax.tree.leaves(saved_tree, is_leaf=lambda x: hasattr(x, 'shape') and hasattr(x, 'name'))
    }
    names, treedef = jax.tree.flatten(ocp.tree.get_param_names(abstract_state))
    # names also cover empty nodes (optax's EmptyState), which hold no array and are not saved
    wanted = {n: tuple(x.shape) for n, x in zip(names, treedef.flatten_up_to(abstract_state)) if hasattr(x, 'shape')}
    out = [f'{n}: checkpoint {saved[n]}, this model {s}' for n, s in wanted.items() if n in saved and saved[n] != s]
    out += [f'{n}: not in the checkpoint' for n in wanted if n not in saved]
    out += [f'{n}: in the checkpoint, not in this model' for n in saved if n not in wanted]
    return out


def _matches(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6))


class CheckpointError(RuntimeError):
    """No checkpoint of a run folder can be restored (all unreadable, or the model changed)."""


MANIFEST = 'effattn_files.json'
_READ_BLOCK = 1 << 22


def _file_crc(path: str) -> int:
    crc = 0
    with open(path, 'rb') as f:
        while block := f.read(_READ_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def _step_files(step_dir: str) -> list[str]:
    """Paths of the step's files relative to its folder, sorted, the manifest left out."""
    files = []
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != MANIFEST:
                files.append(rel)
    return sorted(files)


def write_manifest(step_dir: str) -> None:
    """Records the size and CRC-32 of every file of a complete step (written to a temporary name, then
    renamed, so that a crash leaves either no manifest or a whole one)."""
    entries = {}
    for rel in _step_files(step_dir):
        path = os.path.join(step_dir, rel)
        entries[rel] = [os.path.getsize(path), _file_crc(path)]
    tmp = os.path.join(step_dir, MANIFEST + '.tmp')
    with open(tmp, 'w') as f:
        json.dump(entries, f)
    os.replace(tmp, os.path.join(step_dir, MANIFEST))


def check_manifest(step_dir: str) -> bool:
    """Raises ValueError naming the first missing, resized or changed file of a step against its manifest;
    False when the step has none (nothing checked), True when every file matches."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            entries = {rel: (int(size), int(crc)) for rel, (size, crc) in json.load(f).items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f'{path} is unreadable ({type(e).__name__})') from e
    for rel, (size, crc) in sorted(entries.items()):
        file = os.path.join(step_dir, rel)
        if not os.path.exists(file):
            raise ValueError(f'{file} is missing')
        if os.path.getsize(file) != size:
            raise ValueError(f'{file} has {os.path.getsize(file)} bytes, {size} when saved')
        if _file_crc(file) != crc:
            raise ValueError(f'{file} changed since it was saved (CRC-32)')
    return True


class Checkpointer:
    def __init__(self, directory: str, cfg: CheckpointConfig):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, create=True, enable_async_checkpointing=cfg.async_save
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()},
        )
        self._async = cfg.async_save
        self._unlisted_step = None  # the saved step whose manifest is not yet written (an async save in flight)

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _write_manifest(self) -> None:
        """The manifest of the last saved step, once orbax has finished it."""
        self.manager.wait_until_finished()
        step, self._unlisted_step = self._unlisted_step, None
        if step is not None and os.path.isdir(self._step_dir(step)):  # not removed by keep-N meanwhile
            write_manifest(self._step_dir(step))

    def save(self, step: int, state: Any, meta: dict) -> None:
        if self._unlisted_step is not None:  # the previous async save: orbax would wait for it before this one anyway
            self._write_manifest()
        meta = dict(meta, step=int(step), fingerprint=fingerprint(state.params))
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._unlisted_step = int(step)
        if not self._async:
            self._write_manifest()

    def steps(self) -> list[int]:
        """Complete checkpoint steps, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """The newest readable, verified checkpoint as (state, meta), or None when there is none.

        Newer steps that fail are moved aside only once an older step restored; when no step
        restores (e.g. the model changed), nothing is moved and CheckpointError lists the failures.
        """
        failures = []
        for step in self.steps():
            try:
                # the files first: corrupted ones never reach orbax's (tensorstore's) decoders
                check_manifest(self._step_dir(step))
                # shapes next, from the metadata: a restore that fails part way leaves orbax's reads pending
                mismatched = shape_mismatches(self._saved_tree(step), abstract_state)
                if mismatched:
                    more = f' (and {len(mismatched) - 3} more)' if len(mismatched) > 3 else ''
                    raise ValueError('another model: ' + '; '.join(mismatched[:3]) + more)
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                    ),
                )
                state, meta = restored['state'], restored['meta']
                if not _matches(fingerprint(state.params), meta['fingerprint']):
                    raise ValueError('parameters do not match the fingerprint saved with them')
            except Exception as e:  # any unreadable step: try the previous one
                reason = str(e).splitlines()[0] if str(e) else ''
                failures.append((step, f'{type(e).__name__}: {reason}'))
                continue
            for bad, reason in failures:
                msg = (
                    f'checkpoint step {bad} in {self.directory} is unreadable or corrupted '
                    f'({reason}); moved to {self._quarantine(bad)}; using step {step}'
                )
                log.warning(msg)
                print(f'warning: {msg}', flush=True)
            return state, meta
        if failures:
            raise CheckpointError(
                f'no checkpoint in {self.directory} could be restored into this model: '
                + '; '.join(f'step {s}: {r}' for s, r in failures)
            )
        return None

    def _saved_tree(self, step: int):
        """The state item's metadata tree of a step (names, shapes, dtypes of its arrays)."""
        metadata = self.manager.item_metadata(step)['state']
        return getattr(metadata, 'tree', metadata)

    def _quarantine(self, step: int) -> str:
        """Moves an unreadable step out of the manager's folder, so that training can save it anew."""
        target = os.path.join(
            self.directory + '-corrupted', f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
        )
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(self._step_dir(step), target)
        self.manager.reload()
        return target

    def close(self) -> None:
        self._write_manifest()
        self.manager.close()

    def __enter__(self) -> 'Checkpointer':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
