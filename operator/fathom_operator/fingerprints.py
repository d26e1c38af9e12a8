"""Per-stage spec fingerprints: what decides whether an edited recipe reruns a stage (pure).

The re-plan rule. A stage's fingerprint hashes everything that decides its output:

- its type and parameters, with every reference resolved to the URI the Job reads
  (so `model: base` changes when `spec.baseModel` does, and every output moves with `storage.uri`);
- its image;
- its shape: nodes, GPUs per pod and shards (world size and sharding change what is computed);
- the fingerprints of the stages it reads from.

When a recipe is edited during a run, a stage whose fingerprint is unchanged keeps its state and
output (a succeeded stage is not rerun, a running one keeps running). A stage whose own fields
changed reruns, and so does everything downstream of it (`dag.downstream`): the upstream
fingerprints are part of each hash, so the whole downstream cone changes with it. A running Job of a
changed stage is deleted (its cost so far stays on the status) and a new attempt starts once its
inputs are ready, with a fresh retry budget.

Fields that never rerun anything: `retries`, `timeoutSeconds`, `pool` and node-pool placement or
prices (unless they change the stage's GPUs per pod), `resources`, `budgetUSD`, `budgetPolicy`,
`suspend`, `queueName`, `cache`, secrets and the service account, and a stage type's runtime
fields (`RUNTIME_FIELDS` of its parameter model: e.g. a training stage's `reportTo`).
"""

from __future__ import annotations

import hashlib
import json

from fathom_jobs.memo import output_params

from . import dag
from .api.recipe import FathomRecipe
from .render import resolved_params, stage_by_name, stage_gpus, stage_image

LENGTH = 16  # hex characters kept: enough to never collide within one recipe's history


def _digest(document: object) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:LENGTH]


def stage_fingerprints(recipe: FathomRecipe, namespace: str, deps: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Stage name -> fingerprint, computed in DAG order (inputs first)."""
    spec = recipe.spec
    deps = deps if deps is not None else dag.dependencies(spec)
    result: dict[str, str] = {}
    for level in dag.levels(deps):
        for name in level:
            stage = stage_by_name(spec, name)
            result[name] = _digest({
                "type": stage.type,
                "params": output_params(stage.type, resolved_params(spec, namespace, recipe.metadata.name, stage)),
                "image": stage_image(spec, stage),
                "shape": [stage.nodes, stage_gpus(spec, stage), stage.shards],
                "inputs": [result[d] for d in deps[name]],
            })
    return result


def changed_stages(old: dict[str, str | None], new: dict[str, str], deps: dict[str, list[str]]) -> tuple[set[str], set[str]]:
    """(stages edited directly, stages rerun because of them) for stages that had a fingerprint.

    A changed stage none of whose inputs changed was edited itself; `dag.downstream` of those is
    everything that reruns (it equals the set of changed fingerprints, by construction).
    """
    changed = {s for s, fp in new.items() if old.get(s) not in (None, fp)}
    roots = {s for s in changed if not changed.intersection(deps.get(s, []))}
    rerun = dag.downstream(deps, roots) & {s for s in new if old.get(s) is not None}
    return roots, rerun - roots
